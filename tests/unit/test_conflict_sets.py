"""Unit tests of the real knowledge-conflict sets shipped in fedprivacy/data/conflict_sets."""

import json
import string
from pathlib import Path

import pytest

import fedprivacy

SETS = Path(fedprivacy.__file__).parent / "data" / "conflict_sets"
MIN_ITEMS = 150
FIELDS = {"memotrap": ("id", "phrase", "memory_answer", "context_answer"),
          "mcq": ("id", "question", "memory_answer", "context_answer", "context")}
PREFIX = {"memotrap": "mt", "mcq": "mc"}
KEY = {"memotrap": "phrase", "mcq": "question"}


def _rows(name: str) -> list[dict]:
    lines = (SETS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["memotrap", "mcq"])
def test_set_has_enough_items_with_every_field_a_non_empty_string(name):
    # Prepare / Execute
    rows = _rows(name)

    # Assert
    assert len(rows) >= MIN_ITEMS
    for row in rows:
        for field in FIELDS[name]:
            assert isinstance(row.get(field), str) and row[field].strip(), (row, field)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["memotrap", "mcq"])
def test_ids_are_unique_and_numbered_in_order(name):
    # Prepare
    rows = _rows(name)

    # Execute
    ids = [row["id"] for row in rows]

    # Assert
    assert len(set(ids)) == len(ids)
    assert ids == [f"{PREFIX[name]}-{i:03d}" for i in range(1, len(rows) + 1)]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["memotrap", "mcq"])
def test_phrases_and_questions_are_unique(name):
    # Prepare
    rows = _rows(name)

    # Execute
    keys = [row[KEY[name]].strip().lower() for row in rows]

    # Assert
    assert len(set(keys)) == len(keys)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["memotrap", "mcq"])
def test_memory_and_context_answers_differ(name):
    # Prepare
    rows = _rows(name)

    # Execute
    same = [row["id"] for row in rows
            if row["memory_answer"].strip().lower() == row["context_answer"].strip().lower()]

    # Assert
    assert same == []


@pytest.mark.unit
def test_memotrap_answers_are_single_words_and_phrases_have_no_trailing_space():
    # Prepare
    rows = _rows("memotrap")

    # Execute
    answers = [row[f] for row in rows for f in ("memory_answer", "context_answer")]

    # Assert
    for answer in answers:
        assert answer.isalpha(), answer  # no spaces, digits or punctuation
        assert not any(c in string.punctuation or c.isspace() for c in answer), answer
    for row in rows:
        assert row["phrase"] == row["phrase"].strip(), row["id"]


@pytest.mark.unit
def test_mcq_context_asserts_the_context_answer_and_never_names_the_memory_answer():
    # Prepare
    rows = _rows("mcq")

    # Execute
    missing = [row["id"] for row in rows
               if row["context_answer"].lower() not in row["context"].lower()]
    leaking = [row["id"] for row in rows
               if row["memory_answer"].lower() in row["context"].lower()]

    # Assert
    assert missing == []
    assert leaking == []
