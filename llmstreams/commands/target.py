"""What the commands share about where requests go: the `--provider`, `--model`, `--endpoint`,
`--base-url` and `--mock` options (choices and help from the provider registry), the client
they describe, and the command-line wording of what can go wrong making it."""

from __future__ import annotations

import argparse
from typing import Any

import llmstreams
from llmstreams import providers
from llmstreams.client import BaseClient
from llmstreams.providers import Provider

MOCK_HINT = "to try without credentials or network, add --mock"
_CREDENTIAL_FIELDS = frozenset(
    {"api_key", "secret_key", "access_token", "access_key", "secret_access_key"}
)
# Library fields that the commands take as flags of the same name.
_FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in ("base_url", "model", "endpoint", "temperature", "top_p", "top_k", "max_tokens",
                 "stop", "seed", "system")
}


def provider_list() -> str:
    """One line per provider: name, what it is, where its credentials come from."""
    width = max(len(name) for name in providers.PROVIDERS)
    return "\n".join(
        f"  {provider.name:<{width}}  {provider.title}; credentials: {provider.credential_env}"
        for provider in providers.PROVIDERS.values()
    )


def add_target_arguments(
    parser: argparse.ArgumentParser, *, default_provider: str | None = providers.DEFAULT_PROVIDER
) -> None:
    """`--provider`, `--model`, `--endpoint`, `--base-url` and `--mock`."""
    default = f" (default {default_provider})" if default_provider else ""
    parser.add_argument(
        "--provider", choices=list(providers.PROVIDERS), default=default_provider,
        required=default_provider is None, metavar="NAME",
        help=f"where the requests go{default}: {', '.join(providers.PROVIDERS)} (see the list below)",
    )
    parser.add_argument(
        "--model",
        help="model id (default: the provider's own, e.g. "
        + ", ".join(
            f"{provider.default_model} for {provider.name}"
            for provider in list(providers.PROVIDERS.values())[:3] if provider.default_model
        )
        + "; required for openai)",
    )
    endpoint_providers = [p.name for p in providers.PROVIDERS.values() if p.takes_endpoint]
    parser.add_argument(
        "--endpoint",
        help=f"{', '.join(endpoint_providers)} only: the API name of a service you deployed "
        "(instead of --model)",
    )
    parser.add_argument(
        "--base-url",
        help="API base URL (default: the provider's, or its *_BASE_URL environment variable; "
        "--provider openai: OPENAI_BASE_URL, e.g. http://127.0.0.1:8000/v1)",
    )
    parser.add_argument(
        "--mock", action="store_true",
        help="send the requests to a local mock server started for this run (no credentials, "
        "no network)",
    )


def check_target_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the target options, in command-line terms (None: nothing)."""
    provider = providers.get(args.provider)
    if args.endpoint is not None and not provider.takes_endpoint:
        return f"--endpoint is for Qianfan v1 deployments (--provider qianfan-v1); " \
            f"{provider.name} takes --model"
    if args.mock and args.base_url is not None:
        return "give --mock or --base-url, not both"
    if args.model is None and args.endpoint is None and provider.model_for(mock=args.mock) is None:
        return f"--provider {provider.name} needs --model (the model id the server serves)"
    return None


def model_of(args: argparse.Namespace) -> str | None:
    """The model the options name, or the provider's default."""
    if args.model is not None or args.endpoint is not None:
        return args.model  # type: ignore[no-any-return]
    return providers.get(args.provider).model_for(mock=args.mock)


def make_client(
    args: argparse.Namespace, pool: llmstreams.Pool, mock_url: str | None, **options: Any
) -> BaseClient:
    """The client the options describe: of the mock at `mock_url`, or with credentials from the
    environment. Raises `CommandError` in command-line terms."""
    provider = providers.get(args.provider)
    try:
        if mock_url is not None:
            return provider.mock_client(mock_url, pool=pool, **options)
        return provider.client(base_url=args.base_url, pool=pool, **options)
    except llmstreams.InvalidParameterError as error:
        raise CommandError(*describe(error, provider)) from None


class CommandError(Exception):
    """A problem told in command-line terms: one line, and at most one hint line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self, command: str) -> str:
        text = f"llmstreams {command}: error: {self.message}"
        return text if self.hint is None else f"{text}\nhint: {self.hint}"


def describe(error: llmstreams.InvalidParameterError, provider: Provider) -> tuple[str, str | None]:
    """A client's refusal of the options, said with flags and environment variables."""
    field = error.field
    if field in _CREDENTIAL_FIELDS or field.isupper() or "," in field:
        return (
            f"no usable {provider.title} credentials: set {provider.credential_env}",
            _credential_hint(error, provider),
        )
    return describe_parameter(error), None


def describe_parameter(error: llmstreams.InvalidParameterError) -> str:
    """A refused parameter, named by its flag where the commands have one."""
    field = error.field.split("[", 1)[0]
    flag = _FLAGS.get(field)
    name = flag if flag is not None and field == error.field else repr(error.field)
    shown = str(error).removesuffix(f". {error.hint}")
    value = shown.rsplit(", got ", 1)[1] if ", got " in shown else None
    if error.rule.startswith("unknown parameter") and flag is not None:
        return f"{name}: the provider's API does not take it"
    rule = _without_python(error.rule)
    return f"{name}: {rule}" + (f" (got {value})" if value is not None else "")


def _credential_hint(error: llmstreams.InvalidParameterError, provider: Provider) -> str:
    rule = error.rule
    if "bce-v3/" in rule and provider.name == "qianfan":
        return "that key is not a bce-v3/ key: Qianfan API v1 credentials go with --provider qianfan-v1"
    if "bce-v3/" in rule:
        return "a bce-v3/ key is Qianfan API v2's: use --provider qianfan"
    return MOCK_HINT


def _without_python(rule: str) -> str:
    """A rule as the library words it, with its keyword arguments turned into flags."""
    for name, flag in _FLAGS.items():
        rule = rule.replace(f"{name}=", f"{flag} ").replace(f"pass {flag}", f"give {flag}")
    return rule
