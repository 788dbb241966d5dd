"""Every `depthprune ...` command shown in the README parses with the real CLI (options exist, values are valid)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from depthprune.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("depthprune "):
                commands.append(line)
    return commands


def test_readme_has_commands_for_every_verb():
    verbs = {shlex.split(c)[1] for c in readme_commands()}
    assert verbs >= {"info", "score", "prune", "collapse", "heal", "eval", "sweep", "run", "report"}


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    build_parser().parse_args(shlex.split(command)[1:])
