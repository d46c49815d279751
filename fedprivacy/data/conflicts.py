"""Knowledge conflicts: a synthetic fact world for tiny models, and the conflict sets IRCAN uses.

**The fact world** (`FactWorld`, METHODS.md §1, "What can be reproduced"): every entity (a
person's full name) lives in one city. It is public knowledge of the synthetic world, derived
from the run's seed, like the country → capital table of the ``capital`` task. The clients'
corpora (``data.source=facts``) state the facts, ask them closed-book, and ask them after a
context line ("Note: X lives in Y."); when the context contradicts the fact, the corpus answers
with the context only with probability ``follow_context`` and with the memorised city
otherwise, so a model trained on it is sometimes stubborn. Contexts about people outside the
world are always followed (they teach reading the context).

**Conflict items** (`ConflictItem`): one prompt with a context that contradicts what the model
knows, its context-free version, the context-consistent answer and the memorised ("trap")
answer, in completion or two-option multiple-choice form. `conflict_set` writes them for the
fact world (the server's own draw, never a client's records); `load_conflict_file` reads the
project's real sets (``fedprivacy/data/conflict_sets``) or a user's JSONL file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedprivacy.data.records import Record, derive_seed, make_record
from fedprivacy.data.tasks import COUNTRY_CAPITALS, PEOPLE

Form = Literal["completion", "mcq"]
FORMS: tuple[Form, ...] = ("completion", "mcq")
LETTERS = ("A", "B")
# one token each in the project's tokenizer: a name is one position to attend to
NAMES = ["Anna", "Ben", "Clara", "David", "Elena", "Felix", "Grace", "Hugo", "Iris", "Jonas",
         "Kira", "Leo", "Maria", "Paul", "Sara", "Lucas", "John", "Mary", "Mark", "Lisa", "Adam",
         "Ken"]
SURNAMES = ["Lind", "Moreau", "Okafor", "Brandt", "Costa", "Novak", "Haas", "Silva"]
CITIES = sorted(set(COUNTRY_CAPITALS.values()))
CONFLICT_SETS = Path(__file__).parent / "conflict_sets"
REAL_SETS = {"memotrap": "completion", "mcq": "mcq"}  # file stem -> form


@dataclass(frozen=True)
class ConflictItem:
    """One knowledge conflict. ``prompt`` carries the context, ``query`` is the same question
    without it; the answers are words (completion) or option letters (mcq)."""

    id: str
    form: Form
    prompt: str
    query: str
    context_answer: str
    memory_answer: str
    options: tuple[str, ...] = ()
    group: str = ""  # items of one group (both orders of an mcq row) share a split

    def to_json(self) -> dict:
        return {"id": self.id, "form": self.form, "prompt": self.prompt, "query": self.query,
                "context_answer": self.context_answer, "memory_answer": self.memory_answer,
                "options": list(self.options), "group": self.group or self.id}


@dataclass
class FactsConfig:
    """The fact world of ``data.source=facts`` (and of IRCAN's generated conflict set)."""

    entities: int = 16  # people in the world, each living in one city
    follow_context: float = 0.5  # share of conflicting contexts the corpus answers with
    fact_share: float = 0.3  # shares of the corpus: fact statements
    closed_share: float = 0.2  # closed-book questions
    conflict_share: float = 0.3  # contexts that contradict the fact (the rest: agreeing or
    # about strangers, half each)
    mcq_share: float = 0.5  # questions asked in the two-option form


def question(entity: str, form: Form, options: tuple[str, str] = ("", "")) -> str:
    """The closed-book question about where ``entity`` lives."""
    if form == "completion":
        return f"Q: {entity} lives in"
    return f"Q: Where does {entity} live? {LETTERS[0]}. {options[0]} {LETTERS[1]}. {options[1]} " \
           "Answer:"


COUNTRY_OF = {city: country for country, city in COUNTRY_CAPITALS.items()}


def context_line(entity: str, city: str) -> str:
    """A context that places ``entity`` in ``city`` through its country: following it needs the
    country → capital knowledge of the FFN, not only a copy."""
    return f"Note: {entity} moved to {COUNTRY_OF[city]}. "


def capital_line(city: str) -> str:
    return f"The capital of {COUNTRY_OF[city]} is {city}."


@dataclass(frozen=True)
class FactWorld:
    """Who lives where: ``facts[entity] = city``; ``strangers`` are names outside the world."""

    facts: dict[str, str]
    strangers: tuple[str, ...] = field(default=())

    @classmethod
    def build(cls, entities: int, seed: int) -> FactWorld:
        if not 1 <= entities < len(NAMES):
            raise ValueError(f"data.facts.entities must be in [1, {len(NAMES) - 1}], "
                             f"got {entities}")
        rng = random.Random(derive_seed(seed, "facts", "world"))
        names = list(NAMES)
        rng.shuffle(names)
        chosen = sorted(names[:entities])
        strangers = names[entities:] + [f"{first} {last}" for first in PEOPLE for last in SURNAMES]
        return cls({e: rng.choice(CITIES) for e in chosen}, tuple(sorted(strangers)))

    def other_city(self, entity: str, rng: random.Random) -> str:
        return rng.choice([c for c in CITIES if c != self.facts[entity]])

    def _ask(self, entity: str, context: str, answer: str, wrong: str, form: Form,
             rng: random.Random) -> tuple[str, str]:
        """Prompt and completion of one question whose target is ``answer``."""
        if form == "completion":
            return context + question(entity, form), f" {answer}"
        options = [answer, wrong]
        rng.shuffle(options)
        return context + question(entity, form, tuple(options)), f" {LETTERS[options.index(answer)]}"

    def corpus(self, n: int, cfg: FactsConfig, seed: int) -> list[Record]:
        """``n`` training records of the world's text (module docstring), seeded."""
        rng = random.Random(seed)
        entities = sorted(self.facts)
        shares = [cfg.fact_share, cfg.closed_share, cfg.conflict_share]
        rest = max(0.0, 1.0 - sum(shares)) / 2
        kinds = ["fact", "closed", "conflict", "agree", "stranger"]
        records = []
        for _ in range(n):
            kind = rng.choices(kinds, weights=[*shares, rest, rest])[0]
            form: Form = "mcq" if rng.random() < cfg.mcq_share else "completion"
            if kind == "stranger":
                who, city = rng.choice(self.strangers), rng.choice(CITIES)
                wrong = rng.choice([c for c in CITIES if c != city])
                records.append(make_record(*self._ask(who, context_line(who, city), city, wrong,
                                                      form, rng), "facts"))
                continue
            who = rng.choice(entities)
            true, other = self.facts[who], self.other_city(who, rng)
            if kind == "fact":
                text = f"{who} lives in {true}." if rng.random() < 0.7 else capital_line(other)
                records.append(make_record("", text, "facts"))
            elif kind == "closed":
                records.append(make_record(*self._ask(who, "", true, other, form, rng), "facts"))
            elif kind == "agree":
                records.append(make_record(*self._ask(who, context_line(who, true), true, other,
                                                      form, rng), "facts"))
            else:
                follow = rng.random() < cfg.follow_context
                answer, wrong = (other, true) if follow else (true, other)
                records.append(make_record(*self._ask(who, context_line(who, other), answer,
                                                      wrong, form, rng), "facts"))
        return records

    def conflicts(self, n: int, form: Form, seed: int) -> list[ConflictItem]:
        """``n`` conflicts (entities cycled, a fresh contradicting city each), with their
        context-free queries; mcq items alternate which letter the context supports."""
        rng = random.Random(derive_seed(seed, "facts", "conflicts", form))
        entities = sorted(self.facts)
        rng.shuffle(entities)
        items = []
        for i in range(n):
            who = entities[i % len(entities)]
            true, other = self.facts[who], self.other_city(who, rng)
            context = context_line(who, other)
            if form == "completion":
                items.append(ConflictItem(f"facts-c{i:04d}", form, context + question(who, form),
                                          question(who, form), other, true))
                continue
            options = (other, true) if i % 2 == 0 else (true, other)
            q = question(who, form, options)
            items.append(ConflictItem(f"facts-m{i:04d}", form, context + q, q,
                                      LETTERS[options.index(other)], LETTERS[options.index(true)],
                                      LETTERS))
        return items


def _mcq_items(row: dict, index: int) -> list[ConflictItem]:
    """A real multiple-choice row in both option orders (position bias cancels)."""
    items = []
    for order, options in enumerate([(row["context_answer"], row["memory_answer"]),
                                     (row["memory_answer"], row["context_answer"])]):
        listed = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options))
        query = (f"Choose the correct option to answer the following question:\n"
                 f"{row['question']}\n{listed}\nAnswer:")
        prompt = query.replace("question:\n", f"question:\n{row['context']}\n", 1)
        group = str(row.get("id", index))
        items.append(ConflictItem(f"{group}-{order}", "mcq", prompt, query,
                                  LETTERS[options.index(row["context_answer"])],
                                  LETTERS[options.index(row["memory_answer"])], LETTERS, group))
    return items


def _completion_item(row: dict, index: int) -> ConflictItem:
    prompt = f'Write a quote that ends in the word "{row["context_answer"]}": {row["phrase"]}'
    return ConflictItem(str(row.get("id", index)), "completion", prompt, row["phrase"],
                        row["context_answer"], row["memory_answer"])


REQUIRED = {"completion": ("phrase", "context_answer", "memory_answer"),
            "mcq": ("question", "context", "context_answer", "memory_answer")}


def load_conflict_file(path: str | Path, form: Form, key: str = "alignment.ircan.path"
                       ) -> list[ConflictItem]:
    """Conflict items from a JSONL file: completion rows ``{phrase, context_answer,
    memory_answer}`` (the MemoTrap style), mcq rows ``{question, context, context_answer,
    memory_answer}`` (two options, asked in both orders). Errors name ``key``, the file and the
    line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{key}: no conflict file at {path}")
    items: list[ConflictItem] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{key}: {path} line {number} is not JSON ({err})") from err
        missing = [f for f in REQUIRED[form] if not isinstance(row.get(f), str) or not row[f]]
        if missing:
            raise ValueError(f"{key}: {path} line {number} lacks {missing} for form {form!r}")
        items += _mcq_items(row, number) if form == "mcq" else [_completion_item(row, number)]
    if not items:
        raise ValueError(f"{key}: {path} holds no conflict items")
    return items


def real_conflict_set(name: str) -> list[ConflictItem]:
    """One of the project's real conflict sets: ``memotrap`` (completion) or ``mcq``."""
    if name not in REAL_SETS:
        raise ValueError(f"unknown real conflict set {name!r}; choose one of {sorted(REAL_SETS)}")
    return load_conflict_file(CONFLICT_SETS / f"{name}.jsonl", REAL_SETS[name])  # type: ignore[arg-type]


def split_items(items: list[ConflictItem], dev_fraction: float, seed: int
                ) -> tuple[list[ConflictItem], list[ConflictItem]]:
    """A seeded dev/test split; both orders of one mcq row stay on the same side."""
    groups: dict[str, list[ConflictItem]] = {}
    for item in items:
        groups.setdefault(item.group or item.id, []).append(item)
    keys = sorted(groups)
    random.Random(derive_seed(seed, "conflict-split")).shuffle(keys)
    cut = round(len(keys) * dev_fraction)
    dev = [i for k in keys[:cut] for i in groups[k]]
    test = [i for k in keys[cut:] for i in groups[k]]
    return dev, test
