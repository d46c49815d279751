"""User data from local JSONL, CSV or Parquet files, as records.

The file is named by a config key (``data.path``, or ``key``): every error names that key,
the file and what is wrong with it. Cheap checks of the first bytes (empty, binary, not JSON,
not Parquet) run before ``datasets`` is imported; whatever ``datasets.load_dataset`` still
raises is reported the same way.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import TYPE_CHECKING

from fedprivacy.data.records import Record, make_record

if TYPE_CHECKING:
    from datasets import Dataset

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
KIND = {".jsonl": "JSONL", ".json": "JSON", ".csv": "CSV", ".parquet": "Parquet"}
HEAD_BYTES = 1 << 16
PARQUET_MAGIC = b"PAR1"


def _bad(key: str, path: Path, problem: str) -> ValueError:
    return ValueError(f"{key}: {path} {problem}")


def _check_text_head(key: str, path: Path, head: bytes, whole: bool) -> None:
    """JSON/CSV: the first bytes must be UTF-8 text; JSON(L) must start with ``{`` or ``[``."""
    kind = KIND[path.suffix.lower()]
    try:  # an incremental decoder accepts a character cut at the end of the head
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError as err:
        raise _bad(key, path, f"is not valid {kind}: not UTF-8 text ({err})") from err
    if "\x00" in text:
        raise _bad(key, path, f"is not valid {kind}: it holds NUL bytes (a binary file?)")
    start = text.lstrip("\ufeff \t\r\n")[:1]
    if FORMATS[path.suffix.lower()] == "json" and start not in ("{", "["):
        raise _bad(key, path, f"is not valid {kind}: it starts with {start!r}, not with a JSON "
                   "object ('{', one record per line) or array ('[')")


def check_file(path: Path, key: str = "data.path") -> None:
    """Reject an empty or undecodable data file from its first bytes, naming ``key``."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
            tail = b""
            if path.suffix.lower() == ".parquet" and size >= 2 * len(PARQUET_MAGIC):
                f.seek(size - len(PARQUET_MAGIC))
                tail = f.read()
    except OSError as err:
        raise _bad(key, path, f"cannot be read: {err}") from err
    whole = size <= len(head)
    if whole and not head.strip():
        raise _bad(key, path, "is empty: it holds no records")
    if path.suffix.lower() == ".parquet":
        if not (head.startswith(PARQUET_MAGIC) and tail == PARQUET_MAGIC):
            raise _bad(key, path, "is not valid Parquet: it lacks the PAR1 header/footer")
        return
    _check_text_head(key, path, head, whole)


def _read_table(path: Path, key: str) -> Dataset:
    """``datasets.load_dataset`` on one file; any failure becomes a ValueError naming the file."""
    from datasets import load_dataset  # heavy import, only for user files

    try:
        return load_dataset(FORMATS[path.suffix.lower()], data_files=str(path), split="train")
    except Exception as err:  # datasets raises StopIteration, ArrowInvalid, pandas errors...
        cause = err.__cause__ or err  # DatasetGenerationError wraps the parser's error
        detail = str(cause).strip() or type(cause).__name__
        if "corresponds to no data" in detail:  # datasets' words for a file with no rows
            raise _bad(key, path, "is empty: it holds no records") from err
        raise _bad(key, path, f"is not valid {KIND[path.suffix.lower()]}: {detail}") from err


def load_records(
    path: str | Path,
    prompt_field: str | None = None,
    completion_field: str | None = None,
    text_field: str = "text",
    task: str = "user",
    key: str = "data.path",
) -> list[Record]:
    """Records from a file: `prompt_field`/`completion_field` when given, else `text_field` as
    completion. Errors name ``key``, the config key that gave the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}: data file not found: {path}")
    if path.suffix.lower() not in FORMATS:
        raise ValueError(
            f"{key}: unsupported data file type {path.suffix!r} for {path}; "
            f"use one of {', '.join(FORMATS)}"
        )
    if prompt_field and not completion_field:
        raise ValueError(
            f"data.prompt_field={prompt_field!r} needs a data.completion_field too (file {path})"
        )
    check_file(path, key)
    table = _read_table(path, key)
    keys = {prompt_field: "data.prompt_field", completion_field: "data.completion_field"}
    for name in [f for f in (prompt_field, completion_field or text_field) if f]:
        if name not in table.column_names:
            field_key = keys.get(name, "data.text_field")
            raise ValueError(
                f"{field_key}: column {name!r} not found in {path}; "
                f"available columns: {', '.join(table.column_names)}"
            )
    prompts = table[prompt_field] if prompt_field else [""] * len(table)
    completions = table[completion_field or text_field]
    return [make_record(str(p or ""), str(c or ""), task) for p, c in zip(prompts, completions)]
