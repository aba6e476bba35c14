"""``unlearnable train`` (one model through a defense: the defenses on their own) and
``unlearnable train-surrogate`` (the recipe of the embedded default surrogate)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DATA_ROOT, DEVICE, SEED, console, user_errors
from .progress import Reporter


def train_cmd(
    dataset: str = typer.Argument(..., help="cifar10, cifar100, fashion-mnist, svhn, an ImageFolder path, "
                                            "or a protect-dataset folder"),
    defense: str = typer.Option("standard", "--defense", help="standard, at, awp, cas, apl, tcr, jpeg, jpeg-iss, "
                                "grayscale, grayworld, cutout, mixup or cutmix"),
    arch: str = typer.Option("resnet18", "--arch", help="architecture (see `unlearnable models`)"),
    epochs: int = typer.Option(60, "--epochs", help="training epochs"),
    batch_size: int = typer.Option(128, "--batch-size", help="training batch size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="default 0.1, or the defense's paper recipe (apl: 0.01)"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="default 5e-4, or the defense's "
                                                 "paper recipe (apl: 1e-4)"),
    val_share: float = typer.Option(0.1, "--val-share", help="share of each class held out to choose the epoch "
                                    "(0: last epoch)"),
    subset: Optional[int] = typer.Option(None, "--subset", help="train on a class-balanced subset of this many "
                                         "images"),
    label_noise: float = typer.Option(0.0, "--label-noise", help="share of training labels to corrupt (e.g. 0.4)"),
    noise_kind: str = typer.Option("symmetric", "--noise-kind", help="symmetric (the label always changes) or "
                                   "asymmetric (CIFAR-10 class pairs)"),
    at_steps: int = typer.Option(10, "--at-steps", help="PGD steps when training at/awp/cas (8/255, step 2/255)"),
    robust_images: int = typer.Option(1000, "--robust-images", help="clean test images for the robust-accuracy "
                                      "readout (0: skip; its attack settings are printed with the result)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the weights (OUT.pt) and the record "
                                       "(OUT.json); existing files are never replaced"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Train one model through a defense (on clean, label-noisy or protected data) and report its
    clean and PGD robust test accuracy: the defenses used on their own."""
    from unlearnable.train.defenses import parse_defenses
    from unlearnable.train.loop import TrainConfig
    from unlearnable.train.weights import ensure_new, save_trained
    from unlearnable.verify.matrix import PAPER_RECIPES, MatrixConfig, robust_label, train_defended

    with user_errors():
        given = {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None}
        name = parse_defenses([defense])[0]
        recipe = {k: v for k, v in PAPER_RECIPES.get(name, {}).items() if k not in given}   # what you type wins
        cfg = MatrixConfig(archs=[arch], defenses=[name], patterns_for=["none"], at_steps=at_steps,
                           robust_images=robust_images, val_share=val_share, recipes={name: recipe} if recipe else {},
                           train=TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, **given))
        if out:
            ensure_new(out)    # refuse before training, not after
        with Reporter(f"{arch} · {defense}") as on_event:
            rec, model = train_defended(dataset, defense, arch, cfg, subset, label_noise, noise_kind, device,
                                        data_root, on_event)
        robust = "" if rec.get("robust_acc") is None else \
            f"; robust accuracy {rec['robust_acc']:.2%} ({robust_label(cfg, rec['robust_eval']['images'])})"
        console.print(f"clean test accuracy {rec['chosen_test_acc']:.2%} at epoch {rec['chosen_epoch']} "
                      f"(chosen by {rec['chosen_by']}), {rec['final_test_acc']:.2%} at the last{robust}")
        if out:
            weights, record = save_trained(out, model, rec)
            console.print(f"saved {weights} and {record}")


def train_surrogate_cmd(
    dataset: str = typer.Option("cifar10", "--dataset", help="labelled dataset to pretrain on"),
    arch: str = typer.Option("smallcnn", "--arch", help="architecture (see `unlearnable models`)"),
    epochs: int = typer.Option(8, "--epochs", help="training epochs"),
    batch_size: int = typer.Option(128, "--batch-size", help="training batch size"),
    lr: float = typer.Option(0.1, "--lr", help="learning rate"),
    reference_per_class: int = typer.Option(50, "--reference-per-class", help="training images per class kept as "
                                            "the reference bank"),
    out: Path = typer.Option(Path("models/weights"), "-o", "--out", help="folder for the .pt, .reference.npz and "
                             "the model card"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Pretrain a surrogate and its reference bank: the recipe of the embedded default."""
    from unlearnable.train.loop import TrainConfig
    from unlearnable.train.surrogate import save_surrogate, train_surrogate

    with user_errors():
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        with Reporter("batches") as on_event:
            model, meta, reference = train_surrogate(dataset, arch, cfg, reference_per_class, data_root, device,
                                                     on_event)
        path = save_surrogate(out, model, meta, reference)
    console.print(f"[green]saved[/] {path} (test accuracy {meta['test_accuracy']:.2%}) and its model card")


def models_cmd() -> None:
    """List the registered architectures."""
    from unlearnable.models import list_models

    for name, desc in list_models().items():
        typer.echo(f"{name:16s} {desc}")
