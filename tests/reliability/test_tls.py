"""HTTPS, as every real vendor serves it: the mock over TLS with a CA made for this run.

A certificate the client does not trust is refused once (never retried), with an error that
names the host and the cause and no secret. `Pool(ssl=...)` and SSL_CERT_FILE make it trusted.
Streams of every provider go through an HTTP CONNECT proxy, and a TLS handshake that never
completes counts against the connect timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
import trustme

from llmstreams import (
    APIConnectionError,
    APITimeoutError,
    ChunkStream,
    DashScopeClient,
    InvalidParameterError,
    OpenAICompatibleClient,
    Pool,
    QianfanClient,
    Timeout,
    TLSCertificateError,
)
from llmstreams.mock import MockServer
from tests.reliability.helpers import (
    ACCESS_KEY,
    API_KEY,
    CREDENTIAL_SECRETS,
    DASHSCOPE_KEY,
    DASHSCOPE_MODEL,
    FAST_RETRY,
    MOCK_CREDENTIALS,
    PROMPT,
    QIANFAN_MODEL,
    SECRET_ACCESS_KEY,
    SECRET_KEY,
    USER,
    TcpServer,
)
from tests.reliability.test_secrets import assert_no_secret, error_texts
from tests.reliability.tunnels import TLS_HANDSHAKE_RECORD, ConnectProxy, Relay

REPO_ROOT = Path(__file__).resolve().parents[2]
QIANFAN_V2_KEY = "bce-v3/ALTAK-SECRET-tls/8e2f0c"
OPENAI_KEY = "SECRET-openai-apikey-c3d9"
SECRETS = (*CREDENTIAL_SECRETS, QIANFAN_V2_KEY, OPENAI_KEY)
CREDENTIALS = attrs.evolve(
    MOCK_CREDENTIALS, qianfan_v2_api_key=QIANFAN_V2_KEY, openai_api_key=OPENAI_KEY
)
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")

Client = QianfanClient | DashScopeClient | OpenAICompatibleClient


@attrs.frozen
class Provider:
    """One way to stream a generation, with the mock route it lands on."""

    name: str
    route: str
    make: Callable[[str, Pool], Client]
    stream: Callable[[Client], ChunkStream]
    fetches_token: bool = False


def chat(model: str) -> Callable[[Client], ChunkStream]:
    return lambda client: client.stream_chat(USER, model=model)


def generate(client: Client) -> ChunkStream:
    assert isinstance(client, DashScopeClient)
    return client.stream_generate(PROMPT, model=DASHSCOPE_MODEL)


PROVIDERS = [
    Provider(
        "qianfan-v1", "qianfan.chat",
        lambda url, pool: QianfanClient(
            api_key=API_KEY, secret_key=SECRET_KEY, base_url=url, pool=pool, retry=FAST_RETRY
        ),
        chat(QIANFAN_MODEL), fetches_token=True,
    ),
    Provider(
        "qianfan-v1-aksk", "qianfan.chat",
        lambda url, pool: QianfanClient(
            access_key=ACCESS_KEY, secret_access_key=SECRET_ACCESS_KEY, base_url=url, pool=pool,
            retry=FAST_RETRY,
        ),
        chat(QIANFAN_MODEL),
    ),
    Provider(
        "qianfan-v2", "qianfan.v2.chat",
        lambda url, pool: OpenAICompatibleClient(
            vendor="qianfan", api_key=QIANFAN_V2_KEY, base_url=url, pool=pool, retry=FAST_RETRY
        ),
        chat("ernie-speed-8k"),
    ),
    Provider(
        "dashscope-native", "dashscope.generation",
        lambda url, pool: DashScopeClient(
            api_key=DASHSCOPE_KEY, base_url=url, pool=pool, retry=FAST_RETRY
        ),
        generate,
    ),
    Provider(
        "dashscope-compatible", "dashscope.compatible.chat",
        lambda url, pool: OpenAICompatibleClient(
            vendor="dashscope-compatible", api_key=DASHSCOPE_KEY, base_url=url, pool=pool,
            retry=FAST_RETRY,
        ),
        chat("qwen-plus"),
    ),
    Provider(
        "openai-compatible", "openai.chat",
        lambda url, pool: OpenAICompatibleClient(
            base_url=url + "/v1", api_key=OPENAI_KEY, pool=pool, retry=FAST_RETRY
        ),
        chat("mock-model"),
    ),
]
BY_NAME = {provider.name: provider for provider in PROVIDERS}


def provider_params(names: list[str] | None = None) -> pytest.MarkDecorator:
    chosen = PROVIDERS if names is None else [BY_NAME[name] for name in names]
    return pytest.mark.parametrize("provider", chosen, ids=lambda provider: provider.name)


# --- a CA made for this run ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(test_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return path


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context like the default one, trusting `ca` instead of the system's CAs."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def https_mock(test_ca: trustme.CA) -> AsyncIterator[MockServer]:
    """The mock over HTTPS, with a certificate for 127.0.0.1 that `test_ca` signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    async with MockServer(credentials=CREDENTIALS, ssl=context) as server:
        yield server


@pytest.fixture
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def https(url: str) -> str:
    return url.replace("http://", "https://", 1)


# --- trust -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["direct", "connect-proxy"])
@provider_params(["qianfan-v1", "qianfan-v2", "dashscope-native", "openai-compatible"])
async def test_an_untrusted_certificate_is_refused_once_naming_host_and_cause(
    https_mock: MockServer,
    provider: Provider,
    path: str,
    caplog: pytest.LogCaptureFixture,
    no_proxy_variables: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="llmstreams")
    tunnels = Relay(https_mock.port) if path == "direct" else ConnectProxy()
    async with tunnels.running():
        # Certificates are checked against the system's CAs: the test CA is not one of them.
        if isinstance(tunnels, Relay):
            base_url, pool = https(tunnels.url), Pool()
        else:
            base_url, pool = https_mock.url, Pool(proxy=tunnels.url)
        async with pool, provider.make(base_url, pool) as client:
            with pytest.raises(TLSCertificateError) as caught:
                await provider.stream(client).collect()
    error = caught.value
    assert isinstance(error, APIConnectionError)
    text = str(error)
    assert base_url.removeprefix("https://") in text
    assert "certificate verify failed" in text and "local issuer certificate" in text
    assert "SSL_CERT_FILE" in text  # the hint says how to trust it
    # FAST_RETRY allows 2 retries, but the same certificate would be refused again.
    assert tunnels.carried == 1
    assert all(first[0] == TLS_HANDSHAKE_RECORD for first in tunnels.first_bytes)
    assert sum(https_mock.stats.requests.values()) == 0
    texts = [*error_texts(error), *(record.getMessage() for record in caplog.records), caplog.text]
    assert_no_secret(texts, SECRETS)


async def test_a_certificate_made_out_to_another_host_is_refused(test_ca: trustme.CA) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("vendor.example").configure_cert(context)
    async with (
        MockServer(ssl=context) as mock,
        Pool(ssl=trusting(test_ca)) as pool,
        BY_NAME["dashscope-native"].make(mock.url, pool) as client,
    ):
        with pytest.raises(TLSCertificateError) as caught:
            await generate(client).collect()
    assert "certificate is not valid for '127.0.0.1'" in str(caught.value)
    assert mock.stats.requests["dashscope.generation"] == 0


@provider_params(["qianfan-v1", "dashscope-compatible"])
async def test_pool_ssl_context_trusts_the_certificate(
    https_mock: MockServer, provider: Provider, test_ca: trustme.CA
) -> None:
    async with Pool(ssl=trusting(test_ca)) as pool, provider.make(https_mock.url, pool) as client:
        completion = await provider.stream(client).collect()
    assert completion.is_complete and completion.text
    assert https_mock.stats.requests[provider.route] == 1


def test_pool_ssl_must_be_an_ssl_context(ca_file: Path) -> None:
    with pytest.raises(InvalidParameterError, match="'ssl': must be a SSLContext"):
        Pool(ssl=str(ca_file))  # type: ignore[arg-type]


# A user's program: stream one generation with the default pool, print the text or the error.
_DEFAULT_POOL_PROGRAM = """
import asyncio, sys
from llmstreams import DashScopeClient, LLMStreamsError

async def main() -> int:
    async with DashScopeClient(base_url=sys.argv[1], max_retries=0) as client:
        try:
            completion = await client.stream_generate("hi", model=sys.argv[2]).collect()
        except LLMStreamsError as error:
            print(type(error).__name__, error)
            return 1
    print(completion.text)
    return 0

sys.exit(asyncio.run(main()))
"""


async def run_default_pool_program(url: str, **environment: str) -> tuple[int, str]:
    child_environment = {
        name: value for name, value in os.environ.items()
        if name not in (*PROXY_VARIABLES, "SSL_CERT_FILE", "SSL_CERT_DIR")
    }
    child_environment.update(
        PYTHONPATH=str(REPO_ROOT), DASHSCOPE_API_KEY=DASHSCOPE_KEY, **environment
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DEFAULT_POOL_PROGRAM, url, DASHSCOPE_MODEL,
        env=child_environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_ssl_cert_file_makes_the_default_pool_trust_the_certificate(
    https_mock: MockServer, ca_file: Path
) -> None:
    refused = await run_default_pool_program(https_mock.url)
    trusted = await run_default_pool_program(https_mock.url, SSL_CERT_FILE=str(ca_file))
    assert refused[0] == 1 and refused[1].startswith("TLSCertificateError"), refused
    assert trusted[0] == 0 and trusted[1].strip(), trusted
    assert https_mock.stats.requests["dashscope.generation"] == 1


# --- a CONNECT proxy -------------------------------------------------------------------------


@provider_params()
async def test_a_stream_goes_over_https_through_a_connect_proxy(
    https_mock: MockServer, provider: Provider, test_ca: trustme.CA,
    no_proxy_variables: pytest.MonkeyPatch,
) -> None:
    async with (
        ConnectProxy().running() as proxy,
        Pool(proxy=proxy.url, ssl=trusting(test_ca)) as pool,
        provider.make(https_mock.url, pool) as client,
    ):
        completion = await provider.stream(client).collect()
    assert completion.is_complete and completion.text
    stats = https_mock.stats
    assert stats.requests[provider.route] == 1
    assert stats.requests["token"] == (1 if provider.fetches_token else 0)
    # Every connection the mock accepted came through a tunnel, and each tunnel carried TLS.
    assert proxy.carried >= 1
    assert stats.connections_opened == proxy.carried
    assert proxy.targets == [f"127.0.0.1:{https_mock.port}"] * proxy.carried
    assert all(first[0] == TLS_HANDSHAKE_RECORD for first in proxy.first_bytes)


@provider_params(["qianfan-v1", "dashscope-native"])
async def test_https_proxy_variable_tunnels_unless_trust_env_is_false(
    https_mock: MockServer, provider: Provider, test_ca: trustme.CA,
    no_proxy_variables: pytest.MonkeyPatch,
) -> None:
    async with ConnectProxy().running() as proxy:
        no_proxy_variables.setenv("HTTPS_PROXY", proxy.url)
        async with Pool(ssl=trusting(test_ca)) as pool, provider.make(https_mock.url, pool) as client:
            assert (await provider.stream(client).collect()).is_complete
        tunnelled = proxy.carried
        async with (
            Pool(ssl=trusting(test_ca), trust_env=False) as pool,
            provider.make(https_mock.url, pool) as client,
        ):
            assert (await provider.stream(client).collect()).is_complete
    assert tunnelled >= 1
    assert proxy.carried == tunnelled
    assert https_mock.stats.connections_opened == tunnelled + 1
    assert https_mock.stats.requests[provider.route] == 2


@provider_params(["qianfan-v1", "dashscope-native"])
async def test_a_proxy_that_refuses_the_tunnel_is_a_connection_error_naming_it(
    https_mock: MockServer, provider: Provider, test_ca: trustme.CA,
    no_proxy_variables: pytest.MonkeyPatch,
) -> None:
    async with (
        ConnectProxy(refusal="403 Forbidden").running() as proxy,
        Pool(proxy=proxy.url.replace("//", "//user:SECRET-proxy-password@"), ssl=trusting(test_ca)) as pool,
        provider.make(https_mock.url, pool) as client,
    ):
        with pytest.raises(APIConnectionError) as caught:
            await provider.stream(client).collect()
    assert type(caught.value) is APIConnectionError  # not the vendor's ProtocolError
    assert "the proxy refused the tunnel (HTTP 403 'Forbidden')" in str(caught.value)
    assert len(proxy.targets) == 1 + FAST_RETRY.max_retries
    assert sum(https_mock.stats.requests.values()) == 0
    assert_no_secret(error_texts(caught.value), SECRETS)


# --- the connect timeout -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["direct", "connect-proxy"])
async def test_a_stalled_tls_handshake_is_a_connect_timeout(
    path: str, test_ca: trustme.CA, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    # Accepts TCP connections and never answers the ClientHello.
    async with TcpServer(silent=True).running() as silent, ConnectProxy().running() as proxy:
        proxy_url = None if path == "direct" else proxy.url
        timeout = Timeout(connect=0.2, first_chunk=5)
        async with (
            Pool(ssl=trusting(test_ca), proxy=proxy_url) as pool,
            DashScopeClient(
                api_key=DASHSCOPE_KEY, base_url=https(silent.url), pool=pool, timeout=timeout,
                max_retries=1,
            ) as client,
        ):
            with pytest.raises(APITimeoutError) as caught:
                await generate(client).collect()
        carried = proxy.first_bytes
    assert caught.value.phase == "connect"
    assert "connect timeout" in str(caught.value)
    # A timeout is worth one more try (max_retries=1), unlike a refused certificate.
    assert silent.accepted == 2
    if path == "connect-proxy":
        assert len(carried) == 2 and all(first[0] == TLS_HANDSHAKE_RECORD for first in carried)
