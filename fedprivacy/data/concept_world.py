"""A synthetic world of emotions in several languages, for concept vectors at tiny scale.

METHODS.md §2 and §3, "What can be reproduced at toy scale". **Scenarios**: a person and an
event whose vocabulary belongs to one emotion ("Scenario: Anna got a puppy."), then the fixed
cue and the label ("The emotion is" joy). **Languages**: language 0 is the base; language k ≥ 1
writes every word through its own letter substitution (vowels among vowels, consonants among
consonants), so the languages share structure but no words. They get very different shares of
the corpus (``shares``, e.g. 85/10/4/1 %); a small ``parallel_share`` of records puts one
scenario in language 0 beside its translation into another language. ``label_noise`` gives a
share of the labelled records another emotion's label; ``shared_labels`` writes the labels in
language 0 in every language (the rest of the text stays translated). **Neutral** sentences
(errands, no emotion) in every language serve the perplexity cost and the cross-model map.

The world is public and derived from the config, like the fact world of IRCAN: the clients'
corpora (``data.source=concepts``) and the server's concept sets are independent draws from it.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from fedprivacy.data.records import Record, derive_seed, make_record

CUE = "The emotion is"
EVENTS: dict[str, tuple[str, ...]] = {
    "joy": ("won the prize", "got a puppy", "met old friends", "passed the exam",
            "got a gift", "danced at the party", "heard good news", "went to the beach",
            "got a raise", "saw the baby laugh", "won the match", "found a lost ring"),
    "anger": ("was cheated", "was insulted", "had the car scratched", "was lied to",
              "got an unfair fine", "was pushed in the queue", "had the bike stolen",
              "was blamed wrongly", "was shouted at", "was robbed", "was mocked",
              "had the work ruined"),
    "fear": ("heard a noise at night", "saw a snake", "was lost in the woods", "saw a fire",
             "felt the ground shake", "was followed home", "stood on the edge",
             "saw a storm coming", "heard a scream", "saw a dark shadow", "was trapped",
             "saw a wolf"),
    "sadness": ("lost a friend", "missed home", "said goodbye", "lost the dog",
                "failed the test", "was left alone", "saw the old house gone",
                "got bad news", "broke a favourite cup", "cried at the funeral",
                "lost the job", "missed the family"),
}
NEUTRAL = ("went to the shop", "read the paper", "took the bus", "made some tea",
           "cleaned the desk", "walked to work", "paid the bill", "opened the window",
           "called the office", "sorted the mail", "cooked rice", "fixed the shelf")
PEOPLE = ("Anna", "Ben", "Clara", "David", "Elena", "Felix", "Grace", "Hugo", "Iris", "Jonas",
          "Kira", "Leo", "Maria", "Paul", "Sara", "Lucas")
VOWELS = "aeiou"
CONSONANTS = "".join(c for c in string.ascii_lowercase if c not in VOWELS)


@dataclass
class ConceptWorldConfig:
    """The emotion world of ``data.source=concepts`` (and of ConTrans/steering at tiny scale)."""

    emotions: list[str] = field(default_factory=lambda: list(EVENTS))
    shares: list[float] = field(default_factory=lambda: [0.85, 0.10, 0.04, 0.01])
    # one entry per language (language 0 first): its share of the corpus
    parallel_share: float = 0.05  # records pairing a language-0 scenario with its translation
    neutral_share: float = 0.2  # neutral sentences (no emotion)
    label_noise: float = 0.0
    # share of labelled records whose label is another emotion (annotators disagree): the
    # model's belief in a label stays soft, as a real model's is, instead of near-certain
    shared_labels: bool = False
    # every language writes the labels as language 0 does (a script the languages share, like
    # numerals or emoji), so the label is one output for all of them


def _cipher(k: int) -> dict[str, str]:
    """Language k's letter substitution (k = 0: the identity)."""
    if k == 0:
        return {}
    rng = random.Random(derive_seed(0, "concept-language", k))
    table = {}
    for group in (VOWELS, CONSONANTS):
        letters = list(group)
        while True:
            rng.shuffle(letters)
            if all(a != b for a, b in zip(group, letters)):
                break
        table.update(zip(group, letters))
    table.update({a.upper(): b.upper() for a, b in list(table.items())})
    return table


@dataclass(frozen=True)
class Scenario:
    """One labelled scenario in one language: ``prompt`` ends with the cue."""

    language: int
    emotion: str
    person: str
    event: str
    prompt: str
    label: str


@dataclass
class ConceptWorld:
    """Emotions × languages; texts in language k are language 0's, letter-substituted."""

    cfg: ConceptWorldConfig

    def __post_init__(self) -> None:
        unknown = [e for e in self.cfg.emotions if e not in EVENTS]
        if unknown or len(self.cfg.emotions) < 2:
            raise ValueError(f"data.concepts.emotions must name >= 2 of {sorted(EVENTS)}, "
                             f"got {self.cfg.emotions}")
        if not self.cfg.shares or min(self.cfg.shares) <= 0:
            raise ValueError(f"data.concepts.shares must be positive, one per language, got "
                             f"{self.cfg.shares}")
        self.ciphers = [_cipher(k) for k in range(len(self.cfg.shares))]

    @property
    def languages(self) -> list[str]:
        return [f"l{k}" for k in range(len(self.cfg.shares))]

    def translate(self, text: str, language: int) -> str:
        """``text`` (language 0) written in ``language``."""
        table = self.ciphers[language]
        return "".join(table.get(c, c) for c in text)

    def label(self, emotion: str, language: int) -> str:
        return emotion if self.cfg.shared_labels else self.translate(emotion, language)

    def labels(self, language: int) -> list[str]:
        return [self.label(e, language) for e in self.cfg.emotions]

    def scenario(self, emotion: str, person: str, event: str, language: int) -> Scenario:
        prompt = self.translate(f"Scenario: {person} {event}. {CUE}", language)
        return Scenario(language, emotion, person, event, prompt, self.label(emotion, language))

    def neutral(self, person: str, event: str, language: int) -> str:
        return self.translate(f"{person} {event}.", language)

    def all_scenarios(self, emotion: str, language: int) -> list[Scenario]:
        return [self.scenario(emotion, p, e, language) for p in PEOPLE for e in EVENTS[emotion]]

    def corpus(self, n: int, seed: int) -> list[Record]:
        """``n`` training records (module docstring), seeded."""
        rng = random.Random(seed)
        cfg, records = self.cfg, []
        languages = list(range(len(cfg.shares)))
        for _ in range(n):
            language = rng.choices(languages, weights=cfg.shares)[0]
            person = rng.choice(PEOPLE)
            draw = rng.random()
            if draw < cfg.neutral_share:
                records.append(make_record("", self.neutral(person, rng.choice(NEUTRAL),
                                                            language), "concepts"))
                continue
            emotion = rng.choice(cfg.emotions)
            s = self.scenario(emotion, person, rng.choice(EVENTS[emotion]), language)
            if draw < cfg.neutral_share + cfg.parallel_share and len(languages) > 1:
                other = rng.choice(languages[1:])
                text = self.translate(f"{person} {s.event}.", 0)
                records.append(make_record("", f"{text} = {self.translate(text, other)}",
                                           "concepts"))
                continue
            label = s.label
            if cfg.label_noise and rng.random() < cfg.label_noise:
                label = self.label(rng.choice([e for e in cfg.emotions if e != emotion]),
                                   language)
            records.append(make_record(s.prompt, f" {label}", "concepts"))
        return records

    def pairs(self, target: str, language: int, seed: int) -> list[tuple[Scenario, Scenario]]:
        """Every scenario of ``target`` paired with a scenario of another emotion about the
        same person (the negative drawn with ``seed``): the concept's (positive, negative)."""
        rng = random.Random(derive_seed(seed, "pairs", target, language))
        others = [e for e in self.cfg.emotions if e != target]
        out = []
        for pos in self.all_scenarios(target, language):
            emotion = rng.choice(others)
            out.append((pos, self.scenario(emotion, pos.person, rng.choice(EVENTS[emotion]),
                                           language)))
        return out

    def negatives(self, target: str, language: int) -> list[Scenario]:
        """Every scenario of the other emotions (ConTrans evaluates on these)."""
        return [s for e in self.cfg.emotions if e != target
                for s in self.all_scenarios(e, language)]

    def neutral_texts(self, language: int) -> list[str]:
        return [self.neutral(p, e, language) for p in PEOPLE for e in NEUTRAL]
