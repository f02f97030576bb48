"""What a trusted proxy may tell us about the client's connection: its scheme.

`--forwarded-allow-ips` (gunicorn's name and meaning) lists the peers whose
`X-Forwarded-Proto`, `X-Forwarded-Protocol`, `X-Forwarded-Ssl` and `Forwarded: proto=`
headers set `wsgi.url_scheme`. From any other peer those headers still reach the app as
headers, but change nothing. The address the client connected from stays REMOTE_ADDR;
`X-Forwarded-For` and `X-Forwarded-Host` reach the app as headers, for it to trust or not.
"""

from __future__ import annotations

import ipaddress

from passenger.common.config import parse_allow_ips
from passenger.helper_agent.http_errors import HttpError

# header -> the value that means the proxy's client used TLS (gunicorn's defaults)
SECURE_VALUES = ((b"HTTP_X_FORWARDED_PROTO", b"https"),
                 (b"HTTP_X_FORWARDED_PROTOCOL", b"ssl"),
                 (b"HTTP_X_FORWARDED_SSL", b"on"))
SCHEME_HEADERS = frozenset([key for key, _ in SECURE_VALUES] + [b"HTTP_FORWARDED"])

class TrustedProxies:
    def __init__(self, spec: str) -> None:
        self.everyone, self.networks = parse_allow_ips(spec)

    def trusts(self, address: str | None) -> bool:
        """`address` None: a Unix socket peer, which only local users can be."""
        if address is None or self.everyone:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


def forwarded_scheme(headers: dict[bytes, bytes]) -> bytes | None:
    """b"https" or b"http" as the proxy's headers say, None if they say nothing; a
    proxy whose headers disagree gets 400 (a misconfiguration, as in gunicorn)."""
    verdicts = set()
    for key, secure in SECURE_VALUES:
        value = headers.get(key)
        if value is not None:
            verdicts.add(b"https" if _last(value).lower() == secure else b"http")
    forwarded = headers.get(b"HTTP_FORWARDED")
    if forwarded is not None:
        proto = _forwarded_proto(forwarded)
        if proto is not None:
            verdicts.add(b"https" if proto == b"https" else b"http")
    if len(verdicts) > 1:
        raise HttpError(400, "Contradictory scheme headers from a trusted proxy "
                             "(X-Forwarded-Proto, X-Forwarded-Ssl, Forwarded)")
    return verdicts.pop() if verdicts else None


def _last(value: bytes) -> bytes:
    """The element the nearest proxy added to a comma-separated list."""
    return value.rsplit(b",", 1)[-1].strip(b" \t")


def _forwarded_proto(value: bytes) -> bytes | None:
    """RFC 7239: `for=1.2.3.4;proto=https, for=...`; the last element is the nearest
    proxy's."""
    for pair in _last(value).split(b";"):
        name, _, param = pair.partition(b"=")
        if name.strip(b" \t").lower() == b"proto":
            return param.strip(b" \t").strip(b'"').lower()
    return None
