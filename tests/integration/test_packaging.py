"""Each agent installs alone, with only its own dependencies, from this repository by
path (DESIGN: `pip install ./packages/common ./packages/logging-agent` gives a working
logging agent, no uvloop, no tabulate)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def installed(env: Path) -> set[str]:
    out = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {p["name"].lower() for p in json.loads(out)}


@pytest.mark.parametrize(("agent", "script", "must_not_have"), [
    ("logging-agent", "PassengerLoggingAgent", {"uvloop", "httptools", "tabulate", "psutil",
                                                "docopt-ng", "passenger-helper-agent"}),
    ("helper-agent", "PassengerHelperAgent", {"tabulate", "psutil", "docopt-ng",
                                              "passenger-logging-agent", "passenger-cli"}),
])
def test_agent_installs_alone(tmp_path: Path, agent: str, script: str,
                              must_not_have: set[str]) -> None:
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env)
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q",
                    str(REPO / "packages" / "common"), str(REPO / "packages" / agent)],
                   check=True, timeout=300, capture_output=True)
    names = installed(env)
    assert {"passenger-common", f"passenger-{agent}"} <= names
    assert not names & must_not_have, names & must_not_have
    assert (env / "bin" / script).exists()
    # It starts and answers the startup handshake: with no startup document it says so.
    result = subprocess.run([str(env / "bin" / script)], input=b"", capture_output=True,
                            timeout=30, check=False, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode != 0
    assert b"no startup document on stdin" in result.stderr


def readme_commands() -> list[str]:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", readme)


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    """The second sh block is the test command; .ci/run must contain it verbatim, and
    both README commands use the same virtualenv (PEP 668: no system-wide pip)."""
    quick_start, test_command = readme_commands()[:2]
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
    assert "tox -r" in test_command
    for command in (quick_start, test_command):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install")
        assert "python3 -m pip" not in command
