"""The public Qianfan models this library knows, and how a call names the service it talks to.

A call gives either `model=` (a name from `MODELS`, looked up case-insensitively) or
`endpoint=` (the API name of a service the user deployed, e.g. a Dolly-12B deployment).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from llmstreams.errors import InvalidParameterError
from llmstreams.validation import suggest

Kind = Literal["chat", "completions"]

# The characters RFC 3986 leaves unreserved: an endpoint made of them needs no escaping in a path.
_URL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

_METHODS: dict[Kind, str] = {
    "chat": "stream_chat() / chat()",
    "completions": "stream_complete() / complete()",
}


@attrs.frozen(slots=True)
class ModelInfo:
    """A public model: its name, whether it takes chat messages or a prompt, and its endpoint."""

    name: str
    kind: Kind
    endpoint: str


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("ERNIE-Bot", "chat", "completions"),
    ModelInfo("ERNIE-3.5-8K", "chat", "completions"),
    ModelInfo("ERNIE-Bot-turbo", "chat", "eb-instant"),
    ModelInfo("ERNIE-Bot-4", "chat", "completions_pro"),
    ModelInfo("ERNIE-4.0-8K", "chat", "completions_pro"),
    ModelInfo("ERNIE-Speed-8K", "chat", "ernie_speed"),
    ModelInfo("ERNIE-Lite-8K", "chat", "ernie-lite-8k"),
    ModelInfo("ERNIE-4.0-8K-Latest", "chat", "ernie-4.0-8k-latest"),
    ModelInfo("ERNIE-4.0-8K-Preview", "chat", "ernie-4.0-8k-preview"),
    ModelInfo("ERNIE-4.0-Turbo-8K", "chat", "ernie-4.0-turbo-8k"),
    ModelInfo("ERNIE-3.5-128K", "chat", "ernie-3.5-128k"),
    ModelInfo("ERNIE-Speed-128K", "chat", "ernie-speed-128k"),
    ModelInfo("ERNIE-Speed-Pro-128K", "chat", "ernie-speed-pro-128k"),
    ModelInfo("ERNIE-Lite-8K-0922", "chat", "eb-instant"),
    ModelInfo("ERNIE-Tiny-8K", "chat", "ernie-tiny-8k"),
    ModelInfo("ERNIE-Character-8K", "chat", "ernie-char-8k"),
    ModelInfo("ERNIE-Functions-8K", "chat", "ernie-func-8k"),
    ModelInfo("ERNIE-Novel-8K", "chat", "ernie-novel-8k"),
    ModelInfo("ERNIE-Speed-AppBuilder", "chat", "ai_apaas"),
    ModelInfo("BLOOMZ-7B", "chat", "bloomz_7b1"),
    ModelInfo("Llama-2-7B-Chat", "chat", "llama_2_7b"),
    ModelInfo("Llama-2-13B-Chat", "chat", "llama_2_13b"),
    ModelInfo("Llama-2-70B-Chat", "chat", "llama_2_70b"),
    ModelInfo("Meta-Llama-3-8B", "chat", "llama_3_8b"),
    ModelInfo("ChatGLM2-6B-32K", "chat", "chatglm2_6b_32k"),
    ModelInfo("AquilaChat-7B", "chat", "aquilachat_7b"),
    ModelInfo("Mixtral-8x7B-Instruct", "chat", "mixtral_8x7b_instruct"),
    ModelInfo("CodeLlama-7b-Instruct", "completions", "codellama_7b_instruct"),
    ModelInfo("SQLCoder-7B", "completions", "sqlcoder_7b"),
)

_BY_NAME: dict[str, ModelInfo] = {info.name.lower(): info for info in MODELS}


def lookup_model(name: str) -> ModelInfo:
    """The registry entry for `name` (any case); an error listing close matches otherwise."""
    if not isinstance(name, str):
        raise InvalidParameterError("model", "must be a string naming a model", name)
    info = _BY_NAME.get(name.lower())
    if info is None:
        raise suggest(
            name,
            [model.name for model in MODELS],
            what="model",
            extra=(
                "; endpoint='<API name>' works for any model, public or deployed by you: the API"
                " name is the last part of the model's v1 URL (.../wenxinworkshop/chat/<API name>)"
            ),
        )
    return info


def check_endpoint(endpoint: Any) -> str:
    """`endpoint` if it can be used as the last segment of the request path."""
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidParameterError(
            "endpoint", "must be a non-empty string: the API name given when the service was deployed",
            endpoint,
        )
    if endpoint.startswith(("chat/", "completions/")):
        raise InvalidParameterError(
            "endpoint",
            "must be the API name alone; the chat/ or completions/ part comes from the method called",
            endpoint,
        )
    if not set(endpoint) <= _URL_SAFE or endpoint in (".", ".."):
        raise InvalidParameterError(
            "endpoint", "may only contain letters, digits and - . _ ~", endpoint
        )
    return endpoint


def resolve_endpoint(kind: Kind, *, model: Any, endpoint: Any) -> str:
    """The endpoint a `kind` call goes to, from exactly one of `model` and `endpoint`."""
    if model is not None and endpoint is not None:
        raise InvalidParameterError(
            "model", "give either model= (a public model) or endpoint= (your deployed service), not both"
        )
    if endpoint is not None:
        return check_endpoint(endpoint)
    if model is None:
        raise InvalidParameterError(
            "model",
            "required: pass model= (e.g. 'ERNIE-Speed-8K') or endpoint= (the API name of a service "
            "you deployed)",
        )
    info = lookup_model(model)
    if info.kind != kind:
        raise InvalidParameterError(
            "model",
            f"{info.name} is a {info.kind} model, call {_METHODS[info.kind]} for it "
            f"instead of {_METHODS[kind]}",
        )
    return info.endpoint


# The v2 ids of the v1 model names that have one (v2 ids are lower case).
V2_MODEL_IDS: dict[str, str] = {
    "ERNIE-Bot": "ernie-3.5-8k",
    "ERNIE-3.5-8K": "ernie-3.5-8k",
    "ERNIE-Bot-turbo": "ernie-lite-8k",
    "ERNIE-Bot-4": "ernie-4.0-8k",
    "ERNIE-4.0-8K": "ernie-4.0-8k",
    "ERNIE-Speed-8K": "ernie-speed-8k",
    "ERNIE-Lite-8K": "ernie-lite-8k",
}


def check_v2_model(model: Any) -> str:
    """`model` as v2 takes it: the model id, passed as it is; a v1 model name is refused,
    naming the v2 id to use (no silent mapping: the caller's code then says what it calls)."""
    if model is None:
        raise InvalidParameterError("model", "is required on v2: the model id, e.g. 'ernie-speed-8k'")
    if not isinstance(model, str) or not model.strip():
        raise InvalidParameterError("model", "must be a non-empty string: the v2 model id", model)
    info = _BY_NAME.get(model.lower())
    if info is not None and model != model.lower():
        v2_id = V2_MODEL_IDS.get(info.name)
        use = (
            f"pass model={v2_id!r}" if v2_id
            else "pass the model's lower-case v2 id, as the Qianfan console lists it"
        )
        raise InvalidParameterError(
            "model", f"{model!r} is a v1 model name; v2 takes model ids: {use}", model
        )
    return model
