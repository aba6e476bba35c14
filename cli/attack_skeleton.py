"""``unlearnable attack skeleton``: the adversarial interaction attack (arXiv 2101.06704) on a
reaction model over SBU / K3HI actor -> reactor skeletons; figures as JSON and a short table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import DATA_ROOT, DEVICE, SEED, Verbosity, console, out, split, user_errors


def skeleton_cmd(
    dataset: str = typer.Argument(..., help="sbu or k3hi (DATA_ROOT/skeleton-interaction/<name>_actor_reactor.npz), "
                                            "or the path of such an .npz"),
    eps: str = typer.Option("0.02", "--eps", help="per-joint displacement bound(s), comma-separated, in the data's "
                            "units (normalised Kinect coordinates; a forearm is about 0.1)"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="per-joint step per iteration (default ε/4)"),
    steps: int = typer.Option(50, "--steps", help="attack iterations"),
    smooth_weight: float = typer.Option(1.0, "--smooth-weight", help="weight of the acceleration-change penalty"),
    targeted: bool = typer.Option(True, "--targeted/--no-targeted", help="also steer every test sequence towards "
                                  "every other class's mean reaction"),
    model: Optional[Path] = typer.Option(None, "--model", help="a reaction model saved by --save-model (else one is "
                                         "trained on the train split)"),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="save the trained model as OUT.pt + "
                                              "OUT.json (existing files are never replaced)"),
    epochs: int = typer.Option(60, "--epochs", help="reaction model training epochs"),
    hidden: int = typer.Option(64, "--hidden", help="reaction model GRU width"),
    json_out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the figures as JSON (an existing file "
                                            "is never replaced)"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Attack a skeleton reaction model (actor -> reactor): reaction error clean vs attacked vs random
    noise of the same size, constraint figures and targeted success."""
    from unlearnable.data.storage import write_atomic
    from unlearnable.errors import UnlearnableError
    from unlearnable.skeleton.evaluate import SkeletonAttackConfig, run_skeleton_attack
    from unlearnable.skeleton.reaction import ReactionConfig

    with user_errors():
        try:
            bounds = [float(e) for e in split(eps)]
        except ValueError:
            raise UnlearnableError(f"--eps takes numbers separated by commas, got {eps!r}") from None
        if json_out and (json_out.exists() or json_out.is_symlink()):
            raise UnlearnableError(f"{json_out} already exists: choose another -o/--out or remove it")
        attack = SkeletonAttackConfig(eps=bounds, alpha=alpha, steps=steps, smooth_weight=smooth_weight,
                                      targeted=targeted, seed=seed)
        reaction = ReactionConfig(epochs=epochs, hidden=hidden, seed=seed)
        result = run_skeleton_attack(dataset, str(data_root) if data_root else None, str(model) if model else None,
                                     str(save_model) if save_model else None, reaction, attack, device,
                                     log=(lambda m: console.print(m, soft_wrap=True)) if Verbosity.level else None)
        if json_out:
            write_atomic(json_out, json.dumps(result, indent=2).encode(), may_replace=lambda p: False)
    clean = result["clean"]
    out.print(f"{result['dataset']}: {result['test_sequences']} test sequences; MPJPE clean {clean['model']:.4f} "
              f"(zero motion {clean['zero_motion']:.4f}, mean pose {clean['mean_pose']:.4f})")
    out.print(f"{'eps':>7} {'random':>8} {'attacked':>9} {'reach':>6} {'max disp':>9} {'max bone Δ':>11} "
              f"{'mean acc Δ':>11}")
    for row in result["by_eps"]:
        reach = f"{row['targeted']['reach_rate']['attacked']:.2f}" if "targeted" in row else "-"
        c = row["untargeted"]["constraints"]
        out.print(f"{row['eps']:>7g} {row['random']['mpjpe']:>8.4f} {row['untargeted']['mpjpe']:>9.4f} {reach:>6} "
                  f"{c['max_displacement']:>9.4f} {c['max_bone_length_change']:>11.1e} "
                  f"{c['mean_acceleration_change']:>11.4f}")
    if json_out:
        console.print(f"[green]wrote[/] {json_out}")
