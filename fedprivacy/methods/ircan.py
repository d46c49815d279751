"""``ircan``: context-aware neurons of the global model, found and reweighted (METHODS.md §1).

An alignment stage (``alignment.stages: [ircan]``). On the server's own conflict set
(``alignment.ircan.data``): split dev/test; attribute every dev item (both gradient variants);
pick h and β by dev accuracy on the grid; report on test the original model, IRCAN (the best
grid point), ErCAN
(β = 0 on the same neurons), ERN/ErRN (random neurons, same h and β / β = 0, mean of
``random_draws``) and, with ``cad``, CAD and IRCAN-CAD; plot the β curve; leave the model
reweighted at the chosen h and β, unless no grid point beats the original on dev (then the
model stays as it was and ``after`` equals ``before``; ``apply_if_worse`` edits anyway).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from fedprivacy.data.records import derive_seed
from fedprivacy.methods.registry import Method, check, check_choice, register

DATA_SOURCES = ("auto", "facts", "memotrap", "mcq", "file")
FORMS = ("auto", "completion", "mcq")


@dataclass
class IRCANConfig:
    """IRCAN settings (``alignment.ircan``)."""

    data: str = field(default="auto", metadata={
        "help": "conflict set: auto (facts with data.source=facts, else memotrap) | facts | "
                "memotrap | mcq | file"})
    path: str = field(default="", metadata={"help": "data=file: a JSONL conflict file"})
    form: str = field(default="auto", metadata={
        "help": "auto | completion | mcq (facts and file: which form to ask)"})
    items: int = field(default=200, metadata={"help": "data=facts: conflicts generated"})
    dev_fraction: float = field(default=0.5, metadata={
        "help": "share of items in the dev split (attribution and the h/beta choice)"})
    steps: int = field(default=20, metadata={"help": "integrated-gradients steps m"})
    variant: str = field(default="standard", metadata={
        "help": "standard IG | endpoint (the released code's alpha-weighted gradient)"})
    grid: str = field(default="left", metadata={"help": "Riemann grid: left (k=0..m-1) | right"})
    threshold_ratio: float = field(default=0.1, metadata={
        "help": "per-item candidates: attribution >= ratio x the item's maximum"})
    per_item: int = field(default=20, metadata={"help": "candidates kept per item (top k)"})
    h_grid: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16], metadata={
        "help": "numbers of neurons h tried on dev"})
    beta_grid: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 6.0, 8.0, 12.0,
                                                            16.0, 20.0], metadata={
        "help": "reweighting factors beta tried on dev"})
    random_draws: int = field(default=10, metadata={
        "help": "random-neuron controls (ERN/ErRN) averaged over this many draws"})
    max_new_tokens: int = field(default=10, metadata={"help": "greedy tokens per completion"})
    cad: bool = field(default=False, metadata={"help": "also report CAD and IRCAN-CAD"})
    cad_alpha: float = field(default=0.5, metadata={"help": "CAD strength alpha"})
    apply_if_worse: bool = field(default=False, metadata={
        "help": "edit the model even when no (h, beta) beats the original on dev (the paper "
                "always applies the best grid point)"})

    def validate(self) -> None:
        check_choice(self.data, "data", DATA_SOURCES)
        check_choice(self.form, "form", FORMS)
        check_choice(self.variant, "variant", ("standard", "endpoint"))
        check_choice(self.grid, "grid", ("left", "right"))
        check(self.data != "file" or bool(self.path), "path", "must name a file when data=file",
              self.path)
        check(0 < self.dev_fraction < 1, "dev_fraction", "must be in (0, 1)", self.dev_fraction)
        check(self.items >= 4, "items", "must be >= 4", self.items)
        check(self.steps >= 1, "steps", "must be >= 1", self.steps)
        check(0 <= self.threshold_ratio <= 1, "threshold_ratio", "must be in [0, 1]",
              self.threshold_ratio)
        check(self.per_item >= 1, "per_item", "must be >= 1", self.per_item)
        check(bool(self.h_grid) and min(self.h_grid) >= 1, "h_grid",
              "must be a non-empty list of integers >= 1", self.h_grid)
        check(bool(self.beta_grid) and min(self.beta_grid) >= 0, "beta_grid",
              "must be a non-empty list of factors >= 0", self.beta_grid)
        check(self.random_draws >= 1, "random_draws", "must be >= 1", self.random_draws)
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1", self.max_new_tokens)


def conflict_items(settings: IRCANConfig, cfg: Any) -> list:
    """The stage's conflict set (the server's own: generated, packaged or a server file)."""
    from fedprivacy.data import conflicts

    source = settings.data
    if source == "auto":
        source = "facts" if cfg.data.source == "facts" else "memotrap"
    if source == "facts":
        form = "completion" if settings.form == "auto" else settings.form
        world = conflicts.FactWorld.build(cfg.data.facts.entities, cfg.seed)
        return world.conflicts(settings.items, form, derive_seed(cfg.seed, "server", "ircan"))
    if source == "file":
        form = "completion" if settings.form == "auto" else settings.form
        return conflicts.load_conflict_file(settings.path, form)
    return conflicts.real_conflict_set(source)


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


def ircan_stage(ctx: Any) -> dict[str, Any]:
    """The stage (module docstring); ``ctx`` is a `fedprivacy.alignment.stage.StageContext`."""
    from fedprivacy.alignment import ircan, plots
    from fedprivacy.alignment.conflict_eval import evaluate_conflicts
    from fedprivacy.data.conflicts import split_items

    s: IRCANConfig = ctx.settings
    model, tok = ctx.model, ctx.tokenizer
    items = conflict_items(s, ctx.cfg)
    dev, test = split_items(items, s.dev_fraction, derive_seed(ctx.seed, "ircan-split"))
    if len(dev) < 2 or len(test) < 2:
        raise ValueError(f"{len(items)} conflict items leave {len(dev)} dev / {len(test)} test")
    with open(ctx.out / "data.jsonl", "w") as f:
        for split, rows in (("dev", dev), ("test", test)):
            for item in rows:
                f.write(json.dumps({"split": split, **item.to_json()}) + "\n")

    splits = {"dev": dev, "test": test}
    seen: dict[tuple, dict[str, float]] = {}

    def edited(neurons: list, beta: float, split: str, cad: bool = False) -> dict[str, float]:
        """Metrics of ``split`` with ``neurons`` × β (β = 1: the model as it is), each
        combination evaluated once: the grid, the table and the β curve share them."""
        identity = not neurons or beta == 1.0
        key = ((), 1.0, split, cad) if identity else (tuple(neurons), beta, split, cad)
        if key not in seen:
            handle = None if identity else ircan.reweight(model, neurons, beta)
            try:
                seen[key] = evaluate_conflicts(model, tok, splits[split], s.max_new_tokens,
                                               s.cad_alpha if cad else None)
            finally:
                if handle is not None:
                    handle.undo()
        return seen[key]

    original = {"dev": edited([], 1.0, "dev"), "test": edited([], 1.0, "test")}
    found = ircan.attribute_items(model, tok, dev, steps=s.steps, grid=s.grid,  # type: ignore[arg-type]
                                  threshold_ratio=s.threshold_ratio, top=s.per_item,
                                  progress=ctx.progress)
    lists = found.lists(s.variant)  # type: ignore[arg-type]
    selections = {h: ircan.most_frequent(lists, h) for h in s.h_grid}
    grid = [{"h": h, "beta": beta, "selected": len(selections[h]),
             **edited(selections[h], beta, "dev")} for h in s.h_grid for beta in s.beta_grid]
    best = max(grid, key=lambda r: (r["accuracy"], -r["stubbornness"]))
    h, beta = int(best["h"]), float(best["beta"])
    neurons = selections[h]
    other = "endpoint" if s.variant == "standard" else "standard"
    overlap = ircan.jaccard(neurons, ircan.most_frequent(found.lists(other), h))  # type: ignore[arg-type]
    draws = [ircan.random_neurons(model, len(neurons), derive_seed(ctx.seed, "ern", k))
             for k in range(s.random_draws)]
    table = {"original": original["test"],
             "ircan": edited(neurons, beta, "test"),
             "ercan": edited(neurons, 0.0, "test"),
             "ern": _mean([edited(r, beta, "test") for r in draws]),
             "errn": _mean([edited(r, 0.0, "test") for r in draws])}
    if s.cad:
        table["cad"] = edited([], 1.0, "test", cad=True)
        table["ircan_cad"] = edited(neurons, beta, "test", cad=True)
    betas = sorted({0.0, 1.0, *s.beta_grid})
    curve = [{"beta": b, **{f"{split}_{k}": v for split in splits
                            for k, v in edited(neurons, b, split).items()}} for b in betas]
    plots.beta_curve(curve, f"h = {h} ({len(neurons)} neurons)", ctx.out / "beta_curve.png")
    gain = best["accuracy"] - original["dev"]["accuracy"]
    edited_model = gain > 0 or s.apply_if_worse
    if edited_model:
        ircan.reweight(model, neurons, beta)  # the aligned model keeps the edit
    counts = ircan.neuron_counts(lists)
    after = table["ircan"] if edited_model else original["test"]
    report = {"before": original["test"], "after": after, "table": table, "dev_gain": gain,
              "chosen": {"h": h, "beta": beta, "variant": s.variant, "dev": best},
              "original_dev": original["dev"], "grid": grid, "beta_curve": curve,
              "jaccard_variants": overlap, "items": {"dev": len(dev), "test": len(test)},
              "neurons": [[layer, index, counts[(layer, index)]] for layer, index in neurons],
              "applied": {"h": h, "beta": beta, "variant": s.variant, "edited": edited_model,
                          "neurons": [list(n) for n in neurons] if edited_model else []}}
    (ctx.out / "table.md").write_text(ircan_table_markdown(table))
    return report


def ircan_table_markdown(table: dict[str, dict[str, float]]) -> str:
    """The test table: accuracy and stubbornness rate (×100, 2 decimals, as the paper)."""
    lines = ["| model | accuracy | stubbornness |", "|---|---|---|"]
    names = {"original": "original", "ircan": "IRCAN", "ercan": "ErCAN (β = 0, same neurons)",
             "ern": "ERN (random neurons, same h, β)", "errn": "ErRN (random neurons, β = 0)",
             "cad": "CAD", "ircan_cad": "IRCAN-CAD"}
    for key, row in table.items():
        lines.append(f"| {names.get(key, key)} | {100 * row['accuracy']:.2f} | "
                     f"{100 * row['stubbornness']:.2f} |")
    return "\n".join(lines) + "\n"


def ircan_preflight(cfg: Any, probe: Any) -> None:
    """IRCAN needs the FFN site table and a conflict set with enough items to split."""
    from fedprivacy.alignment.stage import require_sites

    require_sites("ircan", probe.model)
    settings: IRCANConfig = METHOD.settings_of(cfg)
    try:
        items = conflict_items(settings, cfg)
    except ValueError as err:
        raise ValueError(f"alignment stage 'ircan': {err}") from err
    if len(items) < 4:
        raise ValueError(f"alignment stage 'ircan': the conflict set has {len(items)} items; "
                         "a dev/test split needs >= 4")


METHOD = register(Method(
    name="ircan", kind="align",
    help="IRCAN: find context-aware FFN neurons (integrated gradients) and reweight them",
    settings=IRCANConfig, stage=ircan_stage, preflight=ircan_preflight))
