"""``fewfedweight``: FewFedWeight (Dong et al., arXiv 2212.08354), a documented reconstruction.

The server generates pseudo data for each client's task with the global model, weights each
pseudo sample by an energy score, sends the samples with the train message, and aggregates the
client models with weights from their reported validation scores
(`fedprivacy.strategies.fewfedweight`, `fedprivacy.pseudo`, `fedprivacy.aggregation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedprivacy.methods.registry import Method, check, check_choice, register

# train config: the weighted pseudo samples (parallel lists)
PROMPTS_KEY = "pseudo-prompts"
COMPLETIONS_KEY = "pseudo-completions"
WEIGHTS_KEY = "pseudo-weights"
LOSS_WEIGHT_KEY = "pseudo-loss-weight"  # train config: λ of L + λ·L_w

# The names `fedprivacy.pseudo.SAMPLE_WEIGHTINGS` and `fedprivacy.aggregation.CLIENT_WEIGHTINGS`
# dispatch on (a unit test keeps them equal).
SAMPLE_WEIGHTING_NAMES = ("softmax", "uniform")
CLIENT_WEIGHTING_NAMES = ("softmax", "proportional", "uniform", "num_examples")


@dataclass
class FewFedWeightConfig:
    """FewFedWeight settings (``strategy.fewfedweight``); every default is this project's choice."""

    pseudo_count: int = field(default=32, metadata={
        "help": "pseudo samples generated per client task per round"})
    pseudo_start_round: int = field(default=2, metadata={
        "help": "first round with pseudo data (round 1's global model is the random init)"})
    pseudo_max_new_tokens: int = 12
    pseudo_temperature: float = 1.0
    pseudo_top_p: float = 0.95
    energy_temperature: float = field(default=1.0, metadata={
        "help": "T in E(x) = -T logsumexp(f(x)/T)"})
    sample_weighting: str = field(default="softmax", metadata={
        "help": f"one of {list(SAMPLE_WEIGHTING_NAMES)}"})
    sample_weight_temperature: float = 1.0
    sample_weight_floor: float = 0.0
    sample_top_k: int = field(default=0, metadata={"help": "0 = keep all"})
    client_weighting: str = field(default="softmax", metadata={
        "help": f"one of {list(CLIENT_WEIGHTING_NAMES)}"})
    client_weight_temperature: float = 0.5
    pseudo_loss_weight: float = field(default=0.5, metadata={
        "help": "λ: step loss = L(local batch) + λ L_w(pseudo batch)"})

    def validate(self) -> None:
        check_choice(self.sample_weighting, "sample_weighting", SAMPLE_WEIGHTING_NAMES)
        check_choice(self.client_weighting, "client_weighting", CLIENT_WEIGHTING_NAMES)
        check(self.pseudo_count >= 1, "pseudo_count", "must be >= 1", self.pseudo_count)
        check(self.pseudo_start_round >= 1, "pseudo_start_round", "must be >= 1",
              self.pseudo_start_round)
        check(self.pseudo_max_new_tokens >= 1, "pseudo_max_new_tokens", "must be >= 1",
              self.pseudo_max_new_tokens)
        check(self.pseudo_temperature > 0, "pseudo_temperature", "must be > 0",
              self.pseudo_temperature)
        check(0 < self.pseudo_top_p <= 1, "pseudo_top_p", "must be in (0, 1]", self.pseudo_top_p)
        for key in ("energy_temperature", "sample_weight_temperature",
                    "client_weight_temperature"):
            check(getattr(self, key) > 0, key, "must be > 0", getattr(self, key))
        check(self.sample_weight_floor >= 0, "sample_weight_floor", "must be >= 0",
              self.sample_weight_floor)
        check(self.sample_top_k >= 0, "sample_top_k", "must be >= 0", self.sample_top_k)
        check(self.pseudo_loss_weight >= 0, "pseudo_loss_weight", "must be >= 0",
              self.pseudo_loss_weight)


def pseudo_set(job: Any) -> tuple[dict[str, Any] | None, float]:
    """The weighted pseudo samples of the train message, encoded (or None), and their λ."""
    import torch

    from fedprivacy.data.encoding import encode_records
    from fedprivacy.pseudo import pseudo_from_config

    triples = pseudo_from_config(job.config)
    if not triples:
        return None, 0.0
    records = [{"prompt": p, "completion": c, "task": "pseudo", "private_spans": []}
               for p, c, _ in triples]
    encoded = encode_records(job.res.tokenizer, records, job.cfg.data.max_length,
                             on_overflow="truncate")
    encoded["weight"] = torch.tensor([w for _, _, w in triples], dtype=torch.float32)
    return encoded, float(job.config.get(LOSS_WEIGHT_KEY, 0.0))


METHOD = register(Method(
    name="fewfedweight", kind="strategy",
    help="FewFedWeight: energy-weighted pseudo data from the global model, adaptive weights",
    settings=FewFedWeightConfig, server="fedprivacy.strategies.fewfedweight:build",
    wire_keys=(PROMPTS_KEY, COMPLETIONS_KEY, WEIGHTS_KEY, LOSS_WEIGHT_KEY)))
