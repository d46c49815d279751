"""User data from local JSONL, CSV or Parquet files, as records."""

from __future__ import annotations

from pathlib import Path

from fedprivacy.data.records import Record, make_record

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_records(
    path: str | Path,
    prompt_field: str | None = None,
    completion_field: str | None = None,
    text_field: str = "text",
    task: str = "user",
) -> list[Record]:
    """Records from a file: `prompt_field`/`completion_field` when given, else `text_field` as completion."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix.lower() not in FORMATS:
        raise ValueError(
            f"unsupported data file type {path.suffix!r} for {path}; use one of {', '.join(FORMATS)}"
        )
    if prompt_field and not completion_field:
        raise ValueError(f"prompt_field={prompt_field!r} needs a completion_field too (file {path})")
    from datasets import load_dataset  # heavy import, only for user files

    table = load_dataset(FORMATS[path.suffix.lower()], data_files=str(path), split="train")
    fields = [f for f in (prompt_field, completion_field or text_field) if f]
    for name in fields:
        if name not in table.column_names:
            raise ValueError(
                f"column {name!r} not found in {path}; available columns: {', '.join(table.column_names)}"
            )
    prompts = table[prompt_field] if prompt_field else [""] * len(table)
    completions = table[completion_field or text_field]
    return [make_record(str(p or ""), str(c or ""), task) for p, c in zip(prompts, completions)]
