"""Integration tests of the trained fedprivacy tokenizer (builds it offline into temporary caches)."""

import json
import threading

import pytest

from fedprivacy.data.encoding import encode_records
from fedprivacy.data.federated import DataConfig
from fedprivacy.data.pii import make_canaries, pii_corpus, public_corpus
from fedprivacy.data.records import make_record
from fedprivacy.data.tasks import TASKS
from fedprivacy.data.tokenizer import build_tokenizer, digit_token_ids

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer-cache"))


def _model(tokenizer) -> dict:
    """The trained vocabulary and merges."""
    return json.loads(tokenizer.backend_tokenizer.to_str())["model"]


def test_independent_builds_are_identical(tokenizer, tmp_path):
    # Prepare
    fresh_cache = tmp_path / "other-cache"

    # Execute
    other = build_tokenizer(fresh_cache)

    # Assert
    assert _model(other)["vocab"] == _model(tokenizer)["vocab"]
    assert _model(other)["merges"] == _model(tokenizer)["merges"]
    assert len(tokenizer) == 2048
    assert [p.name for p in fresh_cache.iterdir()] == [next(fresh_cache.iterdir()).name]


def test_special_tokens_and_bos(tokenizer):
    # Prepare
    text = "hello"

    # Execute
    ids = tokenizer(text)["input_ids"]

    # Assert
    special = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
               tokenizer.unk_token_id]
    assert tokenizer.convert_ids_to_tokens(special) == ["<pad>", "<s>", "</s>", "<unk>"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids


def test_canary_round_trip_and_secret_digits_are_single_tokens(tokenizer):
    # Prepare
    canaries = make_canaries(8, 6, seed=0, client_id=0)
    digits = digit_token_ids(tokenizer)

    # Execute
    encodings = [tokenizer(c.text, add_special_tokens=False)["input_ids"] for c in canaries]

    # Assert
    for canary, ids in zip(canaries, encodings):
        assert tokenizer.decode(ids) == canary.text
        secret_ids = [digits[int(d)] for d in canary.secret]
        parts = [tokenizer(p, add_special_tokens=False)["input_ids"]
                 for p in (canary.prefix, canary.secret, canary.suffix)]
        assert parts[1] == secret_ids
        assert parts[0] + parts[1] + parts[2] == ids


@pytest.mark.parametrize("context", ["x", " ", "a1", "(", "-", "PIN ", "\n"])
def test_every_digit_is_one_token_in_any_context(tokenizer, context):
    # Prepare
    digits = digit_token_ids(tokenizer)

    # Execute
    encoded = [tokenizer(context + d + context, add_special_tokens=False)["input_ids"] for d in "0123456789"]

    # Assert
    assert len(set(digits)) == 10
    assert all(digits[i] in ids for i, ids in enumerate(encoded))
    assert all(tokenizer.convert_ids_to_tokens(digits[i]) == str(i) for i in range(10))


def test_all_generated_records_fit_the_default_context(tokenizer):
    # Prepare
    max_length = DataConfig().max_length
    records = [r for spec in TASKS.values() for r in spec.generate(200, seed=11)]
    records += pii_corpus(300, make_canaries(4, 6, seed=11, client_id=3), 2, seed=11) + public_corpus(100, seed=11)

    # Execute
    encoded = encode_records(tokenizer, records, max_length=max_length)

    # Assert
    assert encoded["input_ids"].shape[1] <= max_length
    assert (encoded["input_ids"] == tokenizer.unk_token_id).sum() == 0


def test_private_mask_covers_exactly_the_secret_digits(tokenizer):
    # Prepare
    canary = make_canaries(1, 6, seed=5, client_id=0)[0]
    record = make_record("", canary.text, "canary", [canary.span])

    # Execute
    encoded = encode_records(tokenizer, [record], max_length=32)

    # Assert
    private_ids = encoded["input_ids"][0][encoded["private_mask"][0]].tolist()
    assert private_ids == [digit_token_ids(tokenizer)[int(d)] for d in canary.secret]


def test_canary_longer_than_the_context_gives_a_clear_error(tokenizer):
    # Prepare
    canary = make_canaries(1, 40, seed=0, client_id=0)[0]
    record = make_record("", canary.text, "canary", [canary.span])

    # Execute
    with pytest.raises(ValueError) as error:
        encode_records(tokenizer, [record], max_length=32)

    # Assert
    assert "record 0" in str(error.value) and "max_length=32" in str(error.value)


def test_concurrent_builds_share_one_cache_entry(tmp_path):
    # Prepare
    results = []

    def build():
        results.append(build_tokenizer(tmp_path))

    threads = [threading.Thread(target=build) for _ in range(2)]

    # Execute
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Assert
    assert len(results) == 2
    assert results[0].get_vocab() == results[1].get_vocab()
    assert len(list(tmp_path.iterdir())) == 1
