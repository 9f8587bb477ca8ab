"""Task results as bytes that can only describe data: JSON for the structure, raw array bytes after.

A task's result crosses from an executor to the driver (the resident transport's socket) or from a
Spark Connect server to its client (a binary column). Unpickling it would let whoever can write on
that path run code in the driver or the client, so results travel in this codec instead, which
decodes to plain values and nothing else: no import, no call of any constructor but the allow-
listed dataclasses' own. Requests still go the other way as (cloud)pickles, as Spark ships task
functions itself: an executor runs what the driver sends, never the reverse.

What it carries is exactly what the tasks in ``tasks.py`` return: None, bool, int, float, str,
list, tuple, dict with str keys, numpy arrays and scalars of a numeric dtype (bool, int, uint,
float, complex; dtype, byte order and shape kept, values bit for bit, NaN and infinities
included), and the dataclasses of ``REGISTRY``. Anything else is a TypeError when encoding; a
payload that is truncated, malformed or names a type outside ``REGISTRY`` is a ValueError when
decoding.

Layout: ``MAGIC`` | the JSON skeleton's length (8 bytes, big-endian) | the skeleton (UTF-8) | the
arrays' bytes, one after the other in C order. In the skeleton, JSON's own values stand for
None, bool, int, float (Python's exact repr; NaN and Infinity as Python's json writes them), str
and list; everything else is an object with one key naming its kind: ``{"tuple": [...]}``,
``{"dict": {...}}``, ``{"array": [dtype, shape, offset]}``, ``{"scalar": [dtype, offset]}`` (the
offset into the array bytes) and ``{"dataclass": [name, {field: value}]}``. A (k, d) float64 array
costs one ``tobytes`` to encode and one copy to decode.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import Any

import numpy as np

from kmeans_dist import kernels, tasks

MAGIC = b"KDC1"
_HEAD = struct.Struct("!4sQ")
#: array kinds the codec carries: bool, signed and unsigned int, float, complex
NUMERIC_KINDS = "biufc"
#: the only classes a payload may name, by the name it uses
REGISTRY: dict[str, type] = {
    "kernels.Partials": kernels.Partials,
    "tasks.Summary": tasks.Summary,
    "tasks.Candidate": tasks.Candidate,
    "tasks.SampleResult": tasks.SampleResult,
}
_NAMES = {cls: name for name, cls in REGISTRY.items()}
_PLAIN = (type(None), bool, int, float, str)


# --------------------------------------------------------------------------- encode
def encode(obj: Any) -> bytes:
    """``obj`` as codec bytes; TypeError for anything the codec does not carry."""
    arrays: list[bytes] = []
    skeleton = json.dumps(_skeleton(obj, arrays), separators=(",", ":")).encode("utf-8")
    return b"".join([_HEAD.pack(MAGIC, len(skeleton)), skeleton, *arrays])


def _skeleton(obj: Any, arrays: list[bytes]) -> Any:
    """``obj`` as a JSON value; array bytes appended to ``arrays``."""
    kind = type(obj)
    if kind in _PLAIN:
        return obj
    if kind is list:
        return [_skeleton(v, arrays) for v in obj]
    if kind is tuple:
        return {"tuple": [_skeleton(v, arrays) for v in obj]}
    if kind is dict:
        if not all(type(key) is str for key in obj):
            raise TypeError("codec: dict keys must be str")
        return {"dict": {key: _skeleton(v, arrays) for key, v in obj.items()}}
    if kind is np.ndarray or isinstance(obj, np.generic):
        return _numeric(obj, arrays)
    if kind in _NAMES:
        fields = {f.name: _skeleton(getattr(obj, f.name), arrays)
                  for f in dataclasses.fields(obj)}
        return {"dataclass": [_NAMES[kind], fields]}
    raise TypeError(f"codec: cannot encode {kind.__module__}.{kind.__qualname__} "
                    "(not a plain value, numeric numpy value or registered dataclass)")


def _numeric(obj: np.ndarray | np.generic, arrays: list[bytes]) -> dict:
    """A numpy array or scalar: its dtype and shape in the skeleton, its bytes in ``arrays``."""
    dtype = obj.dtype
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise TypeError(f"codec: numpy dtype {dtype} is not numeric")
    offset = sum(len(a) for a in arrays)
    arrays.append(np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, np.generic):
        return {"scalar": [dtype.str, offset]}
    return {"array": [dtype.str, list(obj.shape), offset]}


# --------------------------------------------------------------------------- decode
def decode(data: bytes | bytearray | memoryview) -> Any:
    """The value ``encode`` made these bytes from; ValueError for anything else."""
    view = memoryview(data).cast("B")
    if len(view) < _HEAD.size:
        raise ValueError("codec: payload shorter than its header")
    magic, size = _HEAD.unpack(view[:_HEAD.size])
    if magic != MAGIC:
        raise ValueError("codec: not a kmeans_dist codec payload")
    end = _HEAD.size + size
    if end > len(view):
        raise ValueError("codec: payload truncated inside its skeleton")
    trailer = _Trailer(view[end:])
    try:
        value = _value(json.loads(bytes(view[_HEAD.size:end]).decode("utf-8")), trailer)
    except (TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        raise ValueError(f"codec: malformed payload ({type(exc).__name__}: {exc})") from None
    if trailer.used != len(trailer.data):
        raise ValueError("codec: payload has bytes no array claims")
    return value


class _Trailer:
    """The array bytes after the skeleton, and how many of them the arrays read so far claim."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.used = data, 0

    def take(self, dtype: np.dtype, shape: tuple[int, ...], offset: Any) -> np.ndarray:
        """A fresh (writable, aligned) array of ``dtype`` and ``shape`` read at ``offset``."""
        if type(offset) is not int or offset < 0:
            raise ValueError(f"codec: bad array offset {offset!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > len(self.data):
            raise ValueError("codec: payload truncated inside its array bytes")
        self.used += nbytes
        out = np.empty(shape, dtype)
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.data, np.uint8, nbytes, offset)
        return out


def _value(node: Any, trailer: _Trailer) -> Any:
    """The value a skeleton node stands for."""
    kind = type(node)
    if kind in _PLAIN:
        return node
    if kind is list:
        return [_value(v, trailer) for v in node]
    if kind is not dict or len(node) != 1:
        raise ValueError(f"codec: unexpected node {node!r:.80}")
    ((tag, body),) = node.items()
    if tag == "tuple" and type(body) is list:
        return tuple(_value(v, trailer) for v in body)
    if tag == "dict" and type(body) is dict:
        return {key: _value(v, trailer) for key, v in body.items()}
    if tag == "array" and type(body) is list and len(body) == 3:
        dtype_str, shape, offset = body
        return trailer.take(_dtype(dtype_str), _shape(shape), offset)
    if tag == "scalar" and type(body) is list and len(body) == 2:
        dtype_str, offset = body
        return trailer.take(_dtype(dtype_str), (), offset)[()]
    if tag == "dataclass" and type(body) is list and len(body) == 2:
        return _dataclass(*body, trailer)
    raise ValueError(f"codec: unexpected node {node!r:.80}")


def _dtype(text: Any) -> np.dtype:
    """A numeric dtype from its ``dtype.str`` (e.g. '<f8'); nothing else."""
    if type(text) is not str or len(text) > 8:
        raise ValueError(f"codec: bad dtype {text!r:.40}")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise ValueError(f"codec: bad dtype {text!r}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.str != text:
        raise ValueError(f"codec: dtype {text!r} is not a plain numeric dtype")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"codec: bad array shape {shape!r:.80}")
    return tuple(shape)


def _dataclass(name: Any, fields: Any, trailer: _Trailer) -> Any:
    """An instance of the registered class ``name`` from exactly its fields."""
    cls = REGISTRY.get(name) if type(name) is str else None
    if cls is None:
        raise ValueError(f"codec: type {name!r:.80} is not in the codec's registry")
    expected = {f.name for f in dataclasses.fields(cls)}
    if type(fields) is not dict or set(fields) != expected:
        raise ValueError(f"codec: {name} needs exactly the fields {sorted(expected)}")
    return cls(**{key: _value(v, trailer) for key, v in fields.items()})
