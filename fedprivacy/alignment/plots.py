"""Plots of the alignment stage (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def beta_curve(curve: list[dict[str, Any]], label: str, path: Path) -> None:
    """Accuracy and stubbornness rate against β (dev and test) at the chosen h."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    betas = [row["beta"] for row in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("dev", "--"), ("test", "-")):
        ax.plot(betas, [100 * r[f"{split}_accuracy"] for r in curve], style, marker="o",
                color="tab:blue", label=f"accuracy ({split})")
        ax.plot(betas, [100 * r[f"{split}_stubbornness"] for r in curve], style, marker="s",
                color="tab:red", label=f"stubbornness ({split})")
    ax.set_xlabel("β (reweighting factor)")
    ax.set_ylabel("% of conflict items")
    ax.set_title(f"IRCAN, {label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
