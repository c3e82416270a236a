"""`llmstreams chat`: stream one answer to the terminal, or chat turn by turn.

The answer goes to stdout as it arrives; a reasoning model's thinking goes to stderr (dimmed
on a terminal), so that stdout holds the answer alone. After each answer one summary line goes
to stderr: time to the first chunk, chunks, tokens, the request id.

The prompt is the PROMPT argument, else standard input. When standard input is a terminal
and no PROMPT is given, the chat is interactive: each answer is added to the history sent
with the next question; Ctrl-D or Ctrl-C at the prompt ends it, Ctrl-C during an answer
stops that answer.

Credentials come from each provider's environment variables (listed below); --mock answers
from a mock server of the provider started for the call instead.

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
from llmstreams.calls import Call
from llmstreams.commands.target import (
    CommandError,
    add_target_arguments,
    check_target_arguments,
    describe_parameter,
    make_client,
    model_of,
    provider_list,
)
from llmstreams.mock import MockServer
from llmstreams.sync import SyncClient, SyncStream
from llmstreams.sync import run as run_on_loop

_DIM, _RESET = "\x1b[2m", "\x1b[0m"
_PROMPT = "you> "

Messages = list[dict[str, str]]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "chat",
        help="stream an answer to the terminal (interactive when no prompt is given)",
        description=__doc__ + "\nProviders:\n" + provider_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", nargs="?", metavar="PROMPT", help="the question (default: stdin)")
    add_target_arguments(parser)
    parser.add_argument("--system", help="a system prompt")
    sampling = parser.add_argument_group("sampling (left to the service when not given)")
    sampling.add_argument("--temperature", type=float)
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--max-tokens", type=int, help="at most this many tokens in the answer")
    sampling.add_argument("--stop", action="append", help="a stop string (repeat for more)")
    sampling.add_argument("--seed", type=int)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    problem = check_target_arguments(args)
    if problem is not None:
        return _usage_error(problem)
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
            client = make_client(args, pool, None if server is None else server.url)
        except CommandError as error:
            print(error.lines("chat"), file=sys.stderr)
            return 2
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


def _usage_error(message: str) -> int:
    print(f"llmstreams chat: error: {message}", file=sys.stderr)
    return 2


Starter = Callable[[Messages], SyncStream]


def _starter(chat: SyncClient[Any], args: argparse.Namespace) -> Starter:
    """How one turn is sent: the client's `stream_call` with the command's options."""
    model = model_of(args)
    given = {
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
        "stop": args.stop, "seed": args.seed,
    }
    params: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    system: Messages = [{"role": "system", "content": args.system}] if args.system else []

    def start(messages: Messages) -> SyncStream:
        return chat.stream_call(Call(
            messages=system + messages, model=model, endpoint=args.endpoint,
            max_tokens=args.max_tokens, params=params,
        ))

    return start


def _one_answer(start: Starter, messages: Messages) -> int:
    try:
        _stream_answer(start, messages)
    except llmstreams.InvalidParameterError as error:
        return _usage_error(describe_parameter(error))
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
    first = duration_text(first_chunk) if first_chunk is not None else "-"
    parts = [
        f"first chunk {first}",
        f"{completion.chunk_count} chunks",
        tokens,
        f"total {duration_text(elapsed)}",
        f"request id {completion.request_id or '-'}",
    ]
    return "[" + ", ".join(parts) + "]"


def duration_text(seconds: float) -> str:
    """A duration as people read it: whole milliseconds below a second, else seconds."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


class _Styled:
    """Writes to `stream`, dimmed when it is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()

    def write(self, text: str, *, dim: bool = False) -> None:
        self._stream.write(f"{_DIM}{text}{_RESET}" if dim and self._tty else text)
        self._stream.flush()
