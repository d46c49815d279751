"""Synthetic instruction tasks: vocabularies, templates and seeded generators written for fedprivacy.

Every task draws its input from a combinatorial space, so splits of distinct examples exist, while
the rule (a word list lookup, a digit, a comparison, a copy) is learnable by a tiny model. Label
spaces are pairwise disjoint, so a model trained on one task does not answer another. `TASKS`'
texts train the tokenizer (`fedprivacy.data.tokenizer`); the task families of
`fedprivacy.data.families` are looked up by `get_task` too but stay out of that corpus, so that
adding tasks does not change every model's tokenizer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from fedprivacy.data.records import Record, derive_seed, draw_distinct, make_record

DEFAULT_TEMPLATE = "{instruction}\nInput: {input}\nAnswer:"

Sampler = Callable[[random.Random], tuple[str, str]]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its public description plus a seeded sampler of (input, answer) pairs."""

    name: str
    instruction: str
    labels: list[str] | None
    answer_format: str
    sampler: Sampler = field(repr=False, compare=False)
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if "{input}" not in self.template:
            raise ValueError(f"task {self.name!r}: template must contain '{{input}}'")

    def render_prompt(self, input: str) -> str:
        """The prompt for one input."""
        return self.template.format(instruction=self.instruction, input=input)

    def format_completion(self, answer: str) -> str:
        """The completion for an answer (with the leading space the labels are scored with)."""
        return " " + answer

    def input_prefix(self) -> str:
        """The prompt up to where the input begins, for a model to continue into a pseudo input.

        Trailing spaces are left off: a BPE tokenizer attaches a space to the word after it, so the
        model continues with " word" as in training, not from a lone space token.
        """
        return self.template.split("{input}")[0].format(instruction=self.instruction).rstrip(" ")

    def extract_input(self, continuation: str) -> str:
        """The input a model wrote after `input_prefix()`: its first line, stripped (inputs are one line)."""
        return continuation.split("\n", 1)[0].strip()

    def describe(self) -> dict[str, str]:
        """The public description of the task: no examples."""
        return {
            "name": self.name,
            "instruction": self.instruction,
            "answer_format": self.answer_format,
            "labels": json.dumps(self.labels),
            "template": self.template,
        }

    def generate(self, n: int, seed: int) -> list[Record]:
        """`n` examples with distinct inputs, the same for the same seed in every process."""
        rng = random.Random(derive_seed(seed, "task", self.name))

        def draw() -> tuple[str, Record]:
            text, answer = self.sampler(rng)
            return text, make_record(self.render_prompt(text), self.format_completion(answer), self.name)

        return draw_distinct(draw, n, f"task {self.name!r}")


def _labelled(rng: random.Random, words_by_label: dict[str, list[str]]) -> tuple[str, list[str]]:
    """A uniformly drawn label and its word list."""
    label = rng.choice(sorted(words_by_label))
    return label, words_by_label[label]


REVIEW_NOUNS = ["film", "meal", "hotel", "concert", "novel", "trip", "show", "lesson", "service",
                "room", "song", "museum"]
INTENSIFIERS = ["really", "very", "quite", "truly", "so", "rather", "simply", "always"]
SENTIMENT_WORDS = {
    "positive": ["wonderful", "great", "lovely", "excellent", "delightful", "superb", "pleasant",
                 "brilliant", "charming", "fantastic"],
    "negative": ["awful", "terrible", "boring", "dreadful", "horrible", "dull", "poor", "nasty",
                 "disappointing", "miserable"],
}


def _sentiment(rng: random.Random) -> tuple[str, str]:
    label, adjectives = _labelled(rng, SENTIMENT_WORDS)
    noun, adverb, adjective = rng.choice(REVIEW_NOUNS), rng.choice(INTENSIFIERS), rng.choice(adjectives)
    return f"the {noun} was {adverb} {adjective}", label


def _parity(rng: random.Random) -> tuple[str, str]:
    number = rng.randrange(10 ** rng.randint(1, 4))
    return str(number), "even" if number % 2 == 0 else "odd"


COUNTRY_CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Portugal": "Lisbon", "Austria": "Vienna", "Norway": "Oslo", "Egypt": "Cairo",
    "Japan": "Tokyo", "Peru": "Lima", "Canada": "Ottawa", "Kenya": "Nairobi",
    "Ireland": "Dublin", "Greece": "Athens", "Poland": "Warsaw", "Finland": "Helsinki",
    "Sweden": "Stockholm", "Hungary": "Budapest", "Thailand": "Bangkok", "Chile": "Santiago",
}
PEOPLE = ["Anna", "Ben", "Clara", "David", "Elena", "Felix", "Grace", "Hugo", "Iris", "Jonas",
          "Kira", "Leo"]
TRAVEL_VERBS = ["traveled to", "moved to", "wrote about", "dreamed of", "visited", "returned from"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(COUNTRY_CAPITALS))
    person, verb, month = rng.choice(PEOPLE), rng.choice(TRAVEL_VERBS), rng.choice(MONTHS)
    return f"{person} {verb} {country} in {month}", COUNTRY_CAPITALS[country]


TOPIC_WORDS = {
    "sports": ["goal", "referee", "stadium", "match", "coach", "team", "ball", "league",
               "tournament", "score"],
    "food": ["soup", "bread", "pasta", "salad", "cheese", "dessert", "recipe", "oven", "spices",
             "noodles"],
    "weather": ["rain", "storm", "wind", "snow", "forecast", "clouds", "thunder", "fog", "heat",
                "frost"],
    "music": ["guitar", "melody", "drums", "singer", "chorus", "piano", "band", "rhythm", "album",
              "violin"],
}
TALK_VERBS = ["mentioned", "described", "asked about", "liked", "discussed", "noticed"]


def _topic(rng: random.Random) -> tuple[str, str]:
    label, words = _labelled(rng, TOPIC_WORDS)
    first, second = rng.sample(words, 2)
    return f"{rng.choice(PEOPLE)} {rng.choice(TALK_VERBS)} the {first} and the {second}", label


def _larger(rng: random.Random) -> tuple[str, str]:
    first, second = rng.sample(range(100), 2)
    return f"{first} and {second}", "first" if first > second else "second"


NEGATION_SUBJECTS = ["the teacher", "my neighbor", "the driver", "our guest", "the baker",
                     "the pilot", "my cousin", "the nurse", "the farmer", "the painter"]
NEGATION_PAIRS = [
    ("is tired", "is not tired"), ("was late", "was never late"), ("likes tea", "does not like tea"),
    ("can swim", "cannot swim"), ("has a car", "has no car"), ("will come", "will not come"),
    ("knows the way", "does not know the way"), ("is ready", "is not ready"),
    ("lives nearby", "no longer lives nearby"), ("reads books", "never reads books"),
    ("answered", "did not answer"), ("agreed", "never agreed"),
]
TIME_PHRASES = ["", " today", " this week", " again", " at all times"]


def _negation(rng: random.Random) -> tuple[str, str]:
    plain, negated = rng.choice(NEGATION_PAIRS)
    label = rng.choice(["yes", "no"])
    predicate = negated if label == "yes" else plain
    return f"{rng.choice(NEGATION_SUBJECTS)} {predicate}{rng.choice(TIME_PHRASES)}", label


CATEGORY_WORDS = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum",
              "melon"],
    "animal": ["tiger", "rabbit", "horse", "eagle", "whale", "fox", "wolf", "sheep", "camel",
               "lion"],
    "tool": ["hammer", "saw", "wrench", "drill", "shovel", "chisel", "pliers", "ladder", "rake",
             "axe"],
    "color": ["red", "blue", "green", "yellow", "purple", "brown", "black", "white", "pink",
              "gray"],
}


def _category(rng: random.Random) -> tuple[str, str]:
    label, words = _labelled(rng, CATEGORY_WORDS)
    return ", ".join(rng.sample(words, 3)), label


COUNT_NUMBERS = ["one", "two", "three", "four", "five"]
CONTAINERS = ["box", "bag", "drawer", "basket", "crate", "shelf", "cart", "bowl", "tray", "chest",
              "sink", "desk"]
ITEMS = ["cup", "lamp", "spoon", "chair", "shoe", "key", "coin", "brush", "plate", "fork", "towel",
         "candle", "glove", "sock", "pencil", "button", "ribbon", "bottle", "jar", "mug"]


def _count(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(1, len(COUNT_NUMBERS))
    items = ", ".join(rng.choice(ITEMS) for _ in range(k))
    return f"the {rng.choice(CONTAINERS)} holds {items}", COUNT_NUMBERS[k - 1]


COPY_WORDS = ["river", "stone", "cloud", "forest", "mirror", "bridge", "garden", "island",
              "window", "valley", "rocket", "castle", "harbor", "meadow", "tunnel", "planet",
              "ocean", "desert", "market", "temple", "village", "canyon", "lantern", "compass"]


def _copy_first(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(COPY_WORDS, 4)
    return " ".join(words), words[0]


def _classification(name: str, instruction: str, labels: list[str], sampler: Sampler) -> TaskSpec:
    """A task scored by likelihood over a small label space."""
    return TaskSpec(name, instruction, labels, "one of: " + ", ".join(labels), sampler)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        _classification("sentiment", "Is the review positive or negative?",
                        ["positive", "negative"], _sentiment),
        _classification("parity", "Is the number even or odd?", ["even", "odd"], _parity),
        TaskSpec("capital", "Name the capital city of the country in the sentence.", None,
                 "one word: the capital city", _capital),
        _classification("topic", "What is the topic of the sentence?",
                        ["sports", "food", "weather", "music"], _topic),
        _classification("larger", "Which number is larger, the first or the second?",
                        ["first", "second"], _larger),
        _classification("negation", "Does the sentence contain a negation?", ["yes", "no"],
                        _negation),
        _classification("category", "Which category do the words belong to?",
                        ["fruit", "animal", "tool", "color"], _category),
        _classification("count", "How many items are listed?", COUNT_NUMBERS, _count),
        TaskSpec("copy_first", "Repeat the first word of the list.", None,
                 "one word: copied from the input", _copy_first),
    ]
}


def get_task(name: str) -> TaskSpec:
    """The task called `name`, in `TASKS` or a family's (`fedprivacy.data.families`); the error
    lists the valid names."""
    from fedprivacy.data.families import FAMILY_TASKS  # the families build on this module

    spec = TASKS.get(name) or FAMILY_TASKS.get(name)
    if spec is None:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join([*TASKS, *FAMILY_TASKS])}")
    return spec


def task_splits(name: str, n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, list[Record]]:
    """Disjoint train/validation/test splits of one task (distinct inputs), deterministic in seed."""
    records = get_task(name).generate(n_train + n_val + n_test, seed)
    return {
        "train": records[:n_train],
        "validation": records[n_train : n_train + n_val],
        "test": records[n_train + n_val :],
    }
