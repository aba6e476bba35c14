"""``unlearnable attack black-box``: a query-only probe of a model file (``unlearnable train -o``):
NP-Attack (arXiv 2009.11508) or the pixel-space NES baseline (arXiv 1804.08598) on its test images,
success rate and queries per success, as JSON and a short table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import DATA_ROOT, DEVICE, EPS_HELP, SEED, console, out as result_console, user_errors


def blackbox_cmd(
    model: Path = typer.Argument(..., help="the attacked model (OUT, OUT.pt or OUT.json of `unlearnable train -o OUT`);"
                                           " the attack only queries its outputs"),
    dataset: str = typer.Option("cifar10", "--dataset", help="the test split of this dataset is attacked"),
    method: str = typer.Option("np", "--method", help="np (NP-Attack) or nes (pixel-space NES baseline)"),
    np_file: Optional[Path] = typer.Option(None, "--np", help="a neural process file for --method np"),
    train_np: int = typer.Option(0, "--train-np", help="without --np: train a neural process for this many "
                                                       "steps on the training split"),
    np_out: Optional[Path] = typer.Option(None, "--np-out", help="save the NP trained with --train-np here "
                                                                 "(an existing file is refused)"),
    eps: float = typer.Option(8.0, "--eps", help=EPS_HELP),
    max_queries: int = typer.Option(2000, "--max-queries", help="query limit per image"),
    images: int = typer.Option(100, "--images", help="test images to attack (the first ones the model "
                                                     "classifies correctly)"),
    out: Path = typer.Option(..., "-o", "--out", help="write the result as JSON here"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Black-box attack: success rate and queries per success of NP-Attack or NES on a model file."""
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.verify.blackbox import probe_blackbox

    with user_errors():
        result = probe_blackbox(model, dataset, method, np_file, train_np, np_out, parse_epsilon(eps), max_queries,
                                images, seed, data_root, device, out=out)
    s, cfg = result["summary"], result["settings"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    table = Table(title=f"{method} on {cfg['arch']}, {dataset}, ε = {cfg['eps'] * 255:.3g}/255, "
                        f"≤ {max_queries} queries")
    for col in ("images", "success", "mean queries", "median queries"):
        table.add_column(col)
    table.add_row(str(s["images"]), fmt(s["success_rate"], ".1%"), fmt(s["mean_queries"], ".0f"),
                  fmt(s["median_queries"], ".0f"))
    result_console.print(table)
    console.print(f"saved {out}")
