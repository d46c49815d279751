"""Unit tests of the synthetic task collection."""

import json

import pytest

from fedprivacy.data.records import validate_record
from fedprivacy.data.tasks import COUNTRY_CAPITALS, SENTIMENT_WORDS, TASKS, get_task, task_splits

pytestmark = pytest.mark.unit


def _input_of(prompt: str) -> str:
    """The input line of a rendered prompt."""
    return prompt.split("Input: ")[1].split("\n")[0]


def test_collection_has_at_least_eight_tasks_mostly_classification():
    # Prepare
    specs = list(TASKS.values())

    # Execute
    classification = [s for s in specs if s.labels]

    # Assert
    assert len(specs) >= 8
    assert len(classification) >= len(specs) - 2
    assert all(2 <= len(s.labels) <= 5 for s in classification)


def test_label_spaces_and_instructions_are_distinct_across_tasks():
    # Prepare
    classification = [s for s in TASKS.values() if s.labels]

    # Execute
    all_labels = [label for s in classification for label in s.labels]

    # Assert
    assert len(all_labels) == len(set(all_labels))
    assert len({s.instruction for s in TASKS.values()}) == len(TASKS)


@pytest.mark.parametrize("name", list(TASKS))
def test_generated_records_follow_the_task_format(name):
    # Prepare
    spec = TASKS[name]

    # Execute
    records = spec.generate(60, seed=3)

    # Assert
    for i, record in enumerate(records):
        validate_record(record, i)
        assert record["task"] == name and record["private_spans"] == []
        assert record["prompt"] == spec.render_prompt(_input_of(record["prompt"]))
        assert record["prompt"].startswith(spec.input_prefix())
        assert record["completion"].startswith(" ") and record["completion"].strip()
        if spec.labels:
            assert record["completion"].strip() in spec.labels
    if spec.labels:
        assert {r["completion"].strip() for r in records} == set(spec.labels)


def test_answers_follow_each_rule():
    # Prepare
    rules = {
        "sentiment": lambda x, a: (x.split()[-1] in SENTIMENT_WORDS["positive"]) == (a == "positive"),
        "parity": lambda x, a: a == ("even" if int(x) % 2 == 0 else "odd"),
        "capital": lambda x, a: COUNTRY_CAPITALS[x.split()[-3]] == a,
        "larger": lambda x, a: a == ("first" if int(x.split()[0]) > int(x.split()[2]) else "second"),
        "negation": lambda x, a: any(w in x.split() for w in ("not", "never", "no", "cannot")) == (a == "yes"),
        "count": lambda x, a: (len(x.split(" holds ")[1].split(", "))
                               == ["one", "two", "three", "four", "five"].index(a) + 1),
        "copy_first": lambda x, a: a == x.split()[0],
    }

    # Execute
    checked = {
        name: [rule(_input_of(r["prompt"]), r["completion"].strip()) for r in get_task(name).generate(80, 0)]
        for name, rule in rules.items()
    }

    # Assert
    assert all(all(results) for results in checked.values()), checked


def test_generate_is_deterministic_and_seed_dependent():
    # Prepare
    spec = get_task("topic")

    # Execute
    first, again, other = spec.generate(20, 5), spec.generate(20, 5), spec.generate(20, 6)

    # Assert
    assert first == again
    assert first != other


def test_task_splits_are_disjoint_and_sized():
    # Prepare
    sizes = {"train": 64, "validation": 32, "test": 32}

    # Execute
    splits = task_splits("parity", sizes["train"], sizes["validation"], sizes["test"], seed=1)

    # Assert
    assert {k: len(v) for k, v in splits.items()} == sizes
    prompts = [r["prompt"] for split in splits.values() for r in split]
    assert len(set(prompts)) == len(prompts)
    assert splits == task_splits("parity", 64, 32, 32, seed=1)


def test_describe_is_public_and_json_labelled():
    # Prepare
    spec = get_task("category")

    # Execute
    description = spec.describe()

    # Assert
    assert set(description) == {"name", "instruction", "answer_format", "labels", "template"}
    assert all(isinstance(v, str) for v in description.values())
    assert json.loads(description["labels"]) == spec.labels
    assert json.loads(get_task("capital").describe()["labels"]) is None
    assert "Input:" not in description["instruction"]


def test_input_prefix_ends_where_the_input_begins():
    # Prepare
    spec = get_task("sentiment")

    # Execute
    prefix = spec.input_prefix()

    # Assert
    assert prefix == spec.instruction + "\nInput:"
    assert spec.render_prompt("xyz") == prefix + " xyz\nAnswer:"
    assert spec.format_completion("positive") == " positive"


def test_extract_input_reads_a_continuation_back():
    # Prepare
    spec = get_task("topic")
    record = spec.generate(1, seed=0)[0]
    continuation = record["prompt"][len(spec.input_prefix()):] + record["completion"]

    # Execute
    pseudo_input = spec.extract_input(continuation)

    # Assert
    assert spec.render_prompt(pseudo_input) == record["prompt"]


def test_get_task_error_lists_valid_names():
    # Prepare
    name = "no_such_task"

    # Execute
    with pytest.raises(ValueError) as error:
        get_task(name)

    # Assert
    assert name in str(error.value)
    assert all(valid in str(error.value) for valid in TASKS)


def test_generate_fails_clearly_when_the_input_space_is_exhausted():
    # Prepare
    spec = get_task("negation")  # 1200 distinct inputs

    # Execute
    with pytest.raises(ValueError) as error:
        spec.generate(5000, seed=0)

    # Assert
    assert "negation" in str(error.value) and "5000" in str(error.value)
