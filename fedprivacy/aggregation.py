"""Adaptive client weights and a streaming, in-place weighted average of Flower ArrayRecords.

FewFedWeight (Dong et al., arXiv 2212.08354) aggregates clients with "adaptive model weights
tuned according to their performance"; the formula is unknown (METHODS.md §7). This project's
default is a softmax over the clients' validation scores (higher is better):
w_k = exp(s_k/τ) / Σ_j exp(s_j/τ), with τ = 0.5 in the config (``client_weight_temperature``).

``StreamingAverage`` computes Σ_k w_k·θ_k / Σ_k w_k into one preallocated buffer per key,
reading each client's ``Array.data`` (``np.save`` bytes) in place: the .npy header is parsed and
the payload is viewed with ``np.frombuffer``. ``Array.numpy()`` is not used because ``np.load``
copies the payload. acc += w·θ runs in blocks of 32 Ki elements through one small scratch buffer
(128 KiB, stays in cache): per block ``multiply(θ, w, out=scratch)`` then
``add(acc, scratch, out=acc)``, so there is no temporary the size of a layer. ``add`` (one client)
costs one read of the client bytes plus one read and one write of the accumulator; ``add_many``
(all replies of a round) adds every client to a block while it is in cache, so the accumulator is
read and written once per round. Single-threaded numpy on purpose: torch's fused
``add_(θ, alpha=w)`` reached 3.4 GB/s on one thread but 0.07 GB/s with two intra-op threads on a
loaded 2-core host (OpenMP barriers per layer), and a library must not change torch's global
thread count.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord

K = TypeVar("K", bound=Hashable)


# ---------------------------------------------------------------- performance → client weights

def _checked_scores(scores: Mapping[K, float]) -> dict[K, float]:
    if not scores:
        raise ValueError("no clients to weigh: the score mapping is empty")
    for client, s in scores.items():
        if not isinstance(s, numbers.Real) or not math.isfinite(s):
            raise ValueError(f"client {client!r} has a non-finite score {s!r}")
    return {c: float(s) for c, s in scores.items()}


def _normalised(raw: Mapping[K, float], what: str) -> dict[K, float]:
    total = sum(raw.values())
    if not total > 0:
        raise ValueError(f"client {what} sum to {total}; cannot normalise")
    return {c: v / total for c, v in raw.items()}


def softmax_client_weights(scores: Mapping[K, float], temperature: float = 0.1,
                           num_examples: Mapping[K, int] | None = None) -> dict[K, float]:
    """w_k = exp(s_k/τ) / Σ_j exp(s_j/τ) (max-shifted; this project's default)."""
    s = _checked_scores(scores)
    if temperature <= 0:
        raise ValueError(f"client weight temperature must be > 0, got {temperature}")
    top = max(s.values())
    return _normalised({c: math.exp((v - top) / temperature) for c, v in s.items()}, "weights")


def proportional_client_weights(scores: Mapping[K, float], temperature: float = 0.1,
                                num_examples: Mapping[K, int] | None = None) -> dict[K, float]:
    """w_k = s_k / Σ_j s_j; scores must be >= 0 with a positive sum."""
    s = _checked_scores(scores)
    for client, v in s.items():
        if v < 0:
            raise ValueError(f"client {client!r} has a negative score {v}; proportional "
                             "weighting needs scores >= 0")
    return _normalised(s, "scores")


def uniform_client_weights(scores: Mapping[K, float], temperature: float = 0.1,
                           num_examples: Mapping[K, int] | None = None) -> dict[K, float]:
    """w_k = 1/K."""
    s = _checked_scores(scores)
    return {c: 1.0 / len(s) for c in s}


def num_examples_client_weights(scores: Mapping[K, float], temperature: float = 0.1,
                                num_examples: Mapping[K, int] | None = None) -> dict[K, float]:
    """FedAvg: w_k = n_k / Σ_j n_j (scores only name the clients)."""
    s = _checked_scores(scores)
    if num_examples is None:
        raise ValueError("client weighting 'num_examples' needs num_examples per client")
    for client in s:
        n = num_examples.get(client)
        if not isinstance(n, numbers.Real) or not math.isfinite(n) or n < 0:
            raise ValueError(f"client {client!r} has an invalid num_examples {n!r}")
    return _normalised({c: float(num_examples[c]) for c in s}, "num_examples")


class ClientWeighting(Protocol):
    """A map from client scores (higher is better) to weights that sum to 1."""

    def __call__(self, scores: Mapping[K, float], temperature: float = ...,
                 num_examples: Mapping[K, int] | None = ...) -> dict[K, float]: ...


CLIENT_WEIGHTINGS: dict[str, ClientWeighting] = {
    "softmax": softmax_client_weights,  # this project's default
    "proportional": proportional_client_weights,
    "uniform": uniform_client_weights,
    "num_examples": num_examples_client_weights,
}


def client_weights(scores: Mapping[K, float], method: str = "softmax", temperature: float = 0.1,
                   num_examples: Mapping[K, int] | None = None) -> dict[K, float]:
    """Normalised aggregation weights (sum 1) from validation scores via ``CLIENT_WEIGHTINGS``."""
    if method not in CLIENT_WEIGHTINGS:
        raise ValueError(f"unknown client weighting {method!r}; choose from {sorted(CLIENT_WEIGHTINGS)}")
    return CLIENT_WEIGHTINGS[method](scores, temperature=temperature, num_examples=num_examples)


# ---------------------------------------------------------------- zero-copy views of Array bytes

@functools.lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype, str]:
    """(shape, fortran_order, dtype, dtype name) of a .npy header. Cached: every client sends the
    same headers, and numpy's parser (``ast.literal_eval``) costs more than adding a small layer."""
    fp = io.BytesIO(header)
    version = np.lib.format.read_magic(fp)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, fortran, dtype = read(fp)
    return tuple(shape), bool(fortran), dtype, str(dtype)


def array_view(array: Array, key: str = "?") -> np.ndarray:
    """Read-only ndarray over ``array.data`` without copying the payload.

    Parses the .npy header (format 1.0 / 2.0: magic, version, header length, dict) and checks it
    against the Array's dtype and shape and the byte count; errors name ``key``."""
    if array.stype != "numpy.ndarray":
        raise ValueError(f"array {key!r}: unsupported serialization {array.stype!r}")
    data = array.data
    size_bytes = 2 if data[6:7] == b"\x01" else 4  # the header length field: 1.0 vs 2.0
    offset = 8 + size_bytes + int.from_bytes(data[8:8 + size_bytes], "little")
    try:
        shape, fortran, dtype, name = _npy_header(data[:offset])
    except ValueError as err:
        raise ValueError(f"array {key!r}: malformed .npy bytes ({err})") from err
    if name != array.dtype or shape != tuple(array.shape):
        raise ValueError(f"array {key!r}: header says {name}{shape}, metadata says "
                         f"{array.dtype}{tuple(array.shape)}")
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"array {key!r}: payload has {len(data) - offset} bytes, "
                         f"expected {count * dtype.itemsize}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


# ---------------------------------------------------------------- streaming weighted average

BLOCK = 1 << 15  # elements per accumulate block (128 KiB of float32: acc block + scratch in L2)


def _accumulate(acc: np.ndarray, xs: Sequence[np.ndarray], weights: Sequence[float],
                scratch: np.ndarray) -> None:
    """acc += Σ_k w_k·x_k block by block, each block of ``acc`` staying in cache while every x_k
    is added to it. Blocks are ``BLOCK`` elements, or whole rows of axis 0 when some x_k is not
    C-contiguous (e.g. a Fortran-ordered payload); ``scratch`` holds one block."""
    if all(x.flags.c_contiguous for x in xs):
        acc, xs = acc.reshape(-1), [x.reshape(-1) for x in xs]
    rows = max(1, BLOCK // max(1, math.prod(acc.shape[1:])))
    for start in range(0, acc.shape[0], rows):
        block = acc[start:start + rows]
        tmp = scratch[:block.size].reshape(block.shape)
        for x, w in zip(xs, weights):
            np.multiply(x[start:start + rows], w, out=tmp, dtype=tmp.dtype)
            np.add(block, tmp, out=block)


class StreamingAverage:
    """Σ_k w_k·θ_k / Σ_k w_k over ArrayRecords, added one at a time (``add``) or several at once
    (``add_many``: each block of the accumulator is read and written once for all of them, so
    memory traffic is about one read of the client bytes).

    Memory: one accumulator per key (float32; float64 for float64 keys), a scratch block, and in
    ``result`` the output bytes; no per-client copy. Only floating-point arrays are averaged."""

    def __init__(self, template: ArrayRecord) -> None:
        self._spec: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._acc: dict[str, np.ndarray] = {}
        block: dict[np.dtype, int] = {}
        for key, array in template.items():
            dtype = np.dtype(array.dtype)
            if dtype.kind != "f":
                raise ValueError(f"array {key!r}: cannot average dtype {array.dtype}; send only "
                                 "floating-point arrays")
            shape = tuple(array.shape)
            acc_dtype = np.dtype(np.float64 if dtype == np.float64 else np.float32)
            self._spec[key] = (array.dtype, shape)
            self._acc[key] = np.zeros(shape, dtype=acc_dtype)
            block[acc_dtype] = max(block.get(acc_dtype, BLOCK), math.prod(shape[1:]))
        self._scratch = {dt: np.empty(n, dtype=dt) for dt, n in block.items()}
        self.total_weight = 0.0
        self.count = 0
        self._done = False

    def _views(self, record: ArrayRecord) -> dict[str, np.ndarray]:
        missing = [k for k in self._spec if k not in record]
        extra = [k for k in record if k not in self._spec]
        if missing or extra:
            raise ValueError(f"array keys differ from the template: missing {missing}, "
                             f"unexpected {extra}")
        views = {}
        for key, (dtype, shape) in self._spec.items():
            array = record[key]
            if array.dtype != dtype or tuple(array.shape) != shape:
                raise ValueError(f"array {key!r}: got {array.dtype}{tuple(array.shape)}, "
                                 f"expected {dtype}{shape}")
            views[key] = array_view(array, key)
        return views

    def add(self, record: ArrayRecord, weight: float) -> None:
        """acc_key += weight·θ_key for every key; the record is validated first."""
        self.add_many([record], [weight])

    def add_many(self, records: Sequence[ArrayRecord], weights: Sequence[float]) -> None:
        """acc_key += Σ_k w_k·θ_k,key; all records are validated before any is added, so a bad
        one leaves the average untouched (errors name the key, or the position and the key)."""
        if self._done:
            raise RuntimeError("StreamingAverage.result() was already called")
        if len(records) != len(weights):
            raise ValueError(f"{len(records)} records but {len(weights)} weights")
        for w in weights:
            if not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
                raise ValueError(f"weight must be finite and >= 0, got {w!r}")
        views = []
        for i, record in enumerate(records):
            try:
                views.append(self._views(record))
            except ValueError as err:
                raise ValueError(f"record {i}: {err}" if len(records) > 1 else str(err)) from None
        used = [(v, float(w)) for v, w in zip(views, weights) if w > 0]
        for key, acc in self._acc.items() if used else ():
            _accumulate(acc, [v[key] for v, _ in used], [w for _, w in used], self._scratch[acc.dtype])
        self.total_weight += sum(float(w) for w in weights)
        self.count += len(records)

    def result(self) -> ArrayRecord:
        """The weighted mean in the template's key order and dtypes; ends the average."""
        if self._done:
            raise RuntimeError("StreamingAverage.result() was already called")
        if not self.total_weight > 0:
            raise ValueError(f"cannot average: total weight is {self.total_weight} "
                             f"over {self.count} records")
        self._done = True
        scale = 1.0 / self.total_weight
        out: dict[str, Array] = {}
        for key, (dtype, _) in self._spec.items():
            acc = self._acc.pop(key)  # each accumulator is freed once its output exists
            if scale != 1.0:
                acc *= scale
            out[key] = array_from_numpy(acc.astype(dtype, copy=False))
        return ArrayRecord(out)


def array_from_numpy(x: np.ndarray) -> Array:
    """``Array(x)`` with one copy of the payload (``np.save`` into BytesIO makes several)."""
    c = np.asarray(x, order="C")
    fp = io.BytesIO()  # a float array's header always fits format 1.0, as in np.save
    np.lib.format.write_array_header_1_0(fp, np.lib.format.header_data_from_array_1_0(c))
    data = b"".join((fp.getvalue(), c.reshape(-1).view(np.uint8)))
    return Array(dtype=str(c.dtype), shape=tuple(c.shape), stype="numpy.ndarray", data=data)
