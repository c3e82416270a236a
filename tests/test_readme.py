"""Every Python example in the README runs as written, and the quickstart is two commands."""

from __future__ import annotations

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
