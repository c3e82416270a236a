"""Every Python example in the README runs as written, and the quickstart is two commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example{n}" for n in range(len(EXAMPLES))])
def test_example_runs(source: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(source, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        cwd=README.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_quickstart_is_exactly_two_commands_and_ci_runs_the_second() -> None:
    quickstart = TEXT.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quickstart, flags=re.S)
    assert len(commands) == 2
    assert "llmstreams demo" in commands[0]
    ci_script = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci_script


SHELL_EXAMPLES = re.findall(
    r"```sh\n(.*?)```", TEXT.split("## A tour", 1)[1], flags=re.S
)


def test_the_tour_has_shell_examples() -> None:
    assert len(SHELL_EXAMPLES) >= 3


@pytest.mark.parametrize("source", SHELL_EXAMPLES, ids=[f"shell{n}" for n in range(len(SHELL_EXAMPLES))])
def test_shell_example_runs_as_typed(source: str, tmp_path: Path) -> None:
    """Each command of the tour, as a reader pastes it into a shell (in an empty folder, with
    the `llmstreams` command of this environment on the PATH, and no credentials)."""
    environment = {
        name: value for name, value in os.environ.items()
        if not name.endswith(("_API_KEY", "_SECRET_KEY", "_ACCESS_TOKEN", "_BASE_URL"))
    }
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment["PATH"]])
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", source], capture_output=True, text=True, timeout=110,
        cwd=tmp_path, env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    if "llmstreams batch" in source:
        answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
        assert len(answers) == 2 and all(answer["text"] for answer in answers)
