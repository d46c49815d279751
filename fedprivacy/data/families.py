"""Task families: few-shot tasks that share structure, written for fedprivacy's FewFedWeight testbed.

Each family is one latent rule over one lexicon (a word's polarity, a word's kind), asked by four
tasks with their own instruction and input template and the family's label space. The lexicons
are large (60 and 64 words) against a client's 16 training examples, so one client sees only a
part of its family's words while its test split draws from all of them: what the siblings'
clients learn is what a global model can give it. The families share no word and no label, so
the two halves of a federation do not answer each other's tasks.

The tasks live apart from `fedprivacy.data.tasks.TASKS` (the collection of unrelated tasks),
whose texts train the tokenizer; a family's words are split into the BPE's known pieces.
"""

from __future__ import annotations

import random

from fedprivacy.data.tasks import PEOPLE, REVIEW_NOUNS, Sampler, TaskSpec

POLARITY_LABELS = ["positive", "negative"]
POLARITY_WORDS = {
    "positive": ["wonderful", "great", "lovely", "excellent", "delightful", "superb", "pleasant",
                 "brilliant", "charming", "fantastic", "marvelous", "splendid", "joyful",
                 "cheerful", "gorgeous", "elegant", "graceful", "generous", "friendly", "gentle",
                 "perfect", "amazing", "terrific", "glorious", "radiant", "inspiring", "peaceful",
                 "tasty", "cozy", "fabulous"],
    "negative": ["awful", "terrible", "boring", "dreadful", "horrible", "dull", "poor", "nasty",
                 "disappointing", "miserable", "gloomy", "ugly", "rude", "noisy", "filthy",
                 "painful", "clumsy", "tedious", "bland", "grim", "harsh", "hostile", "shabby",
                 "stale", "sloppy", "tragic", "wretched", "annoying", "bitter", "lousy"],
}
KIND_LABELS = ["fruit", "animal", "tool", "vehicle"]
KIND_WORDS = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum",
              "melon", "apricot", "kiwi", "lime", "papaya", "fig", "coconut"],
    "animal": ["tiger", "rabbit", "horse", "eagle", "whale", "fox", "wolf", "sheep", "camel",
               "lion", "zebra", "otter", "monkey", "goat", "deer", "turtle"],
    "tool": ["hammer", "saw", "wrench", "drill", "shovel", "chisel", "pliers", "ladder", "rake",
             "axe", "screwdriver", "trowel", "sickle", "crowbar", "mallet", "scissors"],
    "vehicle": ["truck", "bicycle", "tractor", "scooter", "train", "tram", "ferry", "yacht",
                "canoe", "bus", "taxi", "wagon", "sled", "jeep", "glider", "helicopter"],
}

INTENSITY = ["really", "very", "quite", "truly", "so", "rather", "simply", "always"]
MOMENTS = ["today", "this morning", "after lunch", "at the party", "on the trip", "last night",
           "at work", "all week"]
EVENTS = ["weekend", "festival", "season", "election", "harvest", "market day", "final",
          "opening"]
CITIES = ["Lyon", "Porto", "Graz", "Bergen", "Turin", "Ghent", "Cork", "Malmo"]
THINGS = ["phone", "bike", "kitchen", "garden", "laptop", "sofa", "car", "jacket"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PLACES = ["near the river", "in the yard", "at the fair", "by the road", "in the old barn",
          "behind the school"]
SHADES = ["small", "large", "shiny", "old", "new", "painted", "striped", "tiny"]


def _word(rng: random.Random, words_by_label: dict[str, list[str]]) -> tuple[str, str]:
    """A uniformly drawn label and one of its words."""
    label = rng.choice(sorted(words_by_label))
    return label, rng.choice(words_by_label[label])


def _polarity(render: str) -> Sampler:
    """A polarity task's sampler: ``render`` formatted with a drawn adjective and fillers."""
    def sample(rng: random.Random) -> tuple[str, str]:
        label, adjective = _word(rng, POLARITY_WORDS)
        return render.format(adj=adjective, noun=rng.choice(REVIEW_NOUNS),
                             adv=rng.choice(INTENSITY), person=rng.choice(PEOPLE),
                             moment=rng.choice(MOMENTS), event=rng.choice(EVENTS),
                             city=rng.choice(CITIES), thing=rng.choice(THINGS)), label
    return sample


def _kind(render: str) -> Sampler:
    """A kind task's sampler: ``render`` formatted with a drawn word (and a second one of the
    same kind as ``other``) and fillers."""
    def sample(rng: random.Random) -> tuple[str, str]:
        label = rng.choice(sorted(KIND_WORDS))
        word, other = rng.sample(KIND_WORDS[label], 2)
        return render.format(word=word, other=other, person=rng.choice(PEOPLE),
                             day=rng.choice(DAYS), place=rng.choice(PLACES),
                             shade=rng.choice(SHADES)), label
    return sample


def _spec(name: str, instruction: str, labels: list[str], sampler: Sampler) -> TaskSpec:
    return TaskSpec(name, instruction, labels, "one of: " + ", ".join(labels), sampler)


FAMILIES: dict[str, list[TaskSpec]] = {
    "polarity": [
        _spec("review_polarity", "Is this review positive or negative?", POLARITY_LABELS,
              _polarity("the {noun} was {adv} {adj}")),
        _spec("feeling_polarity", "Is the feeling positive or negative?", POLARITY_LABELS,
              _polarity("{person} felt {adj} {moment}")),
        _spec("headline_polarity", "Does the headline sound positive or negative?",
              POLARITY_LABELS, _polarity("{adj} {event} expected in {city}")),
        _spec("message_polarity", "Is the message positive or negative?", POLARITY_LABELS,
              _polarity("honestly my {thing} is {adj}")),
    ],
    "kind": [
        _spec("sighting_kind", "What kind of thing was seen?", KIND_LABELS,
              _kind("{person} spotted a {word} {place}")),
        _spec("shopping_kind", "What kind of thing was bought?", KIND_LABELS,
              _kind("{person} bought a {word} on {day}")),
        _spec("drawing_kind", "What kind of thing does the drawing show?", KIND_LABELS,
              _kind("a drawing of a {shade} {word}")),
        _spec("pair_kind", "What kind of things are both words?", KIND_LABELS,
              _kind("{word} and {other}")),
    ],
}
FAMILY_TASKS: dict[str, TaskSpec] = {spec.name: spec for specs in FAMILIES.values() for spec in specs}
FAMILY_OF: dict[str, str] = {spec.name: family for family, specs in FAMILIES.items() for spec in specs}
