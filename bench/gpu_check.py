"""GPU code paths of the library (no Flower): the same work on CPU and CUDA must agree.

    python bench/gpu_check.py [--out results.json]

Runs SFT, evaluation (loss, label scoring, greedy decoding), canary exposure, DEPN detection,
DP-SGD steps and the swing loss on the tiny LLaMA preset, once on the CPU and once on CUDA,
and prints the largest disagreements and the step times.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedprivacy.config import DPConfig, SwingConfig, TrainConfig, load_config  # noqa: E402
from fedprivacy.data.encoding import encode_records  # noqa: E402
from fedprivacy.data.federated import build_client_data  # noqa: E402
from fedprivacy.data.tasks import get_task, task_splits  # noqa: E402
from fedprivacy.evaluation import evaluate_loss, greedy_answers, task_accuracy  # noqa: E402
from fedprivacy.models import build_model, load_tokenizer  # noqa: E402
from fedprivacy.privacy.depn import detect_privacy_neurons  # noqa: E402
from fedprivacy.privacy.dp import make_private  # noqa: E402
from fedprivacy.privacy.ledger import canary_leakage  # noqa: E402
from fedprivacy.privacy.swing import swing_distillation_loss, swing_temperatures  # noqa: E402
from fedprivacy.training import make_optimizer, sft  # noqa: E402


def run_on(device: str, model: torch.nn.Module, tok, data, enc, task_records) -> dict:
    torch.manual_seed(0)
    m = copy.deepcopy(model).to(device)
    out: dict = {}
    t = time.perf_counter()
    out["sft_losses"] = sft(m, enc, TrainConfig(steps=20, batch_size=16, lr=3e-3), seed=0)
    out["sft_s"] = time.perf_counter() - t
    out["eval_loss"] = evaluate_loss(m, enc, 64)[0]
    sentiment = get_task("sentiment")
    out["accuracy"] = task_accuracy(m, tok, sentiment, task_records)
    out["greedy"] = greedy_answers(m, tok, [r["prompt"] for r in task_records[:4]], 4)
    leak = canary_leakage(m, tok, data.canaries, "exact")
    out["exposure"] = leak["exposure"]
    rows = enc["private_mask"].any(1).nonzero().flatten()[:2]
    found = detect_privacy_neurons(m, enc["input_ids"][rows].to(device),
                                   enc["private_mask"][rows].to(device),
                                   enc["attention_mask"][rows].to(device), top_z=5, steps=8)
    out["depn_neurons"] = [list(n) for n in found.neurons]
    dp_model = copy.deepcopy(m)
    trainer = make_private(dp_model, make_optimizer(dp_model, TrainConfig(lr=1e-3)), 0.25,
                           DPConfig(noise_multiplier=1.0), batch_size=8, total_steps=2)
    batch = {k: enc[k][:8].to(device) for k in ("input_ids", "attention_mask", "labels")}
    out["dp_losses"] = [trainer.step(batch) for _ in range(2)]
    out["dp_epsilon"] = trainer.epsilon()
    trainer.close()
    with torch.no_grad():
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    p = enc["private_mask"][:8].float().to(device)
    cfg = SwingConfig(noise="none")
    out["swing_loss"] = swing_distillation_loss(logits, logits, batch["labels"],
                                                swing_temperatures(p, cfg), cfg,
                                                likelihood=p).item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device visible"
    cfg = load_config(None, ["data.source=pii", "data.pii_records=40", "data.canary.digits=3",
                             "data.canary.repeats=10", "model.hidden_size=64", "model.num_layers=2"])
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg.model, tok, seed=0)
    data = build_client_data(cfg.data, 0, 2, seed=0)
    enc = encode_records(tok, data.train, cfg.data.max_length)
    task_records = task_splits("sentiment", 16, 16, 1, seed=0)["validation"]
    torch.backends.cudnn.deterministic = True
    results = {dev: run_on(dev, model, tok, data, enc, task_records) for dev in ("cpu", "cuda")}
    cpu, gpu = results["cpu"], results["cuda"]
    report = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "first_sft_loss_diff": abs(cpu["sft_losses"][0] - gpu["sft_losses"][0]),
        "last_sft_loss": [cpu["sft_losses"][-1], gpu["sft_losses"][-1]],
        "eval_loss": [cpu["eval_loss"], gpu["eval_loss"]],
        "accuracy": [cpu["accuracy"], gpu["accuracy"]],
        "exposure": [cpu["exposure"], gpu["exposure"]],
        "depn_overlap": len({tuple(n) for n in cpu["depn_neurons"]}
                            & {tuple(n) for n in gpu["depn_neurons"]}),
        "dp_epsilon": [cpu["dp_epsilon"], gpu["dp_epsilon"]],
        "swing_loss": [cpu["swing_loss"], gpu["swing_loss"]],
        "sft_seconds_20_steps": [cpu["sft_s"], gpu["sft_s"]],
        "greedy_equal": cpu["greedy"] == gpu["greedy"],
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
