"""Synthetic data of fedprivacy: tasks, PII corpora with canaries, tokenizer, encoding, partitions.

Exports load on first use (PEP 562), so importing this package (or its config dataclasses from
`fedprivacy.data.federated`) does not pull in torch or transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "records": ["Record", "make_record", "record_text", "validate_record", "derive_seed"],
    "tasks": ["TaskSpec", "TASKS", "get_task", "task_splits"],
    "pii": ["Canary", "make_canaries", "pii_corpus", "public_corpus", "canary_record"],
    "tokenizer": ["build_tokenizer", "digit_token_ids"],
    "encoding": ["encode_records", "iterate_batches", "prompt_ids", "left_padded", "IGNORE_INDEX"],
    "loaders": ["load_records"],
    "partition": ["partition_records"],
    "federated": [
        "CanaryConfig", "DataConfig", "ClientData", "build_client_data", "build_eval_data", "task_names",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    """Import the submodule that defines `name` on first access."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
    """The public names, for tab completion."""
    return __all__
