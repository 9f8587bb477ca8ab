"""Blocks kept inside long-running Python tasks, driven over a socket: no Spark job per iteration.

Each Spark job costs a fixed ~30 ms per task wave before any data moves (scheduling, shipping the
task, starting it in a Python worker, returning its result), which is most of an iteration once the
data is kept on the executors. Here one Spark job (a ``mapInArrow`` over the feature rows) starts
one task per partition; each task packs its partition's rows into blocks itself (Spark's lineage,
so a retried task rebuilds them), keeps them (in its Python worker's memory within the
executor's budget, else in executor-local memory-mapped files: ``holding``), connects back to a
socket on the driver and then runs every task function the driver sends until told to stop. An iteration
is then one message out and one back per partition.

The side channel is as secure as the cluster (``tls``): where Spark authenticates or encrypts its
own traffic it is TLS, the driver's certificate pinned in the task's closure and the task proving
itself with the run's token inside it; elsewhere it is clear text, as Spark's own traffic then is.
Either way a peer must show the token before the driver reads anything else, a partition held by a
live connection cannot be claimed by a second one, and results come back in ``kmeans_dist.codec``:
the driver never unpickles what a peer sends. (Requests go out as cloudpickles, as Spark ships task
functions: the executor runs what the driver sends, after TLS proved it is the driver.)

Fault tolerance stays Spark's: if a resident task dies, Spark retries it (``spark.task.maxFailures``)
and the new attempt reconnects; the driver resends the pending request to it. Every wait is
bounded (``channel``: heartbeats while a task works, so a host lost without a word is noticed
``LOSS_TIMEOUT`` seconds after its last frame). A second attempt of a partition whose task is live
(Spark's speculation) is parked: it holds nothing, is promoted if the live one is lost, and ends
with the fit (ending sooner would make Spark kill the live attempt). Where the resident job cannot
run (fewer task slots than partitions, even counting the executors dynamic allocation may add; no
task started within ``CONNECT_TIMEOUT`` while nothing of the job runs; a task that reports it
cannot reach the driver; a lost task not back within ``RECONNECT_TIMEOUT``; the job failing for
good), the transport falls back to ``ArrowFilesTransport`` (one Spark job per request) and gives
the same results. A long stage before the resident one (a shuffle in the input's lineage) keeps
tasks running, so it is never taken for an unreachable driver.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import queue
import secrets
import socket
import threading
import time
from typing import Any, Iterator

from pyspark.sql import DataFrame

from kmeans_dist import kernels, tasks
from kmeans_dist.errors import cleanup
from kmeans_dist.data import Packer, Packing
from kmeans_dist.transport import channel, tls
from kmeans_dist.transport.arrow import ArrowFilesTransport
from kmeans_dist.transport.base import TaskFn, in_task
from kmeans_dist.transport.budget import Budget, mib, row_bytes, state_bytes, task_budget
from kmeans_dist.transport.channel import (SERVE, STANDBY, Lost, beating, connect,
                                           hello, keepalive, load_request, recv_bytes,
                                           recv_hello, recv_message, recv_request, send_message,
                                           send_request)
from kmeans_dist.transport.holding import FILES, MEMORY, Held, limit_label_cache
from kmeans_dist.transport.slots import group_progress, obtainable_slots, task_slots

log = logging.getLogger("kmeans_dist")

#: seconds for the first resident task to start while no task of the job runs (no slot, no
#: executor yet), and for every other one to connect after the first did
CONNECT_TIMEOUT = 60.0
#: seconds a lost task's retry has to reconnect before the transport falls back, at least: Spark
#: retries a task of a silent executor only once it declares it lost (``spark.network.timeout``,
#: 120 s by default), so the wait is the larger of this and that timeout plus 30 s
RECONNECT_TIMEOUT = 60.0
#: the resident job's rows: one per task, with why it could not serve (None when it served)
RESULT_SCHEMA = "part int, error string"


class ResidentUnavailable(RuntimeError):
    """The resident tasks cannot serve (any more): use per-request Spark jobs instead."""


# --------------------------------------------------------------------------- executor side
def _row(part: int, error: str | None = None):
    import pyarrow as pa

    return pa.RecordBatch.from_pydict({"part": pa.array([part], pa.int32()),
                                       "error": pa.array([error], pa.string())})


def _serve(host: str, port: int, token: str, pinned: str | None, packer: Packer, storage: str,
           budget: int, batches: Iterator) -> Iterator:
    """The resident task (a mapInArrow function over the feature rows): connect to the driver,
    pack this partition's blocks when told to serve, hold them (in memory within ``budget``
    bytes, else in local files: ``holding``) and answer the driver's requests (``pinned``: the
    driver's certificate fingerprint, see ``channel.connect``). A task that cannot reach the
    driver returns at once with the reason, which ends the job: the driver falls back."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    part, attempt = ctx.partitionId(), ctx.attemptNumber()
    try:
        sock = connect(host, port, pinned, hello(token, part, attempt))
    except OSError as exc:
        yield _row(part, f"a task on {socket.gethostname()} could not reach the driver at "
                         f"{host}:{port}: {type(exc).__name__}: {exc}")
        return
    with sock:
        verdict = recv_request(sock)
        while verdict == STANDBY:  # a second attempt of a live partition: wait, hold nothing
            verdict = recv_request(sock)
        if verdict != SERVE:
            yield _row(part)  # the fit ended while this attempt stood by
            return
        d = len(packer.features)
        held = Held(token, part, storage, budget,
                    row_bytes(d, packer.weight_col is not None, dtype=packer.dtype),
                    state_bytes(d, packer.dtype))
        with cleanup(held.release, f"releasing partition {part}'s blocks"):
            with beating(sock):
                threading.Thread(target=kernels.warm_up, args=(packer.dtype,),
                                 daemon=True).start()
                # drained: Spark discards a worker that leaves input unread
                for block in packer.blocks(batches):
                    held.add(block)
            _answer_requests(sock, part, held)
    yield _row(part)


def _answer_requests(sock: socket.socket, part: int, held: Held) -> None:
    """Say ready, then run each request on the held blocks until the driver says stop."""
    label_limit = limit_label_cache(held)
    try:
        send_message(sock, ("ready", {"part": part, "pid": os.getpid(), **held.report()}))
        while True:
            data = recv_bytes(sock)
            with beating(sock):
                try:
                    request = load_request(data)
                    if request is None:
                        break
                    result = ("ok", in_task(request[1], held, request[2]))
                except Exception as exc:  # noqa: BLE001 - reported to the driver, which re-raises
                    result = ("error", f"{type(exc).__name__}: {exc}")
            send_message(sock, result)
    finally:
        tasks.LABELS.max_bytes = label_limit


# --------------------------------------------------------------------------- driver side
class _Parked:
    """A second connection for a partition a live task holds, waiting in its handshake thread
    to be promoted (the live one was lost) or let go (the fit ended)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.decided = threading.Event()
        self.serve = False


class ResidentTransport:
    """Long-running tasks hold the blocks; requests go over sockets; falls back to files."""

    def __init__(self, packing: Packing, d: int, storage: str = "auto",
                 budget: Budget | None = None, connect_timeout: float | None = None,
                 reconnect_timeout: float | None = None, secure: bool | None = None,
                 loss_timeout: float | None = None):
        """``storage``: where the tasks hold their blocks ("auto": memory within ``budget``,
        default the session's, ``budget.task_budget``; "memory"; "files"). ``secure``: serve the
        side channel over TLS (None: when Spark's own security is on,
        ``tls.spark_security_on``; True forces it, for tests and measurements). The timeouts:
        see ``CONNECT_TIMEOUT``, ``RECONNECT_TIMEOUT`` and ``channel.LOSS_TIMEOUT``."""
        self.packing = packing  # for the fallback
        self.d = d
        self.sc = packing.rows.sparkSession.sparkContext
        self.num_partitions = packing.rows.rdd.getNumPartitions()
        # the module's bounds as they are now (a test or a user may have changed them)
        self.connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.reconnect_timeout = (_reconnect_bound(self.sc) if reconnect_timeout is None
                                  else reconnect_timeout)
        self.loss_timeout = channel.LOSS_TIMEOUT if loss_timeout is None else loss_timeout
        self.storage = storage
        self.budget = budget or session_budget(self.sc)
        #: per partition, what its task holds (rows, bytes, storage), from its ready message
        self.held: dict[int, dict] = {}
        self.fallback: ArrowFilesTransport | None = None
        self.fallback_reason: str | None = None
        self.reconnects = 0
        #: second attempts of live partitions parked so far (Spark's speculation)
        self.parked_total = 0
        self._seq = 0
        self._conns: dict[int, socket.socket] = {}
        self._claimed: set[int] = set()  # partitions whose task was told to serve, not lost
        self._parked: dict[int, list[_Parked]] = {}
        self._lock = threading.Lock()
        self._arrivals: queue.Queue = queue.Queue()
        self._token = secrets.token_hex(16)
        self._group = f"kmeans_dist-resident-{self._token[:8]}"
        self._job_error: str | None = None
        self._job_done = threading.Event()
        self._closed = False
        self._job = None
        sc = self.sc
        slots = obtainable_slots(sc)
        if slots is not None and slots < self.num_partitions:
            self._fall_back(f"{self.num_partitions} partitions but {slots} task slots")
            return
        if secure is None:
            secure = tls.spark_security_on(sc.getConf())
        self._tls = tls.ServerTLS() if secure else None
        self._server, host, port = _listen(sc)
        threading.Thread(target=self._accept, daemon=True).start()
        # packing and serving in one task: the rows cross from the JVM once (a separate block
        # frame would send them to Python, back to the JVM, and to Python again)
        served = packing.rows.mapInArrow(
            functools.partial(_serve, host, port, self._token,
                              self._tls and self._tls.fingerprint, packing.packer, storage,
                              self.budget.per_task), RESULT_SCHEMA)
        self._job = threading.Thread(target=self._run_job, args=(served,), daemon=True)
        self._job.start()
        try:
            self._wait_for(set(range(self.num_partitions)), self.connect_timeout, starting=True)
        except ResidentUnavailable as exc:
            self._fall_back(str(exc))
            return
        log.info("%s", self._held_line())

    def _held_line(self) -> str:
        """One line with the numbers: where the tasks hold their blocks, and why."""
        reports = [self.held[p] for p in sorted(self.held)]
        rows = sum(r["rows"] for r in reports)
        largest = max((r["bytes"] for r in reports), default=0)
        in_files = [p for p in sorted(self.held) if self.held[p]["storage"] == FILES]
        where = ("in the Python workers' memory" if not in_files else
                 "in executor-local memory-mapped files" if len(in_files) == len(reports) else
                 f"in executor-local memory-mapped files for partitions {in_files}, in memory "
                 "for the rest")
        why = {"auto": f"budget {self.budget.describe()}",
               MEMORY: "storage forced to memory", FILES: "storage forced to files"}[self.storage]
        parts = f"{len(reports)} partition{'s' if len(reports) != 1 else ''}"
        return (f"resident tasks: {parts}, {rows:,} rows, largest task "
                f"{mib(largest)} of blocks, norms, weights and labels; {why}: blocks held {where}")

    def record(self) -> dict:
        """Which transport ran and how, for the model: name, storage, fallback."""
        if self.fallback is not None:
            return {"name": "arrow-files", "requested": "resident",
                    "fallback": self.fallback_reason}
        storages = sorted({r["storage"] for r in self.held.values()})
        return {"name": "resident", "storage": storages[0] if len(storages) == 1 else "mixed",
                "partitions": self.num_partitions,
                "held_bytes": sum(r["bytes"] for r in self.held.values()),
                "block_bytes": sum(r["block_bytes"] for r in self.held.values()),
                "budget_per_task": self.budget.per_task, "budget": self.budget.source,
                "reconnects": self.reconnects}

    # ------------------------------------------------------------------ the Spark job
    def _run_job(self, served: DataFrame) -> None:
        sc = self.sc
        sc.setJobGroup(self._group, f"kmeans_dist: {self.num_partitions} resident tasks serve "
                       "every pass of the fit (iterations: driver log)",
                       interruptOnCancel=True)
        try:
            errors = [r.error for r in served.collect() if r.error]
            if errors:
                self._job_error = errors[0]
        except BaseException as exc:  # noqa: BLE001 - reported to the driver's thread
            self._job_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        finally:
            self._job_done.set()
            self._arrivals.put(None)  # wake a waiter

    def _accept(self) -> None:
        """Accept connections; each is checked and followed in a thread of its own."""
        while not self._closed:
            try:
                conn, peer = self._server.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._handshake, args=(conn, peer), daemon=True).start()

    def _handshake(self, conn: socket.socket, peer: Any) -> None:
        """Keep a connection that proves itself: TLS first when the channel is secure, then a
        hello carrying the token (checked before anything else is read). A partition nobody
        serves is told to serve, and reported when its blocks are held; a second claim on a
        partition a live task serves is parked (see ``_Parked``). A task lost before it is
        ready (while it packs) gives its partition up: the waiter is told, and a parked attempt
        or Spark's retry serves it."""
        serving = False
        try:
            conn.settimeout(30)
            if self._tls is not None:
                conn = self._tls.wrap(conn)
            token, part, _attempt = recv_hello(conn)
            if not (hmac.compare_digest(token, self._token.encode("ascii"))
                    and 0 <= part < self.num_partitions):
                _refuse(conn, "without the run's token or for no partition of the run", peer)
                return
            keepalive(conn)
            with self._lock:
                parked = None if part not in self._claimed else _Parked(conn)
                if parked is None:
                    self._claimed.add(part)
                else:
                    self._parked.setdefault(part, []).append(parked)
                    self.parked_total += 1
            if parked is not None:
                log.warning("resident transport: a second attempt for partition %d (from %s) "
                            "stands by while the live one serves", part, peer)
                send_request(conn, STANDBY)
                parked.decided.wait()
                if not parked.serve:
                    send_request(conn, None)
                    conn.close()
                    return
            serving = True  # the partition is this connection's until it is ready or lost
            self._arrivals.put(("hello", part, None))
            send_request(conn, SERVE)
            # packing may take long: the task's heartbeats keep the wait bounded
            kind, report = recv_message(conn, self.loss_timeout)
            if kind != "ready" or type(report) is not dict or report.get("part") != part:
                raise Lost("not ready")
            self.held[part] = report
            self._arrivals.put(("ready", part, conn))
        except (OSError, ValueError) as exc:
            _refuse(conn, f"that failed its handshake ({type(exc).__name__}: {exc})", peer)
            if serving:
                self._release(part)
                self._arrivals.put(("lost", part, None))

    def _lose(self, part: int) -> None:
        """Partition ``part``'s connection is lost: close and forget it (see ``_release``)."""
        conn = self._conns.pop(part, None)
        if conn is not None:
            conn.close()
        self._release(part)

    def _release(self, part: int) -> None:
        """Nobody serves partition ``part`` any more: a parked second attempt takes over, else
        the next task to connect for it (Spark's retry)."""
        with self._lock:
            self._claimed.discard(part)
            waiting = self._parked.get(part, [])
            if waiting:
                promoted = waiting.pop(0)
                self._claimed.add(part)
                promoted.serve = True
                promoted.decided.set()  # its handshake thread says hello when told to serve

    def _wait_for(self, parts: set[int], timeout: float, starting: bool = False) -> None:
        """Until every partition in ``parts`` has a ready connection, else ResidentUnavailable.

        Starting, the clock for the first task runs only while no task of the job runs at all
        (no slot or no executor yet; a long stage before the resident one keeps tasks running),
        and every other task must connect within ``timeout`` after the first did. A task that
        returned without serving (it could not reach the driver) ends the wait at once. Packing
        may take as long as it needs: the tasks' heartbeats show they are alive; a task lost
        while it packs is counted as a reconnect, and its retry has ``timeout`` from then."""
        unseen, unready = set(parts), set(parts)
        since = time.monotonic()  # the last time the job was seen running anything
        first: float | None = None if starting else since
        lost = False
        while unready:
            now = time.monotonic()
            if self._job_done.is_set():
                raise ResidentUnavailable(f"the resident job ended: {self._job_error}")
            if unseen:
                running, returned = group_progress(self.sc, self._group)
                # a task that returned is only a hint: the group's last job may still be a stage
                # before the resident one (AQE runs a shuffle's map side as a job of its own, and
                # its finished tasks count until the resident job is submitted); the resident
                # job ending, its rows saying why, is what ends the wait
                if returned and self._job_done.wait(2):
                    raise ResidentUnavailable(
                        f"a resident task ended before serving: {self._job_error or 'unknown'}")
                if first is None and running:
                    since = now
                if first is None and now - since > timeout:
                    raise ResidentUnavailable(
                        f"no resident task started in {timeout:.0f}s (no free task slot or no "
                        "executor)")
                if first is not None and now - first > timeout:
                    raise ResidentUnavailable(
                        f"{len(unseen)} of {self.num_partitions} resident tasks did not connect "
                        f"within {timeout:.0f}s (fewer free task slots than partitions)"
                        if starting and not lost else
                        f"{len(unseen)} lost resident task(s) not back within {timeout:.0f}s "
                        "(Spark has not retried them: their executor may still look alive)")
            try:
                item = self._arrivals.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                continue
            kind, part, conn = item
            if kind == "lost":
                if part in unready:
                    lost, first = True, time.monotonic()
                    unseen.add(part)
                    self.reconnects += 1
                continue
            if first is None:
                first = time.monotonic()
            unseen.discard(part)
            if kind == "ready":
                self._conns[part] = conn
                unready.discard(part)

    def _fall_back(self, why: str) -> None:
        log.warning("resident tasks unavailable (%s); running one Spark job per iteration",
                    why.splitlines()[0])
        self._stop_job()
        self.fallback_reason = why.splitlines()[0]
        self.fallback = ArrowFilesTransport(self.packing, self.d)

    # ------------------------------------------------------------------ requests
    def run(self, fn: TaskFn, value: Any, label: str | None = None) -> list:
        """One request to every resident task. Their one Spark job keeps the description it
        started with, so ``label`` only reaches the Spark UI after a fallback (one job per
        request there); the driver log has every iteration either way."""
        if self.fallback is not None:
            return self.fallback.run(fn, value, label)
        try:
            return self._request(fn, value)
        except ResidentUnavailable as exc:
            self._fall_back(str(exc))
            return self.fallback.run(fn, value, label)

    def _request(self, fn: TaskFn, value: Any) -> list:
        self._seq += 1
        request = (self._seq, fn, value)  # the number tells requests apart in a debugger
        results: dict[int, Any] = {}
        pending = set(range(self.num_partitions))
        while pending:
            lost = {}
            for part in sorted(pending):
                try:
                    send_request(self._conns[part], request)
                except OSError as exc:
                    lost[part] = exc
            for part in sorted(pending - set(lost)):
                try:
                    status, payload = recv_message(self._conns[part], self.loss_timeout)
                except OSError as exc:  # Lost included: closed, garbled or silent
                    lost[part] = exc
                    continue
                if status == "error":
                    raise RuntimeError(f"task failed on partition {part}: {payload}")
                results[part] = payload
            pending = set(lost)
            if lost:
                for part in lost:
                    self._lose(part)
                self.reconnects += len(lost)
                log.warning("lost %d resident task(s): %s; waiting up to %.0fs for Spark to retry "
                            "them", len(lost), "; ".join(f"partition {p}: {e}" for p, e in
                                                       sorted(lost.items())),
                            self.reconnect_timeout)
                self._wait_for(pending, self.reconnect_timeout)
        return [results[p] for p in range(self.num_partitions)]

    # ------------------------------------------------------------------ shutdown
    def _stop_job(self) -> None:
        if self._job is None:
            return
        self._closed = True
        for conn in self._conns.values():
            try:
                send_request(conn, None)
            except OSError:
                pass
        with self._lock:
            parked = [p for waiting in self._parked.values() for p in waiting]
            self._parked.clear()
        for p in parked:  # let the second attempts go once the live ones were told to stop
            p.decided.set()
        if len(self._conns) < self.num_partitions:
            # tasks still waiting for a slot would start, connect and wait for good: cancel them
            self.sc.cancelJobGroup(self._group)
        self._job.join(timeout=30)
        if self._job.is_alive():
            self.sc.cancelJobGroup(self._group)
            self._job.join(timeout=30)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._server.close()

    def release(self) -> None:
        if self.fallback is not None:
            self.fallback.release()
        else:
            self._stop_job()


def session_budget(sc) -> Budget:
    """The memory one resident task may hold in this session (see ``budget``)."""
    slots = task_slots(sc)
    try:
        executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # less the driver
    except Exception:  # noqa: BLE001 - a Spark API through py4j: treat as unknown
        executors = 0
    per_executor = -(-slots // executors) if slots and executors > 0 else None
    return task_budget(dict(sc.getConf().getAll()), sc.master, per_executor)


def _refuse(conn: socket.socket, why: str, peer: Any = None) -> None:
    """Close a connection to the driver's socket that may not serve, and say so (``peer``: its
    address, if known)."""
    if peer is None:
        try:
            peer = conn.getpeername()
        except OSError:
            peer = "?"
    log.warning("resident transport: closed a connection from %s %s", peer, why)
    conn.close()


def _reconnect_bound(sc) -> float:
    """How long a lost task's retry may take to reconnect (see ``RECONNECT_TIMEOUT``); Spark's
    own reading of ``spark.network.timeout`` (any of its time units)."""
    network = sc._jsc.sc().conf().getTimeAsSeconds("spark.network.timeout", "120s")
    return max(RECONNECT_TIMEOUT, float(network) + 30.0)


def _listen(sc) -> tuple[socket.socket, str, int]:
    """The driver's listening socket, and the address the tasks are told to connect to."""
    host = _driver_host(sc)
    server = socket.create_server((host, 0))
    server.settimeout(0.5)
    return server, host, server.getsockname()[1]


def _driver_host(sc) -> str:
    """The address executors reach the driver at (loopback in local mode)."""
    if sc.master.startswith("local"):
        return "127.0.0.1"
    return sc.getConf().get("spark.driver.host", socket.gethostname())
