"""The example in docs/telemetry.md runs as written against the mock server and prints what the
document shows; the document's tables name what the code records."""

from __future__ import annotations

import os
import re

from llmstreams.mock import MockServer
from llmstreams.telemetry import PROVIDER_NAMES
from tests.support import ROOT, python_examples, run_example

DOCUMENT = ROOT / "docs" / "telemetry.md"
DOC_TEXT = DOCUMENT.read_text(encoding="utf-8")
(EXAMPLE,) = python_examples(DOCUMENT)
# The example's output as the document shows it: the block after "prints".
SHOWN = re.search(r"prints \(ids, times and the port vary\):\n\n```\n(.*?)```", DOC_TEXT, re.DOTALL)
VARYING = ("gen_ai.response.id", "gen_ai.response.time_to_first_chunk", "server.port")


async def test_the_example_prints_what_the_document_shows() -> None:
    assert SHOWN is not None
    environment = {name: value for name, value in os.environ.items() if not name.startswith("QIANFAN_")}
    async with MockServer() as server:
        environment.update(QIANFAN_API_KEY="bce-v3/ALTAK-docs/any-secret", QIANFAN_BASE_URL=server.url)
        output = await run_example(EXAMPLE, environment)
    printed = output.splitlines()
    shown = SHOWN.group(1).splitlines()
    assert len(printed) == len(shown)
    for line, expected in zip(printed, shown, strict=True):
        if line.startswith(VARYING):
            assert line.split(" = ")[0] == expected.split(" = ")[0]
        else:
            assert line == expected
    assert f"server.port = {server.url.rsplit(':', 1)[1]}" in printed


def test_the_provider_table_is_the_code_s() -> None:
    rows = dict(re.findall(r"^\| `(\w+)`[^|]* \| `([\w.]+)` \|", DOC_TEXT, re.MULTILINE))
    assert rows == dict(PROVIDER_NAMES)
