"""The result codec: exact round trips of everything tasks return, and refusals (never a pickle)."""

import dataclasses
import json
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from kmeans_dist import codec, kernels, tasks

NUMERIC_DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                  "float16", "float32", "float64", ">f8", ">i4", "complex64", "complex128"]


def same(a, b) -> bool:
    """Exact equality, recursively: same types, numpy arrays bit for bit with the same dtype and
    shape (so NaN equals NaN only with the same bits)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (np.ndarray, np.generic)):
        return (a.dtype == b.dtype and a.dtype.str == b.dtype.str and np.shape(a) == np.shape(b)
                and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


def round_trip(obj):
    data = codec.encode(obj)
    assert isinstance(data, bytes)
    back = codec.decode(data)
    assert same(back, obj), (obj, back)
    return back


def test_same_is_strict():
    """The comparison the round trips rely on tells apart what the codec must keep apart."""
    assert not same(np.zeros(2), np.zeros(2, dtype=np.float32))
    assert not same(np.zeros((2, 1)), np.zeros(2))
    assert not same(1, 1.0) and not same(True, 1) and not same((1,), [1])
    assert not same(0.0, -0.0) and not same(np.float64(1.0), 1.0)
    assert not same(np.array([np.nan]), np.array([-np.nan]))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2**70, 0.1, -0.0, 1e-310, math.pi, float("nan"), float("inf"),
    float("-inf"), "", "héllo \"quoted\" \n", [], (), {}, [1, "a", None], (1, (2.5, [3])),
    {"a": 1, "b": [None, (True, "x")], "": {"nested": -1.5}},
    {"bad feature": (3, {"f0": "NaN", "f1": None, "f2": 1.5})},
], ids=repr)
def test_plain_values_round_trip(value):
    round_trip(value)


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
def test_arrays_of_every_numeric_dtype_round_trip_bit_for_bit(dtype):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=6 * 5 * np.dtype(dtype).itemsize, dtype=np.uint8)
    a = raw.view(dtype).reshape(6, 5)  # every bit pattern, NaN payloads included for floats
    if a.dtype.kind == "b":
        a = raw[:30].astype(bool).reshape(6, 5)
    back = round_trip(a)
    assert back.flags.c_contiguous and back.flags.writeable and back.flags.owndata
    assert same(round_trip(a[0, 0]), a[0, 0])  # the numpy scalar of that dtype


@pytest.mark.parametrize("shape", [(), (0,), (3,), (0, 4), (4, 0), (2, 3, 4), (1, 1, 1, 1)],
                         ids=str)
def test_array_shapes_round_trip(shape):
    round_trip(np.arange(math.prod(shape), dtype=np.float64).reshape(shape) / 3)


def test_floats_keep_nan_inf_and_signed_zero():
    a = np.array([[np.nan, np.inf, -np.inf], [-0.0, 5e-324, np.finfo(float).max]])
    back = round_trip(a)
    assert np.array_equal(back, a, equal_nan=True) and np.signbit(back[1, 0])
    assert same(round_trip([float("nan"), -0.0]), [float("nan"), -0.0])


def test_non_contiguous_arrays_arrive_in_c_order():
    a = np.arange(24, dtype=np.float64).reshape(4, 6)
    for view in (a.T, a[:, ::2], np.asfortranarray(a)):
        back = codec.decode(codec.encode(view))
        assert back.flags.c_contiguous and back.shape == view.shape
        assert np.array_equal(back, view)


def test_registered_dataclasses_round_trip():
    rng = np.random.default_rng(1)
    partials = kernels.Partials(rng.normal(size=(16, 16)), rng.uniform(size=16),
                                np.arange(16, dtype=np.int64), 123.456, 7)
    summary = tasks.Summary(1000, 987.5, rng.normal(size=4), rng.uniform(size=4),
                            {"bad feature": (2, {"a": None, "b": "inf"})})
    cand = tasks.Candidate(-3.5, rng.normal(size=4), 2.0, 3)
    sample = tasks.SampleResult(42.0, [cand, tasks.Candidate(float("inf"), np.zeros(4))])
    for obj in (partials, summary, cand, sample, [partials, partials], ("ok", [partials])):
        round_trip(obj)
    assert round_trip(sample).candidates[1].label == -1


def test_every_task_result_round_trips():
    """What tasks.py's functions return over real blocks, exactly as the transports carry it."""
    from kmeans_dist.blocks import Block

    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 3))
    blocks = [Block(0, 0, x[:200], kernels.squared_norms(x[:200])),
              Block(0, 200, x[200:], kernels.squared_norms(x[200:]), rng.uniform(0.5, 2, 100))]
    c = x[:4].copy()
    results = [
        tasks.summarize(blocks, 3),
        tasks.lloyd_many(blocks, [tasks.LloydStep("codec", 1, c, None)]),
        tasks.farthest(blocks, tasks.FarthestStep("codec", 1, c, 3)),
        tasks.sample(blocks, tasks.SampleStep(1, 1, 5)),
        tasks.oversample(blocks, tasks.OversampleStep(1, 2, 10, c)),
        tasks.nearest_weights(blocks, c),
    ]
    for result in results:
        round_trip(result)
        round_trip(("ok", result))
    round_trip(("error", "ZeroDivisionError: division by zero"))


class NotRegistered:
    pass


class ArraySubclass(np.ndarray):
    pass


@dataclasses.dataclass
class LooksLikePartials:
    sums: np.ndarray


@pytest.mark.parametrize("value", [
    LooksLikePartials(np.zeros(2)), NotRegistered(), {1: "int key"}, {("a",): 1}, {1, 2},
    b"bytes", np.array(["a"]), np.array([object()]), np.datetime64("2024-01-01"),
    np.zeros(2, dtype=[("a", "f8")]), [1, NotRegistered()], np.str_("x"), 1 + 2j, len,
    np.zeros(2).view(ArraySubclass),
], ids=lambda v: type(v).__name__)
def test_unregistered_types_are_refused_on_encode(value):
    with pytest.raises(TypeError, match="codec"):
        codec.encode(value)


def framed(text: bytes, trailer: bytes = b"") -> bytes:
    """Hand-made codec bytes: the header, ``text`` as the skeleton, the trailer."""
    return codec.MAGIC + struct.pack("!Q", len(text)) + text + trailer


def payload(skeleton, trailer: bytes = b"") -> bytes:
    """Hand-made codec bytes around a JSON skeleton."""
    return framed(json.dumps(skeleton, separators=(",", ":")).encode(), trailer)


def test_a_hand_made_payload_decodes():
    """The helper builds what encode builds, so the refusals below are of the content alone."""
    assert codec.decode(payload({"tuple": [1, {"array": ["<f8", [2], 0]}]},
                                np.array([1.5, 2.5]).tobytes()))[1].tolist() == [1.5, 2.5]
    assert payload([1, "a"]) == codec.encode([1, "a"])


@pytest.mark.parametrize("skeleton", [
    {"dataclass": ["os.system", {}]},
    {"dataclass": ["builtins.eval", {"source": "1"}]},
    {"dataclass": ["Partials", {}]},
    {"dataclass": ["kernels.Partials", {"sums": 1}]},  # fields missing
    {"dataclass": ["tasks.Candidate", {"key": 1.0, "row": [], "weight": 1.0, "label": 0,
                                       "extra": 1}]},
    {"pickle": "gASVAAAAAAAAAAA="},
    {"tuple": [1], "dict": {}},
    {"dict": [1, 2]},
    {"array": ["|O", [1], 0]},
    {"array": ["<M8[s]", [1], 0]},
    {"array": ["f8,i4", [1], 0]},
    {"array": ["(2,)f8", [1], 0]},
    {"array": ["<f8", [-1], 0]},
    {"array": ["<f8", [1.5], 0]},
    {"array": ["<f8", [1], -8]},
    {"array": ["<f8", [10**30, 10**30], 0]},
    {"scalar": ["<f8"]},
])
def test_unknown_or_malformed_skeletons_are_refused(skeleton):
    with pytest.raises(ValueError, match="codec"):
        codec.decode(payload(skeleton, b"\0" * 8))


def test_unknown_type_name_is_refused():
    with pytest.raises(ValueError, match="not in the codec's registry"):
        codec.decode(payload({"dataclass": ["tasks.LloydStep", {}]}))


def test_truncated_and_garbage_bytes_are_refused():
    data = codec.encode(["ok", kernels.Partials.zeros(4, 3), np.arange(10.0)])
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            codec.decode(data[:cut])
    with pytest.raises(ValueError, match="no array claims"):
        codec.decode(data + b"\0")
    rng = np.random.default_rng(0)
    for _ in range(200):
        with pytest.raises(ValueError):
            codec.decode(rng.integers(0, 256, size=rng.integers(0, 200), dtype=np.uint8).tobytes())
    with pytest.raises(ValueError):
        codec.decode(framed(b"\xff\xfe\xfd"))  # not UTF-8
    with pytest.raises(ValueError):
        codec.decode(framed(b"[" * 100_000 + b"]" * 100_000))  # deeper than the parser goes
    with pytest.raises(ValueError):
        codec.decode(framed(b'{"tuple":' * 5_000 + b"[]" + b"}" * 5_000))  # and than decoding


class WritesAFile:
    """Unpickling this creates a file: the proof that nothing was unpickled is that it is not
    there."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickle_is_never_unpickled(tmp_path):
    target = tmp_path / "unpickled"
    evil = pickle.dumps(WritesAFile(str(target)))
    pickle.loads(evil)  # the payload works: loading it does create the file
    assert target.exists()
    target.unlink()
    for data in (evil, codec.MAGIC + evil, payload({"pickle": evil.hex()}), evil + codec.encode(1)):
        with pytest.raises(ValueError):
            codec.decode(data)
    assert not target.exists()
    assert not os.listdir(tmp_path)


def test_encoding_a_partials_is_fast():
    """The codec is on every iteration's path: a (k, d) float64 result encodes and decodes in
    well under a millisecond."""
    import time

    p = [kernels.Partials(np.ones((16, 16)), np.ones(16), np.ones(16, dtype=np.int64), 1.0, 0)]
    start = time.perf_counter()
    for _ in range(200):
        codec.decode(codec.encode(p))
    assert (time.perf_counter() - start) / 200 < 1e-3
