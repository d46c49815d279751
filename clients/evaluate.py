"""Client-side evaluation of the global model on the client's held-out data."""

from __future__ import annotations

from clients.job import ClientJob
from fedprivacy.evaluation import evaluate_loss, perplexity, task_accuracy
from fedprivacy.privacy.ledger import canary_leakage


def evaluate_job(job: ClientJob) -> dict[str, float]:
    """Validation loss/perplexity, and task accuracy when the client has a task."""
    cfg = job.cfg
    loss, _ = evaluate_loss(job.model, job.res.val_set, cfg.train.eval_batch_size)
    metrics = {"eval_loss": loss, "eval_ppl": perplexity(loss)}
    task = job.res.data.task
    if task is not None:
        metrics["accuracy"] = task_accuracy(job.model, job.res.tokenizer, task,
                                            job.res.data.validation, cfg.train.eval_batch_size)
    if cfg.evaluation.privacy and job.res.data.canaries:
        leak = canary_leakage(job.model, job.res.tokenizer, job.res.data.canaries,
                              cfg.evaluation.exposure, cfg.evaluation.exposure_samples, cfg.seed)
        metrics.update({f"privacy.{k}": v for k, v in leak.items()})
    return metrics


def validation_score(job: ClientJob) -> float:
    """Higher is better: task accuracy, or minus the validation loss for corpus data."""
    metrics = evaluate_job(job)
    return metrics.get("accuracy", -metrics["eval_loss"])
