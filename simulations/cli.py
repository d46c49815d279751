"""The ``fedprivacy`` command: run, resume, sweep, align, track, and inspect configs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedprivacy.config import ConfigError, ExperimentConfig, flatten, load_config, to_yaml
from fedprivacy.report import alignment_rows, flatten_dict
from fedprivacy.simulations.errors import describe

console = Console()
DEBUG_ENV = "FEDPRIVACY_DEBUG"  # set (not 0) to see tracebacks, like --debug


def _summary_table(summary: dict) -> Table:
    table = Table(title=f"run {summary.get('name', '')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in flatten_dict(summary).items():
        if key.startswith(("initial.", "final.", "privacy.", "clients_final.")) or key in (
                "rounds", "wall_s", "dropped_replies", "strategy", "client_steps"):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


def _say(text: str, style: str = "") -> None:
    """One message, never wrapped (paths stay copyable) and never read as markup."""
    console.print(Text(text, style=style), soft_wrap=True)


def cmd_run(args: argparse.Namespace) -> int:
    from fedprivacy.simulations.runner import resolve_out_dir, run_experiment

    if args.resume:
        run_dir = Path(args.resume)
        cfg = load_config(run_dir / "config.yaml", args.overrides + [f"out_dir={run_dir}"])
    else:
        overrides = args.overrides + ([f"out_dir={args.out}"] if args.out else [])
        cfg = load_config(args.config, overrides)
    cfg = resolve_out_dir(cfg)  # the absolute folder, to name it if the run is interrupted
    try:
        folder = run_experiment(cfg, progress=not args.no_progress)
    except KeyboardInterrupt:
        if (Path(cfg.out_dir) / "config.yaml").is_file():
            _say(f"interrupted: resume with fedprivacy run --resume {cfg.out_dir}", "yellow")
        else:
            _say(f"interrupted before the run started (run folder {cfg.out_dir})", "yellow")
        return 130
    console.print(_summary_table(folder.summary()))
    _say(f"run folder: {folder.path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from fedprivacy.report import RunFolder
    from fedprivacy.simulations.deploy import submit_run

    cfg = load_config(args.config, args.overrides + ([f"out_dir={args.out}"] if args.out else []))
    done = submit_run(cfg, args.superlink, args.root_certificates, args.insecure)
    if not done.ok:
        what = f"run {done.run_id} {done.status}" if done.run_id else "no run was started"
        _say(f"error: {what}: {done.error}", "red")
        return 1
    folder = RunFolder(cfg.out_dir) if cfg.out_dir else None
    if folder is not None and (folder.path / "summary.json").is_file():  # this is its host
        console.print(_summary_table(folder.summary()))
    _say(f"run {done.run_id} finished; run folder (on the SuperLink's host): "
         f"{cfg.out_dir or 'runs/<name>-<time> under its working directory'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedprivacy.simulations.sweep import (
        load_sweep,
        merged_rows,
        only_seeds,
        run_sweep,
        sweep_root,
    )

    full = load_sweep(args.sweep)
    sweep = only_seeds(full, args.seeds) if args.seeds else full
    merged = merged_rows(args.merge, full, sweep)
    root = sweep_root(sweep, args.out)
    parallel = args.parallel if args.parallel is not None else (0 if args.ray else 1)
    at_once = f", {parallel} at a time" if parallel > 1 else ""
    where = f", as Ray tasks on {args.ray}" if args.ray else ""
    beside = f" (compared with {len(merged)} merged rows)" if merged else ""
    _say(f"sweep {sweep.name}: {len(sweep.runs)} runs of {sweep.base}{at_once}{where}{beside}")
    try:
        failed = run_sweep(sweep, root, not args.no_progress, parallel, args.ray, merged).failed
    except KeyboardInterrupt:
        _say(f"interrupted: go on with fedprivacy sweep {args.sweep} --out {root}", "yellow")
        return 130
    console.print((root / "results.md").read_text(), markup=False, highlight=False)
    _say(f"sweep folder: {root}")
    if failed:
        _say(f"error: {len(failed)} of {len(sweep.runs)} runs failed: "
             + "; ".join(f"{f['run_dir']}: {f['error']}" for f in failed), "red")
        return 1
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from fedprivacy.alignment.align import align

    folder = align(args.target, args.config, args.overrides, args.out,
                   progress=not args.no_progress)
    summary = json.loads((folder / "align_summary.json").read_text())
    table = Table(title=f"alignment of {args.target}")
    for column in ("stage", "metric", "before", "after"):
        table.add_column(column, justify="left" if column in ("stage", "metric") else "right")
    for stage, result in summary["alignment"].items():
        for key, before, after in alignment_rows(result):
            table.add_row(stage, key, f"{before:.4g}", f"{after:.4g}")
    console.print(table)
    _say(f"aligned model: {folder / 'aligned'}; reports: {folder / 'alignment'}")
    return 0


def cmd_credentials(args: argparse.Namespace) -> int:
    from fedprivacy.simulations.credentials import make_credentials

    creds = make_credentials(args.out, args.host, args.nodes)
    _say(f"CA certificate (give it to every SuperNode and flwr): {creds.ca_cert}")
    _say(f"SuperLink: --ssl-ca-certfile {creds.ca_cert} --ssl-certfile {creds.server_cert} "
         f"--ssl-keyfile {creds.server_key} (valid for {', '.join(args.host)})")
    for key in creds.node_keys:
        _say(f"SuperNode key: {key} (register {key}.pub with flwr supernode register)")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from fedprivacy.tracking import track_folder

    uri, run_ids = track_folder(Path(args.folder), args.uri or "", args.experiment or "")
    _say(f"logged {len(run_ids)} MLflow run(s) of {Path(args.folder).resolve()} to {uri}")
    _say(f"browse: mlflow ui --backend-store-uri {uri}  (pip install mlflow)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg: ExperimentConfig = load_config(args.config, args.overrides)
    if args.toml:
        from fedprivacy.simulations.runner import toml_value

        for key, value in flatten(cfg).items():
            print(f"{key} = {toml_value(value)}")
    else:
        console.print(to_yaml(cfg), markup=False, highlight=False)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """The registered methods, where their settings live, and each setting's default and help."""
    import dataclasses

    from fedprivacy.methods import registry

    table = Table(title="registered methods (client.pipeline / strategy.name)")
    for column in ("method", "kind", "settings", "help"):
        table.add_column(column)
    for method in registry.of_kind(*registry.KINDS).values():
        table.add_row(method.name, method.kind,
                      method.config_key if method.settings else "–", method.help)
        for f in dataclasses.fields(method.settings) if method.settings else ():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            table.add_row("", "", f"  .{f.name} = {default!r}", f.metadata.get("help", ""))
    console.print(table)
    return 0


def parser() -> argparse.ArgumentParser:
    debug_help = f"show the traceback of an error (also: {DEBUG_ENV}=1)"
    p = argparse.ArgumentParser(prog="fedprivacy", description=__doc__)
    p.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=debug_help)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a Flower simulation of a config", parents=[common])
    run.add_argument("config", nargs="?", help="YAML config (default: the embedded quickstart)")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rounds=5")
    run.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="resume a killed run from its folder")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(fn=cmd_run)
    submit = sub.add_parser("submit", parents=[common],
                            help="run a config on a deployment (a running SuperLink and its "
                                 "SuperNodes) and report its real outcome")
    submit.add_argument("config", nargs="?", help="YAML config (default: the embedded quickstart)")
    submit.add_argument("overrides", nargs="*", help="key=value overrides")
    submit.add_argument("--superlink", required=True, metavar="HOST:PORT")
    submit.add_argument("--root-certificates", metavar="CA_CRT",
                        help="the CA certificate of the SuperLink's TLS (fedprivacy credentials)")
    submit.add_argument("--insecure", action="store_true", help="no TLS (loopback tests only)")
    submit.add_argument("--out", help="run folder, an absolute path on the SuperLink's host")
    submit.set_defaults(fn=cmd_submit)
    sweep = sub.add_parser("sweep", help="run every run of a sweep file and compare them",
                           parents=[common])
    sweep.add_argument("sweep")
    sweep.add_argument("--out", help="sweep folder (default runs/sweep-<name>-<time>)")
    sweep.add_argument("--parallel", type=int, metavar="N",
                       help="run up to N runs at once (default 1, with --ray 0: as many as "
                            "the cluster fits; per-run progress is off)")
    sweep.add_argument("--ray", default="", metavar="ADDRESS",
                       help="run each run as a task on this existing Ray cluster "
                            "('auto' or HOST:PORT)")
    sweep.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                       help="run only these of the sweep's seeds")
    sweep.add_argument("--merge", action="append", default=[], metavar="RESULTS_CSV",
                       help="compare with the rows of another results.csv of this sweep file "
                            "(other seeds, run elsewhere); repeatable")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.set_defaults(fn=cmd_sweep)
    align = sub.add_parser("align", parents=[common],
                           help="apply the alignment stages (alignment.stages, default ircan) "
                                "to a run folder, a save_pretrained folder or smollm2")
    align.add_argument("target", help="MODEL_OR_RUN_DIR: a finished run folder, a "
                                      "save_pretrained folder, or smollm2")
    align.add_argument("config", nargs="?", help="YAML config layered on the run's (optional)")
    align.add_argument("overrides", nargs="*", help="key=value overrides, e.g. "
                                                    "alignment.ircan.h_grid=[4,8]")
    align.add_argument("--out", help="output folder (default: the run folder, else "
                                     "runs/align-<name>-<time>)")
    align.add_argument("--no-progress", action="store_true")
    align.set_defaults(fn=cmd_align)
    track = sub.add_parser("track", parents=[common],
                           help="log a finished run or sweep folder to MLflow (its runs nested)")
    track.add_argument("folder", help="RUN_OR_SWEEP_DIR")
    track.add_argument("--uri", help="tracking URI (default: its tracking.uri, else a local "
                                     "store in FOLDER/mlruns)")
    track.add_argument("--experiment", help="MLflow experiment (default: its "
                                            "tracking.experiment, else its name)")
    track.set_defaults(fn=cmd_track)
    creds = sub.add_parser("credentials", parents=[common],
                           help="TLS certificates and SuperNode keys for a deployment")
    creds.add_argument("out", help="folder (certificates/ and keys/ go there)")
    creds.add_argument("--host", action="append", required=True,
                       help="a name or IP address the SuperLink is reached by (repeat)")
    creds.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs (default 2)")
    creds.set_defaults(fn=cmd_credentials)
    config = sub.add_parser("config", help="print the resolved config", parents=[common])
    config.add_argument("config", nargs="?")
    config.add_argument("overrides", nargs="*")
    config.add_argument("--toml", action="store_true",
                        help="as Flower's flat run_config ([tool.flwr.app.config] lines)")
    config.set_defaults(fn=cmd_config)
    methods = sub.add_parser("methods", help="list the registered methods and their settings",
                             parents=[common])
    methods.set_defaults(fn=cmd_methods)
    return p


def _split_config(args: argparse.Namespace) -> None:
    """``fedprivacy run rounds=2`` means the default config with an override."""
    if getattr(args, "config", None) and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; ``key=value`` overrides may also come after the options
    (``fedprivacy run cfg.yaml --no-progress rounds=2``), which plain argparse refuses."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        p.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides.extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _split_config(args)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return args.fn(args)
    except ConfigError as err:
        if debug:
            raise
        _say(f"config error: {describe(err)}", "red")
        return 2
    except KeyboardInterrupt:
        _say("interrupted", "yellow")
        return 130
    except Exception as err:  # any other error: one line, the traceback only with --debug
        if debug:
            raise
        _say(f"error: {describe(err)}", "red")
        return 1


if __name__ == "__main__":
    sys.exit(main())
