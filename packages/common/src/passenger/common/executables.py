"""Finding our console scripts: beside the running interpreter first (a virtualenv that is
not activated), then on PATH."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (looked beside {sys.executable} "
                                f"and on PATH)")
    return found
