"""What every command does the same way: usage errors (the usage, then one line naming the
bad option, exit 2), a closed pipe (`| head`: quiet), and Ctrl-C (quiet, exit 130)."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from docopt import DocoptExit, docopt

OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
F = TypeVar("F", bound=Callable[..., Any])


def parse(usage: str, argv: Sequence[str] | None, prog: str, **kwargs: Any) -> dict[str, Any]:
    """docopt, with errors a user can act on instead of docopt's own warnings."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # docopt's "found unmatched" noise
            return dict(docopt(usage, argv=argv, **kwargs))
    except DocoptExit as exc:
        usage_text = "\n".join(line for line in str(exc).strip().splitlines()
                               if not line.startswith("Warning: found unmatched"))
        known = set(OPTION.findall(usage))
        unknown = [arg.split("=", 1)[0] for arg in argv if not _known(arg, known)]
        print(usage_text, file=sys.stderr)
        if unknown:
            print(f"{prog}: unknown option {unknown[0]}", file=sys.stderr)
        else:
            print(f"{prog}: these arguments do not fit the usage above: "
                  f"{' '.join(argv) or '(none)'}", file=sys.stderr)
        sys.exit(2)


def _known(arg: str, known: set[str]) -> bool:
    """Not an option, or one the usage names (`-vh` as `-v` and `-h`)."""
    if not arg.startswith("-") or arg == "-" or arg == "--":
        return True
    name = arg.split("=", 1)[0]
    if name in known:
        return True
    return not name.startswith("--") and all(f"-{c}" in known for c in name[1:])


def entry_point(main: F) -> F:
    """For console scripts: no traceback when the reader of our output goes away or the
    user presses Ctrl-C."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            quiet_stdout()
            sys.exit(1)
        except KeyboardInterrupt:
            quiet_stdout()
            sys.exit(130)

    return run  # type: ignore[return-value]


def quiet_stdout() -> None:
    """Python flushes stdout at exit; with the pipe gone that would print an error."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
