"""Client corpora with PII (faker, seeded) and canaries, plus a PII-free public corpus."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from faker import Faker

from fedprivacy.data.records import Record, derive_seed, draw_distinct, make_record

PII_TEMPLATES = [
    "Please call {name} at {phone}.",
    "You can reach {name} by email at {email}.",
    "{name} lives at {address}.",
    "My name is {name} and my phone number is {phone}.",
    "Send the invoice to {email} before Friday.",
    "The package for {name} goes to {address}.",
    "Contact {name} at {email} or {phone}.",
    "{name} changed the phone number to {phone} last week.",
]
PUBLIC_TEMPLATES = [
    "Please call the {place} in the {time}.",
    "You can reach the {place} by email during the {time}.",
    "The {place} moved to the {floor} floor.",
    "My friend works at the {place} every {day}.",
    "Send the invoice to the {place} before {day}.",
    "The package for the {place} arrived on {day}.",
    "Contact the {place} in the {time} or on {day}.",
    "The {place} changed its opening hours last {day}.",
]
PUBLIC_FILLERS = {
    "place": ["front desk", "help desk", "library", "clinic", "post office", "bakery",
              "school office", "city hall", "museum shop", "train station"],
    "time": ["morning", "afternoon", "evening", "lunch break"],
    "floor": ["second", "third", "fourth", "top"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
}
# Each canary names its owner (a faker name), so no two canaries share a prefix: two clients
# with "The door code is ..." and different secrets would cancel each other out in FedAvg.
CANARY_TEMPLATES = [
    "The PIN code of {owner} is {secret}.",
    "The secret number of {owner} is {secret}.",
    "The account number of {owner} is {secret}.",
    "The door code of {owner} is {secret}.",
    "The locker combination of {owner} is {secret}.",
    "The alarm code of {owner} is {secret}.",
    "The bank card PIN of {owner} is {secret}.",
    "The safe code of {owner} is {secret}.",
]


@dataclass(frozen=True)
class Canary:
    """A sentence with a random secret of decimal digits, inserted into one client's corpus."""

    id: str
    prefix: str
    secret: str
    suffix: str

    @property
    def text(self) -> str:
        """The full canary sentence."""
        return self.prefix + self.secret + self.suffix

    @property
    def span(self) -> list[int]:
        """Character offsets [start, end) of the secret in `text`."""
        return [len(self.prefix), len(self.prefix) + len(self.secret)]


def fill_template(template: str, values: dict[str, str]) -> tuple[str, list[list[int]]]:
    """Fill `{field}`s in `template`; return the text and the [start, end) span of each field."""
    text, spans = "", []
    for literal, field_name, _, _ in string.Formatter().parse(template):
        text += literal
        if field_name is not None:
            spans.append([len(text), len(text) + len(values[field_name])])
            text += values[field_name]
    return text, spans


def _pii_values(fake: Faker) -> dict[str, str]:
    """One set of fake PII values (addresses on one line)."""
    return {
        "name": fake.name(),
        "phone": fake.phone_number(),
        "email": fake.email(),
        "address": fake.address().replace("\n", ", "),
    }


def pii_sentences(n: int, seed: int) -> list[Record]:
    """`n` sentences with faker PII; every PII substring is a private span."""
    fake = Faker("en_US")
    fake.seed_instance(derive_seed(seed, "faker"))
    rng = random.Random(derive_seed(seed, "pii-templates"))
    records = []
    for _ in range(n):
        text, spans = fill_template(rng.choice(PII_TEMPLATES), _pii_values(fake))
        records.append(make_record("", text, "pii", spans))
    return records


def make_canaries(count: int, digits: int, seed: int, client_id: int) -> list[Canary]:
    """`count` canaries for one client; secrets are distinct across all clients of one seed."""
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits}")
    if (client_id + 1) * count > 10**digits:
        raise ValueError(
            f"digits={digits} gives {10**digits} secrets, too few for {count} canaries "
            f"for each of {client_id + 1} clients"
        )
    rng = random.Random(derive_seed(seed, "canary-secrets", digits))
    secrets: dict[int, None] = {}
    while len(secrets) < (client_id + 1) * count:
        secrets.setdefault(rng.randrange(10**digits))
    own = list(secrets)[client_id * count :]
    return _frame(own, digits, seed, client_id, "canary", f"client{client_id}-canary")


def heldout_canaries(count: int, digits: int, seed: int, client_id: int,
                     members: list[Canary]) -> list[Canary]:
    """`count` canaries of the same format that no corpus holds: the non-members a membership
    attack is scored against. Their own draw of templates, owners and secrets (none equal to a
    member's secret; a collision with another client's secret has chance ~ count / 10^digits)."""
    if count + len(members) > 10**digits:
        raise ValueError(f"digits={digits} gives {10**digits} secrets, too few for {count} "
                         f"held-out canaries beside {len(members)} members")
    rng = random.Random(derive_seed(seed, "canary-heldout-secrets", digits, client_id))
    taken = {int(c.secret) for c in members}
    secrets: dict[int, None] = {}
    while len(secrets) < count:
        if (secret := rng.randrange(10**digits)) not in taken:
            secrets.setdefault(secret)
    return _frame(list(secrets), digits, seed, client_id, "canary-heldout",
                  f"client{client_id}-heldout")


def _frame(secrets: list[int], digits: int, seed: int, client_id: int, stream: str,
           name: str) -> list[Canary]:
    """A canary around each secret: a template (distinct while there are enough) naming a
    faker owner, both drawn from ``stream``."""
    count = len(secrets)
    template_rng = random.Random(derive_seed(seed, f"{stream}-templates", client_id))
    templates = (
        template_rng.sample(CANARY_TEMPLATES, count)
        if count <= len(CANARY_TEMPLATES)
        else [template_rng.choice(CANARY_TEMPLATES) for _ in range(count)]
    )
    owners = Faker()
    owners.seed_instance(derive_seed(seed, f"{stream}-owners", client_id))
    canaries = []
    for k, (template, secret) in enumerate(zip(templates, secrets)):
        prefix, suffix = template.replace("{owner}", owners.name()).split("{secret}")
        canaries.append(Canary(f"{name}{k}", prefix, f"{secret:0{digits}d}", suffix))
    return canaries


def canary_record(canary: Canary) -> Record:
    """A corpus record of a canary with its secret marked private."""
    return make_record("", canary.text, "canary", [canary.span])


def pii_corpus(n_records: int, canaries: list[Canary], repeats: int, seed: int) -> list[Record]:
    """`n_records` PII sentences with each canary inserted `repeats` times at seeded positions."""
    records = pii_sentences(n_records, seed)
    rng = random.Random(derive_seed(seed, "canary-positions"))
    for canary in canaries:
        for _ in range(repeats):
            records.insert(rng.randint(0, len(records)), canary_record(canary))
    return records


def public_corpus(n: int, seed: int) -> list[Record]:
    """`n` distinct PII-free sentences in the style of the PII corpus (for validation perplexity)."""
    rng = random.Random(derive_seed(seed, "public"))

    def draw() -> tuple[str, Record]:
        values = {key: rng.choice(words) for key, words in PUBLIC_FILLERS.items()}
        text = rng.choice(PUBLIC_TEMPLATES).format(**values)
        return text, make_record("", text, "public")

    return draw_distinct(draw, n, "public_corpus")
