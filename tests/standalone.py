"""A real Spark standalone cluster (one master, two 1-core workers) on 127.0.0.1 for the tests.

The workers can be bound to addresses of their own (``hosts``: any 127.x.y.z address is this
machine's loopback), have more cores (``cores``), and the daemons can be given Java options
(``daemon_opts``, e.g. Spark's authentication settings, through ``SPARK_MASTER_OPTS`` and
``SPARK_WORKER_OPTS``). What the tests read back from a run: Spark's event log
(``spark_events``), and brute-force Lloyd to compare a fit with (``lloyd_reference``).

Started with the installed pyspark's ``spark-class``; every process runs in its own session and
is stopped by its own pid (its process group, so executor JVMs started by a worker go with it).
``no_site_python`` writes the executors' Python: the venv's interpreter with ``-S``, so the
editable install (a ``.pth`` file in site-packages) is invisible and ``kmeans_dist`` can only
come from what ``--py-files`` ships.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyspark
import pytest

SPARK_BIN = Path(pyspark.__file__).resolve().parent / "bin"
HOST = "127.0.0.1"
#: environment a test must not pass on to Spark processes it starts
DROPPED_ENV = ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "PYSPARK_SUBMIT_ARGS",
               "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH")
START_TIMEOUT = 60.0


@dataclass
class Cluster:
    """A running standalone cluster: where to submit, where its logs and work dirs are."""

    master_url: str
    status_url: str
    work_dir: Path
    log_dir: Path


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def spark_env(**extra: str) -> dict[str, str]:
    """The test's environment without PySpark/Python settings that must not leak, bound to HOST."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env["SPARK_LOCAL_IP"] = HOST
    env.update(extra)
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, headed by its name."""
    text = path.read_text(errors="replace").splitlines() if path.exists() else ["(no log)"]
    return f"--- {path.name} ---\n" + "\n".join(text[-lines:])


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``proc``; once ``proc`` exits (or ``timeout`` s pass),
    SIGKILL whatever is left of that group (e.g. executor JVMs of a worker); reap ``proc``."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
          ) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in a new session with stdout+stderr to ``log``; stopped on exit, always."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def run_logged(cmd: list[str], log: Path, env: dict[str, str], cwd: Path,
               timeout: float) -> int:
    """Run ``cmd`` to completion (its group is killed after ``timeout`` s); its exit code."""
    with spawn(cmd, log, env, cwd) as proc:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{cmd[0]} still running after {timeout:.0f} s\n{log_tail(log)}")


def alive_workers(status_url: str) -> int:
    """How many ALIVE workers the master's JSON status lists (0 while it is not up)."""
    try:
        with urllib.request.urlopen(status_url, timeout=2) as resp:
            status = json.load(resp)
    except (OSError, ValueError):
        return 0
    return sum(w.get("state") == "ALIVE" for w in status.get("workers", []))


@contextmanager
def standalone(base: Path, workers: int = 2, hosts: Sequence[str] | None = None,
               daemon_opts: str | None = None, cores: int = 1,
               wrap_worker: Callable[[list[str]], list[str]] | None = None,
               **env_extra: str) -> Iterator[Cluster]:
    """A master on HOST and ``workers`` workers (``cores`` cores, 2 GiB each), up until the block
    exits. ``hosts``: one address per worker (``SPARK_LOCAL_IP`` and ``--host``; replaces
    ``workers``), default HOST for each; ``daemon_opts``: Java options of the master and the
    workers; ``wrap_worker``: the worker's command as it is started (e.g. inside a cgroup);
    ``env_extra``: more environment for the daemons (e.g. ``SPARK_DAEMON_MEMORY``)."""
    spark_class = str(SPARK_BIN / "spark-class")
    port, webui = free_port(), free_port()
    cluster = Cluster(f"spark://{HOST}:{port}", f"http://{HOST}:{webui}/json/",
                      base / "work", base / "logs")
    cluster.work_dir.mkdir(parents=True)
    cluster.log_dir.mkdir(parents=True)
    (base / "local").mkdir()
    opts = {} if daemon_opts is None else {"SPARK_MASTER_OPTS": daemon_opts,
                                           "SPARK_WORKER_OPTS": daemon_opts}
    env = spark_env(SPARK_LOCAL_DIRS=str(base / "local"), **opts, **env_extra)
    worker_hosts = list(hosts) if hosts is not None else [HOST] * workers
    logs = [cluster.log_dir / "master.log"]
    with ExitStack() as stack:
        # entered in order, so the workers are stopped before the master
        stack.enter_context(spawn(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", HOST,
             "--port", str(port), "--webui-port", str(webui)], logs[0], env))
        for i, host in enumerate(worker_hosts):
            logs.append(cluster.log_dir / f"worker{i}.log")
            worker = [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", host,
                      "--port", str(free_port()), "--webui-port", str(free_port()),
                      "--cores", str(cores), "--memory", "2g", "--work-dir",
                      str(cluster.work_dir), cluster.master_url]
            stack.enter_context(spawn(worker if wrap_worker is None else wrap_worker(worker),
                                      logs[-1], {**env, "SPARK_LOCAL_IP": host}))
        deadline = time.monotonic() + START_TIMEOUT
        while alive_workers(cluster.status_url) < len(worker_hosts):
            if time.monotonic() > deadline:
                pytest.fail(f"standalone cluster: fewer than {len(worker_hosts)} ALIVE workers "
                            f"after {START_TIMEOUT:.0f} s\n" + "\n".join(map(log_tail, logs)))
            time.sleep(0.5)
        yield cluster


def no_site_python(path: Path) -> Path:
    """Write an executable wrapper: this venv's Python with ``-S`` (no ``.pth`` files, so no
    editable install) and site-packages appended to PYTHONPATH (numpy, pyarrow, numba stay
    importable). Each call appends its working directory to ``path.log``."""
    site_packages = sysconfig.get_paths()["purelib"]
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$PWD" >> "{path}.log"\n'
        f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site_packages}"\n'
        "export PYTHONPATH\n"
        f'exec "{sys.executable}" -S "$@"\n'
    )
    path.chmod(0o755)
    return path


def wrapper_calls(wrapper: Path) -> list[Path]:
    """The working directory of every run of a ``no_site_python`` wrapper so far."""
    log = Path(f"{wrapper}.log")
    return [Path(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A standalone master + 2 workers for the module; stopped even when a test fails."""
    started = time.perf_counter()
    with standalone(tmp_path_factory.mktemp("standalone")) as cluster:
        print(f"\nstandalone cluster up in {time.perf_counter() - started:.1f} s")
        yield cluster


def spark_events(events_dir: Path) -> list[dict]:
    """Every event under ``events_dir``: one JSON object per line of each log file (Spark 4 writes
    rolling logs, ``eventlog_v2_APP/events_N_APP``, beside hidden ``.crc`` checksums)."""
    logs = [p for p in sorted(events_dir.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return [json.loads(line) for log in logs for line in log.read_text().splitlines() if line]


def lloyd_reference(x: np.ndarray, init: np.ndarray, max_iter: int) -> tuple[np.ndarray, int]:
    """Brute-force Lloyd (scikit-learn's order: assign with C_t, update to C_t+1), stopping when
    no row changes cluster or after ``max_iter`` updates: what a fit on the cluster must give."""
    k, d = init.shape
    c, prev = init.copy(), None
    for it in range(1, max_iter + 1):
        labels = np.concatenate([
            np.argmin((chunk**2).sum(1)[:, None] - 2 * chunk @ c.T + (c**2).sum(1)[None], 1)
            for chunk in np.array_split(x, 20)])
        sums = np.stack([np.bincount(labels, weights=x[:, j], minlength=k) for j in range(d)], 1)
        c = sums / np.bincount(labels, minlength=k)[:, None]
        if prev is not None and np.array_equal(prev, labels):
            return c, it
        prev = labels
    return c, max_iter
