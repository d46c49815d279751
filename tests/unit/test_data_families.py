"""Task families: tasks that share a rule, a lexicon and a label space within a family, and
nothing across families."""

import pytest

from fedprivacy.data.families import FAMILIES, FAMILY_OF, FAMILY_TASKS, KIND_WORDS, POLARITY_WORDS
from fedprivacy.data.tasks import TASKS, get_task

pytestmark = pytest.mark.unit
LEXICON = {"polarity": POLARITY_WORDS, "kind": KIND_WORDS}


def test_each_family_shares_its_labels_and_no_label_or_word_is_shared_across_families():
    # Execute
    labels = {family: {tuple(s.labels) for s in specs} for family, specs in FAMILIES.items()}
    words = {family: {w for ws in LEXICON[family].values() for w in ws} for family in FAMILIES}
    # Assert: one label space per family, with the lexicon's labels; families disjoint; every
    # task has its own instruction; no family task shadows a task of the unrelated collection
    assert all(len(spaces) == 1 for spaces in labels.values())
    assert {family: set(next(iter(s))) for family, s in labels.items()} == {
        family: set(LEXICON[family]) for family in FAMILIES}
    assert not set(FAMILIES["polarity"][0].labels) & set(FAMILIES["kind"][0].labels)
    assert not words["polarity"] & words["kind"]
    assert len({s.instruction for s in FAMILY_TASKS.values()}) == len(FAMILY_TASKS)
    assert not set(FAMILY_TASKS) & set(TASKS)
    assert all(len(set(ws)) == len(ws) for lex in LEXICON.values() for ws in lex.values())


@pytest.mark.parametrize("name", list(FAMILY_TASKS))
def test_family_task_draws_its_label_from_the_familys_lexicon(name):
    # Prepare
    spec, lexicon = get_task(name), LEXICON[FAMILY_OF[name]]
    # Execute
    records = spec.generate(200, seed=5)
    # Assert: the answer is the label of the lexicon word in the input (and of no other label's
    # word); the lexicon is large against a 16-example client: 200 draws see most of its words
    seen = set()
    for record in records:
        label = record["completion"].strip()
        text = record["prompt"].split("Input: ")[1].split("\n")[0].split()
        assert label in spec.labels and set(text) & set(lexicon[label]), record
        assert not any(set(text) & set(ws) for other, ws in lexicon.items() if other != label)
        seen |= set(text) & {w for ws in lexicon.values() for w in ws}
    total = sum(len(ws) for ws in lexicon.values())
    assert len(seen) >= 0.8 * total and total >= 3 * 16
    assert records == spec.generate(200, seed=5)
