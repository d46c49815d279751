"""Checks on client replies: a reply that fails one is dropped with a reason, never aggregated."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fedprivacy import wire
from fedprivacy.aggregation import array_view

ArraySpec = dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, dtype)


def array_spec(arrays: ArrayRecord) -> ArraySpec:
    """Keys, shapes and dtypes that every train reply must match: those of the sent arrays
    but the base's edits, which only the server writes (`wire.BASE_EDITS`)."""
    return {key: (tuple(arr.shape), arr.dtype) for key, arr in arrays.items()
            if key != wire.BASE_EDITS}


def _metrics(msg: Message) -> tuple[MetricRecord | None, str | None]:
    records = list(msg.content.metric_records.values())
    if len(records) != 1:
        return None, f"expected exactly one MetricRecord, got {len(records)}"
    return records[0], None


def check_metrics(msg: Message, weight_key: str) -> str | None:
    """Reason why the reply's metrics are unusable, or None."""
    record, reason = _metrics(msg)
    if record is None:
        return reason
    if weight_key not in record:
        return f"metrics lack the weight key {weight_key!r}"
    weight = record[weight_key]
    if isinstance(weight, list) or not weight > 0:
        return f"weight {weight_key!r} must be a positive number, got {weight!r}"
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values):
            return f"metric {key!r} is not finite"
    return None


def check_arrays(msg: Message, spec: ArraySpec) -> str | None:
    """Reason why the reply's arrays cannot be averaged with the global model, or None."""
    records = list(msg.content.array_records.values())
    if len(records) != 1:
        return f"expected exactly one ArrayRecord, got {len(records)}"
    arrays = records[0]
    missing = sorted(set(spec) - set(arrays.keys()))
    extra = sorted(set(arrays.keys()) - set(spec))
    if missing or extra:
        return f"array keys differ: missing {missing[:3]}, unexpected {extra[:3]}"
    for key, (shape, dtype) in spec.items():
        arr = arrays[key]
        if tuple(arr.shape) != shape or arr.dtype != dtype:
            return (f"array {key!r} is {arr.dtype}{list(arr.shape)}, "
                    f"expected {dtype}{list(shape)}")
        if not np.isfinite(array_view(arr, key)).all():
            return f"array {key!r} has non-finite values"
    return None


def error_summary(reason: str, limit: int = 300) -> str:
    """The exception message of a client error, without the traceback around it."""
    lines = [line.strip(" '>\"") for line in reason.strip().splitlines() if line.strip(" '>\"")]
    message = lines[-1] if lines else reason
    return message.split("Message: ", 1)[-1][:limit]


def check_reply(msg: Message, weight_key: str, spec: ArraySpec | None) -> str | None:
    """Why ``msg`` must be dropped (an error reply, bad metrics, bad arrays), or None."""
    if msg.has_error():
        return f"client error {msg.error.code}: {error_summary(msg.error.reason)}"
    return check_metrics(msg, weight_key) or (check_arrays(msg, spec) if spec else None)


def metric_keys(msg: Message) -> frozenset[str]:
    record, _ = _metrics(msg)
    return frozenset(record.keys()) if record is not None else frozenset()


def majority_keys(replies: Iterable[Message]) -> frozenset[str]:
    """The metric key set most replies share (Flower requires identical keys to aggregate)."""
    counts: dict[frozenset[str], int] = {}
    for msg in replies:
        keys = metric_keys(msg)
        counts[keys] = counts.get(keys, 0) + 1
    return max(counts, key=lambda k: (counts[k], len(k))) if counts else frozenset()
