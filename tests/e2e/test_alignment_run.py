"""End to end: a Flower simulation with ``alignment: [ircan]`` on the fact world, and
``fedprivacy align`` on its run folder and on a plain save_pretrained folder."""

import json

import pytest
from transformers import AutoModelForCausalLM

from fedprivacy.config import ConfigError, load_config
from fedprivacy.simulations.cli import main
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e

SMALL_IRCAN = ["alignment.ircan.items=12", "alignment.ircan.steps=4",
               "alignment.ircan.h_grid=[2,4]", "alignment.ircan.beta_grid=[2,4]",
               "alignment.ircan.random_draws=2", "alignment.ircan.max_new_tokens=2",
               "alignment.threads=1", "alignment.ircan.apply_if_worse=true"]
FAST = ["data.source=facts", "data.partition=iid", "train.steps=5",
        "data.train_per_client=32", "data.val_per_client=8", "simulation.num_clients=2",
        "strategy.min_clients=2", "rounds=2", "alignment=[ircan]", "alignment.every=1",
        *SMALL_IRCAN]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned-run")
    run_experiment(load_config(None, FAST + [f"out_dir={out}"]), progress=False)
    return out


def test_run_writes_the_aligned_model_beside_the_federated_one(run_dir):
    # Execute
    plain = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    aligned = AutoModelForCausalLM.from_pretrained(run_dir / "aligned")

    # Assert: model/ is the federated result, aligned/ records what IRCAN applied
    assert not getattr(plain.config, "fedprivacy_alignment", None)
    applied = aligned.config.fedprivacy_alignment
    assert [a["stage"] for a in applied] == ["ircan"]
    assert applied[0]["h"] in (2, 4) and applied[0]["beta"] in (2.0, 4.0)
    changed = [n for n, p in aligned.named_parameters()
               if not p.equal(dict(plain.named_parameters())[n])]
    assert changed and all("down_proj" in n for n in changed)


def test_summary_and_alignment_folder(run_dir):
    # Assert
    summary = json.loads((run_dir / "summary.json").read_text())
    ircan = summary["alignment"]["ircan"]
    assert set(ircan["before"]) == {"accuracy", "stubbornness"}
    assert ircan["perplexity"]["before"] > 0 and ircan["chosen"]["variant"] == "standard"
    assert "## Alignment" in (run_dir / "summary.md").read_text()
    for name in ("report.json", "ircan/beta_curve.png", "ircan/data.jsonl", "ircan/table.md"):
        assert (run_dir / "alignment" / name).is_file(), name
    # every=1: round 1 of 2 was aligned on a copy, the metrics in its record
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "ircan" in rounds[1]["alignment"] and "alignment" not in rounds[2]
    assert (run_dir / "alignment" / "round-1" / "ircan" / "report.json").is_file()


def test_align_command_on_the_run_folder_and_on_a_plain_model(run_dir, tmp_path):
    # Execute: the run folder (the results go to --out), then its plain model as a folder
    code_run = main(["align", str(run_dir), *SMALL_IRCAN, "--out", str(tmp_path / "a"),
                     "--no-progress"])
    code_plain = main(["align", str(run_dir / "model"), "data.source=facts",
                       "data.partition=iid", *SMALL_IRCAN, "--out", str(tmp_path / "b"),
                       "--no-progress"])

    # Assert
    assert code_run == 0 and code_plain == 0
    for folder in ("a", "b"):
        summary = json.loads((tmp_path / folder / "align_summary.json").read_text())
        assert summary["stages"] == ["ircan"]
        assert AutoModelForCausalLM.from_pretrained(tmp_path / folder / "aligned") \
            .config.fedprivacy_alignment[0]["stage"] == "ircan"


def test_align_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(ConfigError, match="neither a run folder"):
        from fedprivacy.alignment.align import resolve_target

        resolve_target(str(tmp_path), None, [])
