"""The provider registry: the one place that knows, for every provider, its client, where its
credentials come from, its default model, its base URL and where the mock serves it.

The commands (`chat`, `batch`, `bench`, `demo`), `llmstreams.ray` and the bench targets look a
provider up here by name and then use its client through the public API only (`stream_call` /
`complete_call`, see `llmstreams.calls`). Adding an OpenAI-compatible vendor is one small module
(`llmstreams/vendors/NAME.py`), one entry below, and its mock flavour.

    client = llmstreams.client_for("deepseek")            # reads DEEPSEEK_API_KEY
    client = llmstreams.client_for("qianfan-v1", api_key=..., secret_key=...)
    client = llmstreams.client_for("qianfan", access_key=..., secret_key=...)  # IAM key pair
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from llmstreams.client import BaseClient
from llmstreams.dashscope import compatible
from llmstreams.dashscope.client import API_KEY_ENV as DASHSCOPE_API_KEY_ENV
from llmstreams.dashscope.client import DashScopeClient
from llmstreams.errors import InvalidParameterError
from llmstreams.openai.client import OpenAICompatibleClient
from llmstreams.openai.vendor import GENERIC_VENDOR, Vendor
from llmstreams.qianfan import v2
from llmstreams.qianfan.auth import resolve_credentials
from llmstreams.qianfan.client import QianfanClient
from llmstreams.validation import suggest
from llmstreams.vendors import deepseek, hunyuan, moonshot, siliconflow, volcengine, zhipu

ClientFactory = Callable[..., BaseClient]
MOCK_URL: Final = "{mock}"
"""In `Provider.mock_credentials`: the mock server's URL."""


@attrs.frozen(slots=True)
class Provider:
    """One provider, as the commands and batch jobs know it.

    - `name`: what `--provider` takes; `title`: what people call it.
    - `make_client`: builds its client from keyword options (`base_url`, `pool`, `timeout`,
      `max_retries`, and credentials such as `api_key`); without credentials the client reads
      its environment variables, `credential_env`.
    - `default_model`: the model used when none is named (None: the server's own, so a model
      must be named); `mock_model`: the one used against the mock when none is named.
    - `base_url`: where the service lives; `mock_path`: where the mock serves it, under the
      mock's URL.
    - `mock_credentials`: throwaway credentials the mock takes, by authentication method (the
      first is the default). A value "{mock}" stands for the mock's URL (where a client must
      fetch tokens from the mock too, as Qianfan's `iam_url`).
    - `mock_route`: the name the mock counts the provider's OpenAI-compatible requests under
      (`<mock_route>.chat`, see `MockStats.requests`); None for the natively spoken APIs.
    - `takes_endpoint`: calls may name a deployed service (`endpoint=`) instead of a model.
    - `vendor`: the OpenAI-compatible preset, for the dialect's vendors.
    """

    name: str
    title: str
    make_client: ClientFactory
    credential_env: str
    read_credentials: Callable[[Mapping[str, str]], dict[str, str] | None]
    default_model: str | None
    base_url: str | None
    mock_path: str
    mock_credentials: Mapping[str, Mapping[str, str]]
    mock_model: str | None = None
    mock_route: str | None = None
    takes_endpoint: bool = False
    vendor: Vendor | None = None
    docs: str = ""

    def client(self, **options: Any) -> BaseClient:
        """Its client; credentials from `options` or else from the environment."""
        return self.make_client(**options)

    def mock_client(self, mock_url: str, *, auth: str | None = None, **options: Any) -> BaseClient:
        """Its client pointed at a mock server at `mock_url`, with throwaway credentials of the
        authentication method `auth` (default: the first)."""
        if auth is None:
            auth = next(iter(self.mock_credentials))
        if auth not in self.mock_credentials:
            raise InvalidParameterError(
                "auth", f"{self.name} authenticates with {', '.join(self.mock_credentials)}", auth
            )
        mock_url = mock_url.rstrip("/")
        credentials = {
            field: mock_url if value == MOCK_URL else value
            for field, value in self.mock_credentials[auth].items()
        }
        return self.make_client(base_url=mock_url + self.mock_path, **credentials, **options)

    def model_for(self, *, mock: bool) -> str | None:
        """The model to use when none is named."""
        return (self.mock_model or self.default_model) if mock else self.default_model


def _vendor_provider(
    vendor: Vendor,
    *,
    mock_path: str,
    mock_route: str | None = None,
    mock_model: str | None = None,
    mock_key: str | None = None,
    make_client: ClientFactory | None = None,
    credential_env: str | None = None,
    read_credentials: Callable[[Mapping[str, str]], dict[str, str] | None] | None = None,
    mock_credentials: Mapping[str, Mapping[str, str]] | None = None,
) -> Provider:
    """The registry entry of an OpenAI-compatible vendor: its client is
    `OpenAICompatibleClient(vendor=vendor)` and its credential an API key, unless `make_client`
    and the other credential fields say otherwise."""

    def make_vendor_client(**options: Any) -> BaseClient:
        return OpenAICompatibleClient(vendor=vendor, **options)

    def read_api_key(environ: Mapping[str, str]) -> dict[str, str] | None:
        key = environ.get(vendor.api_key_env, "").strip()
        return {"api_key": key} if key else None

    mock_key = mock_key or f"{vendor.key_prefix or ''}mock-{vendor.name}-key"
    return Provider(
        name=vendor.name,
        title=vendor.title,
        make_client=make_client or make_vendor_client,
        credential_env=credential_env or vendor.api_key_env,
        read_credentials=read_credentials or read_api_key,
        default_model=vendor.default_model,
        base_url=vendor.base_url,
        mock_path=mock_path,
        mock_credentials={"api_key": {"api_key": mock_key}, **(mock_credentials or {})},
        mock_model=mock_model,
        mock_route=mock_route or vendor.name,
        vendor=vendor,
        docs=vendor.docs,
    )


def _qianfan_v1_credentials(environ: Mapping[str, str]) -> dict[str, str] | None:
    from llmstreams.qianfan.auth import ENV_LAYOUTS

    variables = {variable for _, layout in ENV_LAYOUTS for variable in layout.values()}
    if not any(environ.get(variable, "").strip() for variable in variables):
        return None
    return dict(resolve_credentials({}, environ).values)


def _dashscope_credentials(environ: Mapping[str, str]) -> dict[str, str] | None:
    key = environ.get(DASHSCOPE_API_KEY_ENV, "").strip()
    return {"api_key": key} if key else None


QIANFAN_V1: Final = Provider(
    name="qianfan-v1",
    title="Baidu Qianfan API v1 (wenxinworkshop, legacy)",
    make_client=QianfanClient,
    credential_env=(
        "QIANFAN_API_KEY + QIANFAN_SECRET_KEY, QIANFAN_ACCESS_TOKEN, or "
        "QIANFAN_ACCESS_KEY + QIANFAN_SECRET_ACCESS_KEY"
    ),
    read_credentials=_qianfan_v1_credentials,
    default_model="ERNIE-Speed-8K",
    base_url="https://aip.baidubce.com",
    mock_path="",
    mock_credentials={
        "api_key": {"api_key": "mock-api-key", "secret_key": "mock-secret-key"},
        "access_key": {"access_key": "mock-access-key", "secret_access_key": "mock-secret-key"},
    },
    takes_endpoint=True,
    docs="https://cloud.baidu.com/doc/WENXINWORKSHOP/s/Nlks5zkzu",
)

DASHSCOPE: Final = Provider(
    name="dashscope",
    title="Alibaba DashScope (native API)",
    make_client=DashScopeClient,
    credential_env=DASHSCOPE_API_KEY_ENV,
    read_credentials=_dashscope_credentials,
    default_model="qwen-turbo",
    base_url="https://dashscope.aliyuncs.com",
    mock_path="",
    mock_credentials={"api_key": {"api_key": "sk-mock-dashscope-key"}},
    docs="https://help.aliyun.com/zh/model-studio/developer-reference/use-qwen-by-calling-api",
)

PROVIDERS: Final[Mapping[str, Provider]] = {
    provider.name: provider
    for provider in (
        _vendor_provider(
            v2.VENDOR, mock_path="/v2", mock_route="qianfan.v2", make_client=v2.make_client,
            credential_env=v2.CREDENTIAL_ENV, read_credentials=v2.read_credentials,
            mock_credentials={"access_key": {
                "access_key": "mock-access-key", "secret_key": "mock-secret-key",
                "iam_url": MOCK_URL,
            }},
        ),
        QIANFAN_V1,
        DASHSCOPE,
        _vendor_provider(
            compatible.VENDOR, mock_path=compatible.API_PATH, mock_route="dashscope.compatible"
        ),
        _vendor_provider(GENERIC_VENDOR, mock_path="/v1", mock_model="mock-model"),
        _vendor_provider(deepseek.VENDOR, mock_path="/deepseek"),
        _vendor_provider(moonshot.VENDOR, mock_path="/moonshot/v1"),
        # Zhipu's keys are `{id}.{secret}`, and the mock checks for the dot.
        _vendor_provider(zhipu.VENDOR, mock_path="/api/paas/v4", mock_key="mock-zhipu-id.secret"),
        _vendor_provider(volcengine.VENDOR, mock_path="/api/v3"),
        _vendor_provider(siliconflow.VENDOR, mock_path="/siliconflow/v1"),
        _vendor_provider(hunyuan.VENDOR, mock_path="/hunyuan/v1"),
    )
}
"""Every provider, by name, in the order the commands list them."""

DEFAULT_PROVIDER: Final = "qianfan"


def get(name: str, *, field: str = "provider") -> Provider:
    """The provider called `name`; an error naming close matches otherwise."""
    provider = PROVIDERS.get(name) if isinstance(name, str) else None
    if provider is None:
        error = suggest(str(name), PROVIDERS, what="provider")
        raise InvalidParameterError(field, error.rule)
    return provider


def vendor_named(name: str) -> Vendor:
    """The OpenAI-compatible preset called `name` (for `OpenAICompatibleClient(vendor=...)`)."""
    provider = get(name, field="vendor")
    if provider.vendor is None:
        client = provider.make_client
        raise InvalidParameterError(
            "vendor",
            f"{provider.title} is not OpenAI-compatible: use {getattr(client, '__name__', client)} "
            f"or llmstreams.client_for({provider.name!r})",
            name,
        )
    return provider.vendor


def client_for(provider: str, **options: Any) -> BaseClient:
    """A client of the provider called `provider` (see `PROVIDERS`): its options are the
    client's keyword arguments (`api_key=`, `base_url=`, `pool=`, ...); credentials left out
    are read from the provider's environment variables."""
    return get(provider).client(**options)


def credentials_from_environment(provider: Provider) -> dict[str, str] | None:
    """The credentials this process's environment holds for `provider` (None: none)."""
    return provider.read_credentials(os.environ)
