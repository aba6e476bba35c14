"""``unlearnable protect``: a folder of personal photos -> the same files, protected."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import (DATA_ROOT, DEVICE, EPS_HELP, EXIT_SOME_FAILED, SEED, console, exit_on, out as result_console,
                     user_errors)
from .progress import Reporter


def protect_cmd(
    inputs: List[Path] = typer.Argument(..., metavar="PHOTOS...", help="photo files and/or folders (walked recursively)"),
    out: Path = typer.Option(..., "-o", "--out", help="output folder (not inside an input, no input inside it); "
                                                      "rerun the same command to resume"),
    eps: float = typer.Option(8.0, "--eps", help=EPS_HELP),
    mode: str = typer.Option("classwise", "--mode", help="classwise (one pattern per class; measured stronger on "
                                                         "photos) or samplewise (noise per photo)"),
    label_free: bool = typer.Option(False, "--label-free/--labels", help="unlabelled mixed collection: classes "
                                    "by clustering (default: one class per subfolder)"),
    clusters: Optional[int] = typer.Option(None, "--clusters", help="number of pseudo-classes with --label-free (≥ 1)"),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality of the outputs"),
    keep_gps: bool = typer.Option(False, "--keep-gps/--drop-gps", help="keep the GPS location in EXIF "
                                  "(dropped by default)"),
    max_rounds: Optional[int] = typer.Option(None, "--max-rounds", min=1, help="min-min round cap (default 20; "
                                             "40 with --faces)"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="PGD steps per round (default 10; 20 with "
                                        "--faces)"),
    structure: Optional[str] = typer.Option(None, "--structure", help="keep the noise structured "
                                            "(noise.structure): balanced (no colour cast; measured less visible and "
                                            "steadier against a scraper's white balance, weaker against ordinary "
                                            "training), luminance (measured far weaker on whole photos), lowpass-K, "
                                            "tile-T, or several joined by '+'"),
    work_size: int = typer.Option(64, "--work-size", min=1, help="side in pixels the noise is searched at "
                                  "(then upsampled to each photo's size)"),
    surrogate: str = typer.Option("smallcnn-cifar10", "--surrogate", help="shipped surrogate name or a .pt "
                                  "from train-surrogate: its architecture and reference bank (its weights too "
                                  "with --surrogate-start pretrained)"),
    surrogate_start: Optional[str] = typer.Option(None, "--surrogate-start", help="fresh: the search trains the "
                                                  "surrogate's architecture from scratch, as the paper does (the "
                                                  "default: measured far stronger, on faces and, with the "
                                                  "white-balanced views, on whole photos); pretrained: from its "
                                                  "weights (the default with --face-weights; whole photos' before "
                                                  "2026-11-30: fainter colour blotches, weaker protection)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="reference dataset (default: the "
                                            "surrogate's shipped bank); with --faces, a folder of other "
                                            "people's aligned faces (one subfolder per person): the surrogate "
                                            "gets a fresh head over them (measured: no better than the "
                                            "default at 8/255)"),
    max_megapixels: float = typer.Option(150.0, "--max-megapixels", help="refuse larger images "
                                         "(decompression-bomb guard; > 0)"),
    workers: int = typer.Option(2, "--workers", help="threads decoding and encoding photos"),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="measure PSNR/SSIM of every written file "
                                 "(--no-metrics: skip, faster on big photos)"),
    faces: bool = typer.Option(False, "--faces/--whole-photos", help="protect the faces: find every face (MTCNN), "
                               "one pattern per person (subfolder) on the aligned face, pasted back at full size"),
    no_face: str = typer.Option("skip", "--no-face", help="with --faces, a photo without a face: skip (not "
                                "written, listed in the manifest) or whole (its person's pattern over the whole "
                                "photo)"),
    face_weights: Optional[Path] = typer.Option(None, "--face-weights", help="with --faces: a facenet-pytorch "
                                                "Inception-ResNet-v1 state dict you have (e.g. the VGGFace2 file) "
                                                "as the surrogate; needs --reference DIR of other people's faces. "
                                                "Nothing is downloaded"),
    detect_side: int = typer.Option(1024, "--detect-side", help="with --faces: detect on a copy at most this "
                                    "many pixels on its long side (faces under ~20 pixels there are missed)"),
    perceptual: bool = typer.Option(False, "--perceptual/--no-perceptual", help="less noise where the eye sees it: "
                                    "a just-noticeable-difference mask (flat areas, mid-grey) and mostly luminance "
                                    "noise, within ε, known to the search (not with --faces). Measured: no colour "
                                    "blotches, but much weaker protection"),
    white_balance: bool = typer.Option(True, "--white-balance/--no-white-balance", help="search through "
                                       "white-balanced views (default), so that the noise is no colour cast, which "
                                       "a scraper's white balance removes: measured stronger and no more visible; "
                                       "--no-white-balance: the views before 2026-11-30 (whole photos and faces)"),
    seed: int = SEED,
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
) -> None:
    """Protect your photos: same files, formats and sizes under OUT, with bounded error-minimizing
    noise. Files in OUT that unlearnable did not write are never replaced. Exit code 0: all photos
    protected; 1: some photos or folders failed, or OUT could not be written (listed); 2: usage
    error, nothing done; 130: interrupted (rerun the same command to resume)."""
    from dataclasses import replace

    from unlearnable.data.storage import OutputError
    from unlearnable.noise.budget import parse_epsilon
    from unlearnable.noise.views import FACE_VIEW, PHOTO_VIEW
    from unlearnable.protect.photos import MANIFEST, PhotoProtectConfig, protect_photos, search_config

    with user_errors("interrupted: the photos written so far are kept; rerun the same command to resume"), \
            exit_on(OutputError, EXIT_SOME_FAILED):
        given = {k: v for k, v in (("max_rounds", max_rounds), ("steps", steps), ("structure", structure))
                 if v is not None}
        search = search_config(faces, mode=mode, eps=parse_epsilon(eps), seed=seed, **given)
        cfg = PhotoProtectConfig(search=search, work_size=work_size, label_free=label_free, clusters=clusters,
                                 surrogate=surrogate, surrogate_start=surrogate_start,
                                 reference=reference, quality=quality, keep_gps=keep_gps,
                                 max_megapixels=max_megapixels, workers=workers, metrics=metrics, faces=faces,
                                 no_face=no_face, detect_side=detect_side,
                                 face_weights=str(face_weights) if face_weights else None, perceptual=perceptual,
                                 view=replace(FACE_VIEW if faces else PHOTO_VIEW, white_balance=float(white_balance)),
                                 data_root=str(data_root) if data_root else None, device=device)
        with Reporter("reading photos") as on_event:
            manifest = protect_photos(inputs, out, cfg, on_event)
    _render(manifest, out, MANIFEST)


def _render(manifest: dict, out: Path, manifest_name: str) -> None:
    images = manifest["images"]
    table = Table(title=f"protected photos -> {out} (noise budget ε = {manifest['eps_255']:.3g}/255)",
                  caption="PSNR, SSIM and max Δ compare the written file as decoded (what a scraper gets) with the "
                          "original; JPEG/WebP compression adds to the noise, so max Δ can exceed ε")
    faces = manifest["settings"].get("faces", False)
    for col in ("photo", "size", "class", "status") + (("faces",) if faces else ()) + ("PSNR dB", "SSIM",
                                                                                     "max Δ written"):
        table.add_column(col)
    for e in images:
        ok = e.get("status") == "ok"
        if e.get("status") == "skipped":
            status = "[yellow]no face: not written[/]"
        else:
            status = ("resumed" if e.get("resumed") else "ok" + (" (class pattern reused)" if e.get("pattern") ==
                      "class-reused" else "")) if ok else f"[red]{e.get('error', e.get('status'))}[/]"
        found = (f"{len(e['faces'])}" + (f" ({sum(f['small'] for f in e['faces'])} small)"
                                         if any(f["small"] for f in e["faces"]) else "")) if "faces" in e else ""
        table.add_row(e["output"], f"{e['width']}×{e['height']}" if ok else "", e.get("class", e.get("label", "")),
                      status, *((found,) if faces else ()), f"{e['psnr']:.1f}" if ok and e.get("psnr") is not None else "",
                      f"{e['ssim']:.4f}" if ok and e.get("ssim") is not None else "",
                      f"{e['max_change_levels']}/{65535 if e.get('bit_depth') == 16 else 255}"
                      if ok and "max_change_levels" in e else "")
    result_console.print(table)
    for e in images:
        if e.get("status") == "error":
            console.print(f"[red]failed[/] {e['input']}: {e['error']}", soft_wrap=True)
    for u in manifest.get("unreadable", []):
        console.print(f"[red]failed[/] {u['path']}: {u['error']} (its photos were not protected)", soft_wrap=True)
    s = manifest["summary"]
    quality = (f"mean PSNR {s['mean_psnr']:.1f} dB, mean SSIM {s['mean_ssim']:.4f} of the written files; "
               if s["mean_psnr"] is not None and s["mean_ssim"] is not None else "")
    where = "not written" if manifest.get("manifest_error") else out / manifest_name
    folders = f", {s['unreadable']} folder(s) unreadable" if s.get("unreadable") else ""
    console.print(f"{s['ok']} of {s['photos']} photos protected ({s['resumed']} already done), {s['failed']} failed"
                  f"{folders}; {quality}{s['wall_seconds']:.0f}s. Manifest: {where}")
    reused = manifest["search"].get("class_patterns_reused")
    if s.get("class_pattern_reused"):
        console.print(f"{s['class_pattern_reused']} photo(s) added since the search got their class's stored pattern "
                      f"({', '.join(reused)}): a class keeps one pattern. To search again, use a new output folder.")
    if faces:
        face_q = (f"; on the faces mean PSNR {s['mean_face_psnr']:.1f} dB, SSIM {s['mean_face_ssim']:.4f}"
                  if s.get("mean_face_ssim") is not None else "")
        console.print(f"{s['faces']} face(s) protected ({s['small_faces']} small: under 40 pixels, protected weakly)"
                      f", {s['no_face']} photo(s) without a face{face_q}")
    if manifest["skipped_files"]:
        console.print(f"skipped {len(manifest['skipped_files'])} non-photo files (listed in the manifest)")
    if manifest.get("manifest_error"):
        console.print(f"[red]failed[/] {manifest['manifest_error']}", soft_wrap=True)
    if s["failed"] or s.get("unreadable") or manifest.get("manifest_error"):
        raise typer.Exit(EXIT_SOME_FAILED)
