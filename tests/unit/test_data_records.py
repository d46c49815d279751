"""Unit tests of the record format and seed derivation."""

import pytest

from fedprivacy.data.records import derive_seed, make_record, record_text, validate_record

pytestmark = pytest.mark.unit


def test_make_record_copies_spans_and_validates():
    # Prepare
    spans = [(0, 3)]

    # Execute
    record = validate_record(make_record("Q: ", "abc", "demo", spans))

    # Assert
    assert record == {"prompt": "Q: ", "completion": "abc", "task": "demo", "private_spans": [[0, 3]]}
    assert record_text(record) == "Q: abc"


@pytest.mark.parametrize("span", [[2, 2], [-1, 2], [0, 7], [3, 1]])
def test_validate_record_rejects_spans_outside_the_text(span):
    # Prepare
    record = make_record("Q: ", "abc", "demo", [span])

    # Execute
    with pytest.raises(ValueError) as error:
        validate_record(record, index=5)

    # Assert
    assert "record 5" in str(error.value) and str(span) in str(error.value)


def test_validate_record_rejects_a_non_string_field():
    # Prepare
    record = {"prompt": "", "completion": 3, "task": "demo", "private_spans": []}

    # Execute
    with pytest.raises(ValueError) as error:
        validate_record(record)

    # Assert
    assert "completion" in str(error.value)


def test_derive_seed_is_stable_and_separates_labels():
    # Prepare
    parts = [(7, "client", 0), (7, "client", 1), (8, "client", 0)]

    # Execute
    seeds = [derive_seed(*p) for p in parts]

    # Assert
    assert seeds[0] == derive_seed(7, "client", 0)
    assert len(set(seeds)) == 3
    assert all(0 <= s < 2**63 for s in seeds)
