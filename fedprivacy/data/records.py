"""The record format shared by every data source, and seed derivation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypedDict, TypeVar

T = TypeVar("T")


class Record(TypedDict):
    """One example: the loss covers `completion`; spans are char offsets into prompt+completion."""

    prompt: str
    completion: str
    task: str
    private_spans: list[list[int]]


def make_record(
    prompt: str, completion: str, task: str, private_spans: list[list[int]] | None = None
) -> Record:
    """Build a record (no private spans unless given)."""
    return {
        "prompt": prompt,
        "completion": completion,
        "task": task,
        "private_spans": [list(s) for s in private_spans or []],
    }


def record_text(record: Record) -> str:
    """The full text a record covers (the frame of its private spans)."""
    return record["prompt"] + record["completion"]


def validate_record(record: Record, index: int = 0) -> Record:
    """Check the keys, types and span bounds of `record`; raise ValueError naming `index`."""
    for key in ("prompt", "completion", "task"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"record {index}: field {key!r} must be a string")
    spans = record.get("private_spans")
    if not isinstance(spans, list):
        raise ValueError(f"record {index}: field 'private_spans' must be a list of [start, end]")
    length = len(record_text(record))
    for span in spans:
        if len(span) != 2 or not 0 <= span[0] < span[1] <= length:
            raise ValueError(
                f"record {index}: private span {span} is not a [start, end) "
                f"inside the {length} characters of prompt+completion"
            )
    return record


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from `seed` and labels, identical in every process and Python version."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def draw_distinct(draw: Callable[[], tuple[str, T]], n: int, what: str, patience: int = 1000) -> list[T]:
    """`n` values from `draw()` with distinct keys; ValueError once `patience` draws in a row repeat."""
    values: dict[str, T] = {}
    misses = 0
    while len(values) < n:
        key, value = draw()
        misses = misses + 1 if key in values else 0
        if misses > patience:
            raise ValueError(f"{what} cannot produce {n} distinct examples (found {len(values)})")
        values.setdefault(key, value)
    return list(values.values())
