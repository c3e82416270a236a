"""The examples of docs/sync.md and the README's sync door and `llmstreams chat` run as written."""

from __future__ import annotations

import os
import re
import shlex

from tests.support import ROOT, python_examples, run_example

DOCUMENT = ROOT / "docs" / "sync.md"
EXAMPLES = python_examples(DOCUMENT)


def test_the_examples_were_found() -> None:
    assert len(EXAMPLES) == 1


async def test_the_sync_example() -> None:
    output = (await run_example(EXAMPLES[0], os.environ)).splitlines()
    assert len(output[0]) == 40
    assert len(output[1]) == 240
    assert output[2].startswith("Usage(prompt_tokens=")
    assert output[3] == "kept: 2 chunks"


async def test_every_chat_command_shown_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [
        line for text in (readme, DOCUMENT.read_text(encoding="utf-8"))
        for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)
        for line in block.splitlines() if line.startswith("llmstreams chat")
    ]
    assert len(commands) >= 2
    for command in commands:
        arguments = shlex.split(command)[2:]
        code = f"import sys; from llmstreams.cli import main; sys.exit(main(['chat', *{arguments!r}]))"
        output = await run_example(code, os.environ)
        assert len(output.strip()) > 20, command
