"""Benchmark: kmeans-dist against Spark MLlib, pyspark.ml and scikit-learn; writes BENCHMARKS.md.

    python bench/run.py                    # full run (~20-30 min on 2 cores), what `make bench` does
    python bench/run.py --quick            # every n / 20, 5 iterations: a development check
    python bench/run.py --only 2Mx16-k16   # one workload (or --only scaling for the n series)

Each workload runs in its own Python process (this script with --workload), in a fresh local[2]
Spark session, so its timings share one session and one cached data set and its driver memory
peaks are its own; this process gathers their JSON results and writes the report and the plot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [BENCH, ROOT]

import probes  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402

FULL_ITERS, QUICK_ITERS = 10, 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"divide every n by {workloads.QUICK_DIVISOR}; {QUICK_ITERS} iterations "
                         "unless --iters is given")
    ap.add_argument("--only", choices=workloads.names(), metavar="NAME",
                    help="run one workload: " + ", ".join(workloads.names()))
    ap.add_argument("--iters", type=int, help=f"Lloyd iterations per timing (default {FULL_ITERS})")
    ap.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"),
                    help="markdown report to write (default BENCHMARKS.md)")
    ap.add_argument("--plot", default=os.path.join(BENCH, "scaling.png"),
                    help="scaling plot to write (default bench/scaling.png)")
    ap.add_argument("--json", help="also save the raw results here")
    ap.add_argument("--from-json", metavar="PATH",
                    help="only rewrite the report and plot from results saved with --json")
    ap.add_argument("--workload", help=argparse.SUPPRESS)  # internal: run one workload, write JSON
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iters is None:
        args.iters = QUICK_ITERS if args.quick else FULL_ITERS
    if args.iters < 2:
        ap.error("--iters must be >= 2 (the first iteration is not timed)")
    return args


def divisor(args: argparse.Namespace) -> int:
    return workloads.QUICK_DIVISOR if args.quick else 1


def child(args: argparse.Namespace) -> None:
    """Run one workload in this process and write its result as JSON."""
    import measure

    w = workloads.find(args.workload).scaled(divisor(args))
    result = measure.run_workload(w, args.iters)
    with open(args.result, "w", encoding="utf-8") as fh:
        json.dump(result, fh)


def run_workload(w: workloads.Workload, args: argparse.Namespace, tmp: str) -> dict:
    """One workload in a child process; its JSON result, or an error entry if it failed."""
    out = os.path.join(tmp, f"{w.key}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--workload", w.key, "--result", out,
           "--iters", str(args.iters)] + (["--quick"] if args.quick else [])
    t0 = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    print(f"[{w.key}] finished in {time.perf_counter() - t0:.0f}s (exit code {code})", flush=True)
    if code != 0 or not os.path.exists(out):
        scaled = w.scaled(divisor(args))
        return {"key": w.key, "n": scaled.n, "d": w.d, "k": w.k, "full": w.full,
                "error": f"exit code {code}"}
    with open(out, encoding="utf-8") as fh:
        return json.load(fh)


def rewrite(args: argparse.Namespace) -> None:
    """The report and plot again from saved results (after a change to report.py, say)."""
    with open(args.from_json, encoding="utf-8") as fh:
        saved = json.load(fh)
    report.write(saved["results"], saved["host"], saved["meta"], args.output, args.plot)
    print(f"wrote {args.output} from {args.from_json}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workload:
        child(args)
        return 0
    if args.from_json:
        rewrite(args)
        return 0
    started = time.perf_counter()
    host = probes.host_env()
    with tempfile.TemporaryDirectory(prefix="kmeans-bench-") as tmp:
        results = [run_workload(w, args, tmp) for w in workloads.plan(args.only)]
    meta = {"date": datetime.datetime.now().isoformat(timespec="minutes"),
            "command": shlex.join(["python", "bench/run.py"] + sys.argv[1:]),
            "iters": args.iters, "quick": args.quick, "divisor": divisor(args),
            "minutes": (time.perf_counter() - started) / 60}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "host": host, "results": results}, fh, indent=1)
    report.write(results, host, meta, args.output, args.plot)
    print(report.targets_table(results))
    print(f"wrote {args.output} in {meta['minutes']:.1f} min", flush=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
