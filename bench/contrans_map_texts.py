"""Which texts the ConTrans map is fitted on, at tiny scale (a diagnostic, not a timing).

ConTrans fits F on neutral text (METHODS.md §2, eq. 2). This script fits it on three text sets
of the emotion world and reports, per target block, the held-out fit error, cos(v̂, v_self)
(the transplant against the target's own vector) and the dev rate of the transplant at each α:

- ``neutral``: the world's neutral sentences (the stage's default, as in the paper);
- ``neutral+events``: half neutral sentences, half event sentences of every emotion (the
  emotional words without the cue);
- ``pairs``: neutral sentences plus the concept's own train pairs, a Self-Align in disguise
  (v̂ ≈ v_self by construction: F is fitted on the very states whose mean difference is v).

    python bench/contrans_map_texts.py RUN_DIR SOURCE_DIR [--alphas 0.5,0.75,1,1.5,2]

RUN_DIR: a finished ``configs/concepts.yaml`` run; SOURCE_DIR: the ConTrans source folder
that its stage trained (``report.json`` → ``source.folder``).
"""

from __future__ import annotations

import argparse
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedprivacy import concepts
from fedprivacy.alignment.concept_sets import concept_set
from fedprivacy.alignment.steer_eval import Sweep, pair_states, word_prefixes
from fedprivacy.config import load_config
from fedprivacy.data.concept_world import EVENTS, PEOPLE, ConceptWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("source")
    parser.add_argument("--alphas", default="0.5,0.75,1,1.5,2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(f"{args.run}/config.yaml")
    model = AutoModelForCausalLM.from_pretrained(f"{args.run}/model").eval()
    tok = AutoTokenizer.from_pretrained(f"{args.run}/model")
    source = AutoModelForCausalLM.from_pretrained(args.source).eval()
    cs = concept_set("world", "joy", cfg, ["l0"], key="bench")
    src_pos, src_neg = pair_states(source, tok, cs, "l0", "train")
    v_src = concepts.concept_vectors(src_pos, src_neg)
    src_layer = concepts.best_layer(v_src, *pair_states(source, tok, cs, "l0", "dev"))
    t_pos, t_neg = pair_states(model, tok, cs, "l0", "train")
    v_self = concepts.concept_vectors(t_pos, t_neg)
    world = ConceptWorld(cfg.data.concepts)
    events = [world.neutral(p, e, 0) for p in PEOPLE for es in EVENTS.values() for e in es]
    random.Random(0).shuffle(events)
    neutral = cs.data["l0"].neutral
    sets = {"neutral": word_prefixes(neutral[:400]),
            "neutral+events": word_prefixes(neutral[:200] + events[:200]),
            "pairs": word_prefixes(neutral[:400] + [t for p in cs.pairs("l0", "train")
                                                    for t in p])}
    sweep = Sweep(model, tok, cs)
    alphas = [float(a) for a in args.alphas.split(",")]
    print(f"source block {src_layer}; dev rate of the transplant at α = {alphas}")
    print("| fit texts | states | target block | held-out error | cos(v̂, v_self) | "
          + " | ".join(f"α={a:g}" for a in alphas) + " |")
    print("|---|---|---|---|---|" + "---|" * len(alphas))
    for name, texts in sets.items():
        random.Random(1).shuffle(texts)
        cut = int(0.8 * len(texts))
        x = concepts.last_token_states(source, tok, texts, [src_layer])[0]
        for layer in (1, len(v_self) - 1):
            y = concepts.last_token_states(model, tok, texts, [layer])[0]
            fmap = concepts.fit_linear_map(x[:cut], y[:cut])
            v_hat = fmap(v_src[src_layer][None])[0]
            cos = torch.nn.functional.cosine_similarity(v_hat.double(), v_self[layer].double(),
                                                        dim=0)
            cells = []
            for a in alphas:
                row = sweep.measure(f"{name}@{layer}", v_hat, layer, a, "l0", "dev")
                cells.append(f"{row['rate']:.3f} (ppl {row['perplexity']:.2f})")
            print(f"| {name} | {len(texts)} | {layer} | {fmap.error(x[cut:], y[cut:]):.3f} | "
                  f"{float(cos):.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
