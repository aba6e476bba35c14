"""What every command shares: the consoles, exit codes, the global verbosity, turning library errors
into one line, and the options that mean the same thing everywhere (same name, same help)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console

from unlearnable.errors import UnlearnableError

console = Console(stderr=True)   # progress, notices, errors
out = Console()                  # results (tables)

EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class Verbosity:
    """Set once by the app's callback from ``-q``/``-v``: 0 quiet (results and errors only),
    1 normal (progress bars and a line per round/epoch), 2 verbose (also the library's log)."""

    level = 1


def set_verbosity(quiet: bool, verbose: int) -> None:
    Verbosity.level = 0 if quiet else 1 + min(verbose, 1)
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def user_errors(interrupted: str = "interrupted: rerun the same command to resume") -> Iterator[None]:
    """Library errors (bad input, missing data, unavailable device) become one red line and exit 2;
    Ctrl-C becomes one line saying how to resume and exit 130."""
    try:
        yield
    except UnlearnableError as e:
        console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        console.print(interrupted, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


@contextmanager
def exit_on(kind: type, code: int) -> Iterator[None]:
    """Library errors of ``kind`` (e.g. an output folder that cannot be written): one line, exit ``code``."""
    try:
        yield
    except kind as e:
        for path, why in getattr(e, "failures", []):
            console.print(f"[red]failed[/] {path}: {why}", soft_wrap=True)
        console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(code) from None


def split(values: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [v.strip() for v in values.split(",") if v.strip()]


# Options that mean the same thing in every command.
EPS_HELP = "L∞ noise budget; ≥ 1 means /255 (8 = 8/255), < 1 is in [0, 1] pixel units"
DEVICE = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
SEED = typer.Option(0, "--seed", help="random seed (same seed, same machine: same outputs)")
DATA_ROOT: Optional[Path] = typer.Option(
    None, "--data-root", help="where datasets are (else $UNLEARNABLE_DATA_ROOT, else ~/.cache/unlearnable/data)")
