"""llmstreams against other ways to stream from Qianfan and DashScope, on the same workload.

Usage, from the checkout's root (the official SDKs belong in a separate virtualenv, never in
the project's own):
    python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install -e '.[bench,sdk]'
    /tmp/benchvenv/bin/python -m benchmarks.compare [--duration 12] [--repeats 3]
    /tmp/benchvenv/bin/python -m benchmarks.compare --profile llmstreams-qianfan  # py-spy

Every client streams the same answers from the same mock server (`llmstreams.mock`, in worker
processes of its own) through the same timing loop (`llmstreams.bench.load`). Each client
runs in a fresh subprocess, so `time.process_time()` counts that client's work alone.

Clients:
  llmstreams-qianfan      llmstreams.QianfanClient.stream_chat
  llmstreams-dashscope    llmstreams.DashScopeClient.stream_generate
  qianfan-sdk             the official `qianfan` SDK, async: ChatCompletion().ado(stream=True)
  dashscope-sdk           the official `dashscope` SDK, async: AioGeneration.call(stream=True)
  sse-client2-qianfan     aiohttp-sse-client2's EventSource, POST with the JSON body, closed
  sse-client2-dashscope   at the last event (it would reconnect and ask again otherwise)
  aiohttp-lines-qianfan   a bare aiohttp POST, `async for line in resp.content`, json.loads
  aiohttp-lines-dashscope of each `data:` line: the usual hand-written loop
  aiohttp-qianfan         the floor: a bare aiohttp POST reading whatever bytes arrived
  aiohttp-dashscope       (`iter_any`), split into lines, json.loads of each `data:` line

Scenarios (mock knobs; answers of 1,200 characters in 100 chunks of 12 unless said otherwise):
  saturated   chunks as fast as the mock writes them, concurrency 256: the client's ceiling
  short       the mock's default answers (240 characters in 10 chunks of 24), as fast as it
              writes them: the same ceiling with ten times the requests per chunk
  paced       25 chunks/s per stream, concurrency 256 (6,400 chunks/s offered, well within
              every client's reach): latency, and CPU when every read brings about one
              event, as with a real model

Then chunks/s of llmstreams-dashscope and its floor against the number of mock workers
(saturated, concurrency 256), to show where the client saturates its core.

In all of these the mock is the bottleneck or close to it, and each read carries about one
event. `--client-bound` runs the other side instead (`benchmarks.client_bound`): a server of
pre-built bytes, many events per read, every client in one process side by side, blocks
alternated; client CPU per chunk against the bare loop for all three dialects, p99/p99.9
latency at saturation with the connections opened, and RSS per open stream at 10,000 streams.

Writes into --out (benchmarks/results): compare_clients.json, compare_clients.png,
mock_workers_sweep.png and compare_clients.md (tables, ratios, machine and versions); the
clients' stderr (the SDKs log there) goes to compare_clients.log in the temporary directory.

The clients are in `adapters`, the runs in `runner`, the tables and plots in `report`.
"""
