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


def alpha_curve(curve: list[dict[str, Any]], measure: str, title: str, path: Path,
                series: list[str] | None = None) -> None:
    """The concept's measure (``<series><measure>``) and the neutral perplexity against α:
    ConTrans / Self-Align / random by default, or one line per language prefix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = series or ["contrans_", "self_", "random_"]
    alphas = [row["alpha"] for row in curve]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for prefix in series:
        top.plot(alphas, [r[f"{prefix}{measure}"] for r in curve], marker="o",
                 label=prefix.rstrip("_"))
        bottom.plot(alphas, [r[f"{prefix}perplexity"] for r in curve], marker="s",
                    label=prefix.rstrip("_"))
    top.set_ylabel(measure)
    bottom.set_ylabel("neutral perplexity (log)")
    bottom.set_yscale("log")
    bottom.set_xlabel("α (steering strength)")
    top.set_title(title, fontsize=10)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def heatmap(values: Any, rows: list[str], columns: list[str], title: str, xlabel: str,
            path: Path, centred: bool = False) -> None:
    """A labelled matrix (rows × columns) with its values written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(columns) + 2), 0.5 * len(rows) + 2))
    limit = float(abs(values).max()) or 1.0
    image = ax.imshow(values, cmap="RdBu" if centred else "viridis",
                      vmin=-limit if centred else None, vmax=limit if centred else None)
    ax.set_xticks(range(len(columns)), columns, fontsize=7)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    if len(columns) <= 8:
        for i in range(len(rows)):
            for j in range(len(columns)):
                ax.text(j, i, f"{values[i][j]:.2f}", ha="center", va="center", fontsize=8,
                        color="w")
    fig.colorbar(image, ax=ax)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
