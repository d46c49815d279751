"""``steering``: multilingual concepts of the global model, analysed and steered across
languages (METHODS.md §3).

An alignment stage (``alignment.stages: [steering]``) on a concept set in several languages
(the emotion world's languages at tiny scale, English/French/German/Spanish for the real sets):

- per language and layer: the concept vector (train pairs, `concepts.concept_vectors`) and its
  recognition accuracy on the test pairs; reported per layer and as the max over layers;
- consistency: cos(v_L1^l, v_L2^l), the max over layers, per language pair;
- transfer: Δ(L1→L2) = acc(v_L1 on L2) − acc(v_L2 on L2), each the max over layers;
- control: h ← h + α·v_dom after one block (the dominant language's vector, the block where it
  recognises the dev pairs best), α by `choose_alpha` on the mean dev gain of the other
  languages, and on test each language's measure and neutral perplexity before and after.

Heatmaps of the recognition, cosine and Δ matrices go into the stage folder. The model keeps
the steering (saved with it) unless no α gains on dev.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedprivacy.methods.contrans import DATA
from fedprivacy.methods.registry import Method, check, check_choice, register


@dataclass
class SteeringConfig:
    """Multilingual concept analysis and steering settings (``alignment.steering``)."""

    data: str = field(default="auto", metadata={
        "help": "auto (world with data.source=concepts, else the set named by concept) | "
                "world | sentiment | politeness | honesty"})
    concept: str = field(default="joy", metadata={
        "help": "world: the target emotion; real data: the set's name"})
    languages: list[str] = field(default_factory=list, metadata={
        "help": "languages analysed (empty: all of the set, the dominant first)"})
    dominant: str = field(default="", metadata={
        "help": "the language whose vector steers the others (empty: the first)"})
    method: str = field(default="mean", metadata={"help": "concept vector: mean | pca"})
    layer: int = field(default=-1, metadata={
        "help": "steered block (-1: the dominant vector's best dev recognition)"})
    alpha_grid: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0],
                                    metadata={"help": "steering strengths tried on dev"})
    max_ppl_increase: float = field(default=0.10, metadata={
        "help": "alpha rule: dev perplexity of every language at most this much higher"})
    apply_if_worse: bool = field(default=False, metadata={
        "help": "attach the steering even when no alpha gains on dev"})

    def validate(self) -> None:
        check_choice(self.data, "data", DATA)
        check_choice(self.method, "method", ("mean", "pca"))
        check(bool(self.alpha_grid) and min(self.alpha_grid) > 0, "alpha_grid",
              "must be a non-empty list of strengths > 0", self.alpha_grid)
        check(self.max_ppl_increase >= 0, "max_ppl_increase", "must be >= 0",
              self.max_ppl_increase)


def concept_data(s: SteeringConfig, cfg: Any) -> Any:
    """The concept set with the dominant language first."""
    from fedprivacy.alignment.concept_sets import concept_set

    cs = concept_set(s.data, s.concept, cfg, list(s.languages) or None,
                     key=f"alignment.{METHOD.name}")
    if s.dominant:
        if s.dominant not in cs.languages:
            raise ValueError(f"alignment.steering.dominant: {s.dominant!r} is not among the "
                             f"languages {cs.languages}")
        cs.languages = [s.dominant] + [lang for lang in cs.languages if lang != s.dominant]
    if len(cs.languages) < 2:
        raise ValueError(f"alignment.steering needs >= 2 languages, got {cs.languages}")
    return cs


def steering_stage(ctx: Any) -> dict[str, Any]:
    """The stage (module docstring); ``ctx`` is a `fedprivacy.alignment.stage.StageContext`."""
    import torch

    from fedprivacy import concepts, sites
    from fedprivacy.alignment import plots
    from fedprivacy.alignment.steer_eval import (
        Sweep,
        choose_alpha,
        describe_alpha_rule,
        layer_report,
        mean_rows,
        pair_states,
    )

    s: SteeringConfig = ctx.settings
    model, tok = ctx.model, ctx.tokenizer
    cs = concept_data(s, ctx.cfg)
    langs, dom = cs.languages, cs.languages[0]
    vectors, tests = {}, {}
    for lang in langs:
        pos, neg = pair_states(model, tok, cs, lang, "train")
        vectors[lang] = concepts.concept_vectors(pos, neg, s.method)  # type: ignore[arg-type]
        tests[lang] = pair_states(model, tok, cs, lang, "test")
    by_layer = {a: {b: concepts.recognition_accuracy(vectors[a], *tests[b]) for b in langs}
                for a in langs}
    transfer = torch.tensor([[float(by_layer[a][b].max()) for b in langs] for a in langs])
    own = transfer.diag()
    delta = transfer - own[None, :]  # Δ(a→b) = acc(v_a on b) − acc(v_b on b)
    cosine = concepts.cosine_matrix(vectors).max(-1).values
    recognition = torch.stack([by_layer[lang][lang] for lang in langs])

    dev_pos, dev_neg = pair_states(model, tok, cs, dom, "dev")
    layer = sites.Sites(model).layer(s.layer) if s.layer >= 0 else \
        concepts.best_layer(vectors[dom], dev_pos, dev_neg)
    v = vectors[dom][layer]
    sweep = Sweep(model, tok, cs)
    others = langs[1:]
    base_dev = {lang: sweep.measure("base", None, 0, 0.0, lang, "dev") for lang in langs}
    mean_base = {cs.primary: sum(base_dev[lang][cs.primary] for lang in others) / len(others),
                 "perplexity": 1.0}
    rows = {}
    for alpha in s.alpha_grid:
        dev = {lang: sweep.measure("dominant", v, layer, alpha, lang, "dev") for lang in langs}
        rows[alpha] = {cs.primary: sum(dev[lang][cs.primary] for lang in others) / len(others),
                       "perplexity": max(dev[lang]["perplexity"] / base_dev[lang]["perplexity"]
                                         for lang in langs)}
    alpha, gain = choose_alpha(rows, cs.primary, mean_base, s.max_ppl_increase)
    shown = alpha if alpha > 0 else max(s.alpha_grid)
    applied = gain > 0 or s.apply_if_worse
    used = shown if applied else 0.0  # the α of the kept model (0: left unsteered)
    control = {lang: {"before": sweep.measure("base", None, 0, 0.0, lang, "test"),
                      "after": sweep.measure("dominant", v, layer, used, lang, "test")}
               for lang in langs}
    curve = [{"alpha": a, **{f"{lang}_{k}": val for lang in langs for k, val in
                             sweep.measure("dominant", v, layer, a, lang, "test").items()}}
             for a in [0.0, *sorted(s.alpha_grid)]]
    plots.heatmap(recognition.numpy(), langs, [str(i) for i in range(recognition.shape[1])],
                  f"{cs.name}: recognition accuracy (test)", "block", ctx.out / "recognition.png")
    plots.heatmap(cosine.numpy(), langs, langs, f"{cs.name}: cosine (max over layers)",
                  "language", ctx.out / "cosine.png")
    plots.heatmap(delta.numpy(), langs, langs, f"{cs.name}: transfer Δ(row → column)",
                  "to language", ctx.out / "transfer.png", centred=True)
    plots.alpha_curve(curve, cs.primary,
                      f"steering with {dom}'s {cs.name} vector at block {layer}",
                      ctx.out / "alpha_curve.png", series=[f"{lang}_" for lang in langs])
    if applied:
        concepts.add_steering(model, concepts.Addition(layer, v, shown,
                                                       f"steering:{cs.name}:{dom}"))
    report = {"before": mean_rows([control[lang]["before"] for lang in others]),
              "after": mean_rows([control[lang]["after"] for lang in others]),
              "languages": langs,
              "recognition": {"max_over_layers": dict(zip(langs, layer_report(own))),
                              "by_layer": {lang: layer_report(by_layer[lang][lang])
                                           for lang in langs}},
              "transfer_accuracy": transfer.tolist(), "delta": delta.tolist(),
              "cosine": cosine.tolist(), "control": control, "curve": curve,
              "chosen": {"layer": layer, "alpha": alpha, "dev_gain": gain, "dominant": dom,
                         "rule": describe_alpha_rule(s.max_ppl_increase) +
                         " (gain: mean over the non-dominant languages; perplexity: every "
                         "language)"},
              "applied": {"layer": layer, "alpha": used, "steered": applied,
                          "concept": cs.name, "dominant": dom}}
    (ctx.out / "table.md").write_text(tables_markdown(report, cs.primary) + (
        f"\n(after: {dom}'s vector at block {layer}, α = {used:g}"
        + (" chosen on dev" if gain > 0 else "; no α gained on dev within the perplexity "
           "limit; the α curve is in report.json and alpha_curve.png") + ")\n"))
    return report


def _matrix(title: str, langs: list[str], values: list[list[float]]) -> list[str]:
    lines = [f"**{title}**", "", "| | " + " | ".join(langs) + " |",
             "|---|" + "---|" * len(langs)]
    lines += [f"| {a} | " + " | ".join(f"{x:+.3f}" if "Δ" in title else f"{x:.3f}"
                                       for x in row) + " |" for a, row in zip(langs, values)]
    return lines + [""]


def tables_markdown(report: dict[str, Any], primary: str) -> str:
    """Recognition, cosine, Δ and the control table (test)."""
    langs = report["languages"]
    lines = ["| language | recognition (max over layers) | " + primary + " before | "
             + primary + " after | perplexity before | perplexity after |",
             "|---|---|---|---|---|---|"]
    for lang in langs:
        c = report["control"][lang]
        lines.append(f"| {lang} | {report['recognition']['max_over_layers'][lang]:.3f} | "
                     f"{c['before'][primary]:.3f} | {c['after'][primary]:.3f} | "
                     f"{c['before']['perplexity']:.2f} | {c['after']['perplexity']:.2f} |")
    lines.append("")
    lines += _matrix("cosine (max over layers)", langs, report["cosine"])
    lines += _matrix("Δ(row → column)", langs, report["delta"])
    return "\n".join(lines)


def steering_preflight(cfg: Any, probe: Any) -> None:
    """Steering needs the residual sites and a concept set in >= 2 languages."""
    from fedprivacy.alignment.stage import require_sites

    require_sites("steering", probe.model)
    try:
        concept_data(METHOD.settings_of(cfg), cfg)
    except ValueError as err:
        raise ValueError(f"alignment stage 'steering': {err}") from err


METHOD = register(Method(
    name="steering", kind="align",
    help="multilingual concept vectors: recognition, consistency and transfer across "
         "languages, and steering with the dominant language's vector",
    settings=SteeringConfig, stage=steering_stage, preflight=steering_preflight))
