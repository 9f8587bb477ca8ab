"""The resident transport's side channel: framing, who may send what, and bounded waits.

One TCP connection (TLS where Spark is secured, see ``tls``) per resident task. Frames are an
8-byte length and a payload. Driver to task: requests, cloudpickled as Spark ships task functions
(the task unpickles only what the driver it proved by TLS sends); task to driver: messages in
``kmeans_dist.codec``, never unpickled.

Liveness. A task sends a heartbeat frame every ``HEARTBEAT`` seconds while it works for the
driver (packing its rows, answering a request), from a thread of its own that stops before the
task sends its answer, so two threads never write to the socket at once and none writes while the
task reads. The driver reads every message with a ``LOSS_TIMEOUT`` timeout, skipping heartbeats:
a host that stops without closing its connection (frozen, cut off) is noticed ``LOSS_TIMEOUT``
seconds after its last frame. Between requests nothing flows, so a task waits for the next
request with no timeout; TCP keepalive on both ends notices a peer whose host is gone.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from pyspark import cloudpickle

from kmeans_dist import codec
from kmeans_dist.transport import tls

_LEN = struct.Struct("!Q")
#: the first message of a task (inside TLS when the channel is secure): the run's token (32 hex
#: characters), partition, attempt; raw bytes, checked before anything else from the peer is read
HELLO = struct.Struct("!32sII")
#: what a task sends the driver (codec-encoded 2-tuples): ("ready", report) once its blocks are
#: held, then per request ("ok", result) or ("error", message); ("beat", n) while it works
MESSAGES = ("ready", "ok", "error", "beat")
#: the driver's answer to a hello: pack and serve, or stand by (a partition a live task holds)
SERVE, STANDBY = "serve", "standby"
#: seconds between a working task's heartbeats
HEARTBEAT = 2.0
#: seconds without a frame from a working task before the driver counts it lost
LOSS_TIMEOUT = 20.0
#: seconds a task's connect to the driver may take before it reports the driver unreachable
CONNECT_TIMEOUT = 10.0


class Lost(ConnectionError):
    """The peer closed the connection, sent something it may not, or went silent."""


# --------------------------------------------------------------------------- frames
def _send_bytes(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            raise Lost("connection closed")
        got += r
    return bytes(buf)


def recv_bytes(sock: socket.socket) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    return _recv_exact(sock, n)


def hello(token: str, part: int, attempt: int) -> bytes:
    """A task's first frame (see ``HELLO``)."""
    return HELLO.pack(token.encode("ascii"), part, attempt)


def recv_hello(sock: socket.socket) -> tuple[bytes, int, int]:
    """(token, partition, attempt) of a task's first frame."""
    return HELLO.unpack(_recv_exact(sock, HELLO.size))


# --------------------------------------------------------------------------- driver to task
def send_request(sock: socket.socket, obj: Any) -> None:
    """A request (or a verdict, or None: stop), driver to task: cloudpickled."""
    _send_bytes(sock, cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def recv_request(sock: socket.socket) -> Any:
    """The driver's next request, on the task's side (see ``load_request``)."""
    return load_request(recv_bytes(sock))


def load_request(data: bytes) -> Any:
    """A request from its frame: the driver's, proven by TLS where Spark is secured (elsewhere
    the channel is as open as Spark's own)."""
    return pickle.loads(data)


# --------------------------------------------------------------------------- task to driver
def send_message(sock: socket.socket, message: tuple) -> None:
    """A message, task to driver, in the codec; a result the codec cannot carry is sent as an
    error naming it."""
    try:
        data = codec.encode(message)
    except TypeError as exc:
        data = codec.encode(("error", f"TypeError: {exc}"))
    _send_bytes(sock, data)


def recv_message(sock: socket.socket, timeout: float = LOSS_TIMEOUT) -> tuple[str, Any]:
    """A task's next message other than a heartbeat (see ``MESSAGES``), decoded by the codec,
    never unpickled. ``Lost`` when the task closed, sent anything else, or sent no frame for
    ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            message = codec.decode(recv_bytes(sock))
            if type(message) is not tuple or len(message) != 2 or message[0] not in MESSAGES:
                raise Lost("not a resident task's message")
            if message[0] != "beat":
                return message
    except socket.timeout:
        raise Lost(f"no word from the task in {timeout:.0f}s") from None
    except (ValueError, struct.error) as exc:
        raise Lost(f"bad message: {exc}") from None


class _Heartbeat:
    """One task connection's heartbeat thread: it sends ("beat", n) every ``every`` seconds while
    the task works, under a lock the task takes to stop it, so it never writes at the same time
    as the task and never while the task reads. One thread for the connection's life (starting
    one per request would cost ~0.1 ms an iteration); it ends once the socket is closed."""

    def __init__(self, sock: socket.socket, every: float) -> None:
        self.sock, self.every = sock, every
        self.lock = threading.Lock()
        self.working = False
        self.beats = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            with self.lock:
                if self.sock.fileno() == -1:
                    return
                if self.working:
                    self.beats += 1
                    try:
                        send_message(self.sock, ("beat", self.beats))
                    except OSError:
                        return  # the answer's own send will see it


_heartbeats: "weakref.WeakKeyDictionary[socket.socket, _Heartbeat]" = weakref.WeakKeyDictionary()


@contextmanager
def beating(sock: socket.socket, every: float = HEARTBEAT) -> Iterator[None]:
    """Heartbeats to the driver every ``every`` seconds while the block runs (see
    ``_Heartbeat``); stopped before the block's caller writes or reads again."""
    beat = _heartbeats.get(sock)
    if beat is None:
        beat = _heartbeats[sock] = _Heartbeat(sock, every)
    with beat.lock:
        beat.working = True
    try:
        yield
    finally:
        with beat.lock:
            beat.working = False


# --------------------------------------------------------------------------- sockets
def keepalive(sock: socket.socket) -> None:
    """TCP keepalive: a peer whose host is gone is noticed in about two minutes (a dead host's
    kernel answers no probes), with no timeout on the reads themselves."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(host: str, port: int, pinned: str | None, hello: bytes) -> socket.socket:
    """The task's connection to the driver: TLS, checked against the ``pinned`` certificate
    fingerprint, when the driver serves TLS (``pinned`` None: clear text); then the hello.
    Raises OSError (within ``CONNECT_TIMEOUT``) when the driver cannot be reached."""
    sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    try:
        if pinned is not None:
            sock = tls.client_wrap(sock, host, pinned)
        sock.settimeout(None)
        keepalive(sock)
        sock.sendall(hello)
    except BaseException:
        sock.close()
        raise
    return sock
