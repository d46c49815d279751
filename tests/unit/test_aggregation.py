"""Performance → client weights and the streaming weighted average of ArrayRecords."""

import io
import math
import tracemalloc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedprivacy.aggregation import (
    CLIENT_WEIGHTINGS,
    StreamingAverage,
    array_from_numpy,
    array_view,
    client_weights,
)

pytestmark = pytest.mark.unit

SHAPES = {"embed.weight": (13, 8), "layers.0.q.weight": (8, 8), "layers.0.norm.weight": (8,),
          "lm_head.weight": (13, 8)}


def make_record(seed: int, shapes=SHAPES, dtype=np.float32) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({k: Array(rng.standard_normal(s).astype(dtype)) for k, s in shapes.items()})


def reference_average(records: list[ArrayRecord], weights: list[float]) -> dict[str, np.ndarray]:
    """Σ_k w_k·θ_k / Σ_k w_k in float64, one element at a time (np.load copies; that is fine here)."""
    total = sum(weights)
    out = {}
    for key in records[0]:
        arrays = [np.load(io.BytesIO(r[key].data)).astype(np.float64) for r in records]
        flat = [sum(w * a.flat[i] for w, a in zip(weights, arrays)) / total
                for i in range(arrays[0].size)]
        out[key] = np.array(flat).reshape(arrays[0].shape)
    return out


def streaming(records: list[ArrayRecord], weights: list[float]) -> ArrayRecord:
    avg = StreamingAverage(records[0])
    for record, weight in zip(records, weights):
        avg.add(record, weight)
    return avg.result()


# ---------------------------------------------------------------- client weights

def test_softmax_client_weights_agree_with_reference():
    # Prepare
    scores = {"a": 0.4, "b": 0.7, "c": 0.65}
    tau = 0.1
    z = sum(math.exp(s / tau) for s in scores.values())

    # Execute
    weights = client_weights(scores, "softmax", temperature=tau)

    # Assert
    assert weights == pytest.approx({c: math.exp(s / tau) / z for c, s in scores.items()})
    assert sum(weights.values()) == pytest.approx(1.0)


def test_softmax_client_weights_are_stable_for_large_scores():
    # Prepare
    scores = {1: 1000.0, 2: 999.0}

    # Execute
    weights = client_weights(scores, "softmax", temperature=0.01)

    # Assert
    assert weights[1] == pytest.approx(1.0)
    assert weights[2] == pytest.approx(0.0, abs=1e-30)


def test_other_client_weightings():
    # Prepare
    scores = {"a": 1.0, "b": 3.0}
    examples = {"a": 30, "b": 10}

    # Execute
    proportional = client_weights(scores, "proportional")
    uniform = client_weights(scores, "uniform")
    fedavg = client_weights(scores, "num_examples", num_examples=examples)

    # Assert
    assert proportional == pytest.approx({"a": 0.25, "b": 0.75})
    assert uniform == pytest.approx({"a": 0.5, "b": 0.5})
    assert fedavg == pytest.approx({"a": 0.75, "b": 0.25})
    assert set(CLIENT_WEIGHTINGS) == {"softmax", "proportional", "uniform", "num_examples"}


@pytest.mark.parametrize("scores, method, match", [
    ({}, "softmax", "empty"),
    ({"a": 0.5, "node-7": math.nan}, "softmax", "'node-7' has a non-finite score"),
    ({"a": 0.5, 3: math.inf}, "uniform", "client 3 has a non-finite score"),
    ({"a": 0.5, "b": -0.1}, "proportional", "'b' has a negative score"),
    ({"a": 0.0, "b": 0.0}, "proportional", "sum to 0"),
    ({"a": 0.5}, "num_examples", "needs num_examples"),
    ({"a": 0.5}, "best", "unknown client weighting"),
])
def test_client_weights_errors_name_the_problem(scores, method, match):
    # Prepare: the parameters

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        client_weights(scores, method)


def test_num_examples_weighting_names_a_client_without_a_count():
    # Prepare
    scores = {"a": 0.5, "b": 0.6}

    # Execute / Assert
    with pytest.raises(ValueError, match="'b' has an invalid num_examples"):
        client_weights(scores, "num_examples", num_examples={"a": 4})


# ---------------------------------------------------------------- streaming average

def test_streaming_average_agrees_with_flower_and_reference():
    # Prepare
    records = [make_record(seed) for seed in range(4)]
    weights = [0.1, 2.5, 1.0, 0.0]
    replies = [RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": w})})
               for r, w in zip(records, weights)]

    # Execute
    ours = streaming(records, weights)
    flower = aggregate_arrayrecords(replies, "num-examples")
    expected = reference_average(records, weights)

    # Assert
    assert list(ours) == list(SHAPES)
    for key in SHAPES:
        got = ours[key].numpy()
        assert got.dtype == np.float32 and got.shape == SHAPES[key]
        np.testing.assert_allclose(got, flower[key].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got, expected[key], rtol=1e-5, atol=1e-6)


def test_add_many_agrees_with_one_at_a_time_and_names_a_bad_record():
    # Prepare: > one block per key, one Fortran-ordered client, one zero weight
    shapes = {"big": (200, 400), "vec": (70_000,)}
    records = [make_record(seed, shapes) for seed in range(3)]
    x = np.random.default_rng(9).standard_normal((200, 400)).astype(np.float32)
    records.append(ArrayRecord({"big": Array(np.asfortranarray(x)), "vec": records[0]["vec"]}))
    weights = [0.5, 0.0, 1.5, 2.0]
    bad = make_record(5, {**shapes, "vec": (3,)})
    avg = StreamingAverage(records[0])

    # Execute
    with pytest.raises(ValueError, match=r"record 1: array 'vec': got float32\(3,\)"):
        avg.add_many([records[0], bad], [1.0, 1.0])
    avg.add_many(records, weights)
    many = avg.result()
    single = streaming(records, weights)

    # Assert: the failed call added nothing; both paths agree with the reference
    expected = reference_average(records, weights)
    for key in shapes:
        np.testing.assert_allclose(many[key].numpy(), single[key].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(many[key].numpy(), expected[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 records but 1 weights"):
        StreamingAverage(records[0]).add_many(records[:2], [1.0])


def test_streaming_average_handles_fortran_order_float16_and_float64():
    # Prepare
    records = []
    for seed, order in [(0, "F"), (1, "C")]:
        x = np.random.default_rng(seed).standard_normal((5, 3))
        records.append({dt: ArrayRecord({"w": Array(np.asarray(x.astype(dt), order=order))})
                        for dt in (np.float16, np.float64)})
    weights = [1.0, 3.0]

    # Execute
    half = streaming([r[np.float16] for r in records], weights)
    double = streaming([r[np.float64] for r in records], weights)

    # Assert: dtype kept; float64 keys accumulate in float64
    expected = reference_average([r[np.float64] for r in records], weights)["w"]
    assert half["w"].numpy().dtype == np.float16 and double["w"].numpy().dtype == np.float64
    np.testing.assert_allclose(half["w"].numpy(), expected, atol=2e-3)
    np.testing.assert_allclose(double["w"].numpy(), expected, rtol=1e-12)


def test_streaming_average_spans_several_blocks_in_c_and_fortran_order():
    # Prepare: 150k elements (> one 64k block); the second client sends a Fortran-ordered payload
    x = np.random.default_rng(0).standard_normal((300, 500)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((300, 500)).astype(np.float32)
    records = [ArrayRecord({"w": Array(x)}), ArrayRecord({"w": Array(np.asfortranarray(y))})]

    # Execute
    got = streaming(records, [0.25, 0.75])["w"].numpy()

    # Assert
    expected = (0.25 * x.astype(np.float64) + 0.75 * y.astype(np.float64))
    assert records[1]["w"].data[:128].find(b"'fortran_order': True") > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_zero_total_weight_is_an_error():
    # Prepare
    records = [make_record(0), make_record(1)]
    replies = [RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": 0})}) for r in records]
    avg = StreamingAverage(records[0])
    for r in records:
        avg.add(r, 0.0)

    # Execute / Assert: ours says why; Flower's reference fails with a bare division error
    with pytest.raises(ValueError, match="total weight is 0.0 over 2 records"):
        avg.result()
    with pytest.raises(ZeroDivisionError):
        aggregate_arrayrecords(replies, "num-examples")


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf, "1"])
def test_bad_weights_are_rejected(weight):
    # Prepare
    avg = StreamingAverage(make_record(0))

    # Execute / Assert
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        avg.add(make_record(1), weight)


def test_mismatched_records_are_rejected_naming_the_key_and_leave_the_sum_untouched():
    # Prepare
    good = make_record(0)
    missing = make_record(1, {k: s for k, s in SHAPES.items() if k != "lm_head.weight"})
    extra = make_record(2, {**SHAPES, "extra.bias": (3,)})
    wrong_shape = make_record(3, {**SHAPES, "layers.0.norm.weight": (9,)})
    wrong_dtype = make_record(4, dtype=np.float64)
    avg = StreamingAverage(good)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        avg.add(missing, 1.0)
    with pytest.raises(ValueError, match=r"unexpected \['extra.bias'\]"):
        avg.add(extra, 1.0)
    with pytest.raises(ValueError,
                       match=r"'layers.0.norm.weight': got float32\(9,\), expected float32\(8,\)"):
        avg.add(wrong_shape, 1.0)
    with pytest.raises(ValueError, match=r"'embed.weight': got float64"):
        avg.add(wrong_dtype, 1.0)
    avg.add(good, 2.0)
    result = avg.result()
    assert avg.count == 1
    for key in SHAPES:
        np.testing.assert_array_equal(result[key].numpy(), good[key].numpy())


def test_corrupt_payload_and_non_float_template_are_rejected():
    # Prepare
    record = make_record(0)
    bad = record["embed.weight"]
    truncated = ArrayRecord({**dict(record.items()),
                             "embed.weight": Array(bad.dtype, bad.shape, bad.stype, bad.data[:-4])})
    avg = StreamingAverage(record)

    garbage = ArrayRecord({**dict(record.items()),
                           "lm_head.weight": Array(bad.dtype, bad.shape, bad.stype, b"not npy bytes")})

    # Execute / Assert
    with pytest.raises(ValueError, match="'embed.weight': payload has"):
        avg.add(truncated, 1.0)
    with pytest.raises(ValueError, match="'lm_head.weight': malformed .npy bytes"):
        avg.add(garbage, 1.0)
    with pytest.raises(ValueError, match="'step': cannot average dtype int64"):
        StreamingAverage(ArrayRecord({"step": Array(np.arange(3))}))


def test_result_ends_the_average():
    # Prepare
    avg = StreamingAverage(make_record(0))
    avg.add(make_record(0), 1.0)
    avg.result()

    # Execute / Assert
    with pytest.raises(RuntimeError, match="already called"):
        avg.add(make_record(1), 1.0)
    with pytest.raises(RuntimeError, match="already called"):
        avg.result()


def test_array_view_reads_the_bytes_in_place():
    # Prepare
    array = Array(np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)))
    base = np.frombuffer(array.data, dtype=np.uint8).__array_interface__["data"][0]

    # Execute
    view = array_view(array, "w")

    # Assert: same memory as Array.data (after the header), read-only, right values
    address = view.__array_interface__["data"][0]
    header = len(array.data) - 12 * 4
    assert address == base + header
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, np.arange(12, dtype=np.float32).reshape(3, 4))


@pytest.mark.parametrize("x", [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((0, 4), np.float16),
                               np.full((), 3.0),
                               np.asfortranarray(np.arange(6, dtype=np.float32).reshape(3, 2))])
def test_result_arrays_are_byte_identical_to_flower_serialisation(x):
    # Prepare: Flower's own Array(ndarray) is the reference

    # Execute
    ours = array_from_numpy(x)

    # Assert
    reference = Array(x)
    assert (ours.dtype, tuple(ours.shape), ours.stype) == \
        (reference.dtype, tuple(reference.shape), reference.stype)
    np.testing.assert_array_equal(ours.numpy(), x)
    if x.flags.c_contiguous:
        assert ours.data == reference.data


def test_add_makes_no_numpy_copy_of_the_client_arrays():
    # Prepare: a 4 MB record; tracemalloc sees every numpy buffer allocation
    shapes = {"a": (512, 1024), "b": (1024, 512)}
    template = make_record(0, shapes)
    client = make_record(1, shapes)
    avg = StreamingAverage(template)
    pointers = {k: acc.ctypes.data for k, acc in avg._acc.items()}

    # Execute
    tracemalloc.start()
    avg.add(client, 0.5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Assert: far below one array, and the accumulators were updated in place
    assert peak < 64 * 1024
    assert {k: acc.ctypes.data for k, acc in avg._acc.items()} == pointers
