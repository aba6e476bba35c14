"""The one renderer of the library's events (``unlearnable.events``) on the terminal: a transient
progress bar for phases, progress and models, one line per min-min round, training epoch, notice
and phase. Quiet (``-q``): nothing but notices."""
from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .common import Verbosity, console


def _pct(v) -> str:
    return "   –  " if v is None else f"{v:6.2%}"


class Reporter:
    """``with Reporter() as on_event: library_call(..., on_event=on_event)``."""

    def __init__(self, first: str = "starting") -> None:
        self.quiet = Verbosity.level == 0
        self.bar = None if self.quiet else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True)
        self.first = first
        self.model = ""

    def __enter__(self) -> "Reporter":
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(self.first, total=None)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def line(self, text: str) -> None:
        (self.bar.console if self.bar is not None else console).print(text, soft_wrap=True)

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "notice":
            self.line(info["message"])
        if self.quiet:
            return
        if kind == "phase":
            self.line(info["name"])
            self.bar.update(self.task, description=info["name"], completed=0, total=None)
        elif kind == "progress":
            where = f"{self.model} · " if self.model else ""
            self.bar.update(self.task, description=f"{where}{info['phase']}", completed=info["done"],
                            total=info["total"])
        elif kind == "round":
            self.line(f"round {info['round']:3d}  surrogate acc {_pct(info['surrogate_acc'])}  "
                      f"loss {info['surrogate_loss']:.4f}  ({info['seconds']:.1f}s)")
        elif kind == "model":
            self.model = f"[{info['index']}/{info['total']}] {info['key']}"
            self.line(f"{self.model}" + (": finished earlier, reused" if info["reused"] else ""))
        elif kind == "epoch":
            val = f"  val acc {_pct(info['val_acc'])}" if info.get("val_acc") is not None else ""
            self.line(f"  epoch {info['epoch']:3d}  train acc {_pct(info['train_acc'])}{val}  "
                      f"test acc {_pct(info.get('test_acc'))}  ({info['seconds']:.0f}s)")
