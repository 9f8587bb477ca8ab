"""On a cluster with Spark's authentication and network encryption on, no fit data crosses between
hosts in clear text: the resident transport's side channel is TLS too.

A standalone cluster with ``spark.authenticate`` and ``spark.network.crypto.enabled`` (master,
workers and the application), its workers on 127.0.0.2 and 127.0.0.3 and the driver (a subprocess)
on 127.0.0.5: every address is this machine's loopback, so a raw ``AF_PACKET`` capture on ``lo``
(root) sees every packet between them. The fit starts from centres holding a marker value; the
marker must appear nowhere in the traffic between different addresses, neither as the 8 bytes
numpy sends nor as text, while a clear-text control message the test itself sends across the same
interface during the capture must be found (the capture does see clear text). Without Spark's
security (and so without TLS) the marker is seen on the side channel.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from standalone import log_tail, run_logged, spark_env, standalone

MARKER = 1234567.890123
#: the marker as numpy sends it (little-endian float64) and as text
MARKER_FORMS = (struct.pack("<d", MARKER), repr(MARKER).encode())
WORKER_HOSTS = ("127.0.0.2", "127.0.0.3")
DRIVER_HOST = "127.0.0.5"
CONTROL = ("127.0.0.6", "127.0.0.7")
SECURITY = ("spark.authenticate", "spark.network.crypto.enabled")
FIT_TIMEOUT = 120.0
#: the longest a capture runs, whatever happens to the fit
CAPTURE_SECONDS = 150.0

DRIVER = """
import json, sys
import numpy as np
from pyspark.sql import SparkSession, functions as F
from kmeans_dist import KMeans
from kmeans_dist import transport as transports

conf = json.loads(sys.argv[1])
builder = SparkSession.builder.master(conf.pop("master")).appName("kmeans-dist secure channel")
for key, value in conf.items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()

made, make = [], transports.make
def recording_make(*args, **kwargs):
    made.append(make(*args, **kwargs))
    made[-1].port = made[-1]._server.getsockname()[1] if made[-1].fallback is None else None
    return made[-1]
transports.make = recording_make

# rows made on the executors (nothing to ship); the start holds the marker
df = spark.range(0, 40_000, numPartitions=2).select(
    *[(F.rand(j) * 10 + (F.col("id") % 3) * 20).alias(f"f{j}") for j in range(4)])
init = np.array([[0.0, 0, 0, 0], [20, 20, 20, 20], [40, 40, 40, 40], [MARKER, 1, 2, 3]])
model = KMeans(4, init=init, transport="resident").fit(df)
t = made[0]
print("RESULT " + json.dumps({"transport": type(t).__name__, "fallback": repr(t.fallback),
                              "tls": t._tls is not None, "port": t.port,
                              "n_iter": model.n_iter, "sizes": model.cluster_sizes}))
spark.stop()
"""


class Capture:
    """Every IPv4 TCP payload on ``lo`` between two different addresses while the block runs
    (``flows``: (src, sport, dst, dport) -> the payloads' bytes in arrival order), from a raw
    ``AF_PACKET`` socket (root) read by a thread that stops at the block's end or after
    ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.flows: dict[tuple, bytearray] = defaultdict(bytearray)
        self.drops = None
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self._sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: keep up
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> "Capture":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.seconds)
        # struct tpacket_stats (packets, drops), from SOL_PACKET / PACKET_STATISTICS
        self.drops = struct.unpack("II", self._sock.getsockopt(263, 6, 8))[1]
        self._sock.close()

    def _read(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                frame, address = self._sock.recvfrom(1 << 17)
            except socket.timeout:
                continue
            if address[2] == socket.PACKET_OUTGOING:
                continue  # lo shows each packet twice: keep the copy received
            flow, payload = tcp_payload(frame)
            if payload and flow[0] != flow[2]:
                self.flows[flow].extend(payload)

    def holding(self, needle: bytes) -> list[tuple]:
        """The flows whose bytes contain ``needle``."""
        return [flow for flow, data in self.flows.items() if needle in data]


def tcp_payload(frame: bytes) -> tuple[tuple | None, bytes]:
    """((src, sport, dst, dport), payload) of an Ethernet-framed IPv4 TCP packet, else
    (None, b"")."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00":
        return None, b""
    ip = frame[14:]
    if ip[0] >> 4 != 4 or ip[9] != 6:
        return None, b""
    total = int.from_bytes(ip[2:4], "big")
    tcp = ip[(ip[0] & 0xF) * 4:total]
    flow = (socket.inet_ntoa(ip[12:16]), int.from_bytes(tcp[0:2], "big"),
            socket.inet_ntoa(ip[16:20]), int.from_bytes(tcp[2:4], "big"))
    return flow, bytes(tcp[(tcp[12] >> 4) * 4:])


def send_control() -> None:
    """The marker in clear text from one loopback address to another (the capture's control)."""
    with socket.create_server((CONTROL[1], 0)) as listener:
        with socket.create_connection(listener.getsockname()[:2], timeout=10,
                                      source_address=(CONTROL[0], 0)) as client:
            conn, _ = listener.accept()
            with conn:
                client.sendall(b"control: " + b" ".join(MARKER_FORMS))
                client.shutdown(socket.SHUT_WR)
                while conn.recv(4096):
                    pass


def fit_under_capture(base: Path, secure: bool) -> tuple[dict, Capture, Path]:
    """A standalone cluster (Spark's security on or off), a resident fit on it from a subprocess
    driver, captured; (the driver's RESULT, the capture, the driver's log)."""
    secret = secrets.token_hex(16)
    security = {key: "true" for key in SECURITY} if secure else {}
    if secure:
        security["spark.authenticate.secret"] = secret
    opts = " ".join(f"-D{key}={value}" for key, value in security.items())
    with standalone(base, hosts=WORKER_HOSTS, daemon_opts=opts or None) as cluster:
        script, log = base / "driver.py", base / "driver.log"
        script.write_text(DRIVER.replace("MARKER", repr(MARKER)))
        conf = {
            "master": cluster.master_url, **security,
            "spark.driver.host": DRIVER_HOST, "spark.driver.bindAddress": DRIVER_HOST,
            "spark.executor.cores": "1", "spark.executor.memory": "1g", "spark.cores.max": "2",
            # start only once both executors are registered: one resident task per slot
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",
            "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
            "spark.ui.enabled": "false",
        }
        env = spark_env(SPARK_LOCAL_IP=DRIVER_HOST, PYSPARK_PYTHON=sys.executable)
        with Capture(CAPTURE_SECONDS) as capture:
            send_control()
            code = run_logged([sys.executable, str(script), json.dumps(conf)], log, env, base,
                              FIT_TIMEOUT)
        assert code == 0, f"driver exited with {code}\n{log_tail(log, 60)}"
    lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    assert lines, log_tail(log, 60)
    return json.loads(lines[-1][len("RESULT "):]), capture, log


@pytest.mark.cluster
def test_no_fit_data_in_clear_text_on_a_secured_cluster(tmp_path: Path) -> None:
    started = time.perf_counter()
    result, capture, log = fit_under_capture(tmp_path, secure=True)

    # the fit ran on the resident transport, over TLS (no fallback to Spark jobs)
    assert result["transport"] == "ResidentTransport" and result["fallback"] == "None", result
    assert result["tls"] and result["n_iter"] >= 2, result
    # the capture saw every packet, the side channel's among them: TLS records both ways
    assert capture.drops == 0
    side = [flow for flow in capture.flows if result["port"] in (flow[1], flow[3])
            and DRIVER_HOST in (flow[0], flow[2])]
    assert {flow[2] == DRIVER_HOST for flow in side} == {True, False}, sorted(capture.flows)
    assert all(capture.flows[flow][:1] == b"\x16" for flow in side)  # a TLS handshake record
    # the control is seen in clear; the marker nowhere else
    for form in MARKER_FORMS:
        found = capture.holding(form)
        assert found and all(flow[0] == CONTROL[0] for flow in found), (form, found)
    print(f"\nsecure cluster test: {len(capture.flows)} flows, "
          f"{sum(map(len, capture.flows.values()))} payload bytes between addresses, "
          f"{time.perf_counter() - started:.1f} s")
