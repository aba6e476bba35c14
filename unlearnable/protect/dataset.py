"""Batch protection of a labelled dataset: load -> search error-minimising noise with a surrogate
-> apply it -> write the protected files, each checked, atomically and resumably (the on-disk
layouts are described in ``unlearnable.data.protected``).

Built-in datasets (no file names) become ``OUT/train/<class>/<index>.png``. An ImageFolder keeps
its tree: every training image is written back under ``OUT/train/`` with its relative path, name
and format (PNG stays PNG; JPEG stays JPEG at ``quality`` 95 with 4:4:4 chroma; WebP, BMP and TIFF
as themselves; alpha, ICC profile and EXIF kept, EXIF orientation applied to the pixels), through
``photos.encode.write_photo``. Every written file is decoded again and compared with its original at
full size: the largest change in /255 levels and the PSNR are recorded per file and overall. For
lossless formats the change is within the budget ⌊255 ε⌋ (checked); for JPEG it is larger, because
the encoder adds its own error on top of the noise: that larger figure is what a scraper gets.

Working size (ImageFolder). If every image has the same size, the noise is searched at that size
and a lossless output holds exactly ``clip(x + round(255 δ))``, as for built-in datasets. If sizes
differ (or ``work_size`` is given), every image is squashed to ``work_size`` × ``work_size``
(bicubic, aspect not kept; 64 by default for mixed sizes, the working size ``protect`` uses for
photos) for the search, and δ is upsampled to each image's own size with ``photos.apply``'s
bilinear upsampler, whose weights are convex, so the ⌊255 ε⌋-level bound still holds at full size.
Deviation to know: a victim that trains at full size sees that smoother, upsampled noise, not the
exact noise the surrogate was fitted to; ``verify`` trains at the working size.

Safety. OUT and the dataset folder must not contain one another; no file in OUT that this tool did
not write is ever replaced (checked before the search, exit code 2; ownership is the journal
``OUT/.unlearnable/written.jsonl`` of ``photos.outdir``); a second run into the same OUT is refused
while the first holds its lock. A rerun resumes the search from ``OUT/.unlearnable/checkpoint.pt``,
skips images already written (same bytes as journaled; their change is measured again from disk)
and first removes temp files a killed run left. Originals are only ever opened for reading.

Under torchrun every rank runs its share of the search (``unlearnable.distributed``); rank 0 alone
checks, locks and writes OUT, and the other ranks return the manifest it wrote.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__, distributed
from ..data.datasets import (ImageTensors, balanced_subset, image_file_size, imagefolder_root, load_dataset,
                             load_imagefolder, resolve_data_root, scan_imagefolder)
from ..data.photos.decode import read_photo
from ..data.photos.encode import write_photo
from ..data.photos.files import UsageError
from ..data.photos.outdir import STATE_DIR, Journal, OutputLock, check_inside, remove_leftovers, state_dir
from ..data.photos.photo import Photo, PhotoError
from ..data.protected import (FORMAT, IMAGES_DIR, LAYOUT_IMAGEFOLDER, LAYOUT_INDEXED, MANIFEST, class_dirs,
                              indexed_file, read_manifest)
from ..data.storage import OutputError, sha256_bytes, write_atomic
from ..errors import UnlearnableError
from ..eval.quality import psnr
from ..events import Event, emitter
from ..noise.budget import apply_noise_uint8, epsilon_levels, linf_levels
from ..noise.defense_aware import defense_aware_noise
from ..noise.defense_views import DefenseViewConfig
from ..noise.minmin import MinMinConfig, error_minimizing_noise
from ..noise.upsample import apply_noise
from ..train.loop import build_model

CHECKPOINT = f"{STATE_DIR}/checkpoint.pt"
RUN_STATE = "dataset-run.json"
MIXED_WORK_SIZE = 64
LOSSY = {"JPEG", "HEIF"}
_BATCH = 256  # images handed to the writer threads at a time


class WriteFailures(UnlearnableError):
    """Some images could not be written (disk full, read-only folder, ...). The others are written and
    journaled; no manifest is written, so the output is not complete: rerun to retry the rest.
    ``failures``: (path under OUT, one-line reason) for each."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        super().__init__(f"{len(failures)} protected image(s) could not be written; rerun the same command "
                         "to retry them")
        self.failures = failures


@dataclass
class _Plan:
    """What is written: the protected set at working size and, per image, its path under OUT."""

    layout: str
    train: ImageTensors          # working-size images (subset applied)
    indices: torch.Tensor        # source index of each image
    rels: list[str]              # path under OUT of each image
    sources: list[Path] | None   # imagefolder: the original file of each image
    resized: bool                # imagefolder: searched at a squashed working size


def protect_dataset(dataset: str, out_dir: str | os.PathLike, config: MinMinConfig | None = None,
                    arch: str = "resnet18", subset: int | None = None,
                    data_root: str | os.PathLike | None = None, device: str = "auto",
                    on_event: Event | None = None,
                    work_size: int | None = None, quality: int = 95, workers: int = 2,
                    defense_aware: DefenseViewConfig | None = None) -> dict:
    """Protect the training split of ``dataset`` (a built-in name or an ImageFolder path), or a
    balanced ``subset`` of it, into ``out_dir``; resumable (rerun with the same arguments). ImageFolder
    only: ``work_size`` (pixels; None = the images' own size when they all share one, else 64) and
    ``quality`` (1..100, JPEG/lossy WebP outputs). ``on_event`` (``unlearnable.events``) reports each
    'round' and the 'progress' of the engine's phases ('train', 'search') and of 'writing images'.
    ``defense_aware`` (None: off, the settings and outputs are those of before the option) searches
    through random views of the trainer's defenses (``noise.defense_aware``). Returns the manifest.

    Raises :class:`UsageError` (nothing written: OUT overlaps the dataset, holds files this tool did
    not write, is locked by another run), :class:`WriteFailures` (some images failed; no manifest) or
    :class:`OutputError` (the manifest or noise file cannot be written)."""
    cfg = config or MinMinConfig()
    emit = emitter(on_event)

    def progress(phase: str, done: int, total: int) -> None:
        emit("progress", {"phase": phase, "done": done, "total": total})

    if not 1 <= int(quality) <= 100:
        raise UnlearnableError(f"quality must be in 1..100, got {quality}")
    if work_size is not None and work_size < 1:
        raise UnlearnableError(f"work size must be >= 1 pixel, got {work_size}")
    if workers < 1:
        raise UnlearnableError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    folder = imagefolder_root(dataset, "train")
    if folder is None:
        settings = {"dataset": dataset, "arch": arch, "subset": subset, "minmin": cfg.settings()}
    else:
        _check_disjoint(Path(dataset), out)
        settings = {"dataset": str(Path(dataset).resolve()), "arch": arch, "subset": subset,
                    "minmin": cfg.settings(), "work_size": work_size, "quality": int(quality)}
    if defense_aware is not None:
        settings["defense_aware"] = defense_aware.settings()
    if os.path.lexists(out / MANIFEST):
        try:
            manifest = read_manifest(out)
        except UnlearnableError as e:
            raise UsageError(f"{e}. It is not replaced: move it away and rerun (images already written are "
                             "reused)") from None
        if manifest.get("settings") == settings:
            manifest["resumed"] = "already complete"
            return manifest
        if not _same_but_stopping(manifest.get("settings"), settings):
                raise UsageError(f"{out} already holds a protected dataset made with other settings; "
                             "choose another output folder")
        # Only the round cap or the stop accuracy changed: go on from the kept checkpoint (a run that
        # stopped at its cap keeps it) and rewrite the outputs with the extended noise.
    dev = distributed.setup_device(device)      # under torchrun: this rank's device, the process group joined
    ctx = distributed.current()
    root = resolve_data_root(data_root)
    plan = _plan(dataset, folder, root, subset, cfg.seed, work_size)
    own = [MANIFEST, "indices.npy", "perturbation.npy"]
    search = (error_minimizing_noise if defense_aware is None
              else functools.partial(defense_aware_noise, views=defense_aware))
    if not ctx.is_writer:                       # another rank of a torchrun run: rank 0 checks and writes OUT
        return _follow(ctx, plan, cfg, arch, dev, out, search)
    with ctx.leading() as lead, OutputLock(out):
        journal = Journal(out)
        check_inside(out, [Path(r) for r in plan.rels + own])
        remove_leftovers(out, [Path(r) for r in plan.rels + own])
        foreign = [r for r in plan.rels + own if os.path.lexists(out / r) and not journal.owns(out / r)]
        if foreign:
            raise UsageError(f"{len(foreign)} file(s) in {out} were not written by unlearnable and would be "
                             f"replaced (e.g. {', '.join(foreign[:3])}); nothing was written: choose an empty "
                             "output folder or move them away")
        lead.ready()                            # torchrun: the other ranks start their share of the search
        train = plan.train
        surrogate = build_model(arch, train.num_classes, train.images.shape[1], cfg.seed, dev)
        t0 = time.perf_counter()
        ckpt = state_dir(out) / Path(CHECKPOINT).name
        result = search(surrogate, train, cfg, ckpt, on_round=lambda r: emit("round", asdict(r)), on_progress=progress)
        lead.writing()                          # torchrun: the other ranks wait for the outputs
        delta = result.delta
        if not bool(torch.isfinite(delta).all()) or float(delta.abs().max()) > cfg.eps + 1e-6:
            raise UnlearnableError(f"the noise (from {ckpt}) is outside the budget ε = {cfg.eps * 255:.3g}/255: "
                                   "refusing to apply it; delete that checkpoint and rerun")
        per_sample = result.per_sample(train.labels)
        protected = apply_noise_uint8(train.images, per_sample, cfg.eps)
        levels = linf_levels(train.images, protected)
        budget = epsilon_levels(cfg.eps)
        if levels > budget:
            raise AssertionError(f"budget violated after rounding: {levels} > {budget} levels")
        done = _reusable(out, plan.rels, settings, delta)
        entries, failures = _write_images(out, plan, protected, per_sample, budget, done, journal, quality,
                                          workers, progress)
        if failures:
            raise WriteFailures(failures)
        written = _summary(entries)
        manifest = {
            "tool": "unlearnable", "version": __version__, "format": FORMAT, "dataset": settings["dataset"],
            "data_root": str(root.resolve()), "source_split": "train", "settings": settings,
            "mode": cfg.mode, "eps": cfg.eps, "eps_255": cfg.eps * 255, "surrogate": arch, "seed": cfg.seed,
            "rounds": result.rounds, "converged": result.converged,
            "final_surrogate_acc": result.history[-1].surrogate_acc if result.history else None,
            "history": [asdict(h) for h in result.history],
            **({} if result.views_from is None else {"views_from_round": result.views_from}),
            "generation_seconds": result.seconds, "wall_seconds_this_call": time.perf_counter() - t0,
            "device": str(dev), "linf_levels": levels, "budget_levels": budget,
            "linf_levels_means": "max |protected - clean| in /255 levels at the working size, before encoding",
            "written": written,
            "layout": plan.layout, "classes": list(train.classes),
            "num_images": len(train), "image_shape": list(train.images.shape[1:]),
            "resumed_images": sum(1 for e in entries if e.get("resumed")),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if plan.layout == LAYOUT_INDEXED:
            manifest.update(class_dirs=class_dirs(train.classes),
                            files={"images": f"{IMAGES_DIR}/<class_dir>/<source index>.png",
                                   "indices": "indices.npy", "perturbation": "perturbation.npy"})
        else:
            meta = train.meta
            manifest.update(class_dirs=list(train.classes), source_root=str(Path(meta["root"]).resolve()),
                            resized=plan.resized, work_size=list(train.images.shape[2:]),
                            files={"images": f"{IMAGES_DIR}/<path relative to {meta['root']}>",
                                   "indices": "indices.npy", "perturbation": "perturbation.npy"},
                            images=entries,
                            skipped_files=[{"file": f, "reason": r} for f, r in meta.get("skipped", [])])
        _save_owned(out, "indices.npy", _npy(plan.indices.cpu().numpy().astype(np.int64)), journal)
        _save_owned(out, "perturbation.npy", _npy(delta.cpu().numpy().astype(np.float16)), journal)
        _save_owned(out, MANIFEST, json.dumps(manifest, indent=2, allow_nan=False).encode(), journal)
        if result.converged:      # a capped run keeps its checkpoint, so a higher --max-rounds extends it
            distributed.remove_checkpoint(ckpt)
    return read_manifest(out)


def _follow(ctx: distributed.Context, plan: _Plan, cfg: MinMinConfig, arch: str, dev: torch.device, out: Path,
            search: Callable) -> dict:
    """A rank other than 0 of a torchrun run: waits for rank 0's checks of OUT (raising its error), runs
    its share of the search (the engine writes its checkpoint shard), waits for rank 0 to write the
    outputs and returns their manifest."""
    ctx.follow()
    surrogate = build_model(arch, plan.train.num_classes, plan.train.images.shape[1], cfg.seed, dev)
    search(surrogate, plan.train, cfg, state_dir(out) / Path(CHECKPOINT).name)
    ctx.follow()
    return read_manifest(out)


def _check_disjoint(dataset: Path, out: Path) -> None:
    """OUT inside the dataset would become part of it on the next read; the dataset inside OUT could
    have its files replaced. Both are usage errors."""
    d, o = dataset.resolve(), out.resolve()
    if d == o or d in o.parents or o in d.parents:
        raise UsageError(f"the output folder {out} and the dataset folder {dataset} overlap; "
                         "choose an output folder outside the dataset (and not containing it)")


def _plan(dataset: str, folder: Path | None, root: Path, subset: int | None, seed: int,
          work_size: int | None) -> _Plan:
    if folder is None:
        train = load_dataset(dataset, "train", root)
        resized = False
    else:
        size = work_size
        if size is None:
            _, files, _, _ = scan_imagefolder(folder)
            if len({image_file_size(folder / f) for f in files}) > 1:
                size = MIXED_WORK_SIZE
        train = load_imagefolder(folder, size)
        resized = size is not None and any(tuple(s) != (size, size) for s in train.meta["sizes"])
    indices = torch.arange(len(train)) if subset is None else balanced_subset(train.labels, subset, seed)
    if subset is not None:
        train = train.subset(indices)
    if folder is None:
        dirs = class_dirs(train.classes)
        width = max(5, len(str(int(indices.max()) if len(indices) else 0)))
        rels = [indexed_file(dirs[y], s, width) for y, s in zip(train.labels.tolist(), indices.tolist())]
        return _Plan(LAYOUT_INDEXED, train, indices, rels, None, False)
    files = [train.meta["files"][i] for i in indices.tolist()]
    rels = [f"{IMAGES_DIR}/{f}" for f in files]
    return _Plan(LAYOUT_IMAGEFOLDER, train, indices, rels, [folder / f for f in files], resized)


STOPPING = ("max_rounds", "stop_accuracy")


def _same_but_stopping(old: object, new: dict) -> bool:
    """True when two runs' settings differ at most in when the search stops (issue: a capped run
    must be extendable), so the second run continues the first one's search."""
    if not isinstance(old, dict) or not isinstance(old.get("minmin"), dict):
        return False
    def strip(s: dict) -> dict:
        return {**s, "minmin": {k: v for k, v in s["minmin"].items() if k not in STOPPING}}
    return strip(old) == strip(new)


def _reusable(out: Path, rels: list[str], settings: dict, delta: torch.Tensor) -> set[str]:
    """Images already written by an interrupted run of the same settings with the same noise (their
    hash is checked by the caller's journal); recorded in ``OUT/.unlearnable/dataset-run.json`` before
    any image is written, so images of a run with other noise are rewritten, never reused."""
    noise = sha256_bytes(delta.cpu().numpy().tobytes())
    path = state_dir(out) / RUN_STATE
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    same = isinstance(previous, dict) and previous.get("noise_sha256") == noise and previous.get("settings") == settings
    if not same:
        write_atomic(path, json.dumps({"settings": settings, "noise_sha256": noise}).encode())
    return {r for r in rels if os.path.lexists(out / r)} if same else set()


def _write_images(out: Path, plan: _Plan, protected: torch.Tensor, per_sample: torch.Tensor, budget: int,
                  done: set[str], journal: Journal, quality: int, workers: int,
                  on_progress: Callable[[str, int, int], None] | None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Write (or, for ``done`` paths, re-measure) every image; returns (entries in index order, failures)."""
    record = threading.Lock()
    prot_hwc = protected.permute(0, 2, 3, 1).cpu().numpy()
    orig_hwc = plan.train.images.permute(0, 2, 3, 1).cpu().numpy()
    labels = plan.train.labels.tolist()
    indices = plan.indices.tolist()

    def remember(rel: str) -> Callable[[str], None]:
        def hook(sha: str) -> None:
            with record:
                journal.remember(rel, sha)
        return hook

    def one(i: int) -> dict:
        rel = plan.rels[i]
        target = out / rel
        if plan.sources is None:
            photo = Photo(orig_hwc[i], None, "PNG", "L" if orig_hwc.shape[3] == 1 else "RGB")
            pixels = prot_hwc[i]
        else:
            photo = read_photo(plan.sources[i], max_pixels=2**62)
            pixels = _noisy_pixels(photo.pixels, orig_hwc[i], prot_hwc[i], per_sample[i], budget, plan.resized)
        if rel in done:
            back = read_photo(target, max_pixels=2**62).pixels
            if back.shape != photo.pixels.shape:
                raise PhotoError(f"the earlier output decodes to {back.shape}, not {photo.pixels.shape}; "
                                 "move it away and rerun", target)
            sha, resumed = None, True
        else:
            w = write_photo(target, photo, pixels, quality, may_replace=journal.owns, before_rename=remember(rel))
            back, sha, resumed = w.pixels, w.sha256, False
        entry = _measure(back, photo.pixels)
        lossless = photo.format not in LOSSY and not (photo.format == "WEBP" and not photo.info.get("lossless"))
        if lossless and entry["max_change_255"] > budget:
            raise PhotoError(f"the written file changes a pixel by {entry['max_change_255']}/255, over the "
                             f"budget of {budget}/255", target)
        entry = {"file": rel[len(IMAGES_DIR) + 1:], "index": indices[i], "label": labels[i],
                 "format": photo.format, "width": int(photo.pixels.shape[1]), "height": int(photo.pixels.shape[0]),
                 "lossless": lossless, **entry}
        if sha:
            entry["sha256"] = sha
        if resumed:
            entry["resumed"] = True
        return entry

    def safe(i: int) -> dict | tuple[str, str]:
        try:
            return one(i)
        except (PhotoError, UnlearnableError, OSError) as e:
            return plan.rels[i], str(e)

    n = len(plan.rels)
    entries: list[dict] = []
    failures: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n, _BATCH):
            for r in pool.map(safe, range(start, min(n, start + _BATCH))):
                (failures.append(r) if isinstance(r, tuple) else entries.append(r))
            if on_progress:
                on_progress("writing images", min(n, start + _BATCH), n)
    return entries, failures


def _noisy_pixels(full: np.ndarray, work: np.ndarray, work_protected: np.ndarray, delta: torch.Tensor,
                  budget: int, resized: bool) -> np.ndarray:
    """The protected pixels of one ImageFolder image at its full size and dtype. When the decoded
    original is the very image the noise was searched on (same size, 8-bit, same pixels), the
    protected working image itself; otherwise δ (clamped to the budget in levels) upsampled onto it."""
    if not resized and full.dtype == np.uint8 and full.shape == work.shape and np.array_equal(full, work):
        return work_protected
    d = delta.float().clamp(-budget / 255, budget / 255)
    return apply_noise(full, d)[0]


def _measure(written: np.ndarray, original: np.ndarray) -> dict:
    """Change of a written file as decoded, against its original: max |Δ| and PSNR on the /255 scale."""
    level = float(np.iinfo(original.dtype).max)
    diff = np.abs(written.astype(np.int32) - original.astype(np.int32)).max() if original.size else 0
    change = float(diff) * 255.0 / level
    p = psnr(written, original, data_range=level)
    return {"max_change_255": int(change) if change.is_integer() else round(change, 3),
            "psnr": None if math.isinf(p) else round(p, 3)}


def _summary(entries: list[dict]) -> dict:
    """Overall change of the written files (what a scraper downloads)."""
    lossy = [e for e in entries if not e["lossless"]]
    finite = [e["psnr"] for e in entries if e["psnr"] is not None]
    return {"files": len(entries), "lossy_files": len(lossy),
            "max_change_255": max((e["max_change_255"] for e in entries), default=0),
            "lossy_max_change_255": max((e["max_change_255"] for e in lossy), default=None),
            "min_psnr": min(finite, default=None),
            "mean_psnr": round(sum(finite) / len(finite), 3) if finite else None,
            "measured_on": "each written file decoded again and compared with its original at full size; "
                           "max |Δ| in /255 levels, PSNR in dB (null: identical)"}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _save_owned(out: Path, rel: str, data: bytes, journal: Journal) -> None:
    """Journal then atomically write one of the run's own files (never over a file we did not write)."""
    journal.remember(rel, sha256_bytes(data))
    write_atomic(out / rel, data, may_replace=journal.owns)


__all__ = ["CHECKPOINT", "MIXED_WORK_SIZE", "OutputError", "UsageError", "WriteFailures", "protect_dataset"]
