"""Records to padded tensors for causal-LM training: loss on the completion, private-token mask."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from fedprivacy.data.records import Record

IGNORE_INDEX = -100  # label of a token without loss (PyTorch's and HF's ignore_index)


def _overlaps(offset: tuple[int, int], spans: list[list[int]]) -> bool:
    """Whether a token's characters [start, end) meet any private span."""
    start, end = offset
    return start < end and any(start < b and a < end for a, b in spans)


def _encode_one(
    tokenizer: PreTrainedTokenizerBase, record: Record
) -> tuple[list[int], list[int], list[bool]]:
    """Token ids, labels and private flags of one record, with `<s>` (if any) and `</s>` added."""
    pieces = tokenizer(
        [record["prompt"], record["completion"]], add_special_tokens=False, return_offsets_mapping=True
    )
    shift = len(record["prompt"])
    prompt_ids, completion_ids = pieces["input_ids"]
    offsets = pieces["offset_mapping"][0] + [(s + shift, e + shift) for s, e in pieces["offset_mapping"][1]]
    private = [_overlaps(o, record["private_spans"]) for o in offsets]
    ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None:
        ids, labels, private = [bos] + ids, [IGNORE_INDEX] + labels, [False] + private
    if eos is not None:
        ids, labels, private = ids + [eos], labels + [eos], private + [False]
    return ids, labels, private


def encode_records(
    tokenizer: PreTrainedTokenizerBase, records: list[Record], max_length: int, on_overflow: str = "error"
) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask`, `labels` (IGNORE_INDEX off the completion) and `private_mask`.

    Sequences are `<s> prompt completion </s>`, right-padded to the longest one. A record longer
    than `max_length` raises ValueError (`on_overflow="error"`) or is cut at the right ("truncate").
    """
    if on_overflow not in ("error", "truncate"):
        raise ValueError(f"on_overflow must be 'error' or 'truncate', got {on_overflow!r}")
    if not records:
        raise ValueError("encode_records needs at least one record")
    rows = []
    for index, record in enumerate(records):
        ids, labels, private = _encode_one(tokenizer, record)
        if len(ids) > max_length and on_overflow == "error":
            raise ValueError(
                f"record {index} (task {record['task']!r}) is {len(ids)} tokens long, more than "
                f"max_length={max_length}; raise max_length or shorten the record"
            )
        rows.append((ids[:max_length], labels[:max_length], private[:max_length]))
    width = max(len(ids) for ids, _, _ in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "private_mask": torch.zeros((len(rows), width), dtype=torch.bool),
    }
    for i, (ids, labels, private) in enumerate(rows):
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)
        out["attention_mask"][i, : len(ids)] = 1
        out["labels"][i, : len(ids)] = torch.tensor(labels)
        out["private_mask"][i, : len(ids)] = torch.tensor(private)
    return out


def iterate_batches(
    encoded: dict[str, torch.Tensor], batch_size: int, seed: int, shuffle: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `batch_size` rows (the last may be smaller), in a seeded order when shuffling."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = len(encoded["input_ids"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        yield {key: value[index] for key, value in encoded.items()}


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a prompt as training sees it: `<s>` (if the tokenizer has one), then text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def left_padded(rows: Sequence[Sequence[int] | torch.Tensor], pad_id: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for batched generation and scoring."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = torch.as_tensor(row)
            mask[i, width - len(row):] = 1
    return ids, mask
