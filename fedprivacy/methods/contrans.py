"""``contrans``: a concept transplanted from a weak aligned model into the global model
(METHODS.md §2, ConTrans).

An alignment stage (``alignment.stages: [contrans]``). The source is a model the server holds
(``alignment.contrans.source``): ``train`` (a small model the server trains on its own draw of
the emotion world, the tiny-scale "weak aligned model"), ``smollm2``/``gemma3`` (the packaged
real models), a ``save_pretrained`` folder, or ``self`` (the target itself). Steps:

1. v^l = mean(h_pos − h_neg) in the source on the train pairs (eq. 1); the source layer is the
   one that recognises the dev pairs best (``source_layer: -1``);
2. F = argmin ‖XF − Y‖² between the source's states at that layer and the target's at the
   target layer on general texts (``map_texts``: the set's neutral sentences, or for the world
   a fresh draw of its corpus; every word prefix of each text, 80 % fit, 20 % held out for the
   reported error), no bias (eq. 2); v̂ = vF;
3. h ← h + α·v̂ after the target layer at every position (eq. 3); α on a dev split by
   `choose_alpha` (largest dev gain with at most ``max_ppl_increase`` more perplexity).

The target layer defaults to the source layer's relative depth (this project's rule, from the
search in BENCHMARKS.md; the released code pairs 24 → 30 of 32 → 40 layers); ``target_layers``
searches a list on dev instead. References on test: the target's own vector (Self-Align, its
own α by the same rule), a random vector of v̂'s norm at the chosen α (mean of
``random_draws``), and the instruction in the prompt (Inst-Align) when ``instruction`` is set.
The model keeps the transplant (a persistent steering saved with it) unless no α gains on dev.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprivacy.data.records import derive_seed
from fedprivacy.methods.registry import Method, check, check_choice, register

SOURCES = ("train", "self", "smollm2", "gemma3")
DATA = ("auto", "world", "sentiment", "politeness", "honesty")  # the concept sets (steering too)


@dataclass
class ContransConfig:
    """ConTrans settings (``alignment.contrans``)."""

    source: str = field(default="train", metadata={
        "help": "the weak aligned source: train | self | smollm2 | gemma3 | a model folder"})
    source_hidden: int = field(default=64, metadata={"help": "source=train: hidden size"})
    source_layers: int = field(default=2, metadata={"help": "source=train: blocks"})
    source_steps: int = field(default=400, metadata={"help": "source=train: optimizer steps"})
    source_records: int = field(default=3000, metadata={
        "help": "source=train: records of the server's own draw of the world"})
    data: str = field(default="auto", metadata={
        "help": "auto (world with data.source=concepts, else the set named by concept) | "
                "world | sentiment | politeness | honesty"})
    concept: str = field(default="joy", metadata={
        "help": "world: the target emotion; real data: the set's name"})
    language: str = field(default="", metadata={
        "help": "the language of the pairs (empty: the set's first: l0 / en)"})
    method: str = field(default="mean", metadata={"help": "concept vector: mean | pca"})
    source_layer: int = field(default=-1, metadata={
        "help": "source block (-1: the best dev recognition)"})
    target_layer: int = field(default=-1, metadata={
        "help": "target block (-1: the source layer's relative depth)"})
    target_layers: list[int] = field(default_factory=list, metadata={
        "help": "search these target blocks on dev instead (empty: no search)"})
    alpha_grid: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0],
                                    metadata={"help": "steering strengths tried on dev"})
    max_ppl_increase: float = field(default=0.10, metadata={
        "help": "alpha rule: dev perplexity at most this much above the unsteered model"})
    random_draws: int = field(default=5, metadata={"help": "random-vector controls averaged"})
    neutral_texts: int = field(default=400, metadata={
        "help": "texts whose word prefixes fit the map"})
    map_texts: str = field(default="neutral", metadata={
        "help": "what the map is fitted on: neutral (the set's neutral sentences) | corpus "
                "(world only: a fresh server draw of the world's text, the analogue of the "
                "paper's general WikiSplit text)"})
    instruction: str = field(default="", metadata={
        "help": "Inst-Align baseline: this instruction before each text (empty: not run)"})
    apply_if_worse: bool = field(default=False, metadata={
        "help": "attach the transplant even when no alpha gains on dev"})

    def validate(self) -> None:
        check_choice(self.data, "data", DATA)
        check_choice(self.method, "method", ("mean", "pca"))
        check_choice(self.map_texts, "map_texts", ("neutral", "corpus"))
        check(bool(self.source), "source", f"must be one of {SOURCES} or a model folder",
              self.source)
        check(bool(self.alpha_grid) and min(self.alpha_grid) > 0, "alpha_grid",
              "must be a non-empty list of strengths > 0", self.alpha_grid)
        check(self.max_ppl_increase >= 0, "max_ppl_increase", "must be >= 0",
              self.max_ppl_increase)
        check(self.random_draws >= 1, "random_draws", "must be >= 1", self.random_draws)
        for key in ("source_hidden", "source_layers", "source_steps", "source_records",
                    "neutral_texts"):
            check(getattr(self, key) >= 1, key, "must be >= 1", getattr(self, key))


def concept_data(s: Any, cfg: Any, instruction: str = "") -> Any:
    """The stage's concept set in its one language (``language``, default the first)."""
    from fedprivacy.alignment.concept_sets import concept_set

    languages = [s.language] if s.language else None
    cs = concept_set(s.data, s.concept, cfg, languages, instruction,
                     key=f"alignment.{METHOD.name}")
    cs.languages = cs.languages[:1]
    return cs


def load_source(s: ContransConfig, ctx: Any) -> tuple[Any, Any]:
    """The source model and tokenizer (module docstring); ``train``: `_trained_source`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedprivacy.config import ModelConfig
    from fedprivacy.models import PACKAGED, load_pretrained, load_tokenizer

    if s.source == "self":
        return ctx.model, ctx.tokenizer
    if s.source in PACKAGED:  # found on this machine (`models.packaged`)
        mc = ModelConfig(preset="", name_or_path=s.source)
        return load_pretrained(mc), load_tokenizer(mc)
    if s.source == "train":
        return _trained_source(s, ctx)
    folder = Path(s.source).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"alignment.contrans.source: {s.source!r} is not one of {SOURCES} "
                         f"nor a save_pretrained folder")
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _trained_source(s: ContransConfig, ctx: Any) -> tuple[Any, Any]:
    """The server's small source model, trained once per recipe and cached under
    ``$FEDPRIVACY_CACHE/contrans-source/<recipe hash>`` (every-k and final stages share it)."""
    import hashlib
    import json

    from transformers import AutoModelForCausalLM

    from fedprivacy.config import ModelConfig, TrainConfig
    from fedprivacy.data.concept_world import ConceptWorld
    from fedprivacy.data.encoding import encode_records
    from fedprivacy.models import build_model, cache_root
    from fedprivacy.training import sft

    if ctx.cfg.data.source != "concepts":
        raise ValueError("alignment.contrans.source=train trains on the emotion world: it "
                         "needs data.source=concepts (or name a source model)")
    recipe = {"hidden": s.source_hidden, "layers": s.source_layers, "steps": s.source_steps,
              "records": s.source_records, "seed": ctx.seed,
              "world": json.dumps(vars(ctx.cfg.data.concepts), sort_keys=True),
              "model": ctx.cfg.model.preset or "tiny-llama", "lr": ctx.cfg.train.lr,
              "max_length": ctx.cfg.data.max_length, "vocabulary": len(ctx.tokenizer)}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / "contrans-source" / digest
    if (folder / "recipe.json").is_file() and \
            json.loads((folder / "recipe.json").read_text()) == recipe:
        return AutoModelForCausalLM.from_pretrained(folder), ctx.tokenizer
    records = ConceptWorld(ctx.cfg.data.concepts).corpus(
        s.source_records, derive_seed(ctx.seed, "server", "contrans-source"))
    encoded = encode_records(ctx.tokenizer, records, ctx.cfg.data.max_length,
                             on_overflow="truncate")
    mc = ModelConfig(preset=ctx.cfg.model.preset or "tiny-llama", hidden_size=s.source_hidden,
                     num_layers=s.source_layers, max_length=ctx.cfg.model.max_length)
    model = build_model(mc, ctx.tokenizer, derive_seed(ctx.seed, "contrans-source"))
    tc = TrainConfig(steps=s.source_steps, batch_size=16, lr=ctx.cfg.train.lr)
    sft(model, encoded, tc, derive_seed(ctx.seed, "contrans-source", "batches"))
    model.save_pretrained(folder)
    (folder / "recipe.json").write_text(json.dumps(recipe))
    return AutoModelForCausalLM.from_pretrained(folder), ctx.tokenizer  # named by its folder


def map_texts(s: ContransConfig, ctx: Any, cs: Any) -> list[str]:
    """The texts whose word prefixes fit the map (``map_texts``): the concept set's neutral
    sentences, or a fresh server draw of the emotion world's corpus (prompt and completion as
    one text; no pair and no label is used as such: the map sees only states)."""
    if s.map_texts == "neutral":
        return cs.data[cs.languages[0]].neutral[:s.neutral_texts]
    from fedprivacy.data.concept_world import ConceptWorld

    records = ConceptWorld(ctx.cfg.data.concepts).corpus(
        s.neutral_texts, derive_seed(ctx.seed, "server", "contrans-map"))
    return [f"{r['prompt']}{r['completion']}".strip() for r in records]


def contrans_stage(ctx: Any) -> dict[str, Any]:
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
        random_directions,
        word_prefixes,
    )

    s: ContransConfig = ctx.settings
    model, tok = ctx.model, ctx.tokenizer
    cs = concept_data(s, ctx.cfg)
    lang = cs.languages[0]
    source, source_tok = load_source(s, ctx)
    src_layers, tgt_layers = sites.num_layers(source), sites.num_layers(model)

    pos, neg = pair_states(source, source_tok, cs, lang, "train")
    v_src = concepts.concept_vectors(pos, neg, s.method)  # type: ignore[arg-type]
    dev_pos, dev_neg = pair_states(source, source_tok, cs, lang, "dev")
    src_dev_acc = concepts.recognition_accuracy(v_src, dev_pos, dev_neg)
    src_layer = s.source_layer if s.source_layer >= 0 else \
        concepts.best_layer(v_src, dev_pos, dev_neg)
    src_layer = sites.Sites(source).layer(src_layer)

    # the target's own vectors (Self-Align) and states for the recognition check
    t_pos, t_neg = pair_states(model, tok, cs, lang, "train")
    v_self_all = concepts.concept_vectors(t_pos, t_neg, s.method)  # type: ignore[arg-type]
    t_test = pair_states(model, tok, cs, lang, "test")

    texts = word_prefixes(map_texts(s, ctx, cs))
    cut = int(0.8 * len(texts))
    x_all = concepts.last_token_states(source, source_tok, texts, [src_layer])[0]
    sweep = Sweep(model, tok, cs)

    def transplant(layer: int) -> tuple[torch.Tensor, float]:
        y_all = concepts.last_token_states(model, tok, texts, [layer])[0]
        fmap = concepts.fit_linear_map(x_all[:cut], y_all[:cut])
        return fmap(v_src[src_layer][None])[0], fmap.error(x_all[cut:], y_all[cut:])

    def alpha_rows(name: str, vector: torch.Tensor, layer: int, split: str) -> dict:
        return {a: sweep.measure(name, vector, layer, a, lang, split) for a in s.alpha_grid}

    base_dev = sweep.measure("base", None, 0, 0.0, lang, "dev")
    relative = round(src_layer / max(1, src_layers - 1) * (tgt_layers - 1))
    candidates = [sites.Sites(model).layer(t) for t in s.target_layers] or \
        [s.target_layer if s.target_layer >= 0 else relative]
    search = []
    for layer in candidates:
        vector, error = transplant(layer)
        alpha, gain = choose_alpha(alpha_rows(f"contrans@{layer}", vector, layer, "dev"),
                                   cs.primary, base_dev, s.max_ppl_increase)
        search.append({"layer": layer, "alpha": alpha, "dev_gain": gain, "map_error": error,
                       "vector": vector})
    chosen = max(search, key=lambda r: (r["dev_gain"], -abs(r["layer"] - relative)))
    layer, alpha, v_hat = chosen["layer"], chosen["alpha"], chosen["vector"]
    name = f"contrans@{layer}"
    v_self = v_self_all[layer]
    self_alpha, self_gain = choose_alpha(alpha_rows("self", v_self, layer, "dev"), cs.primary,
                                         base_dev, s.max_ppl_increase)
    randoms = random_directions(v_hat, s.random_draws, derive_seed(ctx.seed, "contrans-random"))
    shown = alpha if alpha > 0 else max(s.alpha_grid)  # the random control's α
    table = {"base": sweep.measure("base", None, 0, 0.0, lang, "test"),
             "contrans": sweep.measure(name, v_hat, layer, alpha, lang, "test"),
             "self_align": sweep.measure("self", v_self, layer, self_alpha, lang, "test"),
             "random": mean_rows([sweep.measure(f"random{k}", r, layer, shown, lang, "test")
                                  for k, r in enumerate(randoms)])}
    if s.instruction:
        inst = concept_data(s, ctx.cfg, s.instruction)
        table["inst_align"] = {**inst.measure(model, tok, lang, "test"),
                               "perplexity": table["base"]["perplexity"]}
    curve = [{"alpha": a, **{f"{who}_{k}": v for who, vec in
                             (("contrans", v_hat), ("self", v_self), ("random", randoms[0]))
                             for k, v in sweep.measure(who if who != "contrans" else name,
                                                       vec, layer, a, lang, "test").items()}}
             for a in [0.0, *sorted(s.alpha_grid)]]
    plots.alpha_curve(curve, cs.primary, f"ConTrans {cs.name} ({lang}), target layer {layer}",
                      ctx.out / "alpha_curve.png")
    applied = chosen["dev_gain"] > 0 or s.apply_if_worse
    if applied:
        concepts.add_steering(model, concepts.Addition(layer, v_hat, shown,
                                                       f"contrans:{cs.name}"))
    test_acc = {
        "source_dev_by_layer": layer_report(src_dev_acc),
        "transplant_on_target_test": float(concepts.recognition_accuracy(
            v_hat[None], t_test[0][layer:layer + 1], t_test[1][layer:layer + 1])[0]),
        "self_on_target_test": float(concepts.recognition_accuracy(
            v_self[None], t_test[0][layer:layer + 1], t_test[1][layer:layer + 1])[0])}
    report = {"before": table["base"], "after": table["contrans"] if applied else table["base"],
              "table": table, "curve": curve, "recognition": test_acc,
              "chosen": {"source_layer": src_layer, "target_layer": layer, "alpha": alpha,
                         "self_alpha": self_alpha, "dev_gain": chosen["dev_gain"],
                         "self_dev_gain": self_gain, "rule": describe_alpha_rule(
                             s.max_ppl_increase)},
              "map": {"texts": s.map_texts, "states": len(texts), "fit": cut,
                      "held_out_relative_error": chosen["map_error"],
                      "source_dim": int(x_all.shape[1]), "target_dim": int(v_hat.shape[0])},
              "layer_search": [{k: v for k, v in r.items() if k != "vector"} for r in search],
              "norms": {"transplant": float(v_hat.norm()), "self": float(v_self.norm()),
                        "source": float(v_src[src_layer].norm()),
                        "cosine_transplant_self": float(torch.nn.functional.cosine_similarity(
                            v_hat.double(), v_self.double(), dim=0))},
              "source": {"model": s.source, "layers": src_layers,
                         "folder": str(source.config.name_or_path)},
              "applied": {"source": s.source, "layer": layer,
                          "alpha": shown if applied else 0.0,
                          "steered": applied, "concept": cs.name, "language": lang}}
    (ctx.out / "table.md").write_text(table_markdown(table, cs.primary))
    return report


NAMES = {"base": "base (unsteered)", "contrans": "ConTrans", "self_align": "Self-Align",
         "random": "random vector (same norm)", "inst_align": "Inst-Align (instruction)"}


def table_markdown(table: dict[str, dict[str, float]], primary: str) -> str:
    """The test table: every measure and the neutral perplexity, one row per model."""
    keys = [k for k in next(iter(table.values())) if k != "perplexity"]
    lines = ["| model | " + " | ".join(keys) + " | perplexity |",
             "|---|" + "---|" * (len(keys) + 1)]
    for name, row in table.items():
        cells = " | ".join(f"{row[k]:.3f}" if k in row else "–" for k in keys)
        lines.append(f"| {NAMES.get(name, name)} | {cells} | {row['perplexity']:.2f} |")
    return "\n".join(lines) + f"\n\n(α chosen on dev by {primary}.)\n"


def contrans_preflight(cfg: Any, probe: Any) -> None:
    """ConTrans needs the residual sites of the target and a concept set it can build."""
    from fedprivacy.alignment.stage import require_sites

    require_sites("contrans", probe.model)
    s: ContransConfig = METHOD.settings_of(cfg)
    world_only = [key for key, used in (("source=train", s.source == "train"),
                                        ("map_texts=corpus", s.map_texts == "corpus")) if used]
    if world_only and cfg.data.source != "concepts":
        raise ValueError(f"alignment stage 'contrans': {' and '.join(world_only)} draw on the "
                         "emotion world: it needs data.source=concepts")
    try:
        cs = concept_data(s, cfg)
    except ValueError as err:
        raise ValueError(f"alignment stage 'contrans': {err}") from err
    for split in ("train", "dev", "test"):
        if len(cs.pairs(cs.languages[0], split)) < 2:
            raise ValueError(f"alignment stage 'contrans': fewer than 2 {split} pairs")


METHOD = register(Method(
    name="contrans", kind="align",
    help="ConTrans: transplant a concept vector from a weak aligned model through a fitted "
         "linear map into the global model's residual stream",
    settings=ContransConfig, stage=contrans_stage, preflight=contrans_preflight))
