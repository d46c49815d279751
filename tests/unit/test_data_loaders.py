"""Unit tests of loading user records from local files."""

import json

import pytest

from fedprivacy.data.loaders import load_records

pytestmark = pytest.mark.unit

ROWS = [{"question": "2+2?", "answer": " 4", "text": "hello there"}, {"question": "1+1?", "answer": " 2", "text": "bye"}]


@pytest.fixture
def files(tmp_path):
    """The same rows as JSONL, CSV and Parquet."""
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    paths = {"jsonl": tmp_path / "d.jsonl", "csv": tmp_path / "d.csv", "parquet": tmp_path / "d.parquet"}
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in ROWS))
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"])
    return paths


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_prompt_and_completion_fields(files, kind):
    # Prepare
    path = files[kind]

    # Execute
    records = load_records(path, prompt_field="question", completion_field="answer", task="math")

    # Assert
    assert [(r["prompt"], r["completion"].strip(), r["task"]) for r in records] == [("2+2?", "4", "math"), ("1+1?", "2", "math")]
    assert all(r["private_spans"] == [] for r in records)


def test_text_field_becomes_the_completion(files):
    # Prepare
    path = files["jsonl"]

    # Execute
    records = load_records(path)

    # Assert
    assert [(r["prompt"], r["completion"], r["task"]) for r in records] == [("", "hello there", "user"), ("", "bye", "user")]


def test_missing_file_names_the_path(tmp_path):
    # Prepare
    path = tmp_path / "absent.jsonl"

    # Execute
    with pytest.raises(FileNotFoundError) as error:
        load_records(path)

    # Assert
    assert str(path) in str(error.value)


def test_missing_column_names_column_file_and_available_columns(files):
    # Prepare
    path = files["csv"]

    # Execute
    with pytest.raises(ValueError) as error:
        load_records(path, completion_field="response")

    # Assert
    message = str(error.value)
    assert "'response'" in message and str(path) in message
    assert all(column in message for column in ("question", "answer", "text"))


def test_unsupported_suffix_is_rejected(tmp_path):
    # Prepare
    path = tmp_path / "d.txt"
    path.write_text("hello")

    # Execute
    with pytest.raises(ValueError) as error:
        load_records(path)

    # Assert
    assert ".txt" in str(error.value)
