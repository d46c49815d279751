"""Unit tests of loading user records from local files."""

import json

import pytest

from fedprivacy.data.loaders import load_records

pytestmark = pytest.mark.unit

ROWS = [{"question": "2+2?", "answer": " 4", "text": "hello there"},
        {"question": "1+1?", "answer": " 2", "text": "bye"}]


@pytest.fixture
def files(tmp_path):
    """The same rows as JSONL, CSV and Parquet."""
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    paths = {kind: tmp_path / f"d.{kind}" for kind in ("jsonl", "csv", "parquet")}
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
    assert [(r["prompt"], r["completion"].strip(), r["task"]) for r in records] == [
        ("2+2?", "4", "math"), ("1+1?", "2", "math")]
    assert all(r["private_spans"] == [] for r in records)


def test_text_field_becomes_the_completion(files):
    # Prepare
    path = files["jsonl"]

    # Execute
    records = load_records(path)

    # Assert
    assert [(r["prompt"], r["completion"], r["task"]) for r in records] == [
        ("", "hello there", "user"), ("", "bye", "user")]


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


@pytest.mark.parametrize("name, content", [
    ("empty.jsonl", b""), ("blank.jsonl", b"\n \n\t\n"), ("header.csv", b"question,answer\n"),
    ("empty.json", b"[]"),
])
def test_a_file_without_records_is_empty(tmp_path, name, content):
    # Prepare
    path = tmp_path / name
    path.write_bytes(content)

    # Execute
    with pytest.raises(ValueError) as error:
        load_records(path)

    # Assert
    message = str(error.value)
    assert message.startswith("data.path:") and str(path) in message and "is empty" in message


@pytest.mark.parametrize("name, content, problem", [
    ("binary.jsonl", bytes(range(256)) * 8, "not valid JSONL: not UTF-8"),
    ("nul.csv", b"text\nab\x00cd\n", "not valid CSV: it holds NUL bytes"),
    ("prose.jsonl", b"hello world\nbye\n", "not valid JSONL: it starts with 'h'"),
    ("broken.jsonl", b'{"text": "fine"}\n{"text": broken\n', "not valid JSONL: "),
    ("quote.csv", b'text\n"never closed\n', "not valid CSV: "),
    ("text.parquet", b"not a parquet file", "not valid Parquet: it lacks the PAR1"),
])
def test_an_undecodable_file_names_key_file_and_format(tmp_path, name, content, problem):
    # Prepare
    path = tmp_path / name
    path.write_bytes(content)

    # Execute
    with pytest.raises(ValueError) as error:
        load_records(path)

    # Assert
    message = str(error.value)
    assert message.startswith("data.path:") and str(path) in message and problem in message


def test_errors_name_the_key_that_gave_the_file(tmp_path):
    # Prepare
    path = tmp_path / "eval.jsonl"
    path.write_text("")

    # Execute
    with pytest.raises(ValueError) as error:
        load_records(path, key="server.eval_path")

    # Assert
    assert str(error.value).startswith(f"server.eval_path: {path} is empty")


def test_a_long_first_line_is_left_to_the_parser(tmp_path):
    # Prepare: a valid first record longer than the bytes the cheap check reads
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": "x" * 100_000}) + "\n" + json.dumps({"text": "é"}) + "\n")

    # Execute
    records = load_records(path)

    # Assert
    assert [len(r["completion"]) for r in records] == [100_000, 1]
