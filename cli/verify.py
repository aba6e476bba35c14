"""``unlearnable verify`` (a protect-dataset output: victims × defenses) and ``unlearnable
verify-photos`` (a photo folder: the held-out experiment)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import DATA_ROOT, DEVICE, EPS_HELP, SEED, console, out as result_console, split, user_errors
from .progress import Reporter


def verify_cmd(
    protected: Path = typer.Argument(..., help="a folder written by protect-dataset"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="output folder for report.html, report.json and "
                                       "cells/ (default PROTECTED/verify; rerun the same command to resume)"),
    arch: str = typer.Option("resnet18", "--arch", help="victim architecture(s), comma-separated "
                             "(see `unlearnable models`), or a graph victim: dgc-pixels, dgc-surrogate "
                             "(a kNN graph over pixels or surrogate features, classified by DGC)"),
    defenses: str = typer.Option("standard", "--defenses", help="defenses to train through, comma-separated or "
                                 "'all': standard,at,awp,cas,apl,tcr,jpeg,jpeg-iss,grayscale,grayworld,cutout,mixup,"
                                 "cutmix"),
    epochs: int = typer.Option(60, "--epochs", help="training epochs per victim (the paper's 60)"),
    batch_size: int = typer.Option(128, "--batch-size", help="training batch size"),
    lr: float = typer.Option(0.1, "--lr", help="learning rate of the shared recipe"),
    clean: bool = typer.Option(True, "--clean/--no-clean", help="also train each victim on the same images "
                               "clean (the baseline every verdict compares with)"),
    patterns: str = typer.Option("standard", "--patterns", help="defenses whose models get class-wise patterns "
                                 "(comma-separated, 'all' or 'none')"),
    at_steps: int = typer.Option(10, "--at-steps", help="PGD steps when training at/awp/cas (8/255, step 2/255)"),
    robust_images: int = typer.Option(1000, "--robust-images", help="clean test images for the robust-accuracy "
                                      "readout (0: skip; its attack settings are printed with the results)"),
    val_share: float = typer.Option(0.1, "--val-share", help="share of each class's training images held out to "
                                    "choose each model's epoch (0: last epoch)"),
    paper_recipes: bool = typer.Option(True, "--paper-recipes/--shared-recipe", help="train apl/at/awp with their "
                                       "papers' recipes (--shared-recipe: everything with --lr and the defaults)"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Check a dataset protection by training fresh victims: a matrix of victims × defenses, each
    trained on the protected and on the clean images; clean test accuracy at the epoch chosen on a
    held-out validation split, robust accuracy and class-wise patterns, in report.html +
    report.json. For a folder of your own photos use `unlearnable verify-photos`."""
    from unlearnable.data.protected import MANIFEST
    from unlearnable.distributed import is_writer
    from unlearnable.errors import UnlearnableError
    from unlearnable.protect.dataset import CHECKPOINT
    from unlearnable.train.loop import TrainConfig
    from unlearnable.verify.matrix import REPORT_HTML, REPORT_JSON, MatrixConfig, verify_defenses

    with user_errors():
        if not (protected / MANIFEST).is_file():
            if (protected / CHECKPOINT).is_file():
                hint = " (its protection is unfinished: rerun the same protect-dataset command to finish it)"
            elif protected.is_dir() and any(protected.iterdir()):
                hint = " (for a folder of your photos, use `unlearnable verify-photos`)"
            else:
                hint = ""
            raise UnlearnableError(f"{protected} is not a protect-dataset output: it has no {MANIFEST}{hint}")
        out = out or protected / "verify"
        cfg = MatrixConfig(archs=split(arch), defenses=split(defenses),
                           train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
                           include_clean=clean, at_steps=at_steps, robust_images=robust_images,
                           patterns_for=split(patterns), val_share=val_share,
                           **({} if paper_recipes else {"recipes": {}}))
        with Reporter("models") as on_event:
            report = verify_defenses(protected, out, cfg, device, data_root, on_event)
    if not is_writer():                 # torchrun: rank 0 alone reports
        return
    table = Table(title=f"clean test accuracy of victims trained on {report['dataset']} "
                        f"({report['mode']}, ε={report['eps'] * 255:.3g}/255)")
    for col in ("victim", "defense", "clean (chosen epoch)", "protected (chosen epoch)", "protected final",
                "recovered vs same", "recovered vs standard", "verdict"):
        table.add_column(col)

    def pct(v) -> str:
        return "–" if v is None else f"{v:.1%}"

    def rec(v) -> str:
        return "–" if v is None else f"{v:.2f}"

    for r in report["summary"]:
        cl, pr = r.get("clean") or {}, r.get("protected") or {}
        table.add_row(r["arch"], r["defense"], pct(cl.get("chosen_test_acc")), pct(pr.get("chosen_test_acc")),
                      pct(pr.get("final_test_acc")), rec(r.get("recovered_vs_same")),
                      rec(r.get("recovered_vs_standard")), r.get("verdict") or "–")
    result_console.print(table)
    console.print(report["verdict_text"], soft_wrap=True)
    console.print(f"robust accuracy: {report['matrix']['robust']['label']}")
    console.print(f"report: {out / REPORT_HTML} and {out / REPORT_JSON}")


def verify_photos_cmd(
    folder: Path = typer.Argument(..., help="a folder of your photos, one subfolder per class (person, object)"),
    out: Path = typer.Option(..., "-o", "--out", help="output folder: protected copies, report.html, "
                             "verify-photos.json"),
    holdout: float = typer.Option(0.25, "--holdout", help="share of each class held out clean for testing"),
    reference: str = typer.Option("cifar10", "--reference", help="labelled dataset the victim also trains on"),
    reference_per_class: Optional[int] = typer.Option(None, "--reference-per-class", help="reference images per "
                                                      "class (default: as many as protected photos per class)"),
    exclude_class: Optional[str] = typer.Option(None, "--exclude-class", help="reference classes to drop, "
                                                "comma-separated"),
    arch: str = typer.Option("resnet18-narrow", "--arch", help="victim architecture (see `unlearnable models`)"),
    epochs: int = typer.Option(30, "--epochs", help="training epochs per victim"),
    batch_size: int = typer.Option(128, "--batch-size", help="training batch size"),
    lr: float = typer.Option(0.1, "--lr", help="learning rate"),
    size: int = typer.Option(32, "--size", help="the scraper's training resolution"),
    jpeg_quality: int = typer.Option(75, "--jpeg-quality", help="the scraper's JPEG re-encode quality (0: none)"),
    eps: float = typer.Option(8.0, "--eps", help=EPS_HELP),
    defense: str = typer.Option("standard", "--defense", help="how both victims train: a defense of `unlearnable "
                                "verify --defenses` (e.g. grayworld: the scraper white-balances every photo)"),
    faces: bool = typer.Option(False, "--faces", help="protect the faces (protect --faces) and scrape as a face "
                               "scraper does (detect, align); --reference is then a folder of other people's "
                               "aligned faces, one subfolder per person (train/ and test/ inside, or training only)"),
    protect_reference: Optional[str] = typer.Option(None, "--protect-reference", help="the reference the protection "
                                                    "searches against (protect --reference; default: the shipped "
                                                    "bank); with --faces, other people's faces, best kept apart "
                                                    "from --reference: you cannot know whom a scraper's model knows"),
    visibility_photos: int = typer.Option(20, "--visibility-photos", min=0, help="training photos whose written "
                                          "files are scored for visible colour change (S-CIELAB; about 9 s and "
                                          "2.7 GB for a 12-megapixel photo on a 2-core CPU; 0: none)"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Does protecting your photos stop a model from learning them? Holds some photos of each class
    out clean, protects the rest (as `unlearnable protect` does), trains two victims the way a
    scraper would (reference set + your photos, resized and re-encoded), one on the protected and
    one on the unprotected photos, and reports how many held-out photos each still recognises
    (report.html + verify-photos.json)."""
    from unlearnable.eval.summary import photo_verdict_text
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.protect.photos import PhotoProtectConfig, search_config
    from unlearnable.train.loop import TrainConfig
    from unlearnable.verify.photos import REPORT, REPORT_HTML, PhotoVerifyConfig, verify_photo_folder

    with user_errors():
        root = str(data_root) if data_root else None
        protect = PhotoProtectConfig(search=search_config(faces, eps=parse_epsilon(eps), seed=seed),
                                     faces=faces, reference=protect_reference, data_root=root, device=device)
        cfg = PhotoVerifyConfig(holdout=holdout, reference=reference, reference_per_class=reference_per_class,
                                exclude_classes=tuple(split(exclude_class or "")), size=size,
                                jpeg_quality=jpeg_quality or None, arch=arch,
                                train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
                                protect=protect, faces=faces, defense=defense, visibility_photos=visibility_photos,
                                seed=seed, data_root=root, device=device)
        with Reporter("preparing") as on_event:
            report = verify_photo_folder(folder, out, cfg, on_event)
    table = Table(title=f"{report['held_out_clean']} held-out clean photos of {folder}: "
                        f"share recognised as their own class (chance {report['chance_heldout_accuracy']:.1%})"
                        + ("" if defense == "standard" else f"; both victims trained through {report['defense']}"))
    for col in ("victim trained on", "held-out accuracy", "photo train acc", f"{reference} test acc"):
        table.add_column(col)
    for r in report["runs"]:
        table.add_row(r["trained_on"], f"{r['heldout_accuracy']:.1%}", f"{r['photo_train_accuracy']:.1%}",
                      f"{r['reference_test_accuracy']:.1%}")
    result_console.print(table)
    console.print(photo_verdict_text(report), soft_wrap=True)
    console.print(f"report: {out / REPORT_HTML} and {out / REPORT}")
