"""The alignment stage: registered ``align`` methods applied in order to one model.

The ServerApp runs it on the global model after the last round (and on a copy every k rounds),
``fedprivacy align`` on any saved model. Each stage gets a `StageContext`, edits the model in
place, and returns its report: ``before`` and ``after`` metrics on the server's own held-out
data, ``applied`` (what it changed, recorded in the aligned model's config) and anything else
it measured. The runner adds the perplexity on the server's evaluation set before and after
each stage (the utility cost), writes ``alignment/<stage>/`` and ``alignment/report.json``, and
`save_aligned` writes the aligned model beside the plain one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy.methods import registry

ALIGNMENT_KEY = "fedprivacy_alignment"  # model.config: the stages applied, in order


class AlignmentError(RuntimeError):
    """An alignment stage cannot run; the message names the stage and the reason."""


@dataclass
class StageContext:
    """What one stage works with. ``out`` is the stage's own folder (created)."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    cfg: Any  # the resolved ExperimentConfig
    settings: Any
    out: Path
    seed: int
    progress: bool = False


def require_sites(stage: str, model: PreTrainedModel) -> None:
    """A stage's preflight: the model's architecture has a site table; the error names the
    stage."""
    from fedprivacy import sites

    try:
        sites.family(model)
    except sites.UnsupportedArchitectureError as err:
        raise sites.UnsupportedArchitectureError(f"alignment stage {stage!r}: {err}") from err


def perplexity_of(model: PreTrainedModel, eval_set: dict[str, torch.Tensor] | None,
                  batch_size: int) -> float | None:
    """Perplexity of ``model`` on an encoded set (None without one)."""
    if eval_set is None:
        return None
    from fedprivacy.evaluation import evaluate_loss, perplexity

    return perplexity(evaluate_loss(model, eval_set, batch_size)[0])


def run_stages(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: Any,
               out: Path, eval_set: dict[str, torch.Tensor] | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Apply ``cfg.alignment.stages`` in order to ``model`` (in place); write their folders
    under ``out`` and ``out/report.json``; return the report ``{stage: {...}}``."""
    threads = torch.get_num_threads()
    if cfg.alignment.threads:
        torch.set_num_threads(cfg.alignment.threads)
    try:
        return _run(model, tokenizer, cfg, out, eval_set, progress)
    finally:
        torch.set_num_threads(threads)


def _run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: Any, out: Path,
         eval_set: dict[str, torch.Tensor] | None, progress: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    applied = list(getattr(model.config, ALIGNMENT_KEY, None) or [])
    batch = cfg.train.eval_batch_size
    for name in cfg.alignment.stages:
        method = registry.get(name)
        ctx = StageContext(name, model, tokenizer, cfg, method.settings_of(cfg), out / name,
                           cfg.seed, progress)
        ctx.out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        ppl_before = perplexity_of(model, eval_set, batch)
        try:
            result = method.stage(ctx)  # type: ignore[misc]
        except (ValueError, RuntimeError, KeyError) as err:
            raise AlignmentError(f"alignment stage {name!r} failed: {err}") from err
        result["perplexity"] = {"before": ppl_before, "after": perplexity_of(model, eval_set, batch)}
        result["seconds"] = time.time() - started
        (ctx.out / "report.json").write_text(json.dumps(result, indent=2, default=float))
        applied.append({"stage": name, **result.get("applied", {})})
        report[name] = result
    setattr(model.config, ALIGNMENT_KEY, applied)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def save_aligned(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """``save_pretrained`` of the aligned model and its tokenizer; the config records what was
    applied (``fedprivacy_alignment``) and the neuron edits (``fedprivacy_edits``); steering
    vectors go beside them (`fedprivacy.concepts.from_pretrained` re-attaches them)."""
    from fedprivacy.concepts import save_steering

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_steering(model, folder)


def summary_section(report: dict[str, Any]) -> dict[str, Any]:
    """The compact per-stage view for ``summary.json``: before/after, perplexity, choice."""
    return {name: {k: r[k] for k in ("before", "after", "perplexity", "chosen") if k in r}
            for name, r in report.items()}
