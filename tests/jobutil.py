"""Running the jobs in tests: as subprocesses (a JVM each) or in the test's own SparkSession."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.pop("PYSPARK_GATEWAY_PORT", None)  # never attach to the test session's own JVM
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    for connect_state in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE"):
        env.pop(connect_state, None)  # a job is classic unless its test asks for Connect
    return env


def run_job(job: str, *args: str, spark: bool = True) -> subprocess.CompletedProcess:
    """``python jobs/<job> args`` in a fresh process (``--master local[2]`` when it starts Spark)."""
    cmd = [sys.executable, job, *map(str, args)]
    if spark:
        cmd += ["--master", "local[2]"]
    return subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def run_job_in_process(job: str, *args: str,
                       master: str | None = "local[2]") -> subprocess.CompletedProcess:
    """Run a job's __main__ in this process, in the active (test) SparkSession.

    The same script, flags and error handling as a subprocess, minus a JVM start: for the data
    errors, which only differ from one another after Spark has read the input. ``master``: the
    --master flag added (None: the command line as given; the test session is used anyway).
    """
    argv = [job, *map(str, args), *(["--master", master] if master else [])]
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.argv, list(sys.path))
    code = 0
    try:
        sys.argv = argv
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(ROOT / job), run_name="__main__")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.handlers[:], root.level, sys.argv, sys.path[:] = saved
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def describe(proc: subprocess.CompletedProcess) -> str:
    return (f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
            f"\n--- stderr ---\n{proc.stderr[-5000:]}")


def write_csv(path: Path, header: list[str], rows) -> Path:
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(v if isinstance(v, str) else repr(float(v)) for v in row) + "\n")
    return path


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, last stderr line 'error: ...' naming every needle; returns that line."""
    assert proc.returncode == 2, describe(proc)
    line = last_line(proc.stderr)
    assert line.startswith("error:"), describe(proc)
    for needle in needles:
        assert needle in line, f"{needle!r} not named in {line!r}"
    assert "Traceback" not in proc.stderr, describe(proc)
    return line


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind: {sorted(os.listdir(out))}"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, f"staging leftovers next to {out}: {leftovers}"


def listing(path: Path) -> list[str]:
    """Visible entries of a directory (Hadoop's local filesystem adds hidden .crc files)."""
    return sorted(p for p in os.listdir(path) if not p.startswith("."))


def scala_list(seq) -> list:
    """A Scala collection from py4j (e.g. Spark's status store) as a Python list."""
    it = seq.iterator()
    out = []
    while it.hasNext():
        out.append(it.next())
    return out
