"""Client-side evaluation of the global model on the client's held-out data."""

from __future__ import annotations

from fedprivacy import wire
from fedprivacy.clients.job import ClientJob
from fedprivacy.evaluation import evaluate_loss, perplexity, task_accuracy


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
        # here, not at the top: scipy's import is seconds of every deployment ClientApp start
        from fedprivacy.privacy.ledger import canary_leakage

        leak = canary_leakage(job.model, job.res.tokenizer, job.res.data.canaries,
                              cfg.evaluation.exposure, cfg.evaluation.exposure_samples, cfg.seed,
                              cfg.evaluation.exposure_max_candidates,
                              job.res.data.heldout_canaries)
        metrics.update({f"privacy.{k}": v for k, v in leak.items()})
    return metrics


def client_model_scores(job: ClientJob) -> dict[str, float]:
    """Scores of the client's own model after local training (higher is better).

    ``val_score``: validation accuracy (minus the validation loss for corpus data), which
    FewFedWeight's adaptive aggregation weighs clients by; ``test_score``: accuracy on the
    client's test split, the per-task score that sweeps compare.
    """
    data, cfg = job.res.data, job.cfg
    if data.task is None:
        loss, _ = evaluate_loss(job.model, job.res.val_set, cfg.train.eval_batch_size)
        return {wire.SCORE: -loss}
    score = lambda records: task_accuracy(job.model, job.res.tokenizer, data.task, records,  # noqa: E731
                                          cfg.train.eval_batch_size)
    return {wire.SCORE: score(data.validation), wire.TEST_SCORE: score(data.test)}
