"""Unit tests of record encoding, with a byte-level tokenizer that has no merges (one token per byte)."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fedprivacy.data.encoding import (
    IGNORE_INDEX,
    encode_records,
    iterate_batches,
    left_padded,
    prompt_ids,
)
from fedprivacy.data.records import make_record
from fedprivacy.data.tokenizer import digit_token_ids

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def byte_tokenizer():
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, add_bos_token=True,
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
    )


def test_labels_cover_completion_and_eos_only(byte_tokenizer):
    # Prepare
    records = [make_record("Q:", " yes", "demo"), make_record("", "hi", "corpus")]

    # Execute
    encoded = encode_records(byte_tokenizer, records, max_length=16)

    # Assert
    tok = byte_tokenizer
    assert encoded["input_ids"].shape == (2, 1 + 2 + 4 + 1)
    ids = tok.convert_tokens_to_ids
    assert encoded["input_ids"][0].tolist() == [tok.bos_token_id] + ids(list("Q:Ġyes")) + [tok.eos_token_id]
    assert encoded["labels"][0].tolist() == [IGNORE_INDEX] * 3 + ids(list("Ġyes")) + [tok.eos_token_id]
    assert encoded["attention_mask"][1].tolist() == [1] * 4 + [0] * 4
    assert encoded["input_ids"][1, 4:].tolist() == [tok.pad_token_id] * 4
    assert encoded["labels"][1].tolist() == ([IGNORE_INDEX] + ids(list("hi")) + [tok.eos_token_id]
                                             + [IGNORE_INDEX] * 4)


def test_private_mask_marks_tokens_inside_spans(byte_tokenizer):
    # Prepare
    record = make_record("Name:", " Bo 42", "demo", [[6, 8], [9, 11]])

    # Execute
    encoded = encode_records(byte_tokenizer, [record], max_length=32)

    # Assert
    mask = encoded["private_mask"][0].tolist()
    tokens = byte_tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    assert [t for t, m in zip(tokens, mask) if m] == ["B", "o", "4", "2"]
    assert encoded["private_mask"].dtype == torch.bool


def test_overflow_error_names_record_and_lengths(byte_tokenizer):
    # Prepare
    records = [make_record("", "ok", "demo"), make_record("", "My PIN code is 123456.", "canary")]

    # Execute
    with pytest.raises(ValueError) as error:
        encode_records(byte_tokenizer, records, max_length=10)

    # Assert
    message = str(error.value)
    assert "record 1" in message and "24 tokens" in message and "max_length=10" in message


def test_truncate_cuts_at_the_right(byte_tokenizer):
    # Prepare
    record = make_record("abc", "defgh", "demo")

    # Execute
    encoded = encode_records(byte_tokenizer, [record], max_length=6, on_overflow="truncate")

    # Assert
    assert encoded["input_ids"].shape == (1, 6)
    assert byte_tokenizer.decode(encoded["input_ids"][0], skip_special_tokens=True) == "abcde"


def test_bad_overflow_mode_is_rejected(byte_tokenizer):
    # Prepare
    record = make_record("a", "b", "demo")

    # Execute
    with pytest.raises(ValueError) as error:
        encode_records(byte_tokenizer, [record], max_length=8, on_overflow="drop")

    # Assert
    assert "on_overflow" in str(error.value)


def test_iterate_batches_covers_every_row_once_in_seeded_order(byte_tokenizer):
    # Prepare
    encoded = encode_records(byte_tokenizer, [make_record("", "x" * (i + 1), "demo") for i in range(7)], 16)

    # Execute
    batches = list(iterate_batches(encoded, batch_size=3, seed=0))
    again = list(iterate_batches(encoded, batch_size=3, seed=0))
    ordered = list(iterate_batches(encoded, batch_size=3, seed=0, shuffle=False))

    # Assert
    assert [len(b["input_ids"]) for b in batches] == [3, 3, 1]
    lengths = sorted(int(m.sum()) for b in batches for m in b["attention_mask"])
    assert lengths == [i + 3 for i in range(7)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    assert torch.equal(ordered[0]["input_ids"], encoded["input_ids"][:3])


def test_digit_token_ids_of_a_per_byte_tokenizer(byte_tokenizer):
    # Prepare
    expected = byte_tokenizer.convert_tokens_to_ids(list("0123456789"))

    # Execute
    ids = digit_token_ids(byte_tokenizer)

    # Assert
    assert ids == expected


def test_prompt_ids_match_the_prompt_part_of_training_rows(byte_tokenizer):
    # Prepare
    record = make_record("Q: hi\nAnswer:", " yes", "demo")

    # Execute
    ids = prompt_ids(byte_tokenizer, record["prompt"])

    # Assert
    encoded = encode_records(byte_tokenizer, [record], max_length=32)
    assert ids == encoded["input_ids"][0, : len(ids)].tolist()
    assert ids[0] == byte_tokenizer.bos_token_id
    assert encoded["labels"][0, len(ids)].item() != IGNORE_INDEX


def test_left_padded_aligns_rows_at_the_right():
    # Prepare
    rows = [[5, 6, 7], [8], []]

    # Execute
    ids, mask = left_padded(rows, pad_id=0)

    # Assert
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
