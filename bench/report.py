"""BENCHMARKS.md and bench/scaling.png from the workloads' JSON results. No Spark here."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from workloads import in_scaling_series, rows_label, Workload

MiB = 1 << 20

#: targets from the project's issue
MLLIB_SPEEDUP_TARGET = 5.0
MLLIB_TARGET_KEYS = ("2Mx16-k16", "1Mx32-k128")
FLOOR_TARGET = 1.5
FIT_SPEEDUP_TARGET = 5.0
INERTIA_TOLERANCE = 0.01
#: "the driver's memory does not grow with n": growth across the series below this share of the
#: data size at the largest n
DRIVER_GROWTH_LIMIT = 0.05


# --------------------------------------------------------------------------- small helpers
def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt(value: float | None, spec: str = ".3g", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def times(value: float | None) -> str:
    return fmt(value, ".3g", "×")


def mib(value: float | None) -> str:
    """Bytes as MiB (whole from 100 MiB up, one decimal below), or KiB under 1 MiB."""
    if value is None:
        return "n/a"
    if abs(value) < MiB:
        return f"{value / 1024:.1f} KiB"
    return fmt(value / MiB, ".0f" if abs(value) >= 100 * MiB else ".1f", " MiB")


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "not met")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def shape(r: dict) -> str:
    return Workload(r["key"], r["n"], r["d"], r["k"], r["full"]).shape


def ok_results(results: Sequence[dict]) -> list[dict]:
    return [r for r in results if "error" not in r]


def get(r: dict, *path: str) -> Any:
    """r[path[0]][path[1]]..., or None where any step is missing."""
    for key in path:
        if not isinstance(r, dict) or r.get(key) is None:
            return None
        r = r[key]
    return r


# --------------------------------------------------------------------------- derived figures
#: where each system's seconds per iteration (the floor: per pass) sit in a result; the
#: ``classic_*`` and ``connect_*`` ones in a row of the Spark Connect section
SECONDS = {"ours": ("ours", "s_iter"), "mllib": ("mllib", "s_iter"),
           "sklearn": ("sklearn", "s_iter"), "floor": ("floor", "s_pass"),
           "classic_resident": ("classic", "resident", "s_iter"),
           "classic_files": ("classic", "arrow-files", "s_iter"),
           "classic_arrow": ("classic", "arrow", "s_iter"),
           "connect_ours": ("connect", "ours", "s_iter"),
           "connect_arrow": ("connect", "arrow", "s_iter"), "connect_ml": ("connect", "ml", "s_iter")}


def sec(r: dict, system: str) -> float | None:
    """A system's seconds per iteration; None where missing or not positive (a differenced
    figure goes negative when noise on the machine exceeds the iterations' own cost)."""
    value = get(r, *SECONDS[system])
    return value if value is not None and value > 0 else None


def scaling_points(results: Sequence[dict]) -> list[dict]:
    """One result per n of the d=16, k=16 series, smallest n first."""
    by_n = {r["n"]: r for r in ok_results(results)
            if in_scaling_series(Workload(r["key"], r["n"], r["d"], r["k"], r["full"]))}
    return [by_n[n] for n in sorted(by_n)]


def linear_fit(points: Sequence[dict], value: Callable[[dict], float | None]
               ) -> tuple[float, float] | None:
    """Least squares of a figure against n: (its change per million rows, intercept)."""
    pairs = [(p["n"] / 1e6, value(p)) for p in points if value(p) is not None]
    if len(pairs) < 2:
        return None
    x, y = np.array(pairs).T
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def targets(results: Sequence[dict]) -> list[list[str]]:
    """One row per (target, workload): what was measured and whether the target was met
    (n/a for a workload that failed)."""
    rows = []
    for r in results:
        if r["key"] in MLLIB_TARGET_KEYS:
            x = ratio(sec(r, "mllib"), sec(r, "ours"))
            rows.append([f"≥ {MLLIB_SPEEDUP_TARGET:g}× MLlib per iteration", shape(r), times(x),
                         met(None if x is None else x >= MLLIB_SPEEDUP_TARGET)])
    for r in results:
        x = ratio(sec(r, "ours"), sec(r, "floor"))
        rows.append([f"ours within {FLOOR_TARGET:g}× of the read floor", shape(r), times(x),
                     met(None if x is None else x <= FLOOR_TARGET)])
    for r in results:
        if r["full"]:
            rows += _fit_targets(r)
    for r in results:
        rows.append(["same centroids as MLlib from C0 (1e-6 relative)", shape(r),
                     fmt(get(r, "mllib", "max_rel_diff"), ".1e"), _agree(r)])
    rows += _driver_target(scaling_points(results))
    return rows


def targets_table(results: Sequence[dict]) -> str:
    return table(("target", "workload", "measured", "result"), targets(results))


def _fit_targets(r: dict) -> list[list[str]]:
    speed = ratio(get(r, "ml", "fit_seconds"), get(r, "ours_default", "fit_seconds"))
    excess = _inertia_excess(r)
    return [
        [f"whole default fit ≥ {FIT_SPEEDUP_TARGET:g}× faster than pyspark.ml", shape(r),
         times(speed), met(None if speed is None else speed >= FIT_SPEEDUP_TARGET)],
        [f"default-fit inertia no worse than pyspark.ml's + {INERTIA_TOLERANCE:.0%}", shape(r),
         fmt(None if excess is None else 100 * excess, "+.2f", " %"),
         met(None if excess is None else excess <= INERTIA_TOLERANCE)],
    ]


def _inertia_excess(r: dict) -> float | None:
    """ours / pyspark.ml - 1, both the cost of their last assignment step."""
    x = ratio(get(r, "ours_default", "last_assignment_cost"), get(r, "ml", "training_cost"))
    return None if x is None else x - 1


def _agree(r: dict) -> str:
    agree = get(r, "mllib", "agree")
    return "n/a" if agree is None else ("PASS" if agree else "FAIL")


def _driver_growth(points: Sequence[dict]) -> tuple[float, float] | None:
    """(peak RSS at the largest n - at the smallest, data bytes at the largest n)."""
    peaks = [(p["n"] * p["d"] * 8, get(p, "ours", "memory", "py_rss_peak")) for p in points]
    peaks = [(size, peak) for size, peak in peaks if peak is not None]
    if len(peaks) < 2:
        return None
    return peaks[-1][1] - peaks[0][1], peaks[-1][0]


def _driver_target(points: Sequence[dict]) -> list[list[str]]:
    growth = _driver_growth(points)
    if growth is None:
        return []
    delta, size = growth
    span = f"{rows_label(points[0]['n'])} → {rows_label(points[-1]['n'])} rows"
    return [[f"Python driver peak memory does not grow with n (growth < {DRIVER_GROWTH_LIMIT:.0%} "
             "of the data at the largest n)", f"d=16, k=16, {span}",
             f"{delta / MiB:+.0f} MiB vs {size / MiB:.0f} MiB of data",
             met(delta < DRIVER_GROWTH_LIMIT * size)]]


# --------------------------------------------------------------------------- sections
def _transport(r: dict) -> str:
    """Ours' transport as it ran: "resident (memory)", "resident (files)", a fallback's name."""
    name, storage = get(r, "ours", "transport"), get(r, "ours", "storage")
    return "n/a" if not name else f"{name} ({storage})" if storage else name


def per_iteration_rows(results: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in ok_results(results):
        ours, mllib, sk, floor = (sec(r, s) for s in ("ours", "mllib", "sklearn", "floor"))
        math = get(r, "floor", "math_s")
        rows.append([
            r["key"], shape(r), str(get(r, "ours", "n_iter")), _transport(r),
            fmt(ours), fmt(mllib), fmt(sk),
            fmt(floor), times(ratio(mllib, ours)), times(ratio(sk, ours)),
            times(ratio(ours, floor)), times(ratio(mllib, floor)), times(ratio(sk, floor)),
            fmt(math), times(ratio(ours, math)), _agree(r),
        ])
    return rows


PER_ITERATION_HEADER = (
    "workload", "n × d, k", "iterations", "ours' transport", "kmeans-dist s/iter", "MLlib s/iter",
    "scikit-learn s/iter", "read floor s/pass (ours' transport)", "MLlib / ours", "sklearn / ours", "ours / floor",
    "MLlib / floor", "sklearn / floor", "arithmetic floor s (slowest task's kernel)",
    "ours / arithmetic floor", "centroids vs MLlib",
)


def cross_check_rows(results: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in ok_results(results):
        secs = get(r, "ours", "iter_seconds") or []
        files_floor = get(r, "floor_files", "s_pass")
        rows.append([
            r["key"], fmt(secs[0] if secs else None), fmt(min(secs[1:], default=None)),
            fmt(max(secs[1:], default=None)), fmt(get(r, "mllib", "t1"), ".2f"),
            fmt(get(r, "mllib", "tn"), ".2f"), fmt(get(r, "mllib", "log_s_iter")),
            fmt(get(r, "sklearn", "diff_s_iter")),
            fmt(get(r, "sklearn", "max_rel_diff_to_ours"), ".1e"), fmt(files_floor),
            times(ratio(sec(r, "ours"), files_floor)),
        ])
    return rows


CROSS_CHECK_HEADER = (
    "workload", "ours 1st iteration s", "ours fastest later s", "ours slowest later s",
    "MLlib T(1) s", "MLlib T(N) s", "MLlib s/iter from its log (differenced)", "sklearn s/iter differenced",
    "sklearn centroids vs ours", "read floor s/pass (files transport)", "ours / files floor",
)


def default_fit_rows(results: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in ok_results(results):
        if not r["full"] or get(r, "ml") is None:
            continue
        ml, ours = r["ml"], r["ours_default"]
        excess = _inertia_excess(r)
        rows.append([
            r["key"], shape(r), f"{ml['n_iter']} / {ours['n_iter']}",
            fmt(ml["fit_seconds"], ".3g"), fmt(ml["init_seconds"], ".3g"),
            fmt(ml["iterations_seconds"], ".3g"), fmt(ours["fit_seconds"], ".3g"),
            fmt(ours["init_seconds"], ".3g"), fmt(ours["iterations_seconds"], ".3g"),
            times(ratio(ml["fit_seconds"], ours["fit_seconds"])),
            fmt(ml["training_cost"], ".6g"), fmt(ours["last_assignment_cost"], ".6g"),
            fmt(None if excess is None else 100 * excess, "+.2f", " %"),
            fmt(ours["inertia"], ".6g"),
        ])
    return rows


DEFAULT_FIT_HEADER = (
    "workload", "n × d, k", "Lloyd iterations (ml / ours)", "pyspark.ml fit s", "ml init s",
    "ml iterations s", "kmeans-dist fit s", "ours init s", "ours iterations s",
    "pyspark.ml / ours", "ml trainingCost", "ours last-assignment cost", "ours vs ml",
    "ours final inertia",
)


def cache_rows(results: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in ok_results(results):
        raw = r["n"] * r["d"] * 8
        blocks = get(r, "floor", "block_bytes")
        rows.append([
            r["key"], shape(r), mib(raw), _cache(get(r, "data", "cache")),
            f"{mib(blocks)} ({times(ratio(blocks, raw))})", _cache(get(r, "floor", "spark_cache")),
            _cache(get(r, "mllib", "cache")), mib(_extra_cache(get(r, "mllib", "memory"))),
            _cache(get(r, "ml", "cache")),
        ])
    return rows


CACHE_HEADER = (
    "workload", "n × d, k", "n·d·8", "input DataFrame cache (mem + disk)",
    "kmeans-dist blocks on the executors (× n·d·8)", "kmeans-dist Spark cache (its transport)",
    "MLlib vector RDD cache (mem + disk)", "MLlib extra cache during train",
    "pyspark.ml assembled cache (mem + disk)",
)


def driver_rows(results: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in ok_results(results):
        rows.append([
            r["key"], shape(r), mib(get(r, "ours", "memory", "py_rss_before")),
            mib(get(r, "ours", "memory", "py_rss_peak")),
            mib(get(r, "ours_default", "memory", "py_rss_peak")),
            mib(get(r, "mllib", "memory", "py_rss_peak")),
            mib(get(r, "sklearn", "memory", "py_rss_peak")),
            mib(get(r, "ours", "memory", "jvm_heap_before")),
            mib(get(r, "ours", "memory", "jvm_heap_peak")),
            mib(get(r, "mllib", "memory", "jvm_heap_peak")),
            mib(get(r, "ml", "memory", "jvm_heap_peak")),
        ])
    return rows


DRIVER_HEADER = (
    "workload", "n × d, k", "Python RSS before ours", "Python peak: ours from C0",
    "Python peak: ours default fit", "Python peak: MLlib", "Python peak: sklearn (data collected)",
    "JVM heap before ours", "JVM heap peak: ours from C0", "JVM heap peak: MLlib",
    "JVM heap peak: pyspark.ml",
)


def _cache(c: dict | None) -> str:
    return "n/a" if c is None else f"{mib(c['mem'])} + {mib(c['disk'])}"


def _extra_cache(m: dict | None) -> float | None:
    return None if m is None else m["cache_peak"] - m["cache_before"]


def scaling_rows(points: Sequence[dict]) -> list[list[str]]:
    rows = []
    for p in points:
        ours, mllib, floor = (sec(p, s) for s in ("ours", "mllib", "floor"))
        rows.append([
            rows_label(p["n"]), fmt(ours), fmt(mllib), fmt(floor), times(ratio(mllib, ours)),
            times(ratio(ours, floor)), mib(get(p, "ours", "memory", "py_rss_before")),
            mib(get(p, "ours", "memory", "py_rss_peak")),
            mib(get(p, "ours", "memory", "jvm_heap_peak")),
        ])
    return rows


SCALING_HEADER = (
    "n", "kmeans-dist s/iter", "MLlib s/iter", "read floor s/pass", "MLlib / ours", "ours / floor",
    "Python driver RSS before fit", "Python driver peak during fit", "JVM heap peak during fit",
)


#: (label, figure, unit) fitted against n in the scaling section
SLOPES = (
    ("kmeans-dist s/iter", lambda p: sec(p, "ours"), 1.0),
    ("MLlib s/iter", lambda p: sec(p, "mllib"), 1.0),
    ("read floor s/pass", lambda p: sec(p, "floor"), 1.0),
    ("Python driver peak RSS during ours' fit, MiB",
     lambda p: get(p, "ours", "memory", "py_rss_peak"), MiB),
)


def slope_lines(points: Sequence[dict]) -> list[str]:
    lines = []
    for label, value, unit in SLOPES:
        fit = linear_fit(points, value)
        if fit is not None:
            lines.append(f"- {label}: {fit[0] / unit:.4g} per million rows, intercept "
                         f"{fit[1] / unit:.4g}")
    return lines


def plot(points: Sequence[dict], path: str) -> None:
    """s/iter against n for ours, MLlib and the read floor, with ours' least-squares line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = np.array([p["n"] for p in points]) / 1e6
    for label, system, marker in (("kmeans-dist", "ours", "o"), ("Spark MLlib", "mllib", "s"),
                                  ("read-only floor", "floor", "^")):
        y = [sec(p, system) for p in points]
        ax.plot(n, np.array([np.nan if v is None else v for v in y]), marker=marker, label=label)
    fit = linear_fit(points, lambda p: sec(p, "ours"))
    if fit is not None:
        ax.plot(n, fit[1] + fit[0] * n, "--", color="grey",
                label=f"kmeans-dist fit: {fit[0]:.3f} s/M rows + {fit[1]:.3f} s")
    ax.set_xlabel("rows (millions), d=16, k=16")
    ax.set_ylabel("seconds per iteration")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- Spark Connect
def connect_failures(rows: Sequence[dict]) -> list[str]:
    """One "key side: error" line per failed side of the Spark Connect rows."""
    return [f"{r['key']} {side}: {get(r, side, 'error')}" for r in rows
            for side in ("classic", "connect") if get(r, side, "error") is not None]


def connect_rows(rows: Sequence[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        resident, files, arrow, ours, c_arrow, ml = (
            sec(r, s) for s in ("classic_resident", "classic_files", "classic_arrow",
                                "connect_ours", "connect_arrow", "connect_ml"))
        out.append([
            r["key"], shape(r), _connect_iterations(r), fmt(resident), fmt(files), fmt(arrow),
            f"{fmt(ours)} ({get(r, 'connect', 'ours', 'transport') or 'n/a'})", fmt(c_arrow),
            fmt(ml), times(ratio(ml, ours)), times(ratio(ml, c_arrow)),
            times(ratio(ours, resident)), times(ratio(ours, files)),
        ])
    return out


CONNECT_HEADER = (
    "workload", "n × d, k", "iterations (ours / pyspark.ml)", "ours classic, resident s/iter",
    "ours classic, arrow-files s/iter", "ours classic, arrow s/iter",
    "ours Spark Connect, default transport s/iter", "ours Spark Connect, arrow s/iter",
    "pyspark.ml on Spark Connect s/iter (differenced)", "pyspark.ml Connect / ours Connect",
    "pyspark.ml Connect / ours Connect arrow", "ours Connect / ours classic resident",
    "ours Connect / ours classic arrow-files",
)


def connect_table(rows: Sequence[dict]) -> str:
    return table(CONNECT_HEADER, connect_rows(rows))


def connect_check_rows(rows: Sequence[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        resident = get(r, "classic", "resident", "inertia")
        connect = get(r, "connect", "ours", "inertia")
        secs = get(r, "connect", "ours", "iter_seconds") or []
        out.append([
            r["key"], _same_start(r), fmt(resident, ".10g"),
            fmt(get(r, "classic", "arrow-files", "inertia"), ".10g"),
            fmt(get(r, "classic", "arrow", "inertia"), ".10g"), fmt(connect, ".10g"),
            fmt(get(r, "connect", "arrow", "inertia"), ".10g"),
            fmt(_rel(connect, resident), ".1e"),
            fmt(_max(get(r, "classic", t, "max_rel_diff_to_resident")
                     for t in ("arrow-files", "arrow")), ".1e"),
            fmt(secs[0] if secs else None), fmt(get(r, "connect", "ours", "fit_seconds")),
            fmt(get(r, "connect", "ml", "t1")), fmt(get(r, "connect", "ml", "tn")),
            fmt(get(r, "classic", "empty_job", "s_job")),
            fmt(get(r, "connect", "empty_job", "s_job")),
            fmt(get(r, "connect", "server_start_seconds")),
        ])
    return out


CONNECT_CHECK_HEADER = (
    "workload", "same rows and C0 in both processes", "ours inertia: classic resident",
    "classic arrow-files", "classic arrow", "Spark Connect (arrow-files)", "Spark Connect (arrow)",
    "Connect vs classic resident inertia (relative)",
    "classic arrow-files and arrow vs resident centroids (max rel diff)",
    "ours Connect 1st iteration s",
    "ours Connect whole fit s", "pyspark.ml Connect T(1) s", "pyspark.ml Connect T(N) s",
    "empty mapInArrow job, classic s", "empty mapInArrow job, Connect s",
    "Connect server start s",
)


def _connect_iterations(r: dict) -> str:
    ml = get(r, "connect", "ml", "n_iter")
    early = " (ml converged early)" if get(r, "connect", "ml", "converged_early") else ""
    return f"{fmt(get(r, 'connect', 'ours', 'n_iter'), 'd')} / {fmt(ml, 'd')}{early}"


def _same_start(r: dict) -> str:
    """Whether both processes cached as many rows and drew C0 with the same bytes."""
    sides = [get(r, side, "data") for side in ("classic", "connect")]
    if None in sides:
        return "n/a"
    same = all(sides[0].get(key) == sides[1].get(key) for key in ("rows", "c0_fingerprint"))
    return "yes" if same else "NO"


def _max(values) -> float | None:
    """The largest of the values given (None where none is)."""
    found = [v for v in values if v is not None]
    return max(found) if found else None


def _rel(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else abs(a - b) / abs(b)


def connect_section(connect: dict) -> str:
    """The Spark Connect section: when and how it was measured, its two tables."""
    meta, rows = connect["meta"], connect["results"]
    run = (f"Measured by `{meta['command']}` on {meta['date']}, {meta['iters']} Lloyd iterations "
           f"per timing ({meta['minutes']:.1f} min, load average at start "
           f"{', '.join(f'{x:.2f}' for x in meta['load_average'])}).")
    if meta["quick"]:
        run += f" **QUICK RUN: every n divided by {meta['divisor']}.**"
    older = [f"{r['key']} ({r['date']})" for r in rows if r.get("date") != meta["date"]]
    if older:
        run += " Rows kept from an earlier run: " + ", ".join(older) + "."
    failed = connect_failures(rows)
    if failed:
        run += " **Failed:** " + "; ".join(failed) + "."
    return "\n\n".join([run, connect_table(rows), "Cross-checks of the same runs:",
                         table(CONNECT_CHECK_HEADER, connect_check_rows(rows)), CONNECT_METHOD])


CONNECT_METHOD = """\
How these rows are measured:

- **Two processes per workload**, one after the other (a Spark Connect client and a classic
  session cannot share a Python process): a classic `local[2]` session as above, then a process
  that starts a local Spark Connect server as `SparkSession.builder.remote("local[2]")` does (a
  `local[2]` Spark with the Connect plugin and the same settings, on a free port rather than
  15002, which another server may hold) and uses only a client session of it. Both generate the
  same rows (same seeds, `default_parallelism(spark)` partitions: 2 in both), cache and count
  them, and draw the same C0; "same rows and C0" compares the row counts and a digest of C0.
- **ours s/iter**: `KMeans(k, init=C0, max_iter=N, tol=0, transport=...).fit(df)`, the median
  of `model.history[i]["seconds"]` after the first iteration, as in the main table: on classic
  Spark with `resident` (its default) and with the two DataFrame transports; on Spark Connect
  with those two: `arrow-files`, the default there (the blocks written once to executor-local
  files, a cached DataFrame of their handles, every iteration one `mapInArrow` over the handles
  that maps the files), and `arrow` (every iteration one `mapInArrow` over the cached DataFrame
  of binary blocks, which moves every block from the JVM to Python). Both collect one row of
  partials per partition on the client. The fits start from the same C0 on the same rows, so
  their inertias should agree to rounding.
- **pyspark.ml on Spark Connect s/iter**: pyspark.ml's `KMeans` has no parameter for initial
  centres (only `initMode`, "k-means||" or "random", and a seed), so it cannot start from C0
  and its centroids are not compared. Its cost per Lloyd iteration (a pass of the same n·k·d
  distance work from whichever start) is taken by differencing on the same Connect server and
  rows: `KMeans(k, seed=42, initMode="random", tol=0, maxIter=m)` on the cached
  `VectorAssembler` output, a 1-iteration warm-up fit, then T(1) and T(N);
  (T(N) − T(1)) / (numIter − 1), numIter from the N-iteration model's `summary.numIter` (N
  unless no centre moved, flagged "converged early"). Differencing removes each fit's fixed
  costs: the random init's pass, the Connect ML round trips, the model and summary kept on the
  server. A figure ≤ 0 (noise larger than N − 1 iterations) shows as n/a.
- **Fixed cost of a job**: the empty `mapInArrow` job (one task per partition over 2 rows,
  collected; median of 5 after a warm-up) on each session. Every iteration on the DataFrame
  transports pays about that on top of its work; on Spark Connect it includes the client's gRPC
  round trip, the server's analysis and planning of the plan sent, and the Arrow result stream.
  The server start is paid once per process and is in no per-iteration figure."""


# --------------------------------------------------------------------------- pruned Lloyd
#: targets of issue 20 (ratios from one run)
PRUNING_PHASE_TARGETS = {"2Mx16-k16": 2.5, "1Mx32-k128": 4.0}
PRUNING_MLLIB_TARGET = ("2Mx16-k16", 25.0)
PRUNING_FLOOR_TARGET = 2.0
#: "auto" never slower than "lloyd" by more than this, on these kinds of data
PRUNING_NOT_SLOWER = 0.05
PRUNING_NOT_SLOWER_KINDS = ("separated", "uniform")
FLOAT32_BYTES_TARGET = 0.55
FLOAT32_SPEED_TARGET = ("1Mx32-k128", 1.6)


def _pshape(r: dict) -> str:
    return f"{rows_label(r['n'])} × {r['d']}, k={r['k']}"


def _phase_ratio(r: dict) -> float | None:
    """lloyd's Lloyd-phase seconds / auto's (> 1: auto is faster)."""
    return ratio(get(r, "lloyd", "seconds"), get(r, "auto", "seconds"))


def _identical(r: dict) -> str:
    same = r.get("identical")
    return "n/a" if same is None else ("yes" if same else "NO")


def _late_floor(r: dict) -> float | None:
    return ratio(get(r, "auto", "s_iter_last_third"), get(r, "floor", "s_pass"))


def _pct(value: float | None) -> str:
    return fmt(None if value is None else 100 * value, ".3g", " %")


def pruning_phase_rows(results: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in ok_results(results):
        sk_l, sk_e = get(r, "sklearn", "lloyd"), get(r, "sklearn", "elkan")
        auto = get(r, "auto", "seconds")
        rows.append([
            r["key"], _pshape(r), r["data"], str(get(r, "auto", "n_iter")),
            f"{get(r, 'lloyd', 'n_iter')} / {get(r, 'auto', 'n_iter')}: {_identical(r)}",
            fmt(get(r, "lloyd", "seconds")), fmt(auto), times(_phase_ratio(r)),
            _pct(get(r, "auto", "computed_mean")), _pct(get(r, "auto", "computed_last_third")),
            f"{fmt(get(sk_l, 'seconds'))} ({get(sk_l, 'n_iter')})",
            f"{fmt(get(sk_e, 'seconds'))} ({get(sk_e, 'n_iter')})",
            times(ratio(get(sk_l, "seconds"), auto)), times(ratio(get(sk_e, "seconds"), auto)),
        ])
    return rows


PRUNING_PHASE_HEADER = (
    "workload", "n × d, k", "data", "iterations", "n_iter lloyd / auto: bit-identical centroids, "
    "same rows moved every pass", "lloyd: Lloyd phase s", "auto: Lloyd phase s", "lloyd / auto",
    "auto: distances computed (mean over passes)", "auto: computed, last third",
    "sklearn lloyd s (n_iter)", "sklearn elkan s (n_iter)", "sklearn lloyd / auto",
    "sklearn elkan / auto",
)


def pruning_iteration_rows(results: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in ok_results(results):
        auto, mllib = get(r, "auto", "s_iter"), get(r, "mllib", "s_iter")
        mllib = mllib if mllib is not None and mllib > 0 else None
        rows.append([
            r["key"], _pshape(r), fmt(get(r, "lloyd", "s_iter")), fmt(auto),
            fmt(get(r, "auto", "s_iter_last_third")), fmt(get(r, "floor", "s_pass")),
            times(_late_floor(r)), fmt(get(r, "floor", "math_s")),
            f"{fmt(mllib)} ({get(r, 'mllib', 'iters')})", times(ratio(mllib, auto)),
            times(ratio(mllib, get(r, "lloyd", "s_iter"))),
        ])
    return rows


PRUNING_ITERATION_HEADER = (
    "workload", "n × d, k", "lloyd s/iter (Lloyd-phase mean)", "auto s/iter (Lloyd-phase mean)",
    "auto s/iter, last third", "read floor s/pass", "auto last third / read floor",
    "arithmetic floor s (brute-force kernel, slowest task)", "MLlib s/iter from C0 (iterations)",
    "MLlib / auto", "MLlib / lloyd",
)


def pruning_float32_rows(results: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in ok_results(results):
        f32, auto = r.get("float32"), r.get("auto") or {}
        if f32 is None:
            rows.append([r["key"], _pshape(r), fmt(auto.get("seconds")), "n/a", "n/a", "n/a",
                         "n/a", mib(auto.get("block_bytes")), "n/a", "n/a",
                         mib(auto.get("held_bytes")), "n/a", "n/a", "n/a"])
            continue
        rows.append([
            r["key"], _pshape(r), fmt(auto.get("seconds")), fmt(f32.get("seconds")),
            times(ratio(auto.get("seconds"), f32.get("seconds"))),
            times(ratio(auto.get("s_iter"), f32.get("s_iter"))), times(_lloyd_float32(r)),
            mib(auto.get("block_bytes")), mib(f32.get("block_bytes")), times(_block_ratio(r)),
            mib(auto.get("held_bytes")), mib(f32.get("held_bytes")),
            times(ratio(f32.get("held_bytes"), auto.get("held_bytes"))),
            f"{f32.get('n_iter')}, {fmt(f32.get('max_rel_diff_to_float64'), '.1e')}",
        ])
    return rows


def _lloyd_float32(r: dict) -> float | None:
    """lloyd's s/iter in float64 over float32's (every distance computed in both)."""
    lloyd32 = (r.get("float32") or {}).get("lloyd") or {}
    return ratio(get(r, "lloyd", "s_iter"), lloyd32.get("s_iter"))


def _block_ratio(r: dict) -> float | None:
    """float32's block bytes (features, norms, weights) over float64's."""
    f32 = r.get("float32") or {}
    return ratio(f32.get("block_bytes"), get(r, "auto", "block_bytes"))


PRUNING_FLOAT32_HEADER = (
    "workload", "n × d, k", "auto float64: Lloyd phase s", "auto float32: Lloyd phase s",
    "float64 / float32 (Lloyd phase)", "float64 / float32 (per iteration)",
    "lloyd (every distance): float64 / float32 per iteration",
    "executor block bytes (features, norms, weights) float64", "float32",
    "float32 / float64 block bytes",
    "held with what a pass keeps per row (labels, bounds, kept partials) float64", "float32",
    "float32 / float64 held",
    "float32 n_iter, centroids vs float64",
)


def pruning_breakdown_rows(results: Sequence[dict]) -> list[list[str]]:
    """Where a pruned pass's time goes (the replay): ms per pass over all passes after the first
    and over the last third, per step, beside a brute-force pass on the same blocks."""
    rows = []
    for r in ok_results(results):
        passes = (get(r, "replay", "passes") or [])[1:]
        if not passes:
            continue
        brute = [p["brute_seconds"] for p in get(r, "replay", "passes") if p["brute_seconds"]]
        brute_ms = 1e3 * float(np.mean(brute)) if brute else None
        third = passes[-max(1, len(passes) // 3):]
        for label, some in (("passes 2..", passes), ("last third", third)):
            mean = {key: 1e3 * float(np.mean([p[key] for p in some]))
                    for key in ("seconds", "settle", "recompute", "dense", "accumulate",
                                "motion")}
            other = mean["seconds"] - sum(mean[k] for k in ("settle", "recompute", "dense",
                                                              "accumulate", "motion"))
            rows.append([
                r["key"], label, str(len(some)), _pct(float(np.mean([p["computed"] for p in some]))),
                fmt(mean["seconds"]), fmt(mean["motion"]), fmt(mean["settle"]),
                fmt(mean["recompute"]), fmt(mean["dense"]), fmt(mean["accumulate"]), fmt(other),
                fmt(brute_ms),
                times(ratio(brute_ms, mean["seconds"])),
            ])
    return rows


PRUNING_BREAKDOWN_HEADER = (
    "workload", "passes", "count", "computed", "pruned pass ms",
    "motion ms (centroid moves, half separations: k² d, once per pass)", "settle ms",
    "recompute ms", "dense stretches ms", "accumulate ms", "other ms (bounds arrays, calls)",
    "brute-force pass ms (same blocks, every 10th pass)", "brute / pruned",
)


def pruning_targets(results: Sequence[dict]) -> list[list[str]]:
    """Issue 20's targets, from this run's ratios."""
    by = {r["key"]: r for r in ok_results(results)}
    rows = []
    for key, target in PRUNING_PHASE_TARGETS.items():
        if key in by:
            x = _phase_ratio(by[key])
            rows.append([f"whole Lloyd phase: auto ≥ {target:g}× faster than lloyd",
                         _pshape(by[key]), times(x), met(None if x is None else x >= target)])
    key, target = PRUNING_MLLIB_TARGET
    if key in by:
        mllib = get(by[key], "mllib", "s_iter")
        x = ratio(mllib if mllib is not None and mllib > 0 else None, get(by[key], "auto", "s_iter"))
        rows.append([f"per iteration (Lloyd-phase mean) ≥ {target:g}× MLlib from C0",
                     _pshape(by[key]), times(x), met(None if x is None else x >= target)])
    for r in by.values():
        x = _late_floor(r)
        rows.append([f"last third of the run within {PRUNING_FLOOR_TARGET:g}× of the read floor",
                     _pshape(r), times(x), met(None if x is None else x <= PRUNING_FLOOR_TARGET)])
    for r in by.values():
        if r["kind"] in PRUNING_NOT_SLOWER_KINDS:
            x = _phase_ratio(r)
            rows.append([f"auto never slower than lloyd by more than {PRUNING_NOT_SLOWER:.0%} "
                         f"({r['data']}, {get(r, 'auto', 'n_iter')} iterations): lloyd / auto",
                         _pshape(r), times(x),
                         met(None if x is None else 1 / x <= 1 + PRUNING_NOT_SLOWER)])
    for r in by.values():
        rows.append(["auto and lloyd: bit-identical centroids, same n_iter, same rows moved",
                     _pshape(r), _identical(r), met(r.get("identical"))])
    for r in by.values():
        f32, auto = r.get("float32"), r.get("auto") or {}
        x = None if f32 is None else _block_ratio(r)
        rows.append([f"float32 executor block bytes (features, norms, weights) ≤ "
                     f"{FLOAT32_BYTES_TARGET:g}× float64's", _pshape(r), times(x),
                     met(None if x is None else x <= FLOAT32_BYTES_TARGET)])
    key, target = FLOAT32_SPEED_TARGET
    if key in by:
        f32 = by[key].get("float32")
        x = None if f32 is None else ratio(get(by[key], "auto", "s_iter"), f32.get("s_iter"))
        rows.append([f"float32 per iteration ≥ {target:g}× faster than float64 (auto)",
                     _pshape(by[key]), times(x), met(None if x is None else x >= target)])
        x = None if f32 is None else _lloyd_float32(by[key])
        rows.append([f"float32 per iteration ≥ {target:g}× faster than float64 (lloyd: every "
                     "distance computed)", _pshape(by[key]), times(x),
                     met(None if x is None else x >= target)])
    return rows


def pruning_tables(section: dict) -> str:
    """The section's tables (targets, Lloyd phase, per iteration, float32, where time goes)."""
    results = section.get("results", [])
    failed = [r for r in results if "error" in r]
    parts = []
    if failed:
        parts.append("**Failed workloads:** " + "; ".join(f"{r['key']}: {r['error']}"
                                                          for r in failed))
    parts += [
        table(("target", "workload", "measured", "result"), pruning_targets(results)),
        "Whole Lloyd phase, run to the stop (tol = 0: no row changes cluster; max_iter 300):",
        table(PRUNING_PHASE_HEADER, pruning_phase_rows(results)),
        "Per iteration, against MLlib from the same C0 and the read floor:",
        table(PRUNING_ITERATION_HEADER, pruning_iteration_rows(results)),
        "float32 blocks (`KMeans(dtype=\"float32\")`; auto, and lloyd where every distance is "
        "computed), when the library has them"
        + ("" if section.get("dtype_param") else " (not in this build: n/a)") + ":",
        table(PRUNING_FLOAT32_HEADER, pruning_float32_rows(results)),
        "Where a pruned pass's time goes (the Lloyd phase of auto replayed in one process over "
        "the fit's own blocks, one thread; ms per pass over all the rows, so about twice a "
        "2-task pass's wall time):",
        table(PRUNING_BREAKDOWN_HEADER, pruning_breakdown_rows(results)),
    ]
    return "\n\n".join(parts)


def pruning_section(section: dict) -> str:
    load = section.get("load_average_start")
    head = (f"Measured {section.get('date', 'n/a')}: `{section.get('command', 'n/a')}`, "
            f"{fmt(section.get('minutes'), '.1f')} min, load average at start "
            + ("n/a" if not load else ", ".join(f"{x:.2f}" for x in load))
            + " (2 cores, shared). Ratios come from one run, each workload in one session "
              "on one cached data set.")
    if section.get("quick"):
        head += (f"\n\n**QUICK RUN: every n divided by {section.get('divisor')}; a development "
                 "check, not the benchmark.**")
    return "\n\n".join([head, pruning_tables(section), PRUNING_METHOD])


PRUNING_METHOD = """\
- **Data** (generated in Spark, 2 partitions, cached and counted before any timing):
  overlapping Gaussian blobs (centres uniform in [-10, 10]^d, noise std 4) with more blobs than
  clusters (32 blobs for k = 16, 512 for k = 256; 1M × 32, k = 128 is the main table's data),
  so Lloyd runs many passes; uniform noise in [-10, 10]^d (where bounds prune least); and
  well-separated blobs (centres in [-100, 100]^8, std 1) started near their centres, which
  converge in a few passes (short runs, where pruning has least time to pay).
- **C0**: k sampled rows of the data (the separated data: each centre + 0.5 on every
  coordinate), the same start for every system.
- **ours**: `KMeans(k, init=C0, tol=0, max_iter=300, transport="resident", algorithm=...)`,
  in the same session, "lloyd" then "auto", repeated (alternating) as the workload says, the
  fastest of each counted (all in `bench/results.json`). Lloyd phase = sum of
  `model.history[i]["seconds"]` (every pass after the init). Bit-identical: every fit's
  centroids `array_equal` to the first lloyd fit's, the same n_iter and the same rows moved in
  every pass. "computed": the history's fraction of rows whose distances to every centroid
  were computed; "last third": mean over the last third of the passes, as is "auto s/iter,
  last third".
- **scikit-learn**: `KMeans(k, init=C0, n_init=1, tol=0, max_iter=300, algorithm="lloyd" or
  "elkan")` on the same rows collected to the driver, after a 1-iteration warm-up; its own
  OpenMP threads (2 here), so it uses both cores alone while ours runs 2 Spark tasks.
- **MLlib**: `pyspark.mllib.clustering.KMeans.train(initialModel=C0, epsilon=0)` on a cached
  RDD of the same rows, (T(N) − T(1)) / (N − 1) after a 1-iteration warm-up (as in the main
  table); its first N iterations from C0, where ours' figure is the mean over the whole phase.
- **Read floor**: a pass over the resident blocks that only reads them (median of 5), as in the
  main table; the arithmetic floor is the brute-force kernel timed inside the tasks.
- **Replay**: the same Lloyd phase, in the child process, over the fit's own blocks, through
  `kmeans_dist.pruning.full_partials` / `pruned_partials` with timers around `_settle`,
  `_Scorer.recompute`, `_Scorer.every`, and `_Accumulator` and `_fold_changes` ("accumulate":
  the fold, which reads only the rows of the clusters that changed; numba when present), one
  BLAS thread;
  every 10th pass a brute-force pass (`kernels.block_partials`) on the same blocks. Its
  "brute / pruned" compares passes run minutes apart at most, in one process, so it drifts less
  with the machine's load than two whole fits run one after the other (a workload with one
  repeat has its lloyd and auto fits minutes apart)."""


# --------------------------------------------------------------------------- the document
def machine_section(host: dict, jvm: dict | None) -> str:
    v = host["versions"]
    mem = host["memory_bytes"]
    blas = "n/a" if jvm is None else (
        f"native BLAS: {jvm['native_blas']}" if jvm["native_blas"] else
        f"no native BLAS (NativeBLAS.getInstance() failed: {jvm['native_blas_error']}; the "
        f"JVM printed the dlopen failure on stderr); netlib uses `{jvm['mllib_blas']}` "
        "(Java fallback)")
    lines = [
        f"- CPU: {host['cpu']}, {host['cores']} cores; memory {fmt(mem and mem / 2**30, '.1f')} GiB;"
        f" {host['os']}; load average at start {', '.join(f'{x:.2f}' for x in host['load_average'])}",
        f"- Spark: {'n/a' if jvm is None else jvm['spark']} `local[2]` "
        f"(parallelism {get(jvm, 'parallelism')}, driver memory {get(jvm, 'driver_memory')}), "
        f"Java {get(jvm, 'java')}",
        f"- MLlib: {blas}",
        f"- numpy BLAS: {host['numpy_blas']}; loaded thread pools: "
        f"{'; '.join(host['threadpools']) or 'n/a'}",
        f"- Python {host['python']}, pyspark {v['pyspark']}, numpy {v['numpy']}, "
        f"scikit-learn {v['scikit-learn']}, numba {v['numba']}, pyarrow {v['pyarrow']}, "
        f"matplotlib {v['matplotlib']}",
        f"- kmeans-dist: git {host['git']}",
    ]
    return "\n".join(lines)


METHOD = """\
- **Data**: float64 Gaussian blobs generated inside Spark (k centres uniform in [-10, 10]^d,
  noise std 4, so the blobs overlap and rows keep changing cluster), `spark.range(n, 2
  partitions)`, cached and counted before any timing. Every system of a workload runs in one
  `local[2]` session (driver memory 8g) on that same cached DataFrame; each workload runs in its
  own Python process (`bench/run.py --workload KEY`) so its driver memory peaks are its own.
- **C0**: k rows of the data (a seeded sample), the common start of ours, MLlib and scikit-learn.
- **kmeans-dist s/iter**: `KMeans(k, init=C0, max_iter=N, tol=0).fit(df)`; median of
  `model.history[i]["seconds"]` over the iterations after the first (the first one also compiles
  the kernel and starts the Python workers). If it stops before N (no row changed cluster), MLlib
  is run for the same number of iterations.
- **MLlib s/iter**: `pyspark.mllib.clustering.KMeans.train(rdd, k, maxIterations, initialModel=C0,
  epsilon=0)` on a cached RDD of numpy rows (the same blocks, flattened); after a 1-iteration
  warm-up, (T(N) − T(1)) / (N − 1), which cancels the per-call cost of moving the rows from Python
  into the JVM. Cross-check: MLlib's own "Iterations took" log lines of the same two runs,
  differenced the same way (the first iteration of each run also converts the rows, so only the
  difference is comparable).
  Centroid agreement: max |ours − MLlib| / max |MLlib| ≤ 1e-6, else FAIL. A differenced
  figure ≤ 0 (T(N) ≤ T(1): noise on the machine larger than N − 1 iterations) is shown as n/a;
  T(1) and T(N) are in the cross-check table.
- **scikit-learn s/iter**: `sklearn.cluster.KMeans(k, init=C0, n_init=1, max_iter=N, tol=0,
  algorithm="lloyd")` on the same rows collected to the driver; fit seconds / `n_iter_`
  after a 1-iteration warm-up (single machine, all cores through OpenMP). That includes
  scikit-learn's per-fit input checks; the cross-check table also gives (T(N) − T(1)) / (N − 1).
- **Read floor**: one of the library's transports (`kmeans_dist.transport.make(name, ...)`) over
  `data.packing(...)` blocks; the first `run` builds and caches the blocks; then N timed
  `run`s of a task that sums every block's `x` and `x_sq` (reads every byte, no distance math);
  median. It is measured on the transport ours' fit used (`KMeans(...).transport`, its default)
  and on `files` (the issue's definition, written when `files` was the default); ratios
  "/ floor" divide s/iter by the floor on ours' transport, the cross-check table gives the
  `files` one.
- **Arithmetic floor**: on the same transport, N + 1 runs of the fit's own Lloyd kernel
  (`tasks.lloyd` from C0, the previous labels kept as in a fit) timed inside each task; per run
  the slowest task, median of the last N. What an iteration costs with no data movement and no
  driver work at all, so "ours / arithmetic floor" is the transport's and the driver's overhead.
- **Whole default fit**: pyspark.ml `KMeans(k, seed=42)` with its defaults (k-means||, maxIter 20,
  tol 1e-4) on the cached `VectorAssembler` output; then ours `KMeans(k, seed=42,
  max_iter=numIter)` (default init k-means||) on the cached input, so both run the same number of
  Lloyd iterations. Wall time of each `fit` call. Init and iteration seconds: pyspark.ml's from
  its own INFO log lines ("Initialization with k-means|| took", "Iterations took", captured from
  the JVM logger); ours from the estimator's "init k-means||: … in X s" log line and the sum of
  `history` seconds; the rest of each fit is data preparation and extra passes. Inertia: both
  sides' cost of their last assignment step (pyspark.ml's `summary.trainingCost` is computed
  with the centres before the last update; ours is `history[-1]["inertia"]`, same definition);
  ours' final inertia (rows scored against the final centroids) is shown too.
- **Ours' transport**: what the fit's model records (`model.transport`): `resident` with the
  blocks in the Python workers' memory, as here (local mode: half the machine's available
  memory is the tasks' budget, far above these workloads), or in executor-local memory-mapped
  files when a task's rows would go over its executor's Python memory budget (the README's
  "Memory: what the default needs"); a fallback to `arrow-files` would show its name here. The
  resident side channel is clear text here (Spark's security is off in local mode); with it on,
  TLS cost nothing measurable per iteration at 2M × 16, k=16 (`bench/tls_cost.py`).
- **Memory**: Spark's storage status (`getRDDStorageInfo`, memory + disk) for the RDDs each
  system cached; ours keeps its blocks outside Spark's cache (executor-local files for `files`,
  the Python workers' memory for `resident`), so their bytes (x, x_sq, w) are summed by a
  transport task. Python driver: peak RSS per phase (Linux VmHWM, the counter behind
  `ru_maxrss`, reset before each phase through `/proc/self/clear_refs`; `ru_maxrss` itself would
  also carry the parent's size over from before exec). JVM: heap in use sampled every 0.5 s; in `local[2]` the driver JVM is
  also the executor, so its heap holds the cached data as well.
- **Scaling**: d=16, k=16 over n; least squares of s/iter against n (millions)."""


def render(results: Sequence[dict], host: dict, meta: dict, plot_ref: str | None,
           connect: dict | None = None, small: dict | None = None,
           pruning: dict | None = None) -> str:
    """The whole BENCHMARKS.md (without the classic sections when ``results`` is empty, as
    after ``--only-connect`` into a new results file)."""
    connect_results = (connect or {}).get("results", [])
    parts = ["# Benchmarks", _preamble(meta, results)]
    if results:
        parts += ["## Targets", targets_table(results)]
    parts += ["## Machine and versions", machine_section(host, _jvm(results, connect_results))]
    if results:
        parts += _classic_sections(results, plot_ref)
    if connect_results:
        parts += ["## Spark Connect: seconds per Lloyd iteration (same data, same C0 for ours)",
                  connect_section(connect)]
    if small and small.get("results"):
        parts += ["## Small fits: seconds per whole fit, first of a session and warm",
                  small_table(small), SMALL_METHOD]
    if pruning and pruning.get("results"):
        parts += ['## Pruned Lloyd: `algorithm="auto"` against `"lloyd"`, whole Lloyd phases',
                  pruning_section(pruning)]
    return "\n\n".join(parts) + "\n"


def _jvm(results: Sequence[dict], connect_results: Sequence[dict]) -> dict | None:
    """The classic session's JVM facts: a workload's, else a Spark Connect row's classic side's."""
    found = [r.get("jvm") for r in ok_results(results)]
    found += [get(r, "classic", "jvm") for r in connect_results]
    return next((jvm for jvm in found if jvm), None)


def _classic_sections(results: Sequence[dict], plot_ref: str | None) -> list[str]:
    points = scaling_points(results)
    parts = [
        "## Seconds per Lloyd iteration (same data, same initial centroids C0)",
        table(PER_ITERATION_HEADER, per_iteration_rows(results)),
        "## Whole default fit (k-means|| init + Lloyd), same number of Lloyd iterations",
        table(DEFAULT_FIT_HEADER, default_fit_rows(results)),
        "Cross-checks of the same runs:",
        table(CROSS_CHECK_HEADER, cross_check_rows(results)),
        "## Memory",
        "Executor side (what each system keeps cached for the iterations):",
        table(CACHE_HEADER, cache_rows(results)),
        "Driver side (peaks during each phase):",
        table(DRIVER_HEADER, driver_rows(results)),
        "## Scaling (d=16, k=16)", table(SCALING_HEADER, scaling_rows(points)),
        "Least squares against n:\n\n" + ("\n".join(slope_lines(points)) or "- n/a (fewer than 2 points)"),
    ]
    if plot_ref:
        parts.append(f"![seconds per iteration against rows]({plot_ref})")
    return parts + ["## How each figure is derived", METHOD]


def _preamble(meta: dict, results: Sequence[dict]) -> str:
    lines = [f"Written by `bench/run.py` (`make bench`) on {meta['date']}: `{meta['command']}`, "
             f"{meta['iters']} Lloyd iterations per timing, whole run {meta['minutes']:.1f} min. "
             "Absolute times drift on this shared machine; ratios measured in the same workload "
             "(same session, same cached data) are the comparable figures."]
    if meta["quick"]:
        lines.append(f"**QUICK RUN (`--quick`): every n divided by {meta['divisor']}; "
                     "a development check, not the benchmark.**")
    failed = [r for r in results if "error" in r]
    if failed:
        lines.append("**Failed workloads:** " + "; ".join(f"{r['key']}: {r['error']}" for r in failed))
    return "\n\n".join(lines)


# --------------------------------------------------------------------------- small data
SMALL_HEADER = ("workload", "session", "ours: first fit", "pyspark.ml: first fit",
                "pyspark.ml / ours", "ours: warm", "pyspark.ml: warm", "pyspark.ml / ours",
                "training cost ours / pyspark.ml", "ours ran on")
#: the classic first fit of iris in ``make run`` before small fits came to the driver (issue 21)
IRIS_FIT_BEFORE = 4.6


def small_rows(small: dict) -> list[list[str]]:
    """One row per (session, workload): both systems' first and warm fits, in seconds."""
    by = {(r["session"], r["key"], r["system"]): r for r in small.get("results", [])}
    rows = []
    for session, key in dict.fromkeys((r["session"], r["key"]) for r in small["results"]):
        ours, ml = by.get((session, key, "ours"), {}), by.get((session, key, "ml"), {})
        rows.append([key, session, fmt(ours.get("first_fit")), fmt(ml.get("first_fit")),
                     times(ratio(ml.get("first_fit"), ours.get("first_fit"))),
                     fmt(ours.get("warm_fit")), fmt(ml.get("warm_fit")),
                     times(ratio(ml.get("warm_fit"), ours.get("warm_fit"))),
                     fmt(ratio(ours.get("training_cost"), ml.get("training_cost")), ".4f"),
                     ours.get("transport") or ours.get("error", "n/a")])
    return rows


def small_table(small: dict) -> str:
    job = small.get("train_job", {})
    fit = job.get("fit_seconds")
    return "\n\n".join([
        table(SMALL_HEADER, small_rows(small)),
        f"`make run` (jobs/train.py on iris, a fresh local session): the fit {fmt(fit)} s "
        f"({times(ratio(IRIS_FIT_BEFORE, fit))} faster than the {IRIS_FIT_BEFORE} s before small "
        f"fits ran in the driver), the whole job {fmt(job.get('wall_seconds'))} s including the "
        f"session start, on transport {job.get('transport')}.",
    ])


SMALL_METHOD = """Each row's figures come from two child processes per system: a fresh local[2] session (or a
fresh local[2] Spark Connect server and its client) reads the input, assembles the feature
vector, fits (the first fit of the session), then fits three more times (warm: their median).
Both systems: k as shown, seed 1, maxIter 20, tol 1e-4, the same rows. Seconds are wall time of
`fit` on the client. Training cost is each model's `summary.trainingCost` (lower is better)."""


def write(results: Sequence[dict], host: dict, meta: dict, output: str, plot_path: str,
          connect: dict | None = None, small: dict | None = None,
          pruning: dict | None = None) -> None:
    """Write the plot (when the scaling series has points) and the markdown."""
    points = scaling_points(results)
    plot_ref = None
    if len(points) >= 2:
        plot(points, plot_path)
        plot_ref = os.path.relpath(plot_path, os.path.dirname(os.path.abspath(output)))
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(render(results, host, meta, plot_ref, connect, small, pruning))
