"""Unit tests of the PII corpora and canaries."""

import re

import pytest

from fedprivacy.data.pii import (
    CANARY_TEMPLATES,
    Canary,
    canary_record,
    fill_template,
    heldout_canaries,
    make_canaries,
    pii_corpus,
    pii_sentences,
    public_corpus,
)
from fedprivacy.data.records import record_text, validate_record

pytestmark = pytest.mark.unit


def test_fill_template_marks_each_field():
    # Prepare
    values = {"name": "Ann Lee", "phone": "555-0100"}

    # Execute
    text, spans = fill_template("Call {name} at {phone}.", values)

    # Assert
    assert text == "Call Ann Lee at 555-0100."
    assert [text[a:b] for a, b in spans] == ["Ann Lee", "555-0100"]


def test_pii_sentences_mark_every_pii_substring():
    # Prepare
    n = 60

    # Execute
    records = pii_sentences(n, seed=4)

    # Assert
    assert len(records) == n
    for i, record in enumerate(records):
        validate_record(record, i)
        text = record_text(record)
        pieces = [text[a:b] for a, b in record["private_spans"]]
        assert pieces and all(p.strip() == p and p for p in pieces)
        outside = "".join(c if not any(a <= j < b for a, b in record["private_spans"]) else "#"
                          for j, c in enumerate(text))
        assert "@" not in outside and not re.search(r"\d", outside)
    assert records == pii_sentences(n, seed=4)
    assert records != pii_sentences(n, seed=5)


def test_canary_text_and_span_frame_the_secret():
    # Prepare
    canary = Canary("c0", "My PIN code is ", "004217", ".")

    # Execute
    start, end = canary.span

    # Assert
    assert canary.text == "My PIN code is 004217."
    assert canary.text[start:end] == "004217"
    assert canary_record(canary)["private_spans"] == [[start, end]]


def test_make_canaries_gives_digit_secrets_distinct_across_clients():
    # Prepare
    clients = range(5)

    # Execute
    canaries = [c for client in clients for c in make_canaries(3, 6, seed=1, client_id=client)]

    # Assert
    assert len({c.secret for c in canaries}) == len({c.id for c in canaries}) == 15
    assert all(len(c.secret) == 6 and c.secret.isdigit() for c in canaries)
    assert all(c.text.startswith(c.prefix) and c.text.endswith(c.suffix) for c in canaries)
    assert make_canaries(3, 6, seed=1, client_id=2) == canaries[6:9]
    assert make_canaries(3, 6, seed=2, client_id=2) != canaries[6:9]


def test_make_canaries_rejects_a_secret_space_too_small():
    # Prepare
    count, digits = 6, 1

    # Execute
    with pytest.raises(ValueError) as error:
        make_canaries(count, digits, seed=0, client_id=1)

    # Assert
    assert "digits=1" in str(error.value)


def test_heldout_canaries_share_the_format_but_no_member_secret_or_id():
    # Prepare: 2 digits leave 100 secrets, so 98 non-members must avoid both members'
    members = make_canaries(2, 2, seed=0, client_id=0)
    # Execute
    unseen = heldout_canaries(98, 2, seed=0, client_id=0, members=members)
    # Assert: the same templates (a template's fixed words), all other secrets, distinct ids
    assert {c.secret for c in unseen} == {f"{i:02d}" for i in range(100)} - {
        c.secret for c in members}
    assert len({c.id for c in unseen + members}) == 100
    frames = {t.split("{owner}")[0] for t in CANARY_TEMPLATES}
    assert all(c.prefix.startswith(tuple(frames)) for c in unseen)
    assert heldout_canaries(98, 2, seed=0, client_id=0, members=members) == unseen
    with pytest.raises(ValueError, match="digits=2"):
        heldout_canaries(99, 2, seed=0, client_id=0, members=members)


def test_pii_corpus_inserts_each_canary_repeats_times():
    # Prepare
    canaries = make_canaries(2, 6, seed=0, client_id=0)

    # Execute
    corpus = pii_corpus(50, canaries, repeats=7, seed=3)

    # Assert
    assert len(corpus) == 50 + 2 * 7
    for canary in canaries:
        inserted = [r for r in corpus if r["completion"] == canary.text]
        assert len(inserted) == 7
        assert all(r["task"] == "canary" and r["private_spans"] == [canary.span] for r in inserted)
    positions = [i for i, r in enumerate(corpus) if r["task"] == "canary"]
    assert positions != list(range(50, 64))
    assert corpus == pii_corpus(50, canaries, repeats=7, seed=3)


def test_public_corpus_is_distinct_and_free_of_pii():
    # Prepare
    n = 80

    # Execute
    records = public_corpus(n, seed=2)

    # Assert
    texts = [record_text(r) for r in records]
    assert len(set(texts)) == n
    assert all(r["private_spans"] == [] and r["task"] == "public" for r in records)
    assert not any("@" in t or re.search(r"\d", t) for t in texts)


def test_most_repeated_private_records_come_first():
    # Prepare: rows 1 and 3 are one record seen twice, row 4 three times; row 2 has no private token
    import torch

    from fedprivacy.privacy.depn import most_repeated_records

    ids = torch.tensor([[1, 2], [3, 4], [5, 6], [3, 4], [7, 8], [7, 8], [7, 8], [9, 9]])
    private = torch.tensor([[1, 0], [0, 1], [0, 0], [0, 1], [1, 1], [1, 1], [1, 1], [0, 1]]).bool()
    # Execute / Assert
    assert most_repeated_records(ids, private, 10) == [4, 1, 0, 7]
    assert most_repeated_records(ids, private, 2) == [4, 1]
    assert most_repeated_records(ids, torch.zeros_like(private), 5) == []
