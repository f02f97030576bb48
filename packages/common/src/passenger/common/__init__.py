"""Pieces shared by the agents and the command-line tools (imports nothing of theirs)."""

VERSION = "0.1.0"
SERVER_SOFTWARE = f"Passenger-Python/{VERSION}"
