"""Benchmark: kmeans-dist against Spark MLlib, pyspark.ml and scikit-learn; writes BENCHMARKS.md.

    python bench/run.py                    # full run (~20-30 min on 2 cores), what `make bench` does
    python bench/run.py --quick            # every n / 20, 5 iterations: a development check
    python bench/run.py --only 2Mx16-k16   # one workload (or --only scaling for the n series)
    python bench/run.py --only-connect --json bench/results.json
                                           # only the Spark Connect rows, merged into saved results
    python bench/run.py --only-small --json bench/results.json
                                           # only the small-fit table, merged into saved results
    python bench/run.py --only-pruning --json bench/results.json
                                           # only the pruned-Lloyd section, merged likewise

Each workload runs in its own Python process (this script with --workload), in a fresh local[2]
Spark session, so its timings share one session and one cached data set and its driver memory
peaks are its own; this process gathers their JSON results and writes the report and the plot.
Then the Spark Connect section (bench/connect.py): for each main workload, a classic process
(ours on the resident transport and the two DataFrame transports, arrow-files and arrow) and a
Spark Connect process (ours on both DataFrame transports and pyspark.ml, on a local Connect
server), same rows, same C0. Last, the small fits (bench/small.py): whole fits of small data,
the first of a fresh session and warm, ours against pyspark.ml, classic and Connect. Then the
pruned-Lloyd section (bench/pruned.py): whole Lloyd phases of algorithm="lloyd" against "auto"
per workload, beside scikit-learn (lloyd, elkan), MLlib per iteration and the read floor.
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
import pruned  # noqa: E402
import report  # noqa: E402
import small  # noqa: E402
import workloads  # noqa: E402

FULL_ITERS, QUICK_ITERS = 10, 5
#: what a child process measures: a whole workload, or one side of its Spark Connect rows
CONNECT_SIDES = ("classic", "connect")
MODES = ("main", *CONNECT_SIDES)


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
    ap.add_argument("--only-connect", action="store_true",
                    help="only the Spark Connect section (main workloads): merged into the "
                         "--json file (other results kept), then the report is rewritten")
    ap.add_argument("--only-small", action="store_true",
                    help="only the small-fit section (bench/small.py): merged into the --json "
                         "file (other results kept), then the report is rewritten")
    ap.add_argument("--only-pruning", action="store_true",
                    help="only the pruned-Lloyd section (bench/pruned.py; --quick divides its n "
                         f"by {workloads.QUICK_DIVISOR}): merged into the --json file (other "
                         "results kept), then the report is rewritten")
    ap.add_argument("--workload", help=argparse.SUPPRESS)  # internal: run one workload, write JSON
    ap.add_argument("--mode", choices=MODES, default="main", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if (args.only_connect or args.only_small or args.only_pruning) and not args.json:
        ap.error("--only-connect, --only-small and --only-pruning need --json: the results file "
                 "to merge into")
    if args.iters is None:
        args.iters = QUICK_ITERS if args.quick else FULL_ITERS
    if args.iters < 2:
        ap.error("--iters must be >= 2 (the first iteration is not timed)")
    return args


def divisor(args: argparse.Namespace) -> int:
    return workloads.QUICK_DIVISOR if args.quick else 1


def child(args: argparse.Namespace) -> None:
    """Run one workload (or one side of its Spark Connect rows) here; write its JSON result."""
    w = workloads.find(args.workload).scaled(divisor(args))
    if args.mode == "main":
        import measure

        result = measure.run_workload(w, args.iters)
    else:
        import connect

        result = connect.SIDES[args.mode](w, args.iters)
    with open(args.result, "w", encoding="utf-8") as fh:
        json.dump(result, fh)


def spawn(w: workloads.Workload, args: argparse.Namespace, tmp: str, mode: str = "main") -> dict:
    """One workload in a child process; its JSON result, or an error entry if it failed."""
    out = os.path.join(tmp, f"{w.key}-{mode}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--workload", w.key, "--mode", mode,
           "--result", out, "--iters", str(args.iters)] + (["--quick"] if args.quick else [])
    t0 = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    label = w.key if mode == "main" else f"{w.key} {mode}"
    print(f"[{label}] finished in {time.perf_counter() - t0:.0f}s (exit code {code})", flush=True)
    if code != 0 or not os.path.exists(out):
        return {**identity(w, args), "error": f"exit code {code}"}
    with open(out, encoding="utf-8") as fh:
        return json.load(fh)


def identity(w: workloads.Workload, args: argparse.Namespace) -> dict:
    """A result's key and shape (n as run)."""
    return {"key": w.key, "n": w.scaled(divisor(args)).n, "d": w.d, "k": w.k, "full": w.full}


def run_meta(args: argparse.Namespace, started: float) -> dict:
    return {"date": datetime.datetime.now().isoformat(timespec="minutes"),
            "command": shlex.join(["python", "bench/run.py"] + sys.argv[1:]),
            "iters": args.iters, "quick": args.quick, "divisor": divisor(args),
            "minutes": (time.perf_counter() - started) / 60}


def connect_section(args: argparse.Namespace, tmp: str) -> dict:
    """The Spark Connect rows of the main workloads selected by --only: per workload, its classic
    side, then its Connect side, each in its own process."""
    started = time.perf_counter()
    load = os.getloadavg()
    rows = [{**identity(w, args), "iters": args.iters,
             **{side: spawn(w, args, tmp, side) for side in CONNECT_SIDES}}
            for w in workloads.plan(args.only) if w.full]
    meta = {**run_meta(args, started), "load_average": load}
    for row in rows:
        row["date"] = meta["date"]
    return {"meta": meta, "results": rows}


def merge_connect(old: dict | None, new: dict) -> dict:
    """``new``'s rows replace ``old``'s of the same workloads; ``old``'s others are kept (each
    row carries the date it was measured), in the workloads' order."""
    fresh = {r["key"] for r in new["results"]}
    kept = [r for r in (old or {}).get("results", []) if r["key"] not in fresh]
    order = workloads.names()
    rows = sorted(new["results"] + kept, key=lambda r: order.index(r["key"]))
    return {"meta": new["meta"], "results": rows}


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def save(saved: dict, args: argparse.Namespace) -> None:
    """The results file (when --json is given), then the report and plot."""
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(saved, fh, indent=1)
    report.write(saved["results"], saved["host"], saved["meta"], args.output, args.plot,
                 saved.get("connect"), saved.get("small"), saved.get("pruning"))


def rewrite(args: argparse.Namespace) -> None:
    """The report and plot again from saved results (after a change to report.py, say)."""
    saved = load(args.from_json)
    report.write(saved["results"], saved["host"], saved["meta"], args.output, args.plot,
                 saved.get("connect"), saved.get("small"), saved.get("pruning"))
    print(f"wrote {args.output} from {args.from_json}", flush=True)


def only_connect(args: argparse.Namespace) -> int:
    """The Spark Connect section alone, merged into the --json file (created if missing)."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kmeans-bench-") as tmp:
        section = connect_section(args, tmp)
    if os.path.exists(args.json):
        saved = load(args.json)
    else:
        saved = {"meta": run_meta(args, started), "host": probes.host_env(), "results": []}
    saved["connect"] = merge_connect(saved.get("connect"), section)
    save(saved, args)
    print(report.connect_table(section["results"]))
    print(f"merged the Spark Connect rows into {args.json}, wrote {args.output} in "
          f"{section['meta']['minutes']:.1f} min", flush=True)
    return 1 if report.connect_failures(section["results"]) else 0


def only_small(args: argparse.Namespace) -> int:
    """The small-fit section alone, put into the --json file's results, then the report."""
    saved = load(args.json)
    saved["small"] = small.section()
    save(saved, args)
    print(report.small_table(saved["small"]))
    return 1 if any("error" in r for r in saved["small"]["results"]) else 0


def pruning_section(args: argparse.Namespace) -> dict:
    """The pruned-Lloyd section (bench/pruned.py), stamped with its date and command."""
    started = datetime.datetime.now().isoformat(timespec="minutes")
    return {**pruned.section(args.quick), "date": started,
            "command": shlex.join(["python", "bench/run.py"] + sys.argv[1:])}


def only_pruning(args: argparse.Namespace) -> int:
    """The pruned-Lloyd section alone, put into the --json file's results (created if
    missing), then the report."""
    started = time.perf_counter()
    if os.path.exists(args.json):
        saved = load(args.json)
    else:
        saved = {"meta": run_meta(args, started), "host": probes.host_env(), "results": []}
    saved["pruning"] = pruning_section(args)
    save(saved, args)
    print(report.pruning_tables(saved["pruning"]))
    print(f"merged the pruned-Lloyd section into {args.json}, wrote {args.output} in "
          f"{saved['pruning']['minutes']:.1f} min", flush=True)
    return 1 if any("error" in r for r in saved["pruning"]["results"]) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workload:
        child(args)
        return 0
    if args.from_json:
        rewrite(args)
        return 0
    if args.only_connect:
        return only_connect(args)
    if args.only_small:
        return only_small(args)
    if args.only_pruning:
        return only_pruning(args)
    started = time.perf_counter()
    host = probes.host_env()
    with tempfile.TemporaryDirectory(prefix="kmeans-bench-") as tmp:
        results = [spawn(w, args, tmp) for w in workloads.plan(args.only)]
        section = connect_section(args, tmp)
    small_fits = small.section() if args.only is None else None
    pruning = pruning_section(args) if args.only is None else None
    meta = run_meta(args, started)
    save({"meta": meta, "host": host, "results": results, "connect": section,
          "small": small_fits, "pruning": pruning}, args)
    print(report.targets_table(results))
    print(report.connect_table(section["results"]))
    if small_fits:
        print(report.small_table(small_fits))
    if pruning:
        print(report.pruning_tables(pruning))
    print(f"wrote {args.output} in {meta['minutes']:.1f} min", flush=True)
    failed = [r for r in results if "error" in r] + report.connect_failures(section["results"])
    failed += [r for r in (pruning or {}).get("results", []) if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
