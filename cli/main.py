"""``unlearnable`` CLI. Each command parses options, builds a config, calls one library function
and renders the result; library errors become one red line and a non-zero exit."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from unlearnable.errors import UnlearnableError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Make images unlearnable with error-minimizing noise, and verify the protection.")
console = Console(stderr=True)
EXIT_USAGE = 2


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors (bad input, missing data) into one clear line and exit code 2."""
    try:
        yield
    except UnlearnableError as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(EXIT_USAGE)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _split(values: str) -> list[str]:
    return [v.strip() for v in values.split(",") if v.strip()]


@app.command("protect-dataset")
def protect_dataset_cmd(
    dataset: str = typer.Argument(..., help="cifar10, cifar100, fashion-mnist, svhn, or an ImageFolder path"),
    out: Path = typer.Option(..., "-o", "--out", help="output folder (resumable: rerun to continue)"),
    mode: str = typer.Option("samplewise", help="samplewise (one δ per image) or classwise (one δ per class)"),
    arch: str = typer.Option("resnet18", help="surrogate architecture (see `unlearnable models`)"),
    eps: float = typer.Option(8.0, help="L∞ budget; ≥ 1 means /255 (8 = 8/255), < 1 is in [0, 1] units"),
    subset: Optional[int] = typer.Option(None, help="protect a class-balanced subset of this many images"),
    steps: Optional[int] = typer.Option(None, help="PGD steps per round (default 20 samplewise, 1 classwise)"),
    step_size: float = typer.Option(0.8, help="PGD step size in /255 units (paper: 0.8)"),
    train_steps: int = typer.Option(10, help="surrogate SGD steps per round (paper: 10)"),
    batch_size: int = typer.Option(512, help="batch size for surrogate steps and PGD (paper: 512)"),
    stop_accuracy: Optional[float] = typer.Option(None, help="stop at this surrogate accuracy on perturbed data (default 0.99 / 0.90)"),
    max_rounds: int = typer.Option(200, help="give up after this many rounds"),
    seed: int = typer.Option(0),
    data_root: Optional[Path] = typer.Option(None, help="dataset root (else $UNLEARNABLE_DATA_ROOT or ~/.cache/unlearnable/data)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps"),
) -> None:
    """Protect a whole labelled dataset with error-minimizing noise (batch, resumable)."""
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.noise.error_minimizing import MinMinConfig
    from unlearnable.protect import protect_dataset

    with user_errors():
        cfg = MinMinConfig(mode=mode, eps=parse_epsilon(eps), step_size=step_size / 255, steps=steps,
                           train_steps=train_steps, batch_size=batch_size, stop_accuracy=stop_accuracy,
                           max_rounds=max_rounds, seed=seed)
        with _progress() as progress:
            task = progress.add_task("round 1", total=None)
            round_no = [1]

            def on_progress(phase: str, done: int, total: int) -> None:
                progress.update(task, completed=done, total=total,
                                description=f"round {round_no[0]} {phase}")

            def on_round(log) -> None:
                progress.console.print(f"round {log.round:3d}  surrogate acc on perturbed data "
                                       f"{log.surrogate_acc:6.2%}  loss {log.surrogate_loss:.4f}  ({log.seconds:.1f}s)")
                round_no[0] = log.round + 1

            manifest = protect_dataset(dataset, out, cfg, arch, subset, data_root, device,
                                       on_round=on_round, on_progress=on_progress)
    status = "converged" if manifest["converged"] else f"stopped at the {max_rounds}-round cap"
    console.print(f"[green]protected[/] {manifest['num_images']} images -> {out} "
                  f"({manifest['mode']}, ε={manifest['eps_255']:.3g}/255, {manifest['rounds']} rounds, {status}, "
                  f"surrogate acc {manifest['final_surrogate_acc']:.2%}, max |Δ| = {manifest['linf_levels']}/255)")


@app.command("verify")
def verify_cmd(
    protected: Path = typer.Argument(..., help="a folder written by protect-dataset"),
    arch: str = typer.Option("resnet18", help="victim architecture(s), comma-separated"),
    epochs: int = typer.Option(60, help="training epochs per victim (paper: 60)"),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1),
    clean: bool = typer.Option(True, help="also train the clean baseline on the same images"),
    seed: int = typer.Option(0),
    output: Optional[Path] = typer.Option(None, help="where to write the JSON (default PROTECTED/verify.json)"),
    data_root: Optional[Path] = typer.Option(None, help="where the clean dataset is (default: as recorded)"),
    device: str = typer.Option("auto"),
) -> None:
    """Train fresh victims on the protected data and on the clean data; report clean test accuracy."""
    from unlearnable.train.loop import TrainConfig
    from unlearnable.verify import REPORT, verify_protected

    with user_errors():
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        with _progress() as progress:
            ep_task = progress.add_task("epochs", total=epochs)
            b_task = progress.add_task("batches", total=None)

            def on_run(a: str, data: str) -> None:
                progress.reset(ep_task, total=epochs, description=f"{a} on {data}")

            def on_epoch(rec) -> None:
                progress.advance(ep_task)
                progress.console.print(f"  epoch {rec.epoch:3d}  train acc {rec.train_acc:6.2%}  "
                                       f"clean test acc {rec.test_acc:6.2%}")

            def on_batch(done: int, total: int) -> None:
                progress.update(b_task, completed=done, total=total)

            report = verify_protected(protected, _split(arch), cfg, device, data_root, clean, output,
                                      on_run=on_run, on_epoch=on_epoch, on_batch=on_batch)
    table = Table(title=f"clean test accuracy of victims trained on {report['dataset']} "
                        f"({report['mode']}, ε={report['eps'] * 255:.3g}/255)")
    for col in ("arch", "trained on", "final", "peak (epoch)", "train acc"):
        table.add_column(col)
    for r in report["runs"]:
        table.add_row(r["arch"], r["train_data"], f"{r['final_test_acc']:.2%}",
                      f"{r['peak_test_acc']:.2%} ({r['peak_epoch']})", f"{r['final_train_acc']:.2%}")
    Console().print(table)
    console.print(f"report: {output or protected / REPORT}")


@app.command("models")
def models_cmd() -> None:
    """List the registered architectures."""
    from unlearnable.models import list_models

    for name, desc in list_models().items():
        typer.echo(f"{name:16s} {desc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
