"""The ``fedprivacy`` command: run, resume, sweep, and inspect configs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprivacy.config import ConfigError, ExperimentConfig, flatten, load_config, to_yaml
from fedprivacy.report import flatten_dict

console = Console()


def _summary_table(summary: dict) -> Table:
    table = Table(title=f"run {summary.get('name', '')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in flatten_dict(summary).items():
        if key.startswith(("initial.", "final.", "privacy.", "clients_final.")) or key in (
                "rounds", "wall_s", "dropped_replies", "strategy", "client_steps"):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


def cmd_run(args: argparse.Namespace) -> int:
    from simulations.runner import run_experiment

    if args.resume:
        run_dir = Path(args.resume)
        cfg = load_config(run_dir / "config.yaml", args.overrides + [f"out_dir={run_dir}"])
    else:
        overrides = args.overrides + ([f"out_dir={args.out}"] if args.out else [])
        cfg = load_config(args.config, overrides)
    folder = run_experiment(cfg, progress=not args.no_progress)
    console.print(_summary_table(folder.summary()))
    console.print(f"run folder: {folder.path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from simulations.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    console.print(f"sweep {sweep.name}: {len(sweep.runs)} runs of {sweep.base}")
    root = run_sweep(sweep, args.out, progress=not args.no_progress)
    console.print((root / "results.md").read_text())
    console.print(f"sweep folder: {root}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg: ExperimentConfig = load_config(args.config, args.overrides)
    if args.toml:
        from simulations.runner import toml_value

        for key, value in flatten(cfg).items():
            print(f"{key} = {toml_value(value)}")
    else:
        console.print(to_yaml(cfg), markup=False, highlight=False)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedprivacy", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a Flower simulation of a config")
    run.add_argument("config", nargs="?", help="YAML config (default: the embedded quickstart)")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rounds=5")
    run.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="resume a killed run from its folder")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(fn=cmd_run)
    sweep = sub.add_parser("sweep", help="run every run of a sweep file and compare them")
    sweep.add_argument("sweep")
    sweep.add_argument("--out", help="sweep folder (default runs/sweep-<name>-<time>)")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.set_defaults(fn=cmd_sweep)
    config = sub.add_parser("config", help="print the resolved config")
    config.add_argument("config", nargs="?")
    config.add_argument("overrides", nargs="*")
    config.add_argument("--toml", action="store_true",
                        help="as Flower's flat run_config ([tool.flwr.app.config] lines)")
    config.set_defaults(fn=cmd_config)
    return p


def _split_config(args: argparse.Namespace) -> None:
    """``fedprivacy run rounds=2`` means the default config with an override."""
    if getattr(args, "config", None) and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _split_config(args)
    try:
        return args.fn(args)
    except ConfigError as err:
        console.print(f"[red]config error:[/red] {err}", highlight=False)
        return 2
    except (RuntimeError, ValueError) as err:  # the message names the key or file
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: resume with fedprivacy run --resume RUN_DIR[/yellow]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
