"""No secret ever shows: API keys, secret keys, access keys, access tokens (the ones the mock
issued too) and bce signatures stay out of reprs, error messages, tracebacks, log records at
every level (llmstreams' and everyone else's, aiohttp's included) and the output of the
`llmstreams bench` and `llmstreams batch` commands.

Every credential is a distinctive string, and the tokens and Authorization headers actually
sent are recorded by a proxy between the clients and the mock, so the searches are meaningful.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmstreams import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    DashScopeClient,
    LLMStreamsError,
    Pool,
    ProtocolError,
    QianfanClient,
    RateLimitError,
    StreamInterruptedError,
    StreamTimeoutError,
    Timeout,
)
from llmstreams.mock import Behaviour, MockServer
from tests.reliability.helpers import (
    ACCESS_KEY,
    API_KEY,
    CREDENTIAL_SECRETS,
    DASHSCOPE,
    DASHSCOPE_KEY,
    DASHSCOPE_MODEL,
    FAST_RETRY,
    QIANFAN,
    QIANFAN_MODEL,
    QIANFAN_SIGNED,
    SECRET_ACCESS_KEY,
    SECRET_KEY,
    USER,
    RecordingProxy,
    Vendor,
    closed_port,
    knobs,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
WRONG_SECRET_KEY = "SECRET-wrong-secretkey-03aa"
WRONG_SECRET_ACCESS_KEY = "SECRET-wrong-secretaccesskey-5b21"
WRONG_DASHSCOPE_KEY = "SECRET-wrong-dashscope-apikey-9e0d"
WRONG_SECRETS = (WRONG_SECRET_KEY, WRONG_SECRET_ACCESS_KEY, WRONG_DASHSCOPE_KEY)


def assert_no_secret(texts: Iterable[str], secrets: Iterable[str]) -> None:
    secrets = [secret for secret in secrets if secret]
    for text in texts:
        assert "SECRET-" not in text, text[:2000]
        assert "access_token=" not in text and "client_secret" not in text, text[:2000]
        for secret in secrets:
            assert secret not in text, text[:2000]


def error_texts(error: LLMStreamsError) -> list[str]:
    return [
        str(error),
        repr(error),
        repr(error.partial),
        "".join(traceback.format_exception(error)),
    ]


async def expect_error(expected: type[LLMStreamsError], call: object) -> LLMStreamsError:
    with pytest.raises(expected) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def fetch_token_directly(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/oauth/2.0/token",
        params={"grant_type": "client_credentials", "client_id": API_KEY, "client_secret": SECRET_KEY},
    ) as response:
        token: str = (await response.json())["access_token"]
    return token


async def test_no_secret_in_reprs_errors_or_logs(
    mock: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="llmstreams")
    errors: list[LLMStreamsError] = []
    reprs: list[str] = []

    async with RecordingProxy(mock.url).running() as proxy, Pool(retry=FAST_RETRY) as pool:
        given_token = await fetch_token_directly(proxy.url)
        token_client = QIANFAN.client(proxy.url, pool=pool)
        signed_client = QIANFAN_SIGNED.client(proxy.url, pool=pool)
        dashscope_client = DASHSCOPE.client(proxy.url, pool=pool)
        static_client = QianfanClient(access_token=given_token, base_url=proxy.url, pool=pool)
        impatient_client = QIANFAN.client(proxy.url, pool=pool, timeout=Timeout(idle=0.2))
        clients: list[QianfanClient | DashScopeClient] = [
            token_client, signed_client, dashscope_client, static_client, impatient_client,
        ]

        for vendor, client in ((QIANFAN, token_client), (QIANFAN_SIGNED, signed_client),
                               (DASHSCOPE, dashscope_client), (QIANFAN, static_client)):
            stream = vendor.stream(client)
            assert (await stream.collect()).is_complete
            reprs.append(repr(stream))
            assert (await vendor.answer(client)).is_complete

        # A retry, then a token renewal after the mock expired every token.
        assert (await QIANFAN.answer(token_client, knobs(fail_code=18))).is_complete
        mock.expire_tokens()
        assert (await QIANFAN.answer(token_client)).is_complete
        await QIANFAN.answer(signed_client)

        failing: list[tuple[type[LLMStreamsError], Vendor, QianfanClient | DashScopeClient, dict[str, object]]] = [
            (RateLimitError, QIANFAN, token_client, {"fail_code": 18, "fail_times": 99}),
            (AuthenticationError, QIANFAN, token_client, {"fail_code": 111, "fail_times": 99}),
            (StreamInterruptedError, QIANFAN, token_client, {"disconnect_after": 2}),
            (ProtocolError, QIANFAN, token_client, {"malformed_after": 1}),
            (StreamTimeoutError, QIANFAN, impatient_client, {"stall_after": 1}),
            (APIError, QIANFAN_SIGNED, signed_client, {"error_after": 2, "error_code": 336100}),
            (AuthenticationError, QIANFAN, static_client, {}),  # its token was expired
            (APIError, DASHSCOPE, dashscope_client, {"error_after": 1, "error_code": "InternalError"}),
            (StreamInterruptedError, DASHSCOPE, dashscope_client, {"disconnect_after": 1}),
            (APIError, DASHSCOPE, dashscope_client, {"http_status": 503, "fail_times": 99}),
        ]
        for expected, vendor, client, behaviour in failing:
            headers = knobs(**behaviour) if behaviour else None
            errors.append(await expect_error(expected, vendor.stream(client, headers).collect()))

        wrong_clients: list[tuple[Vendor, QianfanClient | DashScopeClient]] = [
            (QIANFAN, QianfanClient(api_key=API_KEY, secret_key=WRONG_SECRET_KEY, base_url=proxy.url, pool=pool)),
            (QIANFAN_SIGNED, QianfanClient(
                access_key=ACCESS_KEY, secret_access_key=WRONG_SECRET_ACCESS_KEY, base_url=proxy.url, pool=pool,
            )),
            (DASHSCOPE, DashScopeClient(api_key=WRONG_DASHSCOPE_KEY, base_url=proxy.url, pool=pool)),
        ]
        for vendor, client in wrong_clients:
            errors.append(await expect_error(AuthenticationError, vendor.answer(client)))
            clients.append(client)

        unreachable = f"http://127.0.0.1:{closed_port()}"
        for vendor in (QIANFAN, QIANFAN_SIGNED, DASHSCOPE):
            async with vendor.client(unreachable, max_retries=1) as client:
                errors.append(await expect_error(APIConnectionError, vendor.answer(client)))
                clients.append(client)

        reprs += [repr(client) for client in clients]
        reprs.append(repr(pool))

    secrets = {*CREDENTIAL_SECRETS, *WRONG_SECRETS, given_token, *proxy.secrets_seen}
    # The proxy saw what it should: tokens issued before and after the expiry, a signature, keys.
    assert len(proxy.issued_tokens) >= 3
    assert any(value.startswith("bce-auth-v1/") for value in proxy.authorizations)
    assert f"Bearer {DASHSCOPE_KEY}" in proxy.authorizations

    messages = [record.getMessage() for record in caplog.records]
    # The logs did cover the paths that could leak: requests sent, retries, a token renewal.
    assert any("sending <HttpRequest" in message for message in messages)
    assert any(": retry " in message for message in messages)
    assert any("sending again after repairing" in message for message in messages)
    assert any("fetched an access token" in message for message in messages)

    texts = [*reprs, *messages, caplog.text]
    for error in errors:
        texts += error_texts(error)
    assert_no_secret(texts, secrets)


# --- the command line --------------------------------------------------------------------------


def cli_environment(**credentials: str) -> dict[str, str]:
    environment = {
        name: value for name, value in os.environ.items()
        if not name.startswith(("QIANFAN_", "DASHSCOPE_"))
    }
    environment["PYTHONPATH"] = str(REPO_ROOT)
    environment.update(credentials)
    return environment


async def run_cli(arguments: list[str], environment: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run `python -m llmstreams ...`; its exit status and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment, cwd=cwd,
    )
    async with asyncio.timeout(120):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode() + stderr.decode()


def written(directory: Path) -> list[str]:
    return [path.read_text() for path in sorted(directory.iterdir()) if path.is_file()]


CLI_CREDENTIALS = {
    "qianfan-v1-api_key": {"QIANFAN_API_KEY": API_KEY, "QIANFAN_SECRET_KEY": SECRET_KEY},
    "qianfan-v1-access_key": {
        "QIANFAN_ACCESS_KEY": ACCESS_KEY, "QIANFAN_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    },
    "dashscope": {"DASHSCOPE_API_KEY": DASHSCOPE_KEY},
}


def provider_of(credentials: str) -> str:
    return credentials.rpartition("-")[0] if credentials.startswith("qianfan") else credentials


@pytest.mark.parametrize("credentials", list(CLI_CREDENTIALS))
async def test_no_secret_in_bench_output(mock: MockServer, tmp_path: Path, credentials: str) -> None:
    provider = provider_of(credentials)
    # The first attempt of the (identical) benchmark requests fails: an error is reported too.
    mock.set_behaviour(Behaviour(fail_code="18" if provider == "qianfan-v1" else "Throttling"))
    outputs = tmp_path / "out"
    outputs.mkdir()
    async with RecordingProxy(mock.url).running() as proxy:
        status, printed = await run_cli(
            [
                "bench", "--base-url", proxy.url, "--provider", provider,
                "--concurrency", "2", "--requests", "6", "--warmup", "0",
                "--json", str(outputs / "report.json"),
                "--requests-jsonl", str(outputs / "requests.jsonl"),
            ],
            cli_environment(**CLI_CREDENTIALS[credentials]),
            tmp_path,
        )
    assert status == 0, printed
    report = json.loads((outputs / "report.json").read_text())
    assert "RateLimitError" in json.dumps(report)
    assert proxy.authorizations or proxy.sent_tokens
    assert_no_secret([printed, *written(outputs)], {*CREDENTIAL_SECRETS, *proxy.secrets_seen})


BATCH_LINES: list[dict[str, Any]] = [
    {"id": "ok"},
    {"id": "retried", "extra_headers": knobs(fail_code=18)},
    {"id": "overloaded", "extra_headers": knobs(fail_code=18, fail_times=99)},
    {"id": "cut", "extra_headers": knobs(disconnect_after=2)},
    {"id": "malformed", "extra_headers": knobs(malformed_after=1)},
    {"id": "expired", "extra_headers": knobs(fail_code=111)},
]


@pytest.mark.parametrize("credentials", list(CLI_CREDENTIALS))
async def test_no_secret_in_batch_output(mock: MockServer, tmp_path: Path, credentials: str) -> None:
    provider = provider_of(credentials)
    input_path = tmp_path / "input.jsonl"
    output_path = tmp_path / "output.jsonl"
    lines = []
    for line in BATCH_LINES:
        # A question of its own per line: the mock counts injected failures per distinct request.
        question = f"{USER[0]['content']} ({line['id']})"
        request: dict[str, object] = {**line}
        if provider == "qianfan-v1":
            request["messages"] = [{"role": "user", "content": question}]
        else:
            request["prompt"] = question
        lines.append(json.dumps(request))
    input_path.write_text("\n".join(lines) + "\n")
    model = QIANFAN_MODEL if provider == "qianfan-v1" else DASHSCOPE_MODEL
    async with RecordingProxy(mock.url).running() as proxy:
        status, printed = await run_cli(
            [
                "batch", str(input_path), "-o", str(output_path), "--provider", provider,
                "--model", model, "--base-url", proxy.url, "--max-retries", "1", "--verbose",
            ],
            cli_environment(**CLI_CREDENTIALS[credentials]),
            tmp_path,
        )
    assert status == 1, printed  # some lines fail on purpose
    results = {result["id"]: result for result in map(json.loads, output_path.read_text().splitlines())}
    assert "text" in results["ok"] and "text" in results["retried"]
    assert results["overloaded"]["error"]["type"] == "RateLimitError"
    assert results["cut"]["error"]["type"] == "StreamInterruptedError"
    assert results["malformed"]["error"]["type"] == "ProtocolError"
    assert ": retry " in printed  # --verbose logged the retries
    if credentials == "qianfan-v1-api_key":
        # The token was renewed and the request sent again.
        assert "text" in results["expired"] and len(proxy.issued_tokens) == 2
    else:
        assert results["expired"]["error"]["type"] == "AuthenticationError"
    assert_no_secret([printed, *written(tmp_path)], {*CREDENTIAL_SECRETS, *proxy.secrets_seen})
