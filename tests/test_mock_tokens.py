"""Access tokens on the mock: sibling worker processes accept each other's tokens."""

from __future__ import annotations

import asyncio

from llmstreams import Pool, QianfanClient
from llmstreams.mock import spawn_mock_workers
from llmstreams.mock.qianfan_auth import TokenState, TokenStore


def test_a_sibling_with_the_same_key_accepts_the_token() -> None:
    issuer, sibling = TokenStore(3600, b"k" * 32), TokenStore(3600, b"k" * 32)
    token = issuer.issue().access_token
    assert issuer.state(token) is TokenState.VALID
    assert sibling.state(token) is TokenState.VALID


def test_a_server_with_another_key_does_not_know_the_token() -> None:
    token = TokenStore(3600, b"a" * 32).issue().access_token
    assert TokenStore(3600, b"b" * 32).state(token) is TokenState.UNKNOWN


def test_a_tampered_token_is_unknown() -> None:
    issuer, sibling = TokenStore(3600, b"k" * 32), TokenStore(3600, b"k" * 32)
    token = issuer.issue().access_token
    version, seal, ttl, expires_at, app = token.split(".", 4)
    forged = ".".join([version, seal, ttl, str(int(expires_at) + 10**6), app])
    assert sibling.state(forged) is TokenState.UNKNOWN


def test_expire_all_expires_sibling_tokens_issued_before() -> None:
    issuer, sibling = TokenStore(3600, b"k" * 32), TokenStore(3600, b"k" * 32)
    token = issuer.issue().access_token
    sibling.expire_all()
    assert sibling.state(token) is TokenState.EXPIRED


async def test_token_auth_works_across_mock_worker_processes() -> None:
    async with spawn_mock_workers(2) as url, Pool() as pool:
        client = QianfanClient(api_key="demo-key", secret_key="demo-secret", base_url=url, pool=pool, max_retries=0)
        messages = [{"role": "user", "content": "hello"}]
        completions = await asyncio.gather(*(client.chat(messages, model="ERNIE-Speed-8K") for _ in range(40)))
    assert all(completion.is_complete and completion.text for completion in completions)
