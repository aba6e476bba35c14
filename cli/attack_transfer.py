"""``unlearnable attack transfer``: PGD and the interaction-reduced attack (arXiv 2010.04055) made on
a surrogate model file and scored on victim model files (``unlearnable train -o``)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import DATA_ROOT, DEVICE, EPS_HELP, SEED, console, out as result_console, user_errors


def transfer_cmd(
    surrogate: Path = typer.Argument(..., help="the model the attacks are made on (OUT or OUT.pt of "
                                               "`unlearnable train -o OUT`)"),
    victim: List[Path] = typer.Option(..., "--victim", help="a model the examples are scored on (repeat the option "
                                                            "for several)"),
    dataset: str = typer.Option("cifar10", "--dataset", help="the test split of this dataset is attacked"),
    eps: float = typer.Option(16.0, "--eps", help=EPS_HELP),
    step_size: float = typer.Option(2.0, "--step-size", help="PGD step in /255 (2 = 2/255)"),
    steps: int = typer.Option(100, "--steps", help="PGD steps, the same for both attacks"),
    lam: float = typer.Option(1.0, "--lam", help="weight λ of the interaction penalty"),
    grid: int = typer.Option(16, "--grid", help="units per image side"),
    cells: int = typer.Option(32, "--cells", help="units in each sampled set"),
    samples: int = typer.Option(32, "--samples", help="sampled sets per step"),
    images: int = typer.Option(500, "--images", help="test images to attack (the first ones every model "
                                                     "classifies correctly)"),
    batch_size: int = typer.Option(50, "--batch-size", help="images attacked at once"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the result as JSON here"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Transfer attack: white-box and transfer success of PGD and of the interaction-reduced attack,
    side by side, with the measured interaction of both."""
    from unlearnable.attacks.interaction import TransferConfig
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.verify.transfer import transfer_from_files

    with user_errors():
        cfg = TransferConfig(eps=parse_epsilon(eps), alpha=step_size / 255, steps=steps, lam=lam, grid=grid,
                             cells=cells, samples=samples, images=images, batch_size=batch_size, seed=seed)
        result = transfer_from_files(surrogate, list(victim), dataset, cfg, out, data_root, device,
                                     on_phase=lambda p: console.print(f"attack: {p}"))
    names = list(result["victims"])
    table = Table(title=f"{result['attacked']} {dataset} test images, surrogate {result['surrogate']['arch']}, "
                        f"ε = {result['eps_255']:.3g}/255, {steps} steps")
    for col in ["attack", "white-box"] + [f"→ {n}" for n in names] + ["interaction Î"]:
        table.add_column(col)
    for name, rec in result["methods"].items():
        table.add_row(name, f"{rec['white_box_success']:.1%}",
                      *[f"{rec['transfer_success'][n]:.1%}" for n in names], f"{rec['interaction_mean']:.4f}")
    result_console.print(table)
    if out:
        console.print(f"saved {out}")
