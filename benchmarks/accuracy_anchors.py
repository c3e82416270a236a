"""Run the serving benchmarks people trust (GuideLLM, AIPerf) against the ruler, from a venv of
their own, and read back their own reported numbers (never their code). Used by
`python -m benchmarks.bench_accuracy --anchors-venv`.

Both run offline here: GuideLLM reads its prompts from a JSON file (no tokenizer needed);
AIPerf insists on a tokenizer, so it gets a two-word whitespace tokenizer built locally
(token counts come from the server's usage, `--use-server-token-count`).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ANCHORS = ("guidellm", "aiperf")
# Above this many streams an anchor is not tried (its own processes would swamp the machine).
ANCHOR_MAX_STREAMS = 1000
_TOKENIZER = """
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
import sys
core = Tokenizer(models.WordLevel({"[UNK]": 0, "tick": 1, "tock": 2}, unk_token="[UNK]"))
core.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(sys.argv[1])
"""


def run_anchor(name: str, venv: Path, url: str, streams: int, seconds: float) -> dict[str, Any]:
    """`name`'s reported TTFT and ITL (milliseconds) at `streams` concurrent streams."""
    found: dict[str, Any] = {"anchor": name}
    if streams > ANCHOR_MAX_STREAMS:
        return found | {"status": f"not run above {ANCHOR_MAX_STREAMS} streams"}
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        try:
            if name == "guidellm":
                found |= _guidellm(venv, url, streams, seconds, directory)
            else:
                found |= _aiperf(venv, url, streams, seconds, directory)
        except (subprocess.SubprocessError, OSError, KeyError, ValueError) as error:
            found["status"] = f"failed: {type(error).__name__}: {str(error)[-300:]}"
    return found


def _run(command: list[str], seconds: float, cwd: Path) -> None:
    subprocess.run(
        command, cwd=cwd, check=True, timeout=seconds * 10 + 240,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _guidellm(venv: Path, url: str, streams: int, seconds: float, work: Path) -> dict[str, Any]:
    data, output = work / "prompts.json", work / "out.json"
    data.write_text(json.dumps([{"prompt": "tick tock"}] * 20_000), encoding="utf-8")
    _run([
        str(venv / "bin" / "guidellm"), "run",
        "--backend", f"kind=openai_http,target={url},model=ruler",
        "--profile", f"kind=concurrent,streams={streams}",
        "--constraint", f"kind=max_duration,seconds={seconds:g}",
        "--data", f"kind=json_file,path={data}",
        "--output", f"kind=json,path={output}",
        "--disable-console",
    ], seconds, work)
    metrics = json.loads(output.read_text(encoding="utf-8"))["benchmarks"][0]["metrics"]

    def spread(key: str) -> dict[str, float]:
        values = metrics[key]["successful"]
        return {"p50": values["percentiles"]["p50"], "p99": values["percentiles"]["p99"]}

    return {
        "status": "ok",
        "completed": metrics["request_totals"]["successful"],
        "ttft_ms": spread("time_to_first_token_ms"),
        # GuideLLM's ITL is one value per request: (last token time - first) / (tokens - 1).
        "itl_ms": spread("inter_token_latency_ms"),
        "itl_kind": "per request (mean over the request's tokens)",
    }


def _aiperf(venv: Path, url: str, streams: int, seconds: float, work: Path) -> dict[str, Any]:
    tokenizer, data, artifacts = work / "tokenizer", work / "prompts.jsonl", work / "artifacts"
    subprocess.run([str(venv / "bin" / "python"), "-c", _TOKENIZER, str(tokenizer)], check=True,
                   timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    data.write_text('{"text": "tick tock"}\n' * 20_000, encoding="utf-8")
    _run([
        str(venv / "bin" / "aiperf"), "profile", "--model", "ruler", "--tokenizer", str(tokenizer),
        "--url", url, "--endpoint-type", "chat", "--streaming", "--concurrency", str(streams),
        "--benchmark-duration", f"{seconds:g}", "--input-file", str(data),
        "--custom-dataset-type", "single_turn", "--artifact-dir", str(artifacts), "--ui", "none",
        "--use-server-token-count",
    ], seconds, work)
    report = json.loads((artifacts / "profile_export_aiperf.json").read_text(encoding="utf-8"))

    def spread(key: str) -> dict[str, float]:
        return {"p50": report[key]["p50"], "p99": report[key]["p99"]}

    return {
        "status": "ok",
        "completed": report["request_count"]["avg"],
        "ttft_ms": spread("time_to_first_token"),
        # AIPerf's inter_chunk_latency is per chunk, like ours; its inter_token_latency per request.
        "itl_ms": spread("inter_chunk_latency"),
        "itl_kind": "per chunk (inter_chunk_latency)",
        "per_request_itl_ms": spread("inter_token_latency"),
    }
