"""Transports: resident tasks, executor-local files, the cached RDD and the driver give the same results;
lost tasks, missing files and missing slots recover; the resident side channel keeps strangers,
intruders with a stolen token and wrong servers out."""

import functools
import logging
import os
import pickle
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from pyspark import cloudpickle

from jobutil import scala_list
from kmeans_dist import KMeans, codec, data, kernels, tasks
from kmeans_dist.transport import (ArrowFilesTransport, LocalFilesTransport, RDDTransport,
                                   ResidentTransport)
from kmeans_dist.transport import channel, resident, tls
from kmeans_dist.transport.arrow import RESULT_SCHEMA, _remove_files
from kmeans_dist.transport.budget import Budget
from kmeans_dist.transport.local_files import _remove


@pytest.fixture(scope="module")
def points(spark):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(c, 1.0, size=(400, 3)) for c in (0.0, 4.0, 9.0)])
    w = rng.uniform(0.5, 2.0, size=len(x))
    rows = [tuple(map(float, r)) + (float(wi),) for r, wi in zip(x, w)]
    df = spark.sparkContext.parallelize(rows, 3).toDF(["a", "b", "c", "w"])
    return df, x, w


def _fit(df, x, **kw):
    init = x[[0, 1, 2]]  # all from one blob: several iterations needed
    return KMeans(3, init=init, weight_col="w", **kw).fit(df, ["a", "b", "c"])


def _descriptions(spark) -> dict[int, str]:
    """What the Spark UI / History Server show: the status store's job descriptions."""
    jobs = scala_list(spark.sparkContext._jsc.sc().statusStore().jobsList(None))
    return {j.jobId(): str(j.description().get()) for j in jobs if j.description().isDefined()}


def _jobs_started(spark) -> int:
    """How many Spark jobs the session has started so far (the DAG scheduler's job counter,
    advanced when a job is submitted: unlike the status store, never behind)."""
    return spark.sparkContext._jsc.sc().dagScheduler().numTotalJobs()


def _described(spark, jobs: range) -> dict[int, str]:
    """The descriptions of ``jobs`` once the status store has seen every one of them."""
    deadline = time.monotonic() + 30
    while True:
        seen = {j: d for j, d in _descriptions(spark).items() if j in jobs}
        known = {j.jobId() for j in scala_list(
            spark.sparkContext._jsc.sc().statusStore().jobsList(None))}
        if set(jobs) <= known or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_transports_and_kernels_agree_bit_for_bit(spark, points):
    """Every transport and both kernels give the same fit; the transports that run one Spark
    job per pass describe each for the Spark UI."""
    df, x, _ = points
    seen = set(_descriptions(spark))
    ref = _fit(df, x, transport="rdd", use_numba=False, block_rows=100)
    described = [d for j, d in _descriptions(spark).items() if j not in seen]
    for it in range(1, ref.n_iter + 1):
        assert f"kmeans_dist: iteration {it}/300, k=3" in described, described
    assert "kmeans_dist: caching the input, k=3" in described
    assert spark.sparkContext.getLocalProperty("spark.job.description") is None
    assert ref.n_iter > 2
    # numpy against numba on the default transport; numba's kernel elsewhere (the kernels'
    # own equality is tested in test_kernels.py)
    for transport, use_numba in [("resident", False), ("resident", True), ("files", True),
                                 ("rdd", True), ("arrow", True), ("arrow-files", False),
                                 ("resident-files", True), ("resident-memory", False),
                                 ("driver", True), ("driver", False)]:
        m = _fit(df, x, transport=transport, use_numba=use_numba, block_rows=100)
        # the transport asked for is the one that ran (a silent fallback would not prove it)
        if transport.startswith("resident") or transport == "driver":
            assert m.transport["name"] == transport.split("-")[0], m.transport
        else:
            assert m.transport == {"name": transport}, m.transport
        if transport.startswith("resident"):
            assert m.transport["storage"] == {"resident": "memory"}.get(
                transport, transport.split("-")[-1]), m.transport
        assert np.array_equal(m.centroids, ref.centroids), (transport, use_numba)
        assert m.inertia == ref.inertia and m.n_iter == ref.n_iter
        assert m.cluster_sizes == ref.cluster_sizes
        assert [h["moved"] for h in m.history] == [h["moved"] for h in ref.history]


def test_float32_blocks_agree_on_every_transport_bit_for_bit(spark, points):
    """dtype="float32": every transport and both kernels give the same fit, pruned (the default)
    as brute force ("lloyd", the reference); the blocks they hold are float32, 4 bytes a feature
    (the resident tasks' and the driver's held bytes say so: 3 features, the float64 norm and
    weight, and the resident tasks' label and bounds); the model records the dtype."""
    df, x, _ = points
    ref = _fit(df, x, transport="rdd", use_numba=False, block_rows=100, dtype="float32",
               algorithm="lloyd")
    assert ref.n_iter > 2 and ref.params["dtype"] == "float32"
    for transport, use_numba in [("resident", True), ("resident-files", False), ("files", True),
                                 ("rdd", True), ("arrow", False), ("arrow-files", True),
                                 ("driver", False), ("driver", True)]:
        m = _fit(df, x, transport=transport, use_numba=use_numba, block_rows=100,
                 dtype="float32")
        assert np.array_equal(m.centroids, ref.centroids), (transport, use_numba)
        assert m.n_iter == ref.n_iter and m.cluster_sizes == ref.cluster_sizes, transport
        assert [h["moved"] for h in m.history] == [h["moved"] for h in ref.history]
        if transport == "driver":
            assert m.transport["held_bytes"] == len(x) * (3 * 4 + 8 + 8)
        elif transport.startswith("resident"):
            assert m.transport["held_bytes"] == len(x) * (3 * 4 + 8 + 8 + 4 + 8 + 1)
            assert m.transport["block_bytes"] == len(x) * (3 * 4 + 8 + 8)


def test_per_pass_jobs_are_described_for_several_models_and_the_final_scoring(spark, points):
    """fit_many over k=2,3,4 on a transport with one Spark job per pass: its jobs say which models
    they serve (the init's, every iteration's, and the final scoring's, which a fit stopped by
    max_iter needs: its last update moved the centroids off the rows they were scored on)."""
    df, _, _ = points
    first = _jobs_started(spark)
    models = KMeans(2, init="random", seed=4, max_iter=1, transport="rdd",
                    weight_col="w").fit_many(df, [2, 3, 4], ["a", "b", "c"])
    assert all(m.n_iter == 1 and m.stop == "max_iter" for m in models.values())
    described = set(_described(spark, range(first, _jobs_started(spark))).values())
    assert {"kmeans_dist: caching the input, k=2,3,4", "kmeans_dist: init random, k=2",
            "kmeans_dist: init random, k=4", "kmeans_dist: iteration 1/1, k=2,3,4",
            "kmeans_dist: final scoring, k=2,3,4"} <= described, described
    assert spark.sparkContext.getLocalProperty("spark.job.description") is None


def _files_on_rdd(frame, packed):
    """LocalFilesTransport, and how to remove its files from every executor."""
    t = LocalFilesTransport(data.block_rdd(frame, 3))
    return t, lambda: t.handles.mapPartitions(functools.partial(_remove, t.token)).collect()


def _files_on_frame(frame, packed):
    """ArrowFilesTransport (Spark Connect's default), and how to remove its files."""
    t = ArrowFilesTransport(packed, 3)
    return t, lambda: t.handles.mapInArrow(functools.partial(_remove_files, t.token),
                                           RESULT_SCHEMA).collect()


@pytest.mark.parametrize("make", [_files_on_rdd, _files_on_frame], ids=["rdd", "frame"])
def test_missing_files_are_recomputed_and_repaired(points, make):
    df, x, w = points
    packed = data.packing(df, ["a", "b", "c"], weight_col="w", block_rows=100)
    transport, remove_files = make(packed.frame, packed)
    try:
        c = x[[0, 500, 1000]]
        step = tasks.LloydStep("t", 1, c, None)
        first = kernels.fold(transport.run(tasks.lloyd, step))
        assert transport.misses == 0
        # every executor loses its files, as after a restart or a cleaner
        remove_files()
        again = kernels.fold(transport.run(tasks.lloyd, step))
        assert transport.misses == transport.num_partitions
        third = kernels.fold(transport.run(tasks.lloyd, step))
        assert transport.misses == transport.num_partitions  # the recompute wrote them back
    finally:
        transport.release()
    for p in (again, third):
        assert np.array_equal(p.sums, first.sums) and p.inertia == first.inertia
    # and the partials are right: brute force over all rows
    labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    expected = np.stack([(x[labels == j] * w[labels == j, None]).sum(0) for j in range(3)])
    np.testing.assert_allclose(first.sums, expected, rtol=1e-12)
    assert list(first.counts) == [int((labels == j).sum()) for j in range(3)]


def test_rdd_transport_runs_one_result_per_partition_in_order(points):
    df, _, _ = points
    frame = data.block_frame(df, ["a", "b", "c"], block_rows=64)
    transport = RDDTransport(data.block_rdd(frame, 3))
    try:
        parts = transport.run(tasks.summarize, 3)
    finally:
        transport.release()
    assert [p.rows for p in parts] == [400, 400, 400]


def test_unknown_transport_is_refused():
    with pytest.raises(ValueError, match="unknown transport 'ftp'"):
        KMeans(2, transport="ftp")


# --------------------------------------------------------------------------- resident tasks
def _lloyd_steps(transport, x, steps=3):
    """A few Lloyd partials from fixed centroids, as the engine would request them."""
    c = x[[0, 500, 1000]]
    out = []
    for it in range(1, steps + 1):
        out.append(kernels.fold(transport.run(
            tasks.lloyd, tasks.LloydStep("r", it, c + it * 0.1, None))))
    return out


def _same(a, b):
    return all(np.array_equal(p.sums, q.sums) and p.inertia == q.inertia
               and np.array_equal(p.counts, q.counts) for p, q in zip(a, b))


# the workers cannot import this test module: ship its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _exit_once(blocks, marker: str):
    """Kills its Python worker the first time it runs on partition 1 (a lost executor)."""
    from pyspark import TaskContext

    blocks = list(blocks)
    if TaskContext.get().partitionId() == 1 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return sum(b.rows for b in blocks)


def _resident(df, **kw):
    packed = data.packing(df, ["a", "b", "c"], weight_col="w", block_rows=100)
    return ResidentTransport(packed, 3, **kw)


def _rdd_steps(df, x):
    """``_lloyd_steps`` on the plain cached-RDD transport: the reference."""
    ref = RDDTransport(data.block_rdd(data.block_frame(
        df, ["a", "b", "c"], weight_col="w", block_rows=100), 3))
    try:
        return _lloyd_steps(ref, x)
    finally:
        ref.release()


@pytest.mark.parametrize("slots_known", [True, False])
def test_resident_without_enough_slots_falls_back_to_jobs(points, monkeypatch, slots_known):
    df, x, _ = points  # 3 partitions on local[2]: the third task never gets a slot
    if not slots_known:  # then the third task's missing connection is what tells
        monkeypatch.setattr(resident, "obtainable_slots", lambda sc: None)
    transport = _resident(df, connect_timeout=3)
    try:
        # the README's "falls back to arrow-files": that transport, and the model says so
        assert isinstance(transport.fallback, ArrowFilesTransport)
        record = transport.record()
        got = _lloyd_steps(transport, x)
    finally:
        transport.release()
    assert record["name"] == "arrow-files" and record["requested"] == "resident", record
    assert record["fallback"] == ("3 partitions but 2 task slots" if slots_known else
                                  "1 of 3 resident tasks did not connect within 3s (fewer free "
                                  "task slots than partitions)"), record
    assert _same(got, _rdd_steps(df, x))


def test_resident_ignores_a_peer_without_the_token(spark, points):
    """A stranger is closed and the tasks serve on; their requests start no Spark job, and
    their connections run with the README's bounds and TCP keepalive."""
    df, x, _ = points
    transport = _resident(df.coalesce(2))
    try:
        assert transport.fallback is None
        host, port = transport._server.getsockname()[:2]
        with socket.create_connection((host, port)) as intruder:
            intruder.sendall(b"x" * 40)  # a hello with the wrong token: closed, nothing unpickled
            assert intruder.recv(1) == b""
        jobs = _jobs_started(spark)
        got = _lloyd_steps(transport, x)  # three passes
        assert _jobs_started(spark) == jobs  # "no Spark job per iteration"
        assert transport.fallback is None and transport.reconnects == 0
        # the defaults (README: 60 s to start and connect, 20 s without a frame, a lost task's
        # retry waited for spark.network.timeout (120 s, unset here) + 30 s)
        assert (transport.connect_timeout, transport.loss_timeout,
                transport.reconnect_timeout) == (60.0, 20.0, 150.0)
        for conn in transport._conns.values():
            assert _keepalive_options(conn) == KEEPALIVE
    finally:
        transport.release()
    assert _same(got, _rdd_steps(df.coalesce(2), x))


class WritesAFile:
    """Unpickling this creates ``path``: it exists only if someone unpickled what a peer sent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _framed(obj_bytes: bytes) -> bytes:
    """One message of the side channel's framing (length, then the bytes)."""
    return channel._LEN.pack(len(obj_bytes)) + obj_bytes


def _hello(token: str, part: int) -> bytes:
    return channel.hello(token, part, 0)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (waits up to 30 s for it)."""
    sock.settimeout(30)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _intrude(address, message: bytes, wrap=None) -> bool:
    """Connect to the driver's socket (through ``wrap`` if given), send ``message``; whether the
    driver then closed the connection."""
    with socket.create_connection(address, timeout=30) as raw:
        sock = raw if wrap is None else wrap(raw)
        try:
            sock.sendall(message)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True  # closed before it took everything
        return _closed_by_peer(sock)


def _tls_without_pin(sock: socket.socket) -> ssl.SSLSocket:
    """TLS that trusts any server: what an intruder who ignores the pin would use."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context.wrap_socket(sock)


@contextmanager
def _under_attack(df, x, tmp_path, **kw):
    """A resident transport over ``df`` to attack: yields it, its address and a pickle whose
    loading creates a file. Afterwards it must serve on unharmed: no fallback, no reconnect,
    nothing unpickled, the RDD transport's partials."""
    transport = _resident(df, **kw)
    unpickled = tmp_path / "unpickled"
    try:
        assert transport.fallback is None
        yield (transport, transport._server.getsockname()[:2],
               pickle.dumps(WritesAFile(unpickled)))
        got = _lloyd_steps(transport, x)
        assert transport.fallback is None and transport.reconnects == 0
    finally:
        transport.release()
    assert not unpickled.exists()
    assert _same(got, _rdd_steps(df, x))


def test_resident_parks_a_second_claim_on_a_live_partition(points, tmp_path, caplog):
    """A peer that knows the token (sniffed off a clear-text channel, or Spark's speculative
    second attempt) cannot take over a partition whose task is live: it is told to stand by,
    nothing it sends is read, and it is let go when the fit ends (not sooner: a second attempt
    that ended first would make Spark kill the live one)."""
    df, x, _ = points
    with _under_attack(df.coalesce(2), x, tmp_path) as (transport, address, evil):
        assert transport._tls is None  # local mode: clear text
        held = dict(transport._conns)
        with caplog.at_level(logging.WARNING, logger="kmeans_dist"):
            claim = socket.create_connection(address, timeout=30)
            claim.sendall(_hello(transport._token, 0) + _framed(evil))
            assert channel.load_request(channel.recv_bytes(claim)) == channel.STANDBY
        assert "a second attempt for partition 0" in caplog.text
        assert transport._conns == held and transport.parked_total == 1
    # released: the parked claim is told to stop, then closed
    assert channel.recv_request(claim) is None and _closed_by_peer(claim)
    claim.close()


def test_a_task_message_is_never_unpickled():
    """What a task sends the driver goes through the codec: a pickle (or any bytes that are not
    a task's message) is refused as a lost peer and never loaded."""
    import pickle as pickle_module

    driver, task = socket.socketpair()
    with driver, task:
        for bad in (pickle_module.dumps(WritesAFile(Path("/nonexistent/never"))),
                    codec.encode(("shell", "rm -rf /")), b"garbage"):
            task.sendall(_framed(bad))
            with pytest.raises(channel.Lost):
                channel.recv_message(driver, timeout=5)
        # heartbeats are skipped, the answer after them is the message
        task.sendall(_framed(codec.encode(("beat", 1))) + _framed(codec.encode(("ok", 7))))
        assert channel.recv_message(driver, timeout=5) == ("ok", 7)
        # a silent peer is lost after the timeout, not waited for
        started = time.monotonic()
        with pytest.raises(channel.Lost, match="no word from the task in 1s"):
            channel.recv_message(driver, timeout=1)
        assert 0.9 < time.monotonic() - started < 5


def test_resident_over_tls_keeps_strangers_out(points, tmp_path, caplog):
    """With TLS forced on (as when Spark's security is), tasks talk TLS and give the same
    partials; a peer without TLS, or with TLS and a wrong token, is closed, and nothing any peer
    sends is unpickled, even a peer with the token."""
    df, x, _ = points
    with _under_attack(df.coalesce(2), x, tmp_path, secure=True) as (transport, address, evil):
        assert transport._tls is not None
        assert all(isinstance(c, ssl.SSLSocket) for c in transport._conns.values())
        with caplog.at_level(logging.WARNING, logger="kmeans_dist"):
            # clear text, right token: the TLS handshake fails, nothing read
            assert _intrude(address, _hello(transport._token, 0) + _framed(evil))
            # TLS, wrong token
            assert _intrude(address, _hello("0" * 32, 0) + _framed(evil), _tls_without_pin)
            # TLS, a partition the run does not have
            assert _intrude(address, _hello(transport._token, 9) + _framed(evil),
                            _tls_without_pin)
            # TLS and the run's token (a peer that knows it): parked behind the live task,
            # nothing it sends is read (``_under_attack`` checks the pickle was never loaded)
            claim = _tls_without_pin(socket.create_connection(address, timeout=30))
            claim.sendall(_hello(transport._token, 1) + _framed(evil))
            assert channel.recv_request(claim) == channel.STANDBY
        assert "failed its handshake (SSLError" in caplog.text
        assert "without the run's token" in caplog.text
        assert "a second attempt for partition 1" in caplog.text and transport.parked_total == 1
    assert channel.recv_request(claim) is None and _closed_by_peer(claim)  # let go at release
    claim.close()


def test_a_hung_peer_holds_up_neither_the_tasks_nor_the_fit(points, tmp_path, monkeypatch):
    """Peers that connect and hang half way through their hello (one before any task connects,
    one with the run's token while the tasks serve) delay no task's handshake and no request: each
    connection is checked in a thread of its own, with a bounded wait."""
    df, x, _ = points
    hung = []
    listen = resident._listen

    def listen_then_hang(sc):
        server, host, port = listen(sc)
        peer = socket.create_connection((host, port), timeout=30)  # first in the accept queue
        peer.sendall(_hello("0" * 32, 0)[:10])
        hung.append(peer)
        return server, host, port

    monkeypatch.setattr(resident, "_listen", listen_then_hang)
    try:
        with _under_attack(df.coalesce(2), x, tmp_path) as (transport, address, _):
            assert len(hung) == 1 and len(transport._conns) == 2  # both tasks got through
            late = socket.create_connection(address, timeout=30)
            late.sendall(_hello(transport._token, 0)[:20])  # the token's first half, no more
            hung.append(late)
    finally:
        for peer in hung:
            peer.close()


def _tls_server(server_tls: tls.ServerTLS):
    """A one-connection TLS server on 127.0.0.1 (``server_tls``'s key); its address, and a
    thread that records in ``received`` every byte the client sent before it closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def serve():
        with listener:
            conn, _ = listener.accept()
            conn.settimeout(30)
            try:
                with server_tls.wrap(conn) as tls_conn:
                    while chunk := tls_conn.recv(4096):
                        received.extend(chunk)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[:2], thread, received


def test_a_task_refuses_a_server_whose_certificate_is_not_pinned():
    """A task that meets a server with another key (a man in the middle) sends nothing to it,
    not even the token; the pinned server is accepted."""
    driver, stranger = tls.ServerTLS(), tls.ServerTLS()
    assert driver.fingerprint != stranger.fingerprint and len(driver.fingerprint) == 64
    address, thread, received = _tls_server(stranger)
    with pytest.raises(tls.PeerNotTrusted):
        channel.connect(*address, driver.fingerprint, _hello("a" * 32, 0))
    thread.join(30)
    assert bytes(received) == b""
    # the client-side wrap alone, and the control: the pinned server is talked to
    address, thread, received = _tls_server(stranger)
    with socket.create_connection(address) as sock, pytest.raises(tls.PeerNotTrusted):
        tls.client_wrap(sock, address[0], driver.fingerprint)
    thread.join(30)
    address, thread, received = _tls_server(driver)
    with channel.connect(*address, driver.fingerprint, _hello("a" * 32, 0)):
        pass
    thread.join(30)
    assert bytes(received) == _hello("a" * 32, 0)


def test_tls_follows_sparks_security_settings(spark):
    assert not tls.spark_security_on(spark.sparkContext.getConf())
    assert not tls.spark_security_on({})
    assert not tls.spark_security_on({"spark.ssl.enabled": "false", "spark.authenticate": "no"})
    for key in ("spark.authenticate", "spark.network.crypto.enabled", "spark.ssl.enabled"):
        assert tls.spark_security_on({key: "true"})
        assert tls.spark_security_on({key: " TRUE "})


def test_resident_task_lost_without_retries_falls_back(points, tmp_path):
    df, x, _ = points
    two = df.coalesce(2)
    transport = _resident(two)
    try:
        assert transport.fallback is None
        before = _lloyd_steps(transport, x)
        # the test session allows no task retries: the lost task ends the resident job
        rows = transport.run(_exit_once, str(tmp_path / "died"))
        assert len(rows) == 2 and sum(rows) == len(x)
        assert transport.fallback is not None and (tmp_path / "died").exists()
        after = _lloyd_steps(transport, x)
    finally:
        transport.release()
    assert _same(before, after)


RETRY_SCRIPT = """
import os, sys
import numpy as np
sys.path.insert(0, {tests!r})
from pyspark import cloudpickle
from kmeans_dist import get_session, data
from kmeans_dist.transport import ResidentTransport
import test_transport
from test_transport import _exit_once, _lloyd_steps, _same
cloudpickle.register_pickle_by_value(test_transport)

spark = get_session("local[2,3]", conf={{"spark.default.parallelism": "2"}})
rng = np.random.default_rng(7)
x = np.concatenate([rng.normal(c, 1.0, size=(400, 3)) for c in (0.0, 4.0, 9.0)])
rows = [tuple(map(float, r)) + (1.0,) for r in x]
df = spark.sparkContext.parallelize(rows, 2).toDF(["a", "b", "c", "w"])
packed = data.packing(df, ["a", "b", "c"], weight_col="w", block_rows=100)
t = ResidentTransport(packed, 3)
before = _lloyd_steps(t, x)
assert t.run(_exit_once, {marker!r}) == [600, 600]
after = _lloyd_steps(t, x)
print("RESULT", t.fallback is None, t.reconnects, _same(before, after))
t.release()

# a whole fit whose partition 1 dies once in iteration 3: Spark retries it, same model
from kmeans_dist import KMeans, tasks
lloyd_many = tasks.lloyd_many

def dies_once(blocks, steps):
    from pyspark import TaskContext
    blocks = list(blocks)
    if (steps[0].iteration == 3 and TaskContext.get().partitionId() == 1
            and not os.path.exists({fit_marker!r})):
        open({fit_marker!r}, "w").close()
        os._exit(1)
    return lloyd_many(blocks, steps)

fit = lambda: KMeans(3, init=x[[0, 1, 2]], transport="resident").fit(df, ["a", "b", "c"])
clean = fit()
tasks.lloyd_many = dies_once
faulty = fit()
print("FIT", os.path.exists({fit_marker!r}), clean.n_iter == faulty.n_iter > 3,
      np.array_equal(clean.centroids, faulty.centroids), clean.inertia == faulty.inertia,
      clean.cluster_sizes == faulty.cluster_sizes)
spark.stop()
"""


def test_resident_task_lost_is_retried_by_spark_and_fit_unchanged(tmp_path):
    tests = str(Path(__file__).resolve().parent)
    script = RETRY_SCRIPT.format(tests=tests, marker=str(tmp_path / "died"),
                                 fit_marker=str(tmp_path / "fit_died"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env["PYSPARK_PYTHON"] = sys.executable
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tests)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # still resident (no fallback), one task reconnected, and identical partials
    assert "RESULT True 1 True" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    # and a whole fit with a task killed in iteration 3 gives the fault-free model
    assert "FIT True True True True True" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_resident_over_its_memory_budget_holds_blocks_in_files(points, caplog):
    """A budget smaller than a partition's rows: every task keeps its blocks in local files,
    says so in one log line with the numbers, gives the same partials, and removes its files
    when released."""
    df, x, _ = points
    two = df.coalesce(2)
    with caplog.at_level("INFO", logger="kmeans_dist"):
        transport = _resident(two, budget=Budget(1000, "a test budget"))
    try:
        assert transport.fallback is None
        assert sorted(transport.held) == [0, 1]
        assert {r["storage"] for r in transport.held.values()} == {"files"}
        assert sum(r["rows"] for r in transport.held.values()) == len(x)
        assert all(r["bytes"] == r["rows"] * (3 * 8 + 8 + 8 + 4 + 8 + 2)
               for r in transport.held.values())
        dirs = {r["dir"] for r in transport.held.values()}  # the executors' local directory
        assert len(dirs) == 1 and os.path.isdir(dirs.pop())
        got = _lloyd_steps(transport, x)
        record = transport.record()
    finally:
        transport.release()
    assert not any(os.path.exists(r["dir"]) for r in transport.held.values())
    assert record["name"] == "resident" and record["storage"] == "files"
    assert record["budget_per_task"] == 1000 and record["budget"] == "a test budget"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resident tasks")]
    assert len(lines) == 1, lines
    assert "2 partitions, 1,200 rows" in lines[0] and "0 MiB per task (a test budget)" in lines[0]
    assert lines[0].endswith("blocks held in executor-local memory-mapped files"), lines[0]
    ref = RDDTransport(data.block_rdd(data.block_frame(
        two, ["a", "b", "c"], weight_col="w", block_rows=100), 3))
    try:
        assert _same(got, _lloyd_steps(ref, x))
    finally:
        ref.release()


def test_default_fit_records_resident_blocks_in_memory_within_the_local_budget(spark, points):
    """The default for data over the driver limit (0 here: these rows are under the default):
    the whole fit, first pass and every iteration, is one Spark job, described for the UI."""
    df, x, _ = points
    first = _jobs_started(spark)
    m = _fit(df.coalesce(2), x, driver_max_mb=0)
    jobs = range(first, _jobs_started(spark))
    assert m.n_iter > 2 and len(jobs) == 1, (m.n_iter, jobs)
    assert list(_described(spark, jobs).values()) == [
        "kmeans_dist: 2 resident tasks serve every pass of the fit (iterations: driver log)"]
    assert m.transport["name"] == "resident" and m.transport["storage"] == "memory"
    assert m.transport["budget"].startswith("local mode: 0.5 x ")
    assert 0 < m.transport["held_bytes"] <= m.transport["budget_per_task"] * 2
    assert m.transport["held_bytes"] == len(x) * (3 * 8 + 8 + 8 + 4 + 8 + 2)
    assert m.transport["block_bytes"] == len(x) * (3 * 8 + 8 + 8)


# --------------------------------------------------------------------------- the side channel's bounds
#: the README's text, its line breaks as spaces
README = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
#: TCP keepalive on both ends of a resident connection: probes after 60 s idle, every 10 s, 6
#: unanswered ones and the connection is dead (the README's "about 2 minutes"); no Nagle delay
KEEPALIVE = {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 6,
             "TCP_NODELAY": 1}


def _keepalive_options(sock: socket.socket) -> dict[str, int]:
    on = lambda level, name: int(sock.getsockopt(level, getattr(socket, name)) != 0)  # noqa: E731
    return {"SO_KEEPALIVE": on(socket.SOL_SOCKET, "SO_KEEPALIVE"),
            **{name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
               for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")},
            "TCP_NODELAY": on(socket.IPPROTO_TCP, "TCP_NODELAY")}


def test_the_bounds_are_the_readmes():
    """The waits the README's table states are the code's defaults, and the README states them
    (a change to either fails here)."""
    assert channel.HEARTBEAT == 2.0 and "a heartbeat every 2 s" in README
    assert channel.LOSS_TIMEOUT == 20.0 and "reads with a 20 s timeout" in README
    assert channel.CONNECT_TIMEOUT == 10.0 and "(10 s connect timeout)" in README
    assert resident.CONNECT_TIMEOUT == 60.0 and "must connect within 60 s of the first" in README
    assert "the 60 s clock runs only while no task of the job runs" in README
    assert resident.RECONNECT_TIMEOUT == 60.0
    assert "up to `spark.network.timeout` + 30 s, at least 60 s" in README
    assert "probes after 60 s idle, every 10 s, 6 unanswered" in README
    # the defaults are what the channel uses: a heartbeat thread's interval ...
    a, b = socket.socketpair()
    with a, b:
        with channel.beating(a):
            pass
        assert channel._heartbeats[a].every == 2.0


def test_a_task_connects_within_10_s_with_keepalive(monkeypatch):
    """The task's connect to the driver is bounded by the 10 s connect timeout, and its socket
    then waits for requests with no read timeout but TCP keepalive (a vanished host is noticed
    by the kernel's probes)."""
    timeouts = []
    real = socket.create_connection

    def spy(address, timeout=None, *args, **kw):
        timeouts.append(timeout)
        return real(address, timeout, *args, **kw)

    monkeypatch.setattr(channel.socket, "create_connection", spy)
    with socket.create_server(("127.0.0.1", 0)) as server:
        with channel.connect(*server.getsockname()[:2], None, _hello("a" * 32, 0)) as task:
            assert timeouts == [10.0]
            assert task.gettimeout() is None
            assert _keepalive_options(task) == KEEPALIVE


class _Conf:
    """Just enough of a SparkContext for ``_reconnect_bound``: a JVM SparkConf of its own."""

    def __init__(self, spark, network_timeout: str | None) -> None:
        conf = spark._jvm.org.apache.spark.SparkConf(False)
        if network_timeout is not None:
            conf.set("spark.network.timeout", network_timeout)
        self._jsc = self
        self._conf = conf

    def sc(self):
        return self

    def conf(self):
        return self._conf


@pytest.mark.parametrize("network_timeout, bound", [
    (None, 150.0),  # Spark's default 120 s, + 30 s
    ("300s", 330.0), ("2min", 150.0), ("45", 75.0),  # Spark's units; a bare number is seconds
    ("31s", 61.0), ("30s", 60.0), ("10s", 60.0),  # at least 60 s
])
def test_a_lost_tasks_retry_is_waited_for_the_network_timeout_plus_30_s(spark, network_timeout,
                                                                         bound):
    assert resident._reconnect_bound(_Conf(spark, network_timeout)) == bound
