"""The concept data of ConTrans and multilingual steering, and the concept's own measure.

A `ConceptSet` is one concept in one or more languages: (positive, negative) text pairs split
train/dev/test (vectors from train, α chosen on dev, figures on test), neutral texts (the map
fit and the perplexity cost) and a *measure* of the concept in a model's behaviour:

- ``world`` (`fedprivacy.data.concept_world`, tiny scale): the pairs are a target emotion's
  scenarios against other emotions' scenarios about the same person, cut at the cue; the
  measure is ConTrans's on the negative scenarios (METHODS.md §2, "Metrics"): ``rate``, the
  share whose most likely label (log-likelihood over the emotion labels, the paper's Logits
  Acc.) is the target, and ``token_rate``, the share whose greedy continuation is the target's
  label (Token Acc.). Split by person.
- ``sentiment``, ``politeness``, ``honesty`` (`fedprivacy/data/concept_sets`, real scale, four
  languages, parallel by id, split by id): the measure is ``preference``, the share of pairs
  whose positive text has the higher mean per-token log-likelihood, and ``margin``, the mean
  difference; for English sentiment also ``vader``, the mean VADER compound score (an
  independent, model-free judge) of greedy continuations of neutral prompt openings.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.data.records import derive_seed

REAL_SETS = ("sentiment", "politeness", "honesty")
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "concept_sets"
SPLITS = ("train", "dev", "test")
Pair = tuple[str, str]
Measure = Callable[[PreTrainedModel, PreTrainedTokenizerBase, str, str], dict[str, float]]


@dataclass
class LanguageData:
    """One language of a concept: pairs by split, neutral texts, and what the measure uses
    (``eval``: per split, the prompts or pairs the measure scores)."""

    pairs: dict[str, list[Pair]]
    neutral: list[str]
    eval: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConceptSet:
    """A concept in ``languages`` (the first is the dominant one); ``measure(model, tok,
    language, split)`` returns the concept's measure there (module docstring) and ``primary``
    names the key that α is chosen on."""

    name: str
    languages: list[str]
    data: dict[str, LanguageData]
    measure: Measure
    primary: str

    def pairs(self, language: str, split: str) -> list[Pair]:
        return self.data[language].pairs[split]


def _split(keys: list[str], fractions: tuple[float, float], seed: int) -> dict[str, set[str]]:
    keys = sorted(set(keys))
    random.Random(seed).shuffle(keys)
    n_dev, n_test = (round(len(keys) * f) for f in fractions)
    return {"dev": set(keys[:n_dev]), "test": set(keys[n_dev:n_dev + n_test]),
            "train": set(keys[n_dev + n_test:])}


# --- measures --------------------------------------------------------------------------------

def label_rates(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                labels: list[str], target: str, batch_size: int = 64) -> dict[str, float]:
    """``rate``: share of prompts whose most likely label is ``target``; ``token_rate``: share
    whose greedy continuation starts with the target label's tokens."""
    from fedprivacy.data.encoding import prompt_ids
    from fedprivacy.evaluation import completion_log_likelihoods
    from fedprivacy.lm import generate_ids, pad_token_id

    flat = completion_log_likelihoods(model, tok, [p for p in prompts for _ in labels],
                                      [f" {label}" for _ in prompts for label in labels],
                                      batch_size)
    best = flat.view(len(prompts), len(labels)).argmax(1)
    wanted = tok(f" {target}", add_special_tokens=False)["input_ids"]
    greedy = generate_ids(model, [prompt_ids(tok, p) for p in prompts], len(wanted),
                          pad_id=pad_token_id(tok), batch_size=batch_size)
    hits = (greedy == torch.tensor(wanted)).all(1)
    return {"rate": float((best == labels.index(target)).double().mean()),
            "token_rate": float(hits.double().mean())}


def mean_logprobs(model: PreTrainedModel, tok: PreTrainedTokenizerBase, texts: list[str],
                  prefix: str = "", batch_size: int = 64) -> torch.Tensor:
    """Mean per-token log-likelihood of each text (after ``prefix``, or after its first token)."""
    from fedprivacy.lm import pad_token_id, score_completions

    pairs = []
    for text in texts:
        if prefix:
            pairs.append((tok(prefix)["input_ids"],
                          tok(" " + text, add_special_tokens=False)["input_ids"]))
        else:
            ids = tok(text)["input_ids"]
            pairs.append((ids[:1], ids[1:]))
    scored = score_completions(model, pairs, pad_token_id(tok), batch_size)
    return torch.tensor([float(s.logprobs.mean()) for s in scored], dtype=torch.float64)


def preference(model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: list[Pair],
               prefix: str = "") -> dict[str, float]:
    """``preference``: share of pairs whose positive text is the more likely (mean per-token
    log-likelihood); ``margin``: mean of the differences."""
    pos = mean_logprobs(model, tok, [p for p, _ in pairs], prefix)
    neg = mean_logprobs(model, tok, [n for _, n in pairs], prefix)
    return {"preference": float((pos > neg).double().mean()), "margin": float((pos - neg).mean())}


def vader(texts: list[str]) -> float:
    """Mean VADER compound score of ``texts`` (−1 … 1)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return statistics.fmean(analyzer.polarity_scores(t)["compound"] for t in texts)


def continuations(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                  max_new_tokens: int = 20, prefix: str = "") -> list[str]:
    """Greedy continuations of ``prompts`` (after an optional instruction ``prefix``)."""
    from fedprivacy.data.encoding import prompt_ids
    from fedprivacy.lm import generate_texts

    ids = [prompt_ids(tok, f"{prefix}{p}") for p in prompts]
    return generate_texts(model, tok, ids, max_new_tokens, batch_size=16)


def encode_texts(tok: PreTrainedTokenizerBase, texts: list[str], max_length: int = 64
                 ) -> dict[str, torch.Tensor]:
    """``texts`` encoded for a perplexity (every token after the first is scored)."""
    from fedprivacy.data.encoding import encode_records
    from fedprivacy.data.records import make_record

    return encode_records(tok, [make_record("", t, "neutral") for t in texts], max_length,
                          on_overflow="truncate")


# --- the tiny emotion world ------------------------------------------------------------------

def world_set(world_cfg: Any, target: str, seed: int, dev: float = 0.25, test: float = 0.25,
              languages: list[str] | None = None) -> ConceptSet:
    """The emotion world's concept ``target`` (module docstring), split by person."""
    from fedprivacy.data.concept_world import PEOPLE, ConceptWorld

    world = ConceptWorld(world_cfg)
    if target not in world.cfg.emotions:
        raise ValueError(f"concept {target!r} is not an emotion of the world "
                         f"({world.cfg.emotions})")
    names = world.languages
    chosen = languages or names
    unknown = [lang for lang in chosen if lang not in names]
    if unknown:
        raise ValueError(f"languages {unknown} are not in the world ({names})")
    people = _split(list(PEOPLE), (dev, test), derive_seed(seed, "concept-split"))
    data = {}
    for lang in chosen:
        k = names.index(lang)
        pairs = world.pairs(target, k, seed)
        negatives = world.negatives(target, k)
        data[lang] = LanguageData(
            {s: [(p.prompt, n.prompt) for p, n in pairs if p.person in people[s]]
             for s in SPLITS},
            world.neutral_texts(k),
            {s: [n.prompt for n in negatives if n.person in people[s]] for s in SPLITS})
        data[lang].eval["labels"] = world.labels(k)
        data[lang].eval["target"] = world.label(target, k)

    def measure(model: PreTrainedModel, tok: PreTrainedTokenizerBase, language: str,
                split: str) -> dict[str, float]:
        d = data[language]
        return label_rates(model, tok, d.eval[split], d.eval["labels"], d.eval["target"])

    return ConceptSet(target, chosen, data, measure, "rate")


# --- the real sets ---------------------------------------------------------------------------

def _read_jsonl(path: Path, key: str) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{key}: no concept file at {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{key}: {path} line {number} is not JSON ({err})") from err
    return rows


def real_set(name: str, seed: int, languages: list[str] | None = None, dev: float = 0.2,
             test: float = 0.3, instruction: str = "", vader_prompts: int = 40,
             max_new_tokens: int = 20, key: str = "alignment") -> ConceptSet:
    """One of the project's real concept sets (``REAL_SETS``) in ``languages`` (default: all
    in the file, English first), split by pair id; ``instruction`` prefixes the texts when the
    measure is asked for the Inst-Align baseline (see `with_instruction`)."""
    if name not in REAL_SETS:
        raise ValueError(f"{key}: unknown concept set {name!r}; choose one of {REAL_SETS}")
    rows = _read_jsonl(DATA_DIR / f"{name}.jsonl", key)
    neutral_rows = _read_jsonl(DATA_DIR / "neutral.jsonl", key)
    prompt_rows = _read_jsonl(DATA_DIR / "prompts.jsonl", key)
    present = list(dict.fromkeys(r["lang"] for r in rows))
    chosen = languages or present
    missing = [lang for lang in chosen if lang not in present]
    if missing:
        raise ValueError(f"{key}: concept set {name!r} has no language {missing} "
                         f"(it has {present})")
    ids = _split([r["id"] for r in rows], (dev, test), derive_seed(seed, "concept-split", name))
    data = {}
    for lang in chosen:
        mine = [r for r in rows if r["lang"] == lang]
        data[lang] = LanguageData(
            {s: [(r["pos"], r["neg"]) for r in mine if r["id"] in ids[s]] for s in SPLITS},
            [r["text"] for r in neutral_rows if r["lang"] == lang])
        data[lang].eval["prompts"] = [r["text"] for r in prompt_rows
                                      if r["lang"] == lang][:vader_prompts]

    def measure(model: PreTrainedModel, tok: PreTrainedTokenizerBase, language: str,
                split: str) -> dict[str, float]:
        result = preference(model, tok, data[language].pairs[split], instruction)
        if name == "sentiment" and language == "en" and split == "test":
            texts = continuations(model, tok, data[language].eval["prompts"], max_new_tokens,
                                  f"{instruction} " if instruction else "")
            result["vader"] = vader(texts)
        return result

    return ConceptSet(name, chosen, data, measure, "margin")


def concept_set(data: str, concept: str, cfg: Any, languages: list[str] | None = None,
                instruction: str = "", key: str = "alignment") -> ConceptSet:
    """The stage's concept set: ``data`` is ``auto`` (the emotion world with
    ``data.source=concepts``, else the real set named ``concept``), ``world`` or a real set."""
    if data == "auto":
        data = "world" if cfg.data.source == "concepts" else concept
    if data == "world":
        return world_set(cfg.data.concepts, concept, cfg.seed, languages=languages)
    return real_set(data, cfg.seed, languages, instruction=instruction, key=key)
