"""The resident transport's waits are bounded: a task that goes silent is noticed, a driver the
tasks cannot reach is reported by the tasks themselves, a long stage before the resident one is
not taken for either, the slots dynamic allocation can still add are counted, and block files a
crashed fit left behind are swept. Local mode here; tests/test_liveness_cluster.py does the same
against real executors."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from pyspark import cloudpickle

from kmeans_dist import data, kernels, tasks
from kmeans_dist.transport import RDDTransport, channel, local_files, resident, slots
from kmeans_dist.transport.resident import ResidentTransport

FEATURES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def points(spark):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(c, 1.0, size=(300, 3)) for c in (0.0, 5.0)])
    rows = [tuple(map(float, r)) for r in x]
    return spark.createDataFrame(rows, FEATURES).coalesce(2), x


def _steps(transport, x, n=2):
    c = x[[0, 300]]
    return [kernels.fold(transport.run(tasks.lloyd, tasks.LloydStep("l", it, c + 0.1 * it, None)))
            for it in range(1, n + 1)]


def _reference(df, x):
    ref = RDDTransport(data.block_rdd(data.block_frame(df, FEATURES, block_rows=100), 3))
    try:
        return _steps(ref, x)
    finally:
        ref.release()


def _same(a, b):
    return all(np.array_equal(p.sums, q.sums) and p.inertia == q.inertia
               and np.array_equal(p.counts, q.counts) for p, q in zip(a, b))


def _resident(df, **kw):
    return ResidentTransport(data.packing(df, FEATURES, block_rows=100), 3, **kw)


def test_a_frozen_task_is_noticed_within_the_loss_timeout_and_the_fit_falls_back(points, caplog):
    """Partition 1's Python worker stopped (SIGSTOP: its socket stays open, nothing answers, as
    on a frozen host): the driver counts it lost 3 s after its last frame, waits 3 s for a retry
    that cannot come (Spark sees a running task), falls back and gives the same partials."""
    df, x = points
    transport = _resident(df, loss_timeout=3, reconnect_timeout=3)
    pid = transport.held[1]["pid"]
    try:
        assert transport.fallback is None and pid != os.getpid()
        os.kill(pid, signal.SIGSTOP)
        started = time.time()  # log records' clock
        with caplog.at_level("WARNING", logger="kmeans_dist"):
            got = _steps(transport, x)
        lost = [r for r in caplog.records if r.getMessage().startswith("lost 1 resident task")]
        assert len(lost) == 1 and "no word from the task in 3s" in lost[0].getMessage()
        assert 3 <= lost[0].created - started < 6  # noticed within the bound
        assert transport.fallback is not None
        assert "1 lost resident task(s) not back within 3s" in transport.fallback_reason
        assert transport.record()["fallback"] == transport.fallback_reason
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        transport.release()
    assert _same(got, _reference(df, x))


def test_a_driver_the_tasks_cannot_reach_is_reported_at_once(points, monkeypatch):
    """The tasks are told an address where nothing listens: each reports that it could not
    connect (not a 60 s silence), and the fit falls back within seconds."""
    df, x = points
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()[1]  # bound, never listening: connections are refused
        listen = resident._listen

        def advertise_nobody(sc):
            server, host, _ = listen(sc)
            return server, host, nobody

        monkeypatch.setattr(resident, "_listen", advertise_nobody)
        started = time.monotonic()
        transport = _resident(df, connect_timeout=60)
        took = time.monotonic() - started
    try:
        assert transport.fallback is not None
        assert f"could not reach the driver at 127.0.0.1:{nobody}" in transport.fallback_reason
        assert "ConnectionRefusedError" in transport.fallback_reason
        assert took < 20, took
        got = _steps(transport, x)
    finally:
        transport.release()
    assert _same(got, _reference(df, x))


class _FreezingProxy:
    """Between the tasks and the driver's socket (``target``, set by the test): forwards each
    connection both ways, except that once a task says hello for partition ``frozen`` nothing more
    it sends reaches the driver, and nothing is closed: its host froze while it packed.
    ``served`` is set when the driver's answer to that hello went through; ``token`` is the
    run's, from the hellos."""

    def __init__(self, frozen: int) -> None:
        self.frozen, self.target, self.token = frozen, None, None
        self.served = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.socks: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                task, _ = self.server.accept()
            except OSError:
                return
            driver = socket.create_connection(self.target)
            self.socks += [task, driver]
            hello = channel._recv_exact(task, channel.HELLO.size)
            token, part, _attempt = channel.HELLO.unpack(hello)
            self.token = token.decode()
            driver.sendall(hello)
            frozen = part == self.frozen
            threading.Thread(target=self._pump, args=(driver, task, True, frozen),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(task, driver, not frozen, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, forward: bool, watch: bool) -> None:
        try:
            while data := src.recv(65536):
                if forward:
                    dst.sendall(data)
                    if watch:
                        self.served.set()
        except OSError:
            pass

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def test_a_task_lost_while_it_packs_hands_its_partition_on(points, monkeypatch, caplog):
    """Partition 0's task goes silent once told to serve, before it is ready (its host froze
    while it packed); a second attempt (Spark's speculation or retry: here a peer with the run's
    token) stands by meanwhile. The driver counts the silent one lost after the loss timeout
    and promotes the second attempt instead of leaving it parked behind a task that is gone;
    that one lost too, the transport falls back 4 s (the connect timeout) after the loss: every
    wait stays bounded, and the partials are the same."""
    df, x = points
    proxy = _FreezingProxy(frozen=0)
    listen = resident._listen

    def through_proxy(sc):
        server, host, port = listen(sc)
        proxy.target = (host, port)
        return server, host, proxy.port

    monkeypatch.setattr(resident, "_listen", through_proxy)
    made = {}
    starting = threading.Thread(target=lambda: made.update(
        transport=_resident(df, loss_timeout=2, connect_timeout=4)), daemon=True)
    try:
        with caplog.at_level("WARNING", logger="kmeans_dist"):
            starting.start()
            assert proxy.served.wait(60), "partition 0 was never told to serve"
            with socket.create_connection(proxy.target, timeout=10) as second:
                second.sendall(channel.hello(proxy.token, 0, 1))
                assert channel.recv_request(second) == channel.STANDBY
                assert channel.recv_request(second) == channel.SERVE  # 2 s later
            assert "failed its handshake (Lost: no word from the task in 2s)" in caplog.text
            starting.join(30)
        assert not starting.is_alive(), "the driver still waits for partition 0"
        transport = made["transport"]
        try:
            assert transport.fallback is not None and transport.reconnects == 2
            assert transport.parked_total == 1
            assert "1 lost resident task(s) not back within 4s" in transport.fallback_reason
            got = _steps(transport, x)
        finally:
            transport.release()
    finally:
        proxy.close()
    assert _same(got, _reference(df, x))

# the workers cannot import this test module: ship its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _slow(batches):
    import time as _time

    _time.sleep(8)
    yield from batches


def test_a_long_stage_before_the_resident_one_is_not_an_unreachable_driver(spark, points):
    """A shuffle whose map side takes 8 s precedes the resident tasks; with a 3 s connect
    timeout they still start and serve (the clock runs only while nothing of the job runs)."""
    df, x = points
    slow = df.mapInArrow(_slow, df.schema).repartition(2)
    transport = _resident(slow, connect_timeout=3)
    try:
        assert transport.fallback is None, transport.fallback_reason
        got = _steps(transport, x)
    finally:
        transport.release()
    assert _same(got, _reference(slow, x))


def test_finished_tasks_of_a_stage_before_the_resident_one_do_not_end_the_wait(monkeypatch):
    """With AQE a shuffle's map side runs as a job of its own in the resident job's group, and
    its finished tasks count as returned ones until the resident job is submitted (seen: a
    fresh-clone run under load fell back here, "a resident task ended before serving"). A
    returned task ends the wait only once the resident job has ended; until then the tasks
    that connect are served."""
    import queue

    polls = []

    def progress(sc, group):  # one map task done, the other still running, for a while
        polls.append(time.monotonic())
        return 1, 1

    monkeypatch.setattr(resident, "group_progress", progress)
    t = object.__new__(ResidentTransport)
    t.sc, t._group, t.num_partitions, t.reconnects = None, "g", 2, 0
    t._job_done, t._job_error = threading.Event(), None
    t._arrivals, t._conns = queue.Queue(), {}

    def connect():  # the resident tasks connect 3 s later, past the first hint
        time.sleep(3)
        for part in (0, 1):
            t._arrivals.put(("ready", part, f"conn{part}"))

    threading.Thread(target=connect, daemon=True).start()
    t._wait_for({0, 1}, timeout=20, starting=True)
    assert t._conns == {0: "conn0", 1: "conn1"} and len(polls) >= 2
    # once the resident job has ended, a returned task does end the wait, with its reason
    t._job_done.set()
    t._job_error = "could not reach the driver"
    with pytest.raises(resident.ResidentUnavailable, match="could not reach the driver"):
        t._wait_for({0, 1}, timeout=20, starting=True)


def _fake_sc(conf: dict, now_slots: int | None):
    def max_tasks(_profile):
        if now_slots is None:
            raise RuntimeError("no scheduler")
        return now_slots

    jsc = SimpleNamespace(maxNumConcurrentTasks=max_tasks,
                          resourceProfileManager=lambda: SimpleNamespace(
                              defaultResourceProfile=lambda: None))
    return SimpleNamespace(_jsc=SimpleNamespace(sc=lambda: jsc),
                           getConf=lambda: SimpleNamespace(get=conf.get))


def test_dynamic_allocation_counts_the_slots_it_can_get():
    dyn = {"spark.dynamicAllocation.enabled": "true", "spark.executor.cores": "4",
           "spark.dynamicAllocation.maxExecutors": "5"}
    assert slots.obtainable_slots(_fake_sc(dyn, 0)) == 20  # none now, 5 x 4 to come
    assert slots.obtainable_slots(_fake_sc({**dyn, "spark.task.cpus": "2"}, 0)) == 10
    assert slots.obtainable_slots(_fake_sc({**dyn, "spark.cores.max": "6"}, 0)) == 6
    # unbounded executors, or cores unknown: only waiting tells
    assert slots.obtainable_slots(_fake_sc({**dyn, "spark.dynamicAllocation.maxExecutors": None}
                                           , 0)) is None
    assert slots.obtainable_slots(_fake_sc({"spark.dynamicAllocation.enabled": "true",
                                            "spark.dynamicAllocation.maxExecutors": "3"}, 2)) is None
    # without dynamic allocation: the slots of the executors there are
    assert slots.obtainable_slots(_fake_sc({}, 3)) == 3
    assert slots.obtainable_slots(_fake_sc({}, None)) is None


def test_block_files_a_crashed_fit_left_are_swept_by_the_next(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(tmp_path))
    top = tmp_path / "kmeans_dist"
    old, recent = top / "crashed-fit", top / "running-fit"
    for d in (old, recent):
        d.mkdir(parents=True)
        (d / "p0-0.x.npy").write_bytes(b"x" * 100)
    day_and_more = time.time() - local_files.STALE_AFTER - 60
    os.utime(old, (day_and_more, day_and_more))
    x = np.arange(12.0).reshape(4, 3)
    local_files._store("this-fit", [data.Block(0, 0, x, kernels.squared_norms(x))])
    assert not old.exists()
    assert (recent / "p0-0.x.npy").exists() and (top / "this-fit" / "p0-0.x.npy").exists()
    # a fit in use touches its directory on every pass, so it never looks stale
    os.utime(recent, (day_and_more, day_and_more))
    local_files.touch("running-fit")
    assert local_files.sweep_stale("another-fit") == []
    assert recent.exists()


def test_a_working_task_beats_and_an_idle_one_is_silent():
    """Heartbeats flow only inside ``beating`` (while the task works for the driver), so they
    never cross the task's own reads and writes; the thread ends with the socket."""
    from kmeans_dist import codec
    from kmeans_dist.transport import channel

    task, driver = socket.socketpair()
    with driver:
        with channel.beating(task, every=0.2):
            time.sleep(1.1)
        time.sleep(0.6)  # idle: nothing more
        driver.settimeout(1)
        beats = []
        with pytest.raises(socket.timeout):
            while True:
                beats.append(codec.decode(channel.recv_bytes(driver)))
        assert beats == [("beat", n) for n in range(1, len(beats) + 1)] and 4 <= len(beats) <= 6
        # the driver's reader skips them and returns the answer after
        with channel.beating(task):
            pass
        channel.send_message(task, ("ok", 1))
        assert channel.recv_message(driver, timeout=1) == ("ok", 1)
        task.close()
