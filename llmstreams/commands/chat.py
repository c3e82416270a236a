"""`llmstreams chat`: stream one answer to the terminal, or chat turn by turn.

The answer goes to stdout as it arrives; a reasoning model's thinking goes to stderr (dimmed
on a terminal), so that stdout holds the answer alone. After each answer one summary line goes
to stderr: time to the first chunk, chunks, tokens, the request id.

The prompt is the PROMPT argument, else standard input. When standard input is a terminal
and no PROMPT is given, the chat is interactive: each answer is added to the history sent
with the next question; Ctrl-D or Ctrl-C at the prompt ends it, Ctrl-C during an answer
stops that answer.

Credentials come from the environment, as for the clients: QIANFAN_API_KEY (a bce-v3/ key
selects Qianfan v2; with QIANFAN_SECRET_KEY, v1), DASHSCOPE_API_KEY, OPENAI_API_KEY and
OPENAI_BASE_URL. --mock answers from a mock server started for the call instead (Qianfan v2,
DashScope, or /v1 for --provider openai).

Exit status: 0 answered; 1 the request failed; 2 usage error (bad option, no credentials);
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import llmstreams
from llmstreams.batch import PROTOCOLS, PROVIDERS, Client, make_client
from llmstreams.mock import MockServer
from llmstreams.sync import SyncClient, SyncStream
from llmstreams.sync import run as run_on_loop

# The default model of each provider (Qianfan by API version); --provider openai needs --model.
DEFAULT_MODELS: dict[str, str] = {
    "qianfan v1": "ERNIE-Speed-8K", "qianfan v2": "ernie-speed-8k", "dashscope": "qwen-turbo",
}
# The mock accepts any non-empty credentials; a bce-v3/ key makes the Qianfan client speak v2.
_MOCK_KEY = "bce-v3/mock-key"
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
_PROMPT = "you> "

Messages = list[dict[str, str]]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "chat",
        help="stream an answer to the terminal (interactive when no prompt is given)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", nargs="?", metavar="PROMPT", help="the question (default: stdin)")
    parser.add_argument("--provider", choices=PROVIDERS, default="qianfan", help="(default qianfan)")
    parser.add_argument(
        "--model", help="model name (default: " + ", ".join(
            f"{name} for {provider}" for provider, name in DEFAULT_MODELS.items()
        ) + "; required for openai)",
    )
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="native",
        help="DashScope only: its native API or its OpenAI-compatible mode (default native)",
    )
    parser.add_argument("--endpoint", help="Qianfan v1 only: the API name of a deployed service")
    parser.add_argument(
        "--base-url",
        help="API base URL (default: QIANFAN_BASE_URL / DASHSCOPE_BASE_URL / OPENAI_BASE_URL,"
        " or the vendor's)",
    )
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument(
        "--mock", action="store_true",
        help="answer from a local mock server started for this call (no credentials needed)",
    )
    sampling = parser.add_argument_group("sampling (left to the service when not given)")
    sampling.add_argument("--temperature", type=float)
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--max-tokens", type=int, help="at most this many tokens in the answer")
    sampling.add_argument("--stop", action="append", help="a stop string (repeat for more)")
    sampling.add_argument("--seed", type=int)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.endpoint is not None and args.provider != "qianfan":
        return _usage_error("--endpoint is for --provider qianfan; give --model instead")
    if args.protocol != "native" and args.provider != "dashscope":
        return _usage_error("--protocol is for --provider dashscope")
    if args.mock and args.base_url is not None:
        return _usage_error("give --mock or --base-url, not both")
    if args.provider == "openai" and args.model is None:
        return _usage_error("--provider openai needs --model (the server's model id)")
    if args.prompt is None and not sys.stdin.isatty():
        args.prompt = sys.stdin.read()
    if args.prompt is not None and not args.prompt.strip():
        return _usage_error("the prompt is empty")
    server = MockServer() if args.mock else None
    pool = llmstreams.Pool()
    try:
        if server is not None:
            run_on_loop(server.start())
        try:
            client = _make_client(args, pool, server)
        except llmstreams.InvalidParameterError as error:
            if error.field not in _CREDENTIAL_FIELDS:
                return _usage_error(str(error))
            return _usage_error(f"no {args.provider} credentials: {error.rule}{_NO_CREDENTIALS}")
        with SyncClient(client) as chat:
            start = _starter(chat, args)
            if args.prompt is None:
                return _interactive(start)
            return _one_answer(start, [{"role": "user", "content": args.prompt}])
    finally:
        if pool.in_use:
            run_on_loop(pool.close())
        if server is not None:
            run_on_loop(server.close())


_CREDENTIAL_FIELDS = (
    "api_key", "secret_key", "access_token", "access_key", "secret_access_key", "base_url",
)
_NO_CREDENTIALS = (
    "\nTo try the command without credentials: llmstreams chat --mock 'your question'"
    "\nor serve the local mock with `llmstreams mock --port 8000` and add"
    " --base-url http://127.0.0.1:8000 (http://127.0.0.1:8000/v1 for --provider openai; it"
    " accepts any key, e.g. QIANFAN_API_KEY=bce-v3/x or DASHSCOPE_API_KEY=x)"
)


def _usage_error(message: str) -> int:
    print(f"llmstreams chat: error: {message}", file=sys.stderr)
    return 2


def _make_client(
    args: argparse.Namespace, pool: llmstreams.Pool, server: MockServer | None
) -> Client:
    """A client with credentials from the environment, or any credentials for the mock."""
    if server is None:
        return make_client(args.provider, pool, base_url=args.base_url, protocol=args.protocol)
    if args.provider == "qianfan":
        return llmstreams.QianfanClient(api_key=_MOCK_KEY, base_url=server.url, pool=pool)
    if args.provider == "dashscope":
        return llmstreams.DashScopeClient(
            api_key=_MOCK_KEY, base_url=server.url, protocol=args.protocol, pool=pool
        )
    return llmstreams.OpenAICompatibleClient(api_key=_MOCK_KEY, base_url=server.url + "/v1", pool=pool)


Starter = Callable[[Messages], SyncStream]


def _starter(chat: SyncClient[Any], args: argparse.Namespace) -> Starter:
    """How one turn is sent: the client's `stream_chat` with the command's options."""
    client = chat.client
    v1 = isinstance(client, llmstreams.QianfanClient) and client.api_version == "v1"
    model = args.model
    if model is None and args.endpoint is None:
        model = DEFAULT_MODELS[f"qianfan {client.api_version}" if args.provider == "qianfan" else args.provider]
    given = {
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
        "stop": args.stop, "seed": args.seed, "endpoint": args.endpoint,
    }
    params: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    system: Messages = []
    if v1:
        # Qianfan v1 takes the system prompt and the length limit as fields of their own.
        extra = {"system": args.system, "max_output_tokens": args.max_tokens}
        extra_params = {name: value for name, value in extra.items() if value is not None}
        if extra_params:
            params["extra_params"] = extra_params
    else:
        if args.system:
            system = [{"role": "system", "content": args.system}]
        if args.max_tokens is not None:
            params["max_tokens"] = args.max_tokens
    if isinstance(client, llmstreams.DashScopeClient) and client.protocol == "native":
        # Only the new text in each event, and the chat message format.
        params.update(result_format="message", incremental_output=True)

    def start(messages: Messages) -> SyncStream:
        return chat.stream_chat(system + messages, model=model, **params)

    return start


def _one_answer(start: Starter, messages: Messages) -> int:
    try:
        _stream_answer(start, messages)
    except llmstreams.InvalidParameterError as error:
        return _usage_error(str(error))
    except llmstreams.LLMStreamsError as error:
        print(f"\nllmstreams chat: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def _interactive(start: Starter) -> int:
    history: Messages = []
    print("Chat: Ctrl-D or Ctrl-C ends it, Ctrl-C during an answer stops the answer.", file=sys.stderr)
    while True:
        try:
            question = input(_PROMPT)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not question.strip():
            continue
        turn = [*history, {"role": "user", "content": question}]
        try:
            answer = _stream_answer(start, turn)
        except llmstreams.LLMStreamsError as error:
            print(f"\nllmstreams chat: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            print("\n(answer stopped; not kept in the history)", file=sys.stderr)
            continue
        history = [*turn, {"role": "assistant", "content": answer.text}]


def _stream_answer(start: Starter, messages: Messages) -> llmstreams.Completion:
    """Print one answer as it arrives, then its summary line; the whole `Completion`."""
    reasoning_out = _Styled(sys.stderr)
    started = time.perf_counter()
    first_chunk: float | None = None
    in_reasoning = False
    with start(messages) as stream:
        for chunk in stream:
            if first_chunk is None:
                first_chunk = time.perf_counter() - started
            if chunk.reasoning:
                in_reasoning = True
                reasoning_out.write(chunk.reasoning, dim=True)
            if chunk.text:
                if in_reasoning:
                    reasoning_out.write("\n")
                    in_reasoning = False
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        completion = stream.completion
    elapsed = time.perf_counter() - started
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(summary_line(completion, first_chunk, elapsed), file=sys.stderr, flush=True)
    return completion


def summary_line(completion: llmstreams.Completion, first_chunk: float | None, elapsed: float) -> str:
    usage = completion.usage
    tokens = (
        f"{usage.completion_tokens} tokens (prompt {usage.prompt_tokens})" if usage else "tokens not reported"
    )
    first = f"{first_chunk * 1000:.0f} ms" if first_chunk is not None else "-"
    parts = [
        f"first chunk {first}",
        f"{completion.chunk_count} chunks",
        tokens,
        f"{elapsed:.2f} s",
        f"request id {completion.request_id or '-'}",
    ]
    return "[" + ", ".join(parts) + "]"


class _Styled:
    """Writes to `stream`, dimmed when it is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()

    def write(self, text: str, *, dim: bool = False) -> None:
        self._stream.write(f"{_DIM}{text}{_RESET}" if dim and self._tty else text)
        self._stream.flush()
