"""`Vendor`: one service that speaks the OpenAI-compatible dialect, as data.

A vendor is where its API lives (`base_url`, and the path its API sits under on a host), where
its key comes from (environment variables, the shape its console gives keys), the model to use
when none is named, how a bare prompt is sent, and its `Dialect` (extras, limits, error codes).
`OpenAICompatibleClient(vendor=...)` takes one; each vendor is a small module of its own
(`llmstreams/vendors/`, `qianfan/v2.py`, `dashscope/compatible.py`) listed in the registry
(`llmstreams.providers`).
"""

from __future__ import annotations

from typing import Final

import attrs

from llmstreams.calls import PromptAs
from llmstreams.openai.wire import GENERIC, Dialect


@attrs.frozen(slots=True)
class Vendor:
    """- `name`: the registry's name of the vendor (`deepseek`), also `Chunk`/error `provider`
      through `dialect.provider`.
    - `title`: how people call it ("DeepSeek").
    - `base_url`: the API base the openai SDK would be given (paths such as `/chat/completions`
      go under it); None for the generic client, which must be told.
    - `api_path`: the path the API sits under on a host: a `base_url` given with no path gets
      it appended (`https://dashscope-intl.aliyuncs.com` -> `.../compatible-mode/v1`).
    - `api_key_env`: the environment variable a key is read from when none is passed.
    - `base_url_env`: the environment variable a base URL is read from when none is passed.
    - `key_prefix`: how the vendor's keys start; a key that does not is refused before sending
      when `key_prefix_required` (the key then surely belongs to something else).
    - `requires_key`: whether a call without a key is refused before sending.
    - `default_model`: the model used by the commands when none is named.
    - `prompt_as`: how a bare prompt (a batch line's `prompt`) is sent: as one user message of a
      chat, or to the legacy `/completions` API.
    - `docs`: the vendor's API reference this preset was built from.
    """

    name: str
    title: str
    dialect: Dialect
    base_url: str | None
    api_key_env: str
    api_path: str = ""
    base_url_env: str | None = None
    key_prefix: str | None = None
    key_prefix_required: bool = False
    requires_key: bool = True
    default_model: str | None = None
    prompt_as: PromptAs = "chat"
    docs: str = ""


GENERIC_VENDOR: Final = Vendor(
    name="openai",
    title="any OpenAI-compatible server",
    dialect=GENERIC,
    base_url=None,
    api_key_env="OPENAI_API_KEY",
    base_url_env="OPENAI_BASE_URL",
    requires_key=False,
    prompt_as="completion",
    docs="https://platform.openai.com/docs/api-reference/chat",
)
