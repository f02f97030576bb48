"""The HTTP/1.x syntax a request must have (RFC 9110, RFC 9112), as regular expressions.

Possessive quantifiers throughout: a match never backtracks, so a hostile head costs one
pass. Shared by the head parser (`request_head`), the chunked-body decoder
(`chunked_body`) and the explanations of a refusal (`http_errors`).
"""

from __future__ import annotations

import re

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]"  # field-vchar, obs-text, SP, HTAB
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb"++) ([^\x00-\x20\x7f]++) HTTP/(\d)\.(\d)\r\n")
# One header field line. Anchored at a line start: a section is valid exactly when every
# one of its LFs ends a match (a line with a bare CR or LF, an obs-fold or any stray byte
# does not match at all).
FIELD = re.compile(rb"(?m)^(" + TOKEN + rb"++):[ \t]*+(" + VALUE + rb"*+)\r\n")
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*+)(?::[0-9]*+)?+")
ABSOLUTE_TARGET = re.compile(rb"(?i:https?)://([^/?#]*+)([^?#]*+)(?:\?([^#]*+))?+(?:#.*+)?+")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*+;[^\x00-\x08\x0a-\x1f\x7f]*+)?+")
DIGITS = re.compile(rb"[0-9]{1,18}")
