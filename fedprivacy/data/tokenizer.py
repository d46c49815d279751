"""The tokenizer of the synthetic world: a byte-level BPE trained offline and deterministically.

Digits are split off one by one before BPE, so every decimal digit is always exactly one token
(a canary secret of d digits is d tokens) and the space before a number is its own token: the
tokens of `prefix + secret + suffix` are the tokens of the three parts, concatenated.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import faker
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fedprivacy.data import pii, tasks
from fedprivacy.data.records import derive_seed, record_text

TOKENIZER_VERSION = "1"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
DIGITS = "0123456789"


def tokenizer_corpus() -> list[str]:
    """The training texts: every task generator, the PII corpus with canaries, the public corpus."""
    seed = derive_seed(0, "tokenizer-corpus")
    texts = [record_text(r) for spec in tasks.TASKS.values() for r in spec.generate(200, seed)]
    canaries = pii.make_canaries(len(pii.CANARY_TEMPLATES), 6, seed, 0)
    texts += [record_text(r) for r in pii.pii_corpus(500, canaries, 2, seed)]
    texts += [record_text(r) for r in pii.public_corpus(200, seed)]
    return texts


def cache_key(vocab_size: int) -> str:
    """A key that changes with the version, the vocabulary size and anything that shapes the corpus."""
    versions = f"{TOKENIZER_VERSION}:{vocab_size}:{faker.VERSION}:{tokenizers.__version__}"
    digest = hashlib.sha256(versions.encode())
    for module in (tasks, pii):
        digest.update(Path(module.__file__).read_bytes())
    return f"v{TOKENIZER_VERSION}-{vocab_size}-{digest.hexdigest()[:12]}"


def default_cache_dir() -> Path:
    """`$FEDPRIVACY_CACHE/tokenizers`, by default `~/.cache/fedprivacy/tokenizers`."""
    return Path(os.environ.get("FEDPRIVACY_CACHE", "~/.cache/fedprivacy")).expanduser() / "tokenizers"


def train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on `tokenizer_corpus()`; `<s>` is prepended to every encoding."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, add_bos_token=True, add_eos_token=False, **SPECIAL_TOKENS
    )


def build_tokenizer(cache_dir: Path | None = None, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """The fedprivacy tokenizer, trained once and cached under `cache_dir/<key>` (atomic rename)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / cache_key(vocab_size)
    if not (target / "tokenizer.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        train_tokenizer(vocab_size).save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(staging, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(target)


def digit_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Token ids of "0".."9" as they occur inside text (each digit is one token)."""
    ids = tokenizer("x " + DIGITS, add_special_tokens=False)["input_ids"][-len(DIGITS) :]
    if tokenizer.convert_ids_to_tokens(ids) != list(DIGITS):
        raise ValueError("this tokenizer does not encode every decimal digit as its own token")
    return ids
