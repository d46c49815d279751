"""The ServerApp: builds the global model, runs the configured strategy, records the run.

The same app runs under `fedprivacy run` (simulation), ``flwr run`` and a real deployment: it
reads everything from Flower's flat ``run_config`` (`fedprivacy.config.unflatten`).
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedprivacy.config import ExperimentConfig, unflatten
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.federated import build_eval_data
from fedprivacy.evaluation import evaluate_loss, perplexity
from fedprivacy.models import build_model, cpu_state_dict, load_tokenizer, resolve_device
from fedprivacy.report import RunFolder, summarize
from strategies.factory import make_strategy
from strategies.guarded import GuardedStrategy

app = ServerApp()


class ServerRun:
    """One federated run on the server: rounds, evaluation, checkpoints and the run record."""

    def __init__(self, cfg: ExperimentConfig, grid: Grid) -> None:
        self.cfg, self.grid = cfg, grid
        self.folder = RunFolder(cfg.out_dir or Path("runs") / f"{cfg.name}-{int(time.time())}")
        self.folder.write_config(cfg)  # also under `flwr run` and in deployments
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = build_model(cfg.model, self.tokenizer, cfg.seed)
        self.initial_arrays = ArrayRecord(cpu_state_dict(self.model))
        self.model.to(resolve_device(cfg.train.device))
        eval_records = build_eval_data(cfg.data, cfg.simulation.num_clients, cfg.seed)
        self.eval_set = encode_records(self.tokenizer, eval_records, cfg.data.max_length,
                                       on_overflow="truncate")
        self.started = time.time()

    def run(self) -> dict:
        cfg = self.cfg
        arrays = self.initial_arrays
        done = 0
        checkpoint = self.folder.load_checkpoint()
        if checkpoint is not None:
            done, saved = checkpoint
            arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in saved.items()})
            log(INFO, "[fedprivacy] resuming %s after round %d", self.folder.path, done)
        inner = make_strategy(cfg, self.model, self.tokenizer)
        self.strategy = GuardedStrategy(inner, round_offset=done)
        remaining = cfg.rounds - done
        if remaining > 0:
            result = self.strategy.start(
                grid=self.grid, initial_arrays=arrays, num_rounds=remaining,
                timeout=cfg.strategy.round_timeout,
                train_config=ConfigRecord({"num-rounds": cfg.rounds}),
                evaluate_config=ConfigRecord({"num-rounds": cfg.rounds}),
                evaluate_fn=self.end_of_round)
            arrays = result.arrays if result.arrays is not None else arrays
        return self.finish(arrays)

    def evaluate(self, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        loss, _ = evaluate_loss(self.model, self.eval_set, self.cfg.train.eval_batch_size)
        return {"eval_loss": loss, "eval_ppl": perplexity(loss)}

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: evaluate centrally, log the round, checkpoint."""
        rnd = server_round + self.strategy.round_offset
        if server_round == 0 and rnd > 0:
            return None  # a resumed run recorded its starting point already
        server = self.evaluate(arrays)
        entry = self.strategy.round_log(server_round)
        record = {"round": rnd, "time": time.time(), "server": server, "clients": entry.clients,
                  "dropped": entry.dropped,
                  "train": entry.extra.get("train", {}), "evaluate": entry.extra.get("evaluate", {}),
                  "durations": {**entry.durations, "round_s": time.time() - entry.started},
                  "strategy": self.strategy_info(rnd)}
        if rnd > 0:  # checkpoint first: a recorded round can always be resumed from
            self.folder.save_checkpoint(rnd, {k: a.numpy() for k, a in arrays.items()})
        self.folder.append_round(record)
        log(INFO, "[fedprivacy] round %d/%d: global eval loss %.4f (ppl %.2f), %d clients, "
                  "%d dropped, %.1f s", rnd, self.cfg.rounds, server["eval_loss"],
            server["eval_ppl"], len(entry.clients), len(entry.dropped),
            record["durations"]["round_s"])
        return MetricRecord(server)

    def strategy_info(self, rnd: int) -> dict:
        """What the wrapped strategies recorded for a round (``round_info`` of each layer)."""
        info, layer = {}, self.strategy.inner
        while layer is not None:
            info.update(getattr(layer, "round_info", {}).get(rnd, {}))
            layer = getattr(layer, "inner", None)
        return info

    def finish(self, arrays: ArrayRecord) -> dict:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        self.model.cpu().save_pretrained(self.folder.model_dir)
        self.tokenizer.save_pretrained(self.folder.model_dir)
        summary = summarize(self.cfg, self.folder.rounds(), self.started)
        self.folder.write_summary(summary)
        log(INFO, "[fedprivacy] run finished: %s", self.folder.path)
        return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = unflatten(dict(context.run_config))
    ServerRun(cfg, grid).run()
