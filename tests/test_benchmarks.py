"""The benchmarks' shared baselines do what they say, and every benchmark runs as a module."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp
import pytest
from aiohttp import web

from benchmarks.baselines import (
    BaselineError,
    PrebuiltHTTPProtocol,
    count_floor_events,
    floor_stream,
    line_stream,
    start_prebuilt_server,
)
from tests.support import ROOT, serving

ITEMS = [{"n": number, "text": "流式" * number} for number in range(40)]
# Comments and a [DONE] line that no baseline may count; written in pieces that cut lines.
BODY = b"".join(
    b": keep-alive\n\n" + b"data: " + json.dumps(item, ensure_ascii=False).encode() + b"\n\n"
    for item in ITEMS
) + b"data: [DONE]\n\n"
BENCHMARKS = (
    "bench_accuracy", "bench_decoder", "bench_fanout", "bench_mock", "bench_ray", "client_bound",
    "compare",
)


async def stream_in_pieces(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for start in range(0, len(BODY), 37):
        await response.write(BODY[start : start + 37])
    await response.write_eof()
    return response


async def refuse(request: web.Request) -> web.Response:
    return web.Response(status=503, text="busy")


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/stream", stream_in_pieces)
    application.router.add_post("/busy", refuse)
    return application


async def test_the_baselines_read_every_data_line_and_nothing_else() -> None:
    firsts = []
    async with serving(app()) as url, aiohttp.ClientSession() as session:
        floor = [item async for item in floor_stream(session, url + "/stream", data=b"{}")]
        lines = [item async for item in line_stream(session, url + "/stream", data=b"{}")]
        events, reads = await count_floor_events(
            session, url + "/stream", on_first=lambda: firsts.append(True), data=b"{}"
        )
    assert floor == lines == ITEMS
    assert events == len(ITEMS) and reads >= 1
    assert firsts == [True]


@pytest.mark.parametrize("baseline", ["floor", "lines", "count"])
async def test_the_baselines_refuse_an_error_status(baseline: str) -> None:
    async with serving(app()) as url, aiohttp.ClientSession() as session:
        with pytest.raises(BaselineError, match="HTTP 503"):
            if baseline == "count":
                await count_floor_events(session, url + "/busy")
            else:
                stream = floor_stream if baseline == "floor" else line_stream
                async for _ in stream(session, url + "/busy"):
                    pass


class Echo(PrebuiltHTTPProtocol):
    """Answers each request with its request line, so that the test sees which was answered."""

    def answer(self, head: bytes) -> None:
        line = head.split(b"\r\n", 1)[0]
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line))


async def test_the_prebuilt_server_answers_each_request_of_a_keepalive_connection() -> None:
    connections: list[Echo] = []

    def connection() -> Echo:
        connections.append(Echo())
        return connections[-1]

    server, port = await start_prebuilt_server(connection, backlog=8)
    answers = []
    try:
        async with aiohttp.ClientSession() as session:
            # A body longer than one read, an empty one, a short one.
            for path, body in (("/first", b"x" * 70_000), ("/second", b""), ("/third", b"{}")):
                async with session.post(f"http://127.0.0.1:{port}{path}", data=body) as response:
                    answers.append(await response.text())
    finally:
        server.close()
        await server.wait_closed()
    assert answers == ["POST /first HTTP/1.1", "POST /second HTTP/1.1", "POST /third HTTP/1.1"]
    assert len(connections) == 1


@pytest.mark.parametrize("name", BENCHMARKS)
async def test_every_benchmark_runs_as_a_module_from_the_checkout(name: str) -> None:
    source = ROOT / "benchmarks" / (f"{name}.py" if name != "compare" else "compare")
    texts = [source.read_text()] if source.is_file() else [p.read_text() for p in source.glob("*.py")]
    assert not any("sys.path" in text for text in texts)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"benchmarks.{name}", "--help", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().startswith(f"usage: python -m benchmarks.{name} ")


def test_the_cpu_guard_fails_only_above_its_ratio_on_long_streams(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks.client_bound import _check_guard

    def report(long_ratio: float) -> dict[str, object]:
        def figures(ratio: float) -> dict[str, object]:
            return {"us_per_chunk": 1.0, "vs_bare_json": {"median": ratio, "low": ratio, "high": ratio}}

        return {"cpu": {
            "openai-long": {"llmstreams-openai": figures(long_ratio), "bare-json-openai": figures(1.0)},
            # Short answers cost more than the bare loop by design: not guarded.
            "openai-short": {"llmstreams-openai": figures(1.4), "bare-json-openai": figures(1.0)},
        }}

    assert _check_guard(report(0.9), 0.9) == 0
    assert "guard held" in capsys.readouterr().out
    assert _check_guard(report(0.91), 0.9) == 1
    assert "openai-long: 0.91x" in capsys.readouterr().out
