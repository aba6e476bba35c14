"""``unlearnable`` CLI. Each command parses options, builds a config, calls one library function
and renders the result; library errors become one red line and a non-zero exit."""
from __future__ import annotations

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


EXIT_SOME_FAILED = 1


@app.command("protect")
def protect_cmd(
    inputs: list[Path] = typer.Argument(..., help="photo files and/or folders (walked recursively)"),
    out: Path = typer.Option(..., "-o", "--out", help="output folder (not inside an input, no input inside it); "
                                                      "rerun to resume"),
    eps: float = typer.Option(8.0, help="L∞ budget; ≥ 1 means /255 (8 = 8/255), < 1 is in [0, 1] units"),
    mode: str = typer.Option("classwise", help="classwise (one pattern per class; measured stronger on photos) "
                                               "or samplewise (noise per photo)"),
    label_free: bool = typer.Option(False, "--label-free", help="unlabeled mixed collection: classes by clustering"),
    clusters: Optional[int] = typer.Option(None, help="number of pseudo-classes with --label-free (≥ 1)"),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG/WebP quality of the outputs"),
    keep_gps: bool = typer.Option(False, "--keep-gps", help="keep GPS location in EXIF (removed by default)"),
    rounds: int = typer.Option(20, help="min-min round cap"),
    pgd_steps: int = typer.Option(10, help="PGD steps per round"),
    work_size: int = typer.Option(64, help="resolution the noise is searched at (then upsampled; ≥ 1)"),
    surrogate: str = typer.Option("smallcnn-cifar10", help="shipped surrogate name or a .pt from train-surrogate"),
    reference: Optional[str] = typer.Option(None, help="reference dataset (default: the surrogate's shipped bank)"),
    max_megapixels: float = typer.Option(150.0, help="refuse larger images (decompression-bomb guard; > 0)"),
    workers: int = typer.Option(2, help="threads for decoding and encoding photos"),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="measure PSNR/SSIM of every written file "
                                                                     "(--no-metrics: skip, faster on big photos)"),
    seed: int = typer.Option(0),
    data_root: Optional[Path] = typer.Option(None),
    device: str = typer.Option("auto", help="auto, cpu, cuda, mps"),
) -> None:
    """Protect your photos: same files, formats and sizes under OUT, with bounded error-minimizing noise.
    Files in OUT that unlearnable did not write are never replaced. Exit code 0: all photos protected;
    1: some photos or folders failed, or OUT could not be written (listed); 2: usage error, nothing done;
    130: interrupted (rerun the same command to resume)."""
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.data.photos.io import OutputError
    from unlearnable.protect.photos import MANIFEST, PhotoProtectConfig, protect_photos
    from unlearnable.noise.minmin import MinMinConfig

    with user_errors(), _resumable_interrupt(), _exit_on(OutputError, EXIT_SOME_FAILED):
        search = MinMinConfig.for_photos(mode=mode, eps=parse_epsilon(eps), max_rounds=rounds, steps=pgd_steps,
                                          seed=seed)
        cfg = PhotoProtectConfig(search=search, work_size=work_size, label_free=label_free, clusters=clusters,
                                 surrogate=surrogate, reference=reference, quality=quality, keep_gps=keep_gps,
                                 max_megapixels=max_megapixels, workers=workers, metrics=metrics,
                                 data_root=str(data_root) if data_root else None, device=device)
        with _progress() as progress:
            task = progress.add_task("reading photos", total=None)

            def on_event(kind: str, info: dict) -> None:
                if kind == "notice":
                    progress.console.print(info["message"], soft_wrap=True)
                elif kind == "preview":
                    progress.update(task, description="reading photos", completed=info["done"], total=info["total"])
                elif kind == "search-progress":
                    progress.update(task, description=f"searching noise ({info['phase']})",
                                    completed=info["done"], total=info["total"])
                elif kind == "round":
                    progress.console.print(f"round {info['round']:3d}  surrogate acc on scraper views "
                                           f"{info['surrogate_acc']:6.1%}  loss {info['surrogate_loss']:.3f}")
                elif kind == "photo":
                    progress.update(task, description="writing photos", completed=info["done"], total=info["total"])

            manifest = protect_photos(inputs, out, cfg, on_event)
    images = manifest["images"]
    table = Table(title=f"protected photos -> {out} (noise budget ε = {manifest['eps_255']:.3g}/255)",
                  caption="PSNR, SSIM and max Δ compare the written file as decoded (what a scraper gets) with the "
                          "original; JPEG/WebP compression adds to the noise, so max Δ can exceed ε")
    for col in ("photo", "size", "class", "status", "PSNR dB", "SSIM", "max Δ written"):
        table.add_column(col)
    for e in images:
        ok = e.get("status") == "ok"
        status = ("resumed" if e.get("resumed") else "ok" + (" (class pattern reused)"
                  if e.get("pattern") == "class-reused" else "")) if ok else f"[red]{e.get('error', e.get('status'))}[/]"
        table.add_row(e["output"], f"{e['width']}×{e['height']}" if ok else "", e.get("class", e.get("label", "")),
                      status, f"{e['psnr']:.1f}" if ok and e.get("psnr") is not None else "",
                      f"{e['ssim']:.4f}" if ok and e.get("ssim") is not None else "",
                      f"{e['max_change_levels']}/{65535 if e.get('bit_depth') == 16 else 255}"
                      if ok and "max_change_levels" in e else "")
    Console().print(table)
    for e in images:
        if e.get("status") == "error":
            console.print(f"[red]failed[/] {e['input']}: {e['error']}", soft_wrap=True)
    for u in manifest.get("unreadable", []):
        console.print(f"[red]failed[/] {u['path']}: {u['error']} (its photos were not protected)", soft_wrap=True)
    s = manifest["summary"]
    quality = (f"mean PSNR {s['mean_psnr']:.1f} dB, mean SSIM {s['mean_ssim']:.4f} of the written files; "
               if s["mean_psnr"] is not None and s["mean_ssim"] is not None else "")
    where = "not written" if manifest.get("manifest_error") else out / MANIFEST
    folders = f", {s['unreadable']} folder(s) unreadable" if s.get("unreadable") else ""
    console.print(f"{s['ok']} of {s['photos']} photos protected ({s['resumed']} already done), {s['failed']} failed"
                  f"{folders}; {quality}{s['wall_seconds']:.0f}s. Manifest: {where}")
    reused = manifest["search"].get("class_patterns_reused")
    if s.get("class_pattern_reused"):
        console.print(f"{s['class_pattern_reused']} photo(s) added since the search got their class's stored pattern "
                      f"({', '.join(reused)}): a class keeps one pattern. To search again, use a new output folder.")
    if manifest["skipped_files"]:
        console.print(f"skipped {len(manifest['skipped_files'])} non-photo files (listed in the manifest)")
    if manifest.get("manifest_error"):
        console.print(f"[red]failed[/] {manifest['manifest_error']}", soft_wrap=True)
    if s["failed"] or s.get("unreadable") or manifest.get("manifest_error"):
        raise typer.Exit(EXIT_SOME_FAILED)


EXIT_INTERRUPTED = 130


@contextmanager
def _resumable_interrupt() -> Iterator[None]:
    """Ctrl-C: one line saying that the work done is kept and the same command resumes; exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        console.print("interrupted: the photos written so far are kept; rerun the same command to resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None


@contextmanager
def _exit_on(kind: type, code: int) -> Iterator[None]:
    """Library errors of ``kind`` (e.g. an output folder that cannot be written): one line, exit ``code``."""
    try:
        yield
    except kind as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(code) from None


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
    stop_accuracy: Optional[float] = typer.Option(None, help="stop once the surrogate classifies this share of the "
                                                  "perturbed data right, in (0, 1] (default 0.99, error 0.01 as in "
                                                  "the paper's experiment scripts; its README's class-wise command "
                                                  "uses 0.9)"),
    max_rounds: int = typer.Option(200, help="give up after this many rounds"),
    classwise_portion: float = typer.Option(0.2, help="classwise: stratified share of each class the noise is "
                                                      "updated and tested on (paper: 0.2); the surrogate trains on all"),
    seed: int = typer.Option(0),
    data_root: Optional[Path] = typer.Option(None, help="dataset root (else $UNLEARNABLE_DATA_ROOT or ~/.cache/unlearnable/data)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps"),
    work_size: Optional[int] = typer.Option(None, min=1, help="ImageFolder: side in pixels the noise is searched at "
                                            "(default: the images' size if they all share one, else 64; "
                                            "then upsampled to each image's size)"),
    quality: int = typer.Option(95, min=1, max=100, help="ImageFolder: quality of JPEG/lossy WebP outputs "
                                                        "(≥ 90 keeps 4:4:4 chroma)"),
) -> None:
    """Protect a whole labelled dataset with error-minimizing noise (batch, resumable). An ImageFolder
    is written back under OUT/train/ with the same relative paths, names and formats.
    Exit code 0: done; 1: some images could not be written (listed; rerun to retry); 2: usage error."""
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.noise.minmin import MinMinConfig
    from unlearnable.protect.dataset import OutputError, WriteFailures, protect_dataset

    with user_errors():
        cfg = MinMinConfig(mode=mode, eps=parse_epsilon(eps), step_size=step_size / 255, steps=steps,
                           train_steps=train_steps, batch_size=batch_size, stop_accuracy=stop_accuracy,
                           max_rounds=max_rounds, classwise_portion=classwise_portion, seed=seed)
        with _progress() as progress:
            task = progress.add_task("round 1", total=None)
            round_no = [1]

            def on_progress(phase: str, done: int, total: int) -> None:
                progress.update(task, completed=done, total=total,
                                description="writing images" if phase == "write" else f"round {round_no[0]} {phase}")

            def on_round(log) -> None:
                progress.console.print(f"round {log.round:3d}  surrogate acc on perturbed data "
                                       f"{log.surrogate_acc:6.2%}  loss {log.surrogate_loss:.4f}  ({log.seconds:.1f}s)")
                round_no[0] = log.round + 1

            try:
                manifest = protect_dataset(dataset, out, cfg, arch, subset, data_root, device,
                                           on_round=on_round, on_progress=on_progress, work_size=work_size,
                                           quality=quality)
            except (WriteFailures, OutputError) as e:
                for path, why in getattr(e, "failures", []):
                    console.print(f"[red]failed[/] {path}: {why}", soft_wrap=True)
                console.print(f"[bold red]error:[/] {e}")
                raise typer.Exit(EXIT_SOME_FAILED)
            except KeyboardInterrupt:
                console.print(f"interrupted: rerun the same command to resume (finished rounds and images in {out} are kept)")
                raise typer.Exit(130)
    status = "converged" if manifest["converged"] else f"stopped at the {max_rounds}-round cap"
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


@app.command("verify")
def verify_cmd(
    protected: Path = typer.Argument(..., help="a folder written by protect-dataset, or a folder of your photos"),
    arch: Optional[str] = typer.Option(None, help="victim architecture(s), comma-separated "
                                                  "(default resnet18; resnet18-narrow for photos)"),
    epochs: Optional[int] = typer.Option(None, help="training epochs per victim (default 60 = paper; 30 for photos)"),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1),
    clean: bool = typer.Option(True, help="also train the clean baseline on the same images"),
    seed: int = typer.Option(0),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output folder: dataset: report.html, "
                                          "report.json, cells/ (default PROTECTED/verify; rerun to resume); photos: required"),
    defenses: str = typer.Option("standard", help="dataset: defenses to train through, comma-separated or 'all': "
                                 "standard,at,awp,cas,apl,tcr,jpeg,grayscale,cutout,mixup,cutmix"),
    patterns: str = typer.Option("standard", help="dataset: defenses whose models get class-wise patterns "
                                 "(comma-separated, 'all' or 'none')"),
    at_steps: int = typer.Option(10, help="dataset: PGD steps when training at/awp/cas (8/255, step 2/255)"),
    robust_images: int = typer.Option(1000, help="dataset: clean test images for the robust-accuracy readout "
                                      "(0: skip; its attack settings are printed with the results)"),
    val_share: float = typer.Option(0.1, help="dataset: share of each class's training images held out to choose "
                                    "each model's epoch (0: last epoch)"),
    paper_recipes: bool = typer.Option(True, help="dataset: train apl/at/awp with their papers' recipes "
                                       "(--shared-recipe: everything with --lr and the defaults)"),
    holdout: float = typer.Option(0.25, help="photos: share of each class held out clean for testing"),
    reference: str = typer.Option("cifar10", help="photos: labelled dataset the victim also trains on"),
    reference_per_class: Optional[int] = typer.Option(None, help="photos: reference images per class "
                                                                 "(default: as many as protected photos per class)"),
    exclude_class: Optional[str] = typer.Option(None, help="photos: reference classes to drop, comma-separated"),
    size: int = typer.Option(32, help="photos: the scraper's training resolution"),
    jpeg_quality: int = typer.Option(75, help="photos: the scraper's JPEG re-encode quality (0: none)"),
    eps: float = typer.Option(8.0, help="photos: L∞ budget of the protection (8 = 8/255)"),
    data_root: Optional[Path] = typer.Option(None, help="where the clean/reference dataset is"),
    device: str = typer.Option("auto"),
) -> None:
    """Check a protection by training fresh victims. On a protect-dataset output: a matrix of victims
    × defenses, each trained on the protected and on the clean data; clean test accuracy, robust
    accuracy and class-wise patterns in report.html + report.json, each model scored at the epoch
    chosen on a held-out validation split. On a photo folder: hold out some photos clean, protect
    the rest, train victims (reference set + photos, scraper pipeline) and report how many held-out
    photos each still recognises (report.html + verify-photos.json)."""
    from unlearnable.data.protected import MANIFEST as DATASET_MANIFEST
    from unlearnable.train.loop import TrainConfig

    if protected.is_dir() and not (protected / DATASET_MANIFEST).exists():
        with user_errors():
            _verify_photos(protected, output, arch or "resnet18-narrow",
                           TrainConfig(epochs=epochs or 30, batch_size=batch_size, lr=lr, seed=seed),
                           holdout, reference, reference_per_class, exclude_class, size, jpeg_quality, eps,
                           seed, data_root, device)
        return
    arch = arch or "resnet18"
    epochs = epochs or 60
    with user_errors():
        _verify_matrix(protected, output or protected / "verify", _split(arch), defenses, patterns,
                       TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed), clean, at_steps,
                       robust_images, data_root, device, val_share, paper_recipes)


def _verify_matrix(protected: Path, output: Path, archs: list[str], defenses: str, patterns: str, train_cfg,
                   clean: bool, at_steps: int, robust_images: int, data_root: Optional[Path], device: str,
                   val_share: float = 0.1, paper_recipes: bool = True) -> None:
    from unlearnable.verify.matrix import REPORT_HTML, REPORT_JSON, MatrixConfig, verify_defenses

    cfg = MatrixConfig(archs=archs, defenses=_split(defenses), train=train_cfg, include_clean=clean,
                       at_steps=at_steps, robust_n=robust_images, patterns_for=_split(patterns),
                       val_share=val_share, **({} if paper_recipes else {"recipes": {}}))
    epochs = train_cfg.epochs
    with _progress() as progress:
        cell_task = progress.add_task("models", total=None)
        ep_task = progress.add_task("epochs", total=epochs)
        b_task = progress.add_task("batches", total=None)

        def on_cell(key: str, i: int, total: int, reused: bool) -> None:
            progress.update(cell_task, completed=i - 1, total=total, description="models")
            progress.reset(ep_task, total=epochs, description=key)
            if reused:
                progress.console.print(f"{key}: finished earlier, reused")

        def on_epoch(rec) -> None:
            progress.advance(ep_task)
            progress.console.print(f"  epoch {rec.epoch:3d}  train acc {rec.train_acc:6.2%}  "
                                   f"clean test acc {rec.test_acc:6.2%}  ({rec.seconds:.0f}s)")

        def on_batch(done: int, total: int) -> None:
            progress.update(b_task, completed=done, total=total)

        report = verify_defenses(protected, output, cfg, device, data_root, on_cell, on_epoch, on_batch)
    table = Table(title=f"clean test accuracy of victims trained on {report['dataset']} "
                        f"({report['mode']}, ε={report['eps'] * 255:.3g}/255)")
    for col in ("victim", "defense", "clean (chosen epoch)", "protected (chosen epoch)", "protected final",
                "recovered vs same", "recovered vs standard", "verdict"):
        table.add_column(col)
    for r in report["summary"]:
        cl, pr = r.get("clean") or {}, r.get("protected") or {}
        fmt = lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
        rec = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        table.add_row(r["arch"], r["defense"], fmt(cl.get("chosen_test_acc")), fmt(pr.get("chosen_test_acc")),
                      fmt(pr.get("final_test_acc")), rec(r.get("recovered_vs_same")),
                      rec(r.get("recovered_vs_standard")), r.get("verdict") or "–")
    Console().print(table)
    console.print(report["verdict_text"])
    console.print(f"robust accuracy: {report['matrix']['robust']['label']}")
    console.print(f"report: {output / REPORT_HTML} and {output / REPORT_JSON}")


def _verify_photos(folder: Path, output: Optional[Path], arch: str, train_cfg, holdout: float, reference: str,
                   reference_per_class: int, exclude_class: Optional[str], size: int, jpeg_quality: int,
                   eps: float, seed: int, data_root: Optional[Path], device: str) -> None:
    from unlearnable.errors import UnlearnableError
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.protect.photos import PhotoProtectConfig
    from unlearnable.noise.minmin import MinMinConfig
    from unlearnable.verify.photos import REPORT, REPORT_HTML, PhotoVerifyConfig, verify_photo_folder
    from unlearnable.report.html import photo_verdict_text

    if output is None:
        raise UnlearnableError("verifying a photo folder writes protected copies and a report: pass -o/--output DIR")
    root = str(data_root) if data_root else None
    protect = PhotoProtectConfig(search=MinMinConfig.for_photos(eps=parse_epsilon(eps), seed=seed), data_root=root,
                                 device=device)
    cfg = PhotoVerifyConfig(holdout=holdout, reference=reference, reference_per_class=reference_per_class,
                            exclude_classes=tuple(_split(exclude_class or "")), size=size,
                            jpeg_quality=jpeg_quality or None, arch=arch, train=train_cfg, protect=protect,
                            seed=seed, data_root=root, device=device)
    with _progress() as progress:
        task = progress.add_task("preparing", total=None)

        def on_event(kind: str, info: dict) -> None:
            if kind == "phase":
                progress.console.print(info["name"])
            elif kind == "protect-round":
                progress.console.print(f"  search round {info['round']:3d}  surrogate acc {info['surrogate_acc']:6.1%}")
            elif kind == "run":
                progress.reset(task, total=info["epochs"], description=f"victim on {info['name']} photos")
            elif kind == "epoch":
                progress.advance(task)

        report = verify_photo_folder(folder, output, cfg, on_event)
    table = Table(title=f"{report['held_out_clean']} held-out clean photos of {folder}: "
                        f"share recognised as their own class (chance {report['chance_heldout_accuracy']:.1%})")
    for col in ("victim trained on", "held-out accuracy", "photo train acc", f"{reference} test acc"):
        table.add_column(col)
    for r in report["runs"]:
        table.add_row(r["trained_on"], f"{r['heldout_accuracy']:.1%}", f"{r['photo_train_accuracy']:.1%}",
                      f"{r['reference_test_accuracy']:.1%}")
    Console().print(table)
    console.print(photo_verdict_text(report))
    console.print(f"report: {output / REPORT_HTML} and {output / REPORT}")


@app.command("train")
def train_cmd(
    dataset: str = typer.Argument(..., help="cifar10, cifar100, fashion-mnist, svhn, an ImageFolder path, "
                                            "or a protect-dataset folder"),
    defense: str = typer.Option("standard", help="standard, at, awp, cas, apl, tcr, jpeg, grayscale, cutout, "
                                                 "mixup or cutmix"),
    arch: str = typer.Option("resnet18", help="architecture (see `unlearnable models`)"),
    epochs: int = typer.Option(60),
    batch_size: int = typer.Option(128),
    lr: Optional[float] = typer.Option(None, help="default 0.1, or the defense's paper recipe (apl: 0.01)"),
    weight_decay: Optional[float] = typer.Option(None, help="default 5e-4, or the defense's paper recipe (apl: 1e-4)"),
    val_share: float = typer.Option(0.1, help="share of each class held out to choose the epoch (0: last epoch)"),
    subset: Optional[int] = typer.Option(None, help="train on a class-balanced subset of this many images"),
    label_noise: float = typer.Option(0.0, help="share of training labels to corrupt (e.g. 0.4)"),
    noise_kind: str = typer.Option("symmetric", help="symmetric (label always changes) or asymmetric (CIFAR-10 pairs)"),
    at_steps: int = typer.Option(10, help="PGD steps when training at/awp/cas (8/255, step 2/255)"),
    robust_images: int = typer.Option(1000, help="clean test images for the robust-accuracy readout "
                                      "(0: skip; its attack settings are printed with the result)"),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the weights (.pt) and a .json record here"),
    data_root: Optional[Path] = typer.Option(None),
    device: str = typer.Option("auto"),
) -> None:
    """Train one model through a defense (on clean, label-noisy or protected data) and report its
    clean and PGD robust test accuracy: the defenses used on their own."""
    import json

    import torch

    from unlearnable.verify.matrix import PAPER_RECIPES, MatrixConfig, robust_label, train_defended
    from unlearnable.train.defenses import parse_defenses
    from unlearnable.train.loop import TrainConfig

    with user_errors():
        given = {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None}
        name = parse_defenses([defense])[0]
        recipe = {k: v for k, v in PAPER_RECIPES.get(name, {}).items() if k not in given}   # what you type wins
        cfg = MatrixConfig(archs=[arch], defenses=[name], patterns_for=["none"], at_steps=at_steps,
                           robust_n=robust_images, val_share=val_share, recipes={name: recipe} if recipe else {},
                           train=TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, **given))
        with _progress() as progress:
            task = progress.add_task(f"{arch} · {defense}", total=None)

            def on_epoch(rec) -> None:
                progress.console.print(f"epoch {rec.epoch:3d}  train acc {rec.train_acc:6.2%}  "
                                       f"test acc {rec.test_acc:6.2%}  ({rec.seconds:.0f}s)")

            rec, model = train_defended(dataset, defense, arch, cfg, subset, label_noise, noise_kind, device,
                                        data_root, on_epoch,
                                        lambda done, total: progress.update(task, completed=done, total=total))
    robust = "" if rec.get("robust_acc") is None else \
        f"; robust accuracy {rec['robust_acc']:.2%} ({robust_label(cfg, rec['robust_eval']['images'])})"
    console.print(f"clean test accuracy {rec['chosen_test_acc']:.2%} at epoch {rec['chosen_epoch']} "
                  f"(chosen by {rec['chosen_by']}), {rec['final_test_acc']:.2%} at the last{robust}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out.with_suffix(".pt"))
        out.with_suffix(".json").write_text(json.dumps(rec, indent=2))
        console.print(f"saved {out.with_suffix('.pt')} and {out.with_suffix('.json')}")


@app.command("train-surrogate")
def train_surrogate_cmd(
    dataset: str = typer.Option("cifar10", help="labelled dataset to pretrain on"),
    arch: str = typer.Option("smallcnn", help="architecture (see `unlearnable models`)"),
    epochs: int = typer.Option(8),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1),
    reference_per_class: int = typer.Option(50, help="training images per class kept as the reference bank"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("models/weights"), "-o", "--out", help="folder for .pt, .reference.npz and the model card"),
    data_root: Optional[Path] = typer.Option(None),
    device: str = typer.Option("auto"),
) -> None:
    """Pretrain a surrogate and its reference bank: the recipe of the embedded default."""
    from unlearnable.train.surrogate import save_surrogate, train_surrogate
    from unlearnable.train.loop import TrainConfig

    with user_errors():
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        with _progress() as progress:
            task = progress.add_task("batches", total=None)

            def on_epoch(rec) -> None:
                progress.console.print(f"epoch {rec.epoch:3d}  train acc {rec.train_acc:6.2%}  "
                                       f"test acc {rec.test_acc:6.2%}  ({rec.seconds:.0f}s)")

            def on_batch(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            model, meta, reference = train_surrogate(dataset, arch, cfg, reference_per_class, data_root, device,
                                                     on_epoch, on_batch)
        path = save_surrogate(out, model, meta, reference)
    console.print(f"[green]saved[/] {path} (test accuracy {meta['test_accuracy']:.2%}) and its model card")


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
