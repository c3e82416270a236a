"""The example of docs/providers.md runs as written; its table is the registry's."""

from __future__ import annotations

import os
import re

from llmstreams import DashScopeClient, QianfanClient
from llmstreams.providers import PROVIDERS
from tests.support import ROOT, python_examples, run_example

DOCUMENT = ROOT / "docs" / "providers.md"
EXAMPLES = python_examples(DOCUMENT)
# What `client.provider` says for the providers whose API has a client class of its own.
NATIVE_CLIENT_PROVIDERS = {"qianfan-v1": QianfanClient.provider, "dashscope": DashScopeClient.provider}
TABLE_ROW = re.compile(r"^\| `([a-z0-9-]+)` \| (.+?) \| (.+?) \| (.+?) \| (.+?) \|$", re.MULTILINE)


def test_the_examples_were_found() -> None:
    assert len(EXAMPLES) == 1


async def test_every_provider_answers_from_the_mock() -> None:
    output = await run_example(EXAMPLES[0], os.environ)
    lines = output.rstrip("\n").split("\n")
    assert [line.split()[0] for line in lines] == list(PROVIDERS)
    for line, provider in zip(lines, PROVIDERS.values(), strict=True):
        _, client_provider, text = line.split(maxsplit=2)
        expected = (
            provider.vendor.dialect.provider if provider.vendor is not None
            else NATIVE_CLIENT_PROVIDERS[provider.name]
        )
        assert client_provider == expected, line
        assert len(text) == len("''") + 30, line


def test_the_table_is_the_registry() -> None:
    text = DOCUMENT.read_text(encoding="utf-8")
    rows = {match.group(1): match.groups()[1:] for match in TABLE_ROW.finditer(text)}
    assert list(rows) == list(PROVIDERS)
    for name, (client, model, key, base_url) in rows.items():
        provider = PROVIDERS[name]
        if provider.default_model is not None:
            assert model == f"`{provider.default_model}`", name
        if provider.base_url is not None:
            assert base_url == f"`{provider.base_url}`", name
        if provider.vendor is not None:
            assert f'vendor="{name}"' in client or name == "openai", name
            assert f"`{provider.vendor.api_key_env}`" in key, name
