"""The ServerApp: builds the global model, runs the configured strategy, records the run.

The same app runs under `fedprivacy run` (simulation), ``flwr run`` and a real deployment: it
reads everything from Flower's flat ``run_config`` (`fedprivacy.config.unflatten`). It never
builds or reads a client's data: its central evaluation uses the server's own set
(``server.*``, `fedprivacy.data.federated.build_server_data`).
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import FLOWER_LOGGER, log
from flwr.serverapp import Grid, ServerApp
from transformers import PreTrainedModel

from fedprivacy import adapters, wire
from fedprivacy.alignment.stage import run_stages, save_aligned, summary_section
from fedprivacy.config import ExperimentConfig, unflatten
from fedprivacy.editing import EDITS_KEY
from fedprivacy.evaluation import evaluate_loss, perplexity, server_eval_set
from fedprivacy.methods import registry
from fedprivacy.models import build_model, load_tokenizer, resolve_device
from fedprivacy.report import RunFolder, summarize
from fedprivacy.strategies.factory import make_strategy
from fedprivacy.strategies.guarded import GuardedStrategy

app = ServerApp()


class GlobalModel:
    """The server's one copy of the global model. Strategies borrow it through `load`; only
    the ServerApp saves it, with an edit record that describes exactly its weights. With
    ``model.adapter`` it is the frozen base with the adapter, and the arrays are the adapter's
    (`fedprivacy.adapters`)."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.tokenizer = load_tokenizer(cfg.model)
        self.model: PreTrainedModel = adapters.wrap(
            build_model(cfg.model, self.tokenizer, cfg.seed), cfg.model, cfg.seed)
        self.initial_arrays = ArrayRecord(adapters.wire_state(self.model))
        self.model.to(resolve_device(cfg.train.device))

    def load(self, arrays: ArrayRecord) -> PreTrainedModel:
        """The model holding ``arrays``; plain arrays carry no edit, so the record is cleared."""
        adapters.load_wire(self.model, arrays)
        setattr(self.model.config, EDITS_KEY, [])
        return self.model


class ServerRun:
    """One federated run on the server: rounds, evaluation, checkpoints and the run record."""

    def __init__(self, cfg: ExperimentConfig, grid: Grid) -> None:
        self.cfg, self.grid = cfg, grid
        # absolute, on the host the ServerApp runs on (a deployment's SuperLink host)
        self.folder = RunFolder((Path(cfg.out_dir).expanduser() if cfg.out_dir else
                                 Path("runs") / f"{cfg.name}-{int(time.time())}").resolve())
        self.folder.write_config(cfg)  # also under `flwr run` and in deployments
        log(INFO, "[fedprivacy] run folder: %s", self.folder.path)
        self.global_model = GlobalModel(cfg)
        self.eval_set = server_eval_set(cfg, self.global_model.tokenizer)
        self.started = time.time()

    def run(self) -> dict:
        cfg = self.cfg
        arrays = self.global_model.initial_arrays
        done = 0
        checkpoint = self.folder.load_checkpoint()
        if checkpoint is not None:
            done, saved = checkpoint
            arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in saved.items()})
            log(INFO, "[fedprivacy] resuming %s after round %d", self.folder.path, done)
        inner = make_strategy(cfg, self.global_model)
        self.strategy = GuardedStrategy(inner, round_offset=done,
                                        query_timeout=cfg.strategy.round_timeout,
                                        round_timeout=cfg.strategy.round_timeout,
                                        min_clients=cfg.strategy.min_clients,
                                        node_wait=cfg.strategy.node_wait,
                                        evaluate_with_train=cfg.strategy.evaluate_with_train)
        remaining = cfg.rounds - done
        if remaining > 0:
            result = self.strategy.start(
                grid=self.grid, initial_arrays=arrays, num_rounds=remaining,
                timeout=cfg.strategy.round_timeout,
                train_config=ConfigRecord({wire.NUM_ROUNDS: cfg.rounds}),
                evaluate_config=ConfigRecord({wire.NUM_ROUNDS: cfg.rounds}),
                evaluate_fn=self.end_of_round)
            # Flower returns an empty ArrayRecord when no round produced a model
            arrays = result.arrays if len(result.arrays) > 0 else arrays
        return self.finish(arrays)

    def evaluate(self, arrays: ArrayRecord) -> dict[str, float]:
        model = self.global_model.load(arrays)
        loss, _ = evaluate_loss(model, self.eval_set, self.cfg.train.eval_batch_size)
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
                  "strategy": self.strategy.round_record(rnd)}
        for key in ("nodes_short", "not_aggregated"):  # a bounded wait, too few replies
            if key in entry.extra:
                record[key] = entry.extra[key]
        if rnd > 0 and not entry.extra.get("train"):
            record["no_valid_reply"] = True
            log(WARNING, "[fedprivacy] round %d had fewer valid train replies than "
                         "strategy.min_clients: the global model is the previous round's", rnd)
        every = self.cfg.alignment.every
        if self.cfg.alignment.stages and every and rnd > 0 and rnd % every == 0 \
                and rnd < self.cfg.rounds:
            record["alignment"] = self.align_copy(arrays, rnd)
        # the checkpoint (round > 0) and the record commit as a pair: a kill loses neither
        self.folder.save_round(rnd, {k: a.numpy() for k, a in arrays.items()}, record)
        log(INFO, "[fedprivacy] round %d/%d: global eval loss %.4f (ppl %.2f), %d clients, "
                  "%d dropped, %.1f s", rnd, self.cfg.rounds, server["eval_loss"],
            server["eval_ppl"], len(entry.clients), len(entry.dropped),
            record["durations"]["round_s"])
        return MetricRecord(server)

    def align_copy(self, arrays: ArrayRecord, rnd: int) -> dict:
        """The alignment stages on a copy of round ``rnd``'s global model (metrics only)."""
        model = adapters.merged(copy.deepcopy(self.global_model.load(arrays)))
        report = run_stages(model, self.global_model.tokenizer, self.cfg,
                            self.folder.path / "alignment" / f"round-{rnd}", self.eval_set)
        return summary_section(report)

    def finish(self, arrays: ArrayRecord) -> dict:
        """Save the final model (the adapter merged into the base, then each configured
        method's ``finish`` applied), then the aligned model (``aligned/``, when
        ``alignment.stages`` is set) and the summary."""
        model = adapters.merged(self.global_model.load(arrays))
        rounds = self.folder.rounds()
        for method in registry.configured(self.cfg):
            if method.finish is not None:
                method.finish(model, rounds)
        model.cpu().save_pretrained(self.folder.model_dir)
        tokenizer = self.global_model.tokenizer
        tokenizer.save_pretrained(self.folder.model_dir)
        failed = [int(r["round"]) for r in rounds if r.get("no_valid_reply")]
        extra: dict = {"rounds_without_valid_reply": failed}
        if self.cfg.alignment.stages:
            model.to(resolve_device(self.cfg.train.device))
            report = run_stages(model, tokenizer, self.cfg, self.folder.path / "alignment",
                                self.eval_set)
            save_aligned(model.cpu(), tokenizer, self.folder.path / "aligned")
            extra["alignment"] = summary_section(report)
            log(INFO, "[fedprivacy] aligned model (%s): %s", "+".join(self.cfg.alignment.stages),
                self.folder.path / "aligned")
        summary = summarize(self.cfg, rounds, self.started, extra=extra)
        self.folder.write_summary(summary)
        log(INFO, "[fedprivacy] run finished: %s", self.folder.path)
        return summary


SERVER_LOG = "server.log"  # the ServerApp's own log in the run folder


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The run; Flower's log lines of this process also go to ``<run>/server.log`` (in a
    deployment the run folder's only log: the SuperLink's output stays with the SuperLink)."""
    cfg = unflatten(dict(context.run_config))
    run = ServerRun(cfg, grid)
    handler = logging.FileHandler(run.folder.path / SERVER_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    FLOWER_LOGGER.addHandler(handler)
    try:
        run.run()
    except Exception:  # the traceback, also in the run folder (Flower logs it to its own)
        handler.stream.write(traceback.format_exc())
        raise
    finally:
        FLOWER_LOGGER.removeHandler(handler)
        handler.close()
