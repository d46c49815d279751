"""Run folder records, checkpoints and sweep expansion/aggregation."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprivacy.config import ConfigError, load_config
from fedprivacy.report import RunFolder, flatten_dict, summary_markdown, versions
from fedprivacy.simulations.sweep import aggregate, load_sweep, results_markdown, write_results

pytestmark = pytest.mark.unit


def test_checkpoint_round_trip_replaces_previous(tmp_path):
    # Prepare
    folder = RunFolder(tmp_path)
    # Execute
    folder.save_checkpoint(1, {"w": np.ones(3, np.float32)})
    folder.save_checkpoint(2, {"w": np.full(3, 2.0, np.float32)})
    done, arrays = folder.load_checkpoint()
    # Assert
    assert done == 2 and np.array_equal(arrays["w"], np.full(3, 2.0, np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_rounds_keep_the_last_record_of_a_round(tmp_path):
    # Prepare: a resumed run writes round 2 again
    folder = RunFolder(tmp_path)
    for rnd, loss in ((0, 3.0), (1, 2.0), (2, 1.5), (2, 1.4)):
        folder.append_round({"round": rnd, "server": {"eval_loss": loss}})
    # Execute
    rounds = folder.rounds()
    # Assert
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[2]["server"]["eval_loss"] == 1.4


def test_summary_markdown_flattens_nested_values():
    # Execute
    text = summary_markdown({"name": "x", "final": {"eval_loss": 1.23456}})
    # Assert
    assert "| final.eval_loss | 1.235 |" in text
    assert flatten_dict({"a": {"b": {"c": 1}}, "d": [1]}) == {"a.b.c": 1, "d": [1]}


def test_versions_name_the_cpu_and_the_kernels_torch_picked():
    # Execute
    found = versions()
    # Assert: what decides a run's float rounding besides the packages is recorded
    assert found["cpu_count"] == str(os.cpu_count()) and found["cpu"]
    assert found["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert found["torch"] == torch.__version__


def _sweep_file(tmp_path, body):
    base = tmp_path / "base.yaml"
    base.write_text("name: base\nrounds: 1\n")
    path = tmp_path / "sweep.yaml"
    path.write_text("base: base.yaml\n" + body)
    return path


def test_sweep_expands_runs_grid_and_seeds(tmp_path):
    # Prepare
    path = _sweep_file(tmp_path, "seeds: [0, 1]\nruns:\n  - {name: a, overrides: []}\n"
                                 "  - {name: b, overrides: ['train.lr=0.01']}\n"
                                 "grid:\n  train.steps: [1, 2]\n")
    # Execute
    sweep = load_sweep(path)
    # Assert
    assert len(sweep.runs) == 2 * 2 * 2
    assert [r.variant for r in sweep.runs[:4]] == ["a|train.steps=1", "a|train.steps=2",
                                                   "b|train.steps=1", "b|train.steps=2"]
    assert [r.seed for r in sweep.runs] == [0] * 4 + [1] * 4  # one pass over variants first
    assert sweep.runs[-1].overrides == ["train.lr=0.01", "train.steps=2", "seed=1"]


def test_sweep_with_a_bad_override_fails_before_running(tmp_path):
    # Prepare
    path = _sweep_file(tmp_path, "runs:\n  - {name: bad, overrides: ['rounds=-3']}\n")
    # Execute / Assert
    with pytest.raises(ConfigError, match="run 'bad'.*rounds"):
        load_sweep(path)


def test_results_table_and_csv(tmp_path):
    # Prepare
    rows = [{"variant": "a", "seed": s, "final.eval_loss": v} for s, v in ((0, 1.0), (1, 3.0))]
    rows.append({"variant": "b", "seed": 0, "final.eval_loss": 5.0})
    # Execute
    write_results(tmp_path, rows, ["final.eval_loss"])
    table = aggregate(rows, ["final.eval_loss"])
    # Assert
    assert table["a"]["final.eval_loss"][0] == pytest.approx(2.0)
    assert table["a"]["final.eval_loss"][1] == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert "| b | 5 ± 0 (n=1) |" in results_markdown(table, ["final.eval_loss"])
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == "variant,seed,final.eval_loss"
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_improvement_over_baseline_counts_tasks_and_rates():
    # Prepare: two tasks; variant "f" beats "local" on task a (0.5 -> 0.75), loses on b
    rows = [{"variant": "local", "seed": 0, "tasks.a": 0.5, "tasks.b": 0.8},
            {"variant": "f", "seed": 0, "tasks.a": 0.7, "tasks.b": 0.6},
            {"variant": "f", "seed": 1, "tasks.a": 0.8, "tasks.b": 0.6}]
    # Execute
    from fedprivacy.simulations.sweep import improvement, improvement_markdown
    table = improvement(rows, "local")
    # Assert
    assert table["f"]["tasks"]["a"] == pytest.approx(0.75)
    assert table["f"]["improved_share"] == 0.5
    assert table["f"]["improvement_rate"] == pytest.approx(
        ((0.75 - 0.5) / 0.5 + (0.6 - 0.8) / 0.8) / 2)
    assert table["local"]["improvement_rate"] == 0.0
    assert "| f | 0.750 | 0.600 | 0.675 | 50% | +12.5% |" in improvement_markdown(table, "local")


def test_change_against_baseline_and_tradeoff_plot(tmp_path):
    # Prepare: b halves a's exposure at 10 % more perplexity
    rows = [{"variant": "a", "seed": 0, "ppl": 2.0, "exposure": 10.0},
            {"variant": "b", "seed": 0, "ppl": 2.2, "exposure": 4.0},
            {"variant": "b", "seed": 1, "ppl": 2.2, "exposure": 6.0}]
    # Execute
    write_results(tmp_path, rows, ["ppl", "exposure"], baseline="a", tradeoff=["ppl", "exposure"])
    text = (tmp_path / "results.md").read_text()
    # Assert
    assert "Change against `a`" in text
    assert "| b | +10.0% | -50.0% |" in text and "| a | +0.0% | +0.0% |" in text
    assert "Per-task scores" not in text  # no task columns, no per-task table
    assert (tmp_path / "tradeoff.png").stat().st_size > 0


def test_a_tradeoff_needs_two_metrics(tmp_path):
    # Prepare
    path = _sweep_file(tmp_path, "tradeoff: [final.eval_loss]\n")
    # Execute / Assert
    with pytest.raises(ConfigError, match="tradeoff: two metrics"):
        load_sweep(path)


def test_every_shipped_config_and_reproduction_sweep_validates():
    # Prepare
    root = Path(__file__).resolve().parents[2] / "configs"
    configs = sorted(p for p in root.glob("*.yaml"))
    sweeps = sorted((root / "reproduce").glob("*.yaml"))
    # Execute: a bad key or value raises, naming the file or the run
    loaded = [load_config(p) for p in configs]
    runs = [load_sweep(p) for p in sweeps]
    # Assert
    assert {p.stem for p in sweeps} >= {"privacy", "privacy-smollm2", "dp", "fewfedweight"}
    assert all(cfg.name for cfg in loaded)
    assert all(sweep.runs and sweep.metrics for sweep in runs)
