"""A terminal progress bar over rounds, fed by the run folder's ``metrics.jsonl``."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedprivacy.report import RunFolder


class RoundProgress:
    """Shows rounds done and the latest global eval loss while a run is going."""

    def __init__(self, folder: RunFolder, rounds: int, enabled: bool = True) -> None:
        self.folder, self.rounds = folder, rounds
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                 TimeElapsedColumn(), disable=not enabled)
        self.task = self.progress.add_task("rounds", total=rounds, status="starting Flower")

    def __enter__(self) -> RoundProgress:
        self.progress.start()
        return self

    def update(self) -> None:
        done = [r for r in self.folder.rounds() if r.get("server")]
        if not done:
            return
        last = done[-1]
        status = (f"global eval loss {last['server']['eval_loss']:.4f}, "
                  f"{len(last.get('clients', {}))} clients, {len(last.get('dropped', []))} dropped")
        self.progress.update(self.task, completed=int(last["round"]), status=status)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()
