"""`python -m benchmarks.compare`: the comparison's command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import benchmarks.compare
from benchmarks.compare.adapters import CLIENTS
from benchmarks.compare.report import markdown, plot
from benchmarks.compare.runner import SCENARIOS, child_main, profile_clients, run_comparison

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=benchmarks.compare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=lambda text: text.split(","), default=list(CLIENTS),
                        help="comma list of clients (default: all)")
    parser.add_argument("--scenarios", type=lambda text: text.split(","), default=list(SCENARIOS),
                        help="comma list of scenarios (default: saturated,paced)")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per run (12)")
    parser.add_argument("--warmup", type=int, default=256, help="warm-up requests per run (256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per client, median kept (3)")
    parser.add_argument("--mock-workers", type=int, default=1, help="mock processes (1)")
    parser.add_argument("--worker-sweep", type=lambda text: [int(part) for part in text.split(",") if part],
                        default=[1, 2, 3], help="mock worker counts to sweep; empty to skip (1,2,3)")
    parser.add_argument("--quiet-threshold", type=float, default=0.2,
                        help="before each run, wait until the CPUs are at most this busy (0.2)")
    parser.add_argument("--quiet-patience", type=float, default=300.0,
                        help="longest wait for a quiet machine, seconds (300)")
    parser.add_argument("--max-foreign", type=float, default=0.1,
                        help="run again when other processes used more than this share of the "
                        "CPUs during a run (0.1)")
    parser.add_argument("--attempts", type=int, default=4,
                        help="most tries of a run disturbed by other processes (4)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--profile", type=lambda text: text.split(","),
                        help="instead of comparing, profile these clients with py-spy and write "
                        "profile_<client>_<scenario>.txt into --out")
    parser.add_argument("--client-bound", action="store_true",
                        help="run the client-bound scenario (benchmarks.client_bound) instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.client_bound:
        from benchmarks import client_bound

        return client_bound.main(["--out", str(args.out), *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.child:
        return child_main(args)
    chosen = set(args.clients) | set(args.profile or ())
    unknown = sorted(chosen - set(CLIENTS)) + sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown clients or scenarios: {', '.join(unknown)}")
    if args.profile:
        return profile_clients(args)
    report = run_comparison(args)
    (args.out / "compare_clients.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    text = markdown(report)
    (args.out / "compare_clients.md").write_text(text + "\n")
    print()
    print(text)
    for path in plot(report, args.out):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
