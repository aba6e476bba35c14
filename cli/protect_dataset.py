"""``unlearnable protect-dataset``: a whole labelled dataset, in batch, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DATA_ROOT, DEVICE, EPS_HELP, EXIT_SOME_FAILED, SEED, console, exit_on, user_errors
from .progress import Reporter


def protect_dataset_cmd(
    dataset: str = typer.Argument(..., help="cifar10, cifar100, fashion-mnist, svhn, or an ImageFolder path"),
    out: Path = typer.Option(..., "-o", "--out", help="output folder; rerun the same command to resume"),
    mode: str = typer.Option("samplewise", "--mode", help="samplewise (one δ per image, the paper's main setting) "
                                                          "or classwise (one δ per class)"),
    arch: str = typer.Option("resnet18", "--arch", help="surrogate architecture (see `unlearnable models`)"),
    eps: float = typer.Option(8.0, "--eps", help=EPS_HELP),
    subset: Optional[int] = typer.Option(None, "--subset", help="protect a class-balanced subset of this many images"),
    steps: Optional[int] = typer.Option(None, "--steps", help="PGD steps per round (default 20 samplewise, "
                                        "1 classwise: the paper's)"),
    step_size: float = typer.Option(0.8, "--step-size", help="PGD step size in /255 units (paper: 0.8)"),
    train_steps: int = typer.Option(10, "--train-steps", help="surrogate SGD steps per round (paper: 10)"),
    batch_size: int = typer.Option(512, "--batch-size", help="batch size of surrogate steps and PGD (paper: 512)"),
    stop_accuracy: Optional[float] = typer.Option(
        None, "--stop-accuracy", help="stop once the surrogate classifies this share of the perturbed data right, "
        "in (0, 1] (default 0.99, error 0.01 as in the paper's experiment scripts; its README's class-wise command "
        "uses 0.9)"),
    max_rounds: int = typer.Option(200, "--max-rounds", help="min-min round cap"),
    classwise_portion: float = typer.Option(0.2, "--classwise-portion", help="classwise: stratified share of each "
                                            "class the noise is updated and tested on (paper: 0.2); the surrogate "
                                            "trains on all"),
    work_size: Optional[int] = typer.Option(None, "--work-size", min=1, help="ImageFolder: side in pixels the noise "
                                            "is searched at (default: the images' size if they all share one, else "
                                            "64; then upsampled to each image's size)"),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="ImageFolder: quality of JPEG/lossy WebP "
                                "outputs (≥ 90 keeps 4:4:4 chroma)"),
    robust_radius: Optional[float] = typer.Option(
        None, "--robust-radius", help="robust error-minimizing noise (REM, arXiv 2203.14533) against adversarial "
        "training up to this radius in /255 units (paper: 4 with --steps 10 --step-size 1.6 --batch-size 128); "
        "each noise step costs about 55 plain ones (5 crop/flip samples × an 11-pass inner attack)"),
    defense_aware: Optional[str] = typer.Option(
        None, "--defense-aware", help="search through random views of the trainer's defenses: 'all' or a comma "
        "list of standard, grayscale, jpeg (quality 10-50), cutout, resize, mixup, cutmix (after crop + flip)"),
    warm_start: int = typer.Option(
        0, "--warm-start", min=0, help="with --defense-aware: plain error-minimizing noise first, for at most this "
        "many rounds (or until it passes its stop test), then the views from that noise and surrogate (0: off; "
        "--max-rounds caps both together)"),
    structure: Optional[str] = typer.Option(
        None, "--structure", help="keep the noise structured: luminance (same in R, G, B: grayscale keeps it), "
        "lowpass (4 × 4 blocks; lowpass-K for K × K: JPEG keeps it), tile (a periodic 8 × 8 texture; tile-T), "
        "balanced (no colour cast: gray-world white balance would remove one), or several joined by '+' "
        "(luminance+tile-8+lowpass-2)"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Protect a whole labelled dataset with error-minimizing noise (batch, resumable). An ImageFolder
    is written back under OUT/train/ with the same relative paths, names and formats. Exit code 0:
    done; 1: some images could not be written (listed; rerun to retry); 2: usage error; 130:
    interrupted (rerun the same command to resume)."""
    from unlearnable.distributed import is_writer
    from unlearnable.errors import UnlearnableError
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.noise.defense_views import DefenseViewConfig
    from unlearnable.noise.minmin import MinMinConfig
    from unlearnable.noise.robust import RobustSettings
    from unlearnable.protect.dataset import OutputError, WriteFailures, protect_dataset

    with user_errors(f"interrupted: rerun the same command to resume (finished rounds and images in {out} are "
                     "kept)"), exit_on((WriteFailures, OutputError), EXIT_SOME_FAILED):
        cfg = MinMinConfig(mode=mode, eps=parse_epsilon(eps), step_size=step_size / 255, steps=steps,
                           train_steps=train_steps, batch_size=batch_size, stop_accuracy=stop_accuracy,
                           max_rounds=max_rounds, classwise_portion=classwise_portion, seed=seed,
                           robust=None if robust_radius is None else RobustSettings(radius=robust_radius / 255),
                           structure=structure)
        if warm_start and defense_aware is None:
            raise UnlearnableError("--warm-start needs --defense-aware (it warms the defense-aware search)")
        views = None if defense_aware is None else DefenseViewConfig.parse(defense_aware, warm_start=warm_start)
        with Reporter("round 1") as on_event:
            manifest = protect_dataset(dataset, out, cfg, arch, subset, data_root, device, on_event=on_event,
                                       work_size=work_size, quality=quality, defense_aware=views)
    if not is_writer():                 # torchrun: rank 0 alone reports
        return
    status = "converged" if manifest["converged"] else f"stopped at the {max_rounds}-round cap"
    if manifest.get("views_from_round"):
        status += f", defense views from round {manifest['views_from_round']}"
    console.print(f"[green]protected[/] {manifest['num_images']} images -> {out} "
                  f"({manifest['mode']}, ε={manifest['eps_255']:.3g}/255, {manifest['rounds']} rounds, {status}, "
                  f"surrogate acc {manifest['final_surrogate_acc']:.2%}, noise max |Δ| = {manifest['linf_levels']}/255)")
    w = manifest.get("written")
    if w:
        lossy = (f"; {w['lossy_files']} lossy (JPEG/WebP) files change by up to {w['lossy_max_change_255']}/255 "
                 "after encoding" if w["lossy_files"] else "")
        psnr = f", PSNR ≥ {w['min_psnr']:.1f} dB" if w.get("min_psnr") is not None else ""
        console.print(f"written files, decoded again: max |Δ| {w['max_change_255']}/255{psnr}{lossy}"
                      f" (per file in {out / 'protected.json'})")
    if manifest.get("skipped_files"):
        console.print(f"skipped {len(manifest['skipped_files'])} non-image files (listed in the manifest)")
