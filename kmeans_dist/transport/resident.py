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
and the new attempt reconnects; the driver resends the pending request to it. Where the resident
job cannot run (not enough free task slots for every partition at once, the driver unreachable from
the executors, or the job fails for good), the transport falls back to ``ArrowFilesTransport`` (one
Spark job per request) and gives the same results.
"""

from __future__ import annotations

import functools
import hmac
import logging
import pickle
import queue
import secrets
import socket
import struct
import threading
import time
from typing import Any, Iterator

from pyspark import cloudpickle
from pyspark.sql import DataFrame

from kmeans_dist import codec, kernels, tasks
from kmeans_dist.data import Packer, Packing
from kmeans_dist.transport import tls
from kmeans_dist.transport.arrow import ArrowFilesTransport
from kmeans_dist.transport.base import TaskFn, in_task
from kmeans_dist.transport.budget import Budget, mib, row_bytes, task_budget
from kmeans_dist.transport.holding import FILES, MEMORY, Held, limit_label_cache

log = logging.getLogger("kmeans_dist")

_LEN = struct.Struct("!Q")
#: the first message of a task (inside TLS when the channel is secure): the run's token (32 hex
#: characters), partition, attempt; raw bytes, checked before anything else from the peer is read
_HELLO = struct.Struct("!32sII")
#: what a task sends the driver (codec-encoded): ("ready", partition) once its blocks are held,
#: then per request ("ok", result) or ("error", message)
_MESSAGES = ("ready", "ok", "error")
#: seconds to wait for every partition's task to connect before falling back
CONNECT_TIMEOUT = 60.0
#: seconds a lost task's retry has to reconnect before the transport falls back
RECONNECT_TIMEOUT = 120.0


class ResidentUnavailable(RuntimeError):
    """The resident tasks cannot serve (any more): use per-request Spark jobs instead."""


# --------------------------------------------------------------------------- wire format
def _send_bytes(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_LEN.pack(len(data)) + data)


def _send(sock: socket.socket, obj: Any) -> None:
    """A request, driver to task: cloudpickled, as Spark ships task functions."""
    _send_bytes(sock, cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _send_result(sock: socket.socket, message: tuple) -> None:
    """A message, task to driver, in the codec; a result the codec cannot carry is sent as an
    error naming it."""
    try:
        data = codec.encode(message)
    except TypeError as exc:
        data = codec.encode(("error", f"TypeError: {exc}"))
    _send_bytes(sock, data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            raise ConnectionError("connection closed")
        got += r
    return bytes(buf)


def _recv_bytes(sock: socket.socket) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    return _recv_exact(sock, n)


def _recv_result(sock: socket.socket) -> tuple[str, Any]:
    """A task's message (see ``_MESSAGES``), decoded by the codec, never unpickled; ValueError
    for anything else."""
    message = codec.decode(_recv_bytes(sock))
    if type(message) is not tuple or len(message) != 2 or message[0] not in _MESSAGES:
        raise ValueError("not a resident task's message")
    return message


# --------------------------------------------------------------------------- executor side
def _connect(host: str, port: int, pinned: str | None, hello: bytes) -> socket.socket:
    """The task's connection to the driver: TLS, checked against the ``pinned`` certificate
    fingerprint, when the driver serves TLS (``pinned`` None: clear text); then the hello."""
    sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    try:
        if pinned is not None:
            sock = tls.client_wrap(sock, host, pinned)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(hello)
    except BaseException:
        sock.close()
        raise
    return sock


def _serve(host: str, port: int, token: str, pinned: str | None, packer: Packer, storage: str,
           budget: int, batches: Iterator) -> Iterator:
    """The resident task (a mapInArrow function over the feature rows): pack this partition's
    blocks, hold them (in memory within ``budget`` bytes, else in local files: ``holding``) and
    answer the driver's requests (see ``_connect`` for ``pinned``)."""
    import pyarrow as pa
    from pyspark import TaskContext

    ctx = TaskContext.get()
    part, attempt = ctx.partitionId(), ctx.attemptNumber()
    held = Held(token, part, storage, budget,
                row_bytes(len(packer.features), packer.weight_col is not None))
    hello = _HELLO.pack(token.encode("ascii"), part, attempt)
    with _connect(host, port, pinned, hello) as sock:
        threading.Thread(target=kernels.warm_up, daemon=True).start()  # beside the packing
        # drained: Spark discards a worker that leaves input unread
        for block in packer.blocks(batches):
            held.add(block)
        label_limit = limit_label_cache(held)
        try:
            _send_result(sock, ("ready", {"part": part, **held.report()}))
            while True:
                data = _recv_bytes(sock)
                try:
                    # the driver's (proven by TLS where Spark is secured)
                    request = pickle.loads(data)
                    if request is None:
                        break
                    result = ("ok", in_task(request[1], held, request[2]))
                except Exception as exc:  # noqa: BLE001 - reported to the driver, which re-raises
                    result = ("error", f"{type(exc).__name__}: {exc}")
                _send_result(sock, result)
        finally:
            tasks.LABELS.max_bytes = label_limit
            held.release()
    yield pa.RecordBatch.from_pydict({"part": pa.array([part], pa.int32())})


# --------------------------------------------------------------------------- driver side
class ResidentTransport:
    """Long-running tasks hold the blocks; requests go over sockets; falls back to files."""

    def __init__(self, packing: Packing, d: int, storage: str = "auto",
                 budget: Budget | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 reconnect_timeout: float = RECONNECT_TIMEOUT, secure: bool | None = None):
        """``storage``: where the tasks hold their blocks ("auto": memory within ``budget``,
        default the session's, ``budget.task_budget``; "memory"; "files"). ``secure``: serve the
        side channel over TLS (None: when Spark's own security is on,
        ``tls.spark_security_on``; True forces it, for tests and measurements)."""
        self.packing = packing  # for the fallback
        self.d = d
        self.sc = packing.rows.sparkSession.sparkContext
        self.num_partitions = packing.rows.rdd.getNumPartitions()
        self.reconnect_timeout = reconnect_timeout
        self.storage = storage
        self.budget = budget or session_budget(self.sc)
        #: per partition, what its task holds (rows, bytes, storage), from its ready message
        self.held: dict[int, dict] = {}
        self.fallback: ArrowFilesTransport | None = None
        self.fallback_reason: str | None = None
        self.reconnects = 0
        self._seq = 0
        self._conns: dict[int, socket.socket] = {}
        self._arrivals: queue.Queue = queue.Queue()
        self._token = secrets.token_hex(16)
        self._group = f"kmeans_dist-resident-{self._token[:8]}"
        self._job_error: BaseException | None = None
        self._job_done = threading.Event()
        self._closed = False
        sc = self.sc
        slots = task_slots(sc)
        if slots is not None and slots < self.num_partitions:
            self._job = None
            self._fall_back(f"{self.num_partitions} partitions but {slots} free task slots")
            return
        if secure is None:
            secure = tls.spark_security_on(sc.getConf())
        self._tls = tls.ServerTLS() if secure else None
        host = _driver_host(sc)
        self._server = socket.create_server((host, 0))
        self._server.settimeout(0.5)
        port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        # packing and serving in one task: the rows cross from the JVM once (a separate block
        # frame would send them to Python, back to the JVM, and to Python again)
        served = packing.rows.mapInArrow(
            functools.partial(_serve, host, port, self._token,
                              self._tls and self._tls.fingerprint, packing.packer, storage,
                              self.budget.per_task), "part int")
        self._job = threading.Thread(target=self._run_job, args=(served,), daemon=True)
        self._job.start()
        try:
            self._wait_for(set(range(self.num_partitions)), connect_timeout)
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
                "budget_per_task": self.budget.per_task, "budget": self.budget.source}

    # ------------------------------------------------------------------ the Spark job
    def _run_job(self, served: DataFrame) -> None:
        sc = self.sc
        sc.setJobGroup(self._group, f"kmeans_dist: {self.num_partitions} resident tasks serve "
                       "every pass of the fit (iterations: driver log)",
                       interruptOnCancel=True)
        try:
            served.collect()
        except BaseException as exc:  # noqa: BLE001 - reported to the driver's thread
            self._job_error = exc
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
        hello carrying the token (checked before anything else is read), then its "ready".
        Report it, then when it is ready; a claim on a partition a live connection holds is
        refused here and again when adopted (``_adopt``)."""
        try:
            conn.settimeout(30)
            if self._tls is not None:
                conn = self._tls.wrap(conn)
            token, part, _attempt = _HELLO.unpack(_recv_exact(conn, _HELLO.size))
            if not (hmac.compare_digest(token, self._token.encode("ascii"))
                    and 0 <= part < self.num_partitions):
                _refuse(conn, "without the run's token or for no partition of the run", peer)
                return
            self._arrivals.put(("hello", part, None))
            conn.settimeout(None)  # building the blocks may take a while on big partitions
            kind, report = _recv_result(conn)
            if kind != "ready" or type(report) is not dict or report.get("part") != part:
                raise ValueError("not ready")
            if part in self._conns:
                _refuse(conn, f"for partition {part}, which a live connection holds", peer)
                return
            self.held[part] = report
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._arrivals.put(("ready", part, conn))
        except (OSError, ValueError, EOFError, struct.error) as exc:
            _refuse(conn, f"that failed its handshake ({type(exc).__name__}: {exc})", peer)

    def _adopt(self, part: int, conn: socket.socket) -> bool:
        """Make ``conn`` partition ``part``'s connection, unless one holds it: only a connection
        the driver marked lost (``_lose``) is replaced, a second claim on a live one is
        refused."""
        if part in self._conns:
            _refuse(conn, f"for partition {part}, which a live connection holds")
            return False
        self._conns[part] = conn
        return True

    def _lose(self, part: int) -> None:
        """Mark partition ``part``'s connection lost (closed and forgotten): the next task to
        connect for it (Spark's retry) takes its place."""
        conn = self._conns.pop(part, None)
        if conn is not None:
            conn.close()

    def _wait_for(self, parts: set[int], timeout: float) -> None:
        """Until every partition in ``parts`` has a ready connection, else ResidentUnavailable:
        each task must connect within ``timeout`` (all slots taken, or an unreachable driver,
        otherwise hold them off for good); building its blocks may then take as long as it needs,
        while the job lives."""
        deadline = time.monotonic() + timeout
        unseen, unready = set(parts), set(parts)
        while unready:
            if unseen and time.monotonic() > deadline:
                raise ResidentUnavailable(
                    f"{len(unseen)} of {self.num_partitions} resident tasks did not connect in "
                    f"{timeout:.0f}s (fewer free task slots than partitions, or the driver is not "
                    "reachable from the executors)")
            try:
                item = self._arrivals.get(timeout=1.0)
            except queue.Empty:
                continue
            if item is None:
                if self._job_done.is_set():
                    raise ResidentUnavailable(f"the resident job ended: {self._job_error}")
                continue
            kind, part, conn = item
            unseen.discard(part)
            if kind == "ready" and self._adopt(part, conn):
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
            lost = set()
            for part in sorted(pending):
                try:
                    _send(self._conns[part], request)
                except OSError:
                    lost.add(part)
            for part in sorted(pending - lost):
                try:
                    status, payload = _recv_result(self._conns[part])
                except (OSError, EOFError, ConnectionError, ValueError):
                    lost.add(part)
                    continue
                if status == "error":
                    raise RuntimeError(f"task failed on partition {part}: {payload}")
                results[part] = payload
            pending = lost
            if lost:
                for part in lost:
                    self._lose(part)
                self.reconnects += len(lost)
                log.warning("lost %d resident task(s) %s; waiting for Spark to retry them",
                            len(lost), sorted(lost))
                self._wait_for(lost, self.reconnect_timeout)
        return [results[p] for p in range(self.num_partitions)]

    # ------------------------------------------------------------------ shutdown
    def _stop_job(self) -> None:
        if self._job is None:
            return
        self._closed = True
        for conn in self._conns.values():
            try:
                _send(conn, None)
            except OSError:
                pass
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


def task_slots(sc) -> int | None:
    """How many tasks the cluster can run at once right now (None if Spark does not say)."""
    try:
        jsc = sc._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(
            jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001 - a private Spark API: treat as unknown
        return None


def _driver_host(sc) -> str:
    """The address executors reach the driver at (loopback in local mode)."""
    if sc.master.startswith("local"):
        return "127.0.0.1"
    return sc.getConf().get("spark.driver.host", socket.gethostname())
