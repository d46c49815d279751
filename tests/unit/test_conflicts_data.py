"""The fact world, its corpus and conflict items, and conflict files (no model)."""

import json

import pytest

from fedprivacy.config import ConfigError, load_config
from fedprivacy.data.conflicts import (
    CITIES,
    FactsConfig,
    FactWorld,
    load_conflict_file,
    real_conflict_set,
    split_items,
)

pytestmark = pytest.mark.unit


def test_world_is_deterministic_and_strangers_are_outside_it():
    # Execute
    a, b, other = FactWorld.build(16, 0), FactWorld.build(16, 0), FactWorld.build(16, 1)

    # Assert
    assert a == b and a.facts != other.facts
    assert len(a.facts) == 16 and set(a.facts.values()) <= set(CITIES)
    assert not set(a.strangers) & set(a.facts)


def test_conflicts_contradict_the_world_with_context_free_queries():
    # Prepare
    world = FactWorld.build(8, 0)

    # Execute
    completion = world.conflicts(40, "completion", seed=3)
    mcq = world.conflicts(40, "mcq", seed=3)

    # Assert
    for item in completion:
        entity = item.query.removeprefix("Q: ").removesuffix(" lives in")
        assert item.memory_answer == world.facts[entity] != item.context_answer
        assert item.prompt.endswith(item.query) and len(item.prompt) > len(item.query)
    assert {i.context_answer for i in mcq} == {"A", "B"}  # the context's letter alternates
    assert all(i.context_answer != i.memory_answer for i in mcq)


def test_corpus_follows_conflicting_contexts_at_the_configured_rate():
    # Prepare: only conflicts, in completion form
    world = FactWorld.build(8, 0)
    cfg = FactsConfig(follow_context=0.3, fact_share=0, closed_share=0, conflict_share=1,
                      mcq_share=0)

    # Execute
    records = world.corpus(2000, cfg, seed=1)

    # Assert: about 30% of the answers are the context's city
    followed = [r["completion"].strip() != world.facts[r["prompt"].split()[1]] for r in records]
    assert sum(followed) / len(followed) == pytest.approx(0.3, abs=0.04)


def test_split_keeps_both_orders_of_an_mcq_row_together(tmp_path):
    # Prepare
    path = tmp_path / "mcq.jsonl"
    rows = [{"id": f"q{k}", "question": f"Q{k}?", "context": f"It is X{k}.",
             "context_answer": f"X{k}", "memory_answer": f"Y{k}"} for k in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows))

    # Execute
    items = load_conflict_file(path, "mcq")
    dev, test = split_items(items, 0.5, seed=0)

    # Assert: 2 orders per row; each row's pair on one side
    assert len(items) == 20 and len(dev) == len(test) == 10
    assert not {i.group for i in dev} & {i.group for i in test}
    assert {i.context_answer for i in items if i.group == "q0"} == {"A", "B"}


def test_conflict_file_errors_name_the_key_file_and_line(tmp_path):
    # Prepare
    path = tmp_path / "bad.jsonl"
    path.write_text('{"phrase": "Better late than", "context_answer": "early"}\n')

    # Execute / Assert
    with pytest.raises(ValueError, match=r"alignment.ircan.path: .*bad.jsonl line 1 lacks "
                                         r"\['memory_answer'\]"):
        load_conflict_file(path, "completion")
    with pytest.raises(ValueError, match="no conflict file"):
        load_conflict_file(tmp_path / "missing.jsonl", "completion")


def test_real_sets_build_prompts_in_the_memotrap_style():
    # Execute
    memotrap, mcq = real_conflict_set("memotrap"), real_conflict_set("mcq")

    # Assert
    item = memotrap[0]
    assert item.prompt == f'Write a quote that ends in the word "{item.context_answer}": ' \
                          f"{item.query}"
    assert len(memotrap) >= 150 and len(mcq) >= 300
    assert mcq[0].prompt.startswith("Choose the correct option") and mcq[0].query in \
        mcq[0].prompt.replace(mcq[0].prompt.split("\n")[1] + "\n", "", 1)


def test_alignment_config_shorthand_and_errors():
    # Execute
    cfg = load_config(None, ["alignment=[ircan]"])

    # Assert
    assert cfg.alignment.stages == ["ircan"]
    with pytest.raises(ConfigError, match="alignment.stages"):
        load_config(None, ["alignment.stages=[nope]"])
    with pytest.raises(ConfigError, match="alignment.ircan.beta_grid"):
        load_config(None, ["alignment.ircan.beta_grid=[]"])
    with pytest.raises(ConfigError, match="data.partition: data.source=facts"):
        load_config(None, ["data.source=facts"])
