"""Protect a folder of personal photos: previews -> min-min noise search -> full-size outputs.

Three phases, each resumable:

1. *Previews*: every photo is decoded once at reduced scale and squashed to ``work_size`` ×
   ``work_size``; its sha256 is recorded. Unreadable files get one error line and are left out.
2. *Search*: ``photo_noise`` against the embedded (or a given) surrogate and reference bank. δ is
   saved to ``OUT/.unlearnable/search.pt`` with the hashes it was searched for, so a crash in
   phase 3 does not redo it.
3. *Outputs*: each photo is decoded at full size, δ is upsampled onto it (``apply_noise``), the
   result is written atomically in the source format, and its PSNR/SSIM are measured. The
   manifest ``OUT/manifest.json`` is rewritten (atomically) after every photo; on a rerun,
   photos whose recorded input and output hashes still match are skipped.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..data.datasets import ImageTensors, balanced_subset, load_dataset
from ..data.protected import write_json_atomic
from ..device import resolve_device
from ..errors import UnlearnableError
from ..metrics import psnr, ssim
from ..surrogate import DEFAULT_NAME, load_reference, load_surrogate
from .apply import apply_noise
from .clusters import pseudo_labels
from .io import PhotoError, PhotoFile, discover, read_photo, read_preview, sha256_file, write_photo
from .search import PhotoRound, PhotoSearchConfig, photo_noise

MANIFEST = "manifest.json"
STATE_DIR = ".unlearnable"
FORMAT = "unlearnable-protected-photos/1"


@dataclass
class PhotoProtectConfig:
    """What ``unlearnable protect`` does; ε in [0, 1] pixel units (the CLI's 8 means 8/255)."""

    search: PhotoSearchConfig = field(default_factory=PhotoSearchConfig)
    work_size: int = 64             # photos are searched squashed to work_size x work_size
    label_free: bool = False        # pseudo-classes from clustering instead of folder names
    clusters: int | None = None     # number of pseudo-classes with label_free (default: about n/5, 2..10)
    surrogate: str = DEFAULT_NAME   # shipped name or path of a .pt from `unlearnable train-surrogate`
    reference: str | None = None    # None: the surrogate's shipped bank; else a dataset name / ImageFolder
    reference_per_class: int = 50
    quality: int = 95               # JPEG/WebP quality of the outputs
    keep_gps: bool = False
    max_megapixels: float = 150.0
    workers: int = 2                # threads decoding/encoding photos (Pillow releases the GIL)
    metrics: bool = True            # PSNR/SSIM of every output against its original
    data_root: str | None = None
    device: str = "auto"

    def fingerprint(self) -> dict:
        """The settings that change the noise (a rerun with other ones must not mix outputs)."""
        s = asdict(self)
        for k in ("workers", "metrics", "device", "data_root", "max_megapixels"):
            s.pop(k)
        return s


Event = Callable[[str, dict], None]


def _entry_ok(entry: dict, out: Path, in_hash: str) -> bool:
    if entry.get("status") != "ok" or entry.get("input_sha256") != in_hash:
        return False
    target = out / entry["output"]
    return target.exists() and sha256_file(target) == entry.get("output_sha256")


def _load_reference(cfg: PhotoProtectConfig, surrogate_meta: dict) -> ImageTensors:
    if cfg.reference is None:
        return load_reference(cfg.surrogate)
    data = load_dataset(cfg.reference, "train", cfg.data_root, size=surrogate_meta["input_size"])
    if data.num_classes != len(surrogate_meta["classes"]):
        raise UnlearnableError(f"reference {cfg.reference} has {data.num_classes} classes but the surrogate "
                               f"was trained on {len(surrogate_meta['classes'])}")
    idx = balanced_subset(data.labels, cfg.reference_per_class * data.num_classes, cfg.search.seed)
    return data.subset(idx)


def protect_photos(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   config: PhotoProtectConfig | None = None, on_event: Event | None = None) -> dict:
    """Protect every photo under ``inputs`` into ``out_dir`` (same relative paths, formats and sizes).
    Returns the manifest (also written to ``out_dir/manifest.json``). Per-file problems are recorded
    as ``status: "error"`` entries; whole-run problems raise ``UnlearnableError``.
    ``on_event(kind, info)`` reports 'preview', 'round', 'search-progress', 'photo' events."""
    cfg = config or PhotoProtectConfig()
    emit = on_event or (lambda kind, info: None)
    t_start = time.perf_counter()
    out = Path(out_dir)
    photos, skipped = discover([Path(p) for p in inputs], out)
    dev = resolve_device(cfg.device)
    settings = json.loads(json.dumps(cfg.fingerprint()))  # as it reads back from the manifest
    old: dict[str, dict] = {}
    if (out / MANIFEST).exists():
        try:
            prev = json.loads((out / MANIFEST).read_text())
            if prev.get("settings") == settings:
                old = {e["output"]: e for e in prev.get("images", []) if "output" in e}
        except (OSError, ValueError, KeyError):
            old = {}
    out.mkdir(parents=True, exist_ok=True)
    surrogate, smeta = load_surrogate(cfg.surrogate, dev)
    weights_file = Path(cfg.surrogate) if str(cfg.surrogate).endswith(".pt") else None

    # phase 1: hashes, resume check, previews
    phase_t = {"start": time.perf_counter()}
    entries: dict[str, dict] = {}
    todo: list[tuple[PhotoFile, str]] = []
    hashed = _parallel(lambda p: _safe(sha256_file, p.path), photos, cfg.workers)
    for p, (h, err) in zip(photos, hashed):
        rel = p.rel.as_posix()
        base = {"input": str(p.path), "output": rel, "label": p.label}
        if err:
            entries[rel] = {**base, "status": "error", "error": err}
        elif rel in old and _entry_ok(old[rel], out, h):
            entries[rel] = {**old[rel], "resumed": True}
        else:
            entries[rel] = {**base, "input_sha256": h}
            todo.append((p, h))
    max_px = int(cfg.max_megapixels * 1e6)
    previews = _parallel(lambda t: _safe(read_preview, t[0].path, cfg.work_size, max_px), todo, cfg.workers)
    ready: list[tuple[PhotoFile, str, np.ndarray]] = []
    for (p, h), (arr, err) in zip(todo, previews):
        if err:
            entries[p.rel.as_posix()].update(status="error", error=err)
        else:
            ready.append((p, h, arr))
        emit("preview", {"done": len(ready), "total": len(todo)})

    # phase 2: labels and the noise search (or its saved result)
    phase_t["previews"] = time.perf_counter()
    search_info: dict = {"phase_seconds": {"read": phase_t["previews"] - phase_t["start"]}}
    if ready:
        hashes = [h for _, h, _ in ready]
        state = out / STATE_DIR / "search.pt"
        saved = torch.load(state, map_location="cpu", weights_only=True) if state.exists() else None
        if saved is not None and saved.get("settings") == settings and set(hashes) <= set(saved["hashes"]):
            # a crash or Ctrl-C after the search: reuse its noise for the photos still to write
            at = {h: i for i, h in enumerate(saved["hashes"])}
            rows = torch.tensor([at[h] for h in hashes])
            per_photo, history = saved["per_photo"][rows], [PhotoRound(**r) for r in saved["history"]]
            label_names = list(saved["classes"])
            labels = saved["photo_class"][rows]
            search_info["resumed"] = True
        else:
            x = torch.from_numpy(np.stack([a for _, _, a in ready])).permute(0, 3, 1, 2).contiguous()
            if cfg.label_free:
                labels, label_names = pseudo_labels(surrogate, x, cfg.clusters, cfg.search.seed)
            else:
                label_names = sorted({p.label for p, _, _ in ready})
                labels = torch.tensor([label_names.index(p.label) for p, _, _ in ready])
            reference = _load_reference(cfg, smeta)
            delta, history = photo_noise(
                x, labels, len(label_names), surrogate, reference, cfg.search,
                on_round=lambda r: emit("round", asdict(r)),
                on_progress=lambda phase, d, t: emit("search-progress", {"phase": phase, "done": d, "total": t}))
            per_photo = delta[labels] if cfg.search.mode == "classwise" else delta
            state.parent.mkdir(exist_ok=True)
            tmp = state.with_name("search.pt.tmp")
            torch.save({"settings": settings, "hashes": hashes, "per_photo": per_photo, "photo_class": labels,
                        "classes": label_names, "history": [asdict(r) for r in history]}, tmp)
            os.replace(tmp, state)
        search_info.update(rounds=len(history), history=[asdict(r) for r in history],
                           seconds=sum(r.seconds for r in history), classes=label_names,
                           class_sizes=torch.bincount(labels, minlength=len(label_names)).tolist())
        for (p, _, _), lab in zip(ready, labels.tolist()):
            entries[p.rel.as_posix()]["class"] = label_names[lab]

        # phase 3: full-size outputs
        phase_t["search"] = time.perf_counter()
        search_info["phase_seconds"]["search"] = phase_t["search"] - phase_t["previews"]

        def finish(i: int) -> dict:
            p, h, _ = ready[i]
            return _protect_one(p, h, per_photo[i], out, cfg, max_px)

        with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
            for i, result in enumerate(pool.map(finish, range(len(ready)))):
                entries[ready[i][0].rel.as_posix()].update(result)
                # recorded after every photo, so an interrupted run resumes from the last one written
                _write_manifest(out, cfg, settings, smeta, weights_file, dev, entries, skipped, search_info, t_start)
                emit("photo", {"done": i + 1, "total": len(ready), "entry": entries[ready[i][0].rel.as_posix()]})
        search_info["phase_seconds"]["write"] = time.perf_counter() - phase_t["search"]
    return _write_manifest(out, cfg, settings, smeta, weights_file, dev, entries, skipped, search_info, t_start)


def _protect_one(p: PhotoFile, in_hash: str, delta: torch.Tensor, out: Path, cfg: PhotoProtectConfig,
                 max_px: int) -> dict:
    entry, err = _safe(_write_protected, p, in_hash, delta, out, cfg, max_px)
    return {"status": "error", "error": err} if err else entry


def _write_protected(p: PhotoFile, in_hash: str, delta: torch.Tensor, out: Path, cfg: PhotoProtectConfig,
                     max_px: int) -> dict:
    """Read one photo at full size, add its upsampled δ, write it, and measure it (manifest entry)."""
    photo = read_photo(p.path, max_pixels=max_px, keep_gps=cfg.keep_gps)
    if sha256_file(p.path) != in_hash:
        raise PhotoError("the file changed while it was being protected; run again")
    pixels, worst = apply_noise(photo.pixels, delta)
    target = out / p.rel
    write_photo(target, photo, pixels, quality=cfg.quality)
    max_level = float(np.iinfo(photo.pixels.dtype).max)
    entry = {"status": "ok", "output_sha256": sha256_file(target), "width": photo.size[0],
             "height": photo.size[1], "format": photo.format, "source_mode": photo.source_mode,
             "channels": int(photo.pixels.shape[2]), "bit_depth": 16 if max_level > 255 else 8,
             "eps": cfg.search.eps, "eps_255": cfg.search.eps * 255,
             "max_change_levels": worst, "max_change": worst / max_level,
             "notes": list(photo.notes)}
    if cfg.metrics:
        value = psnr(photo.pixels, pixels, data_range=max_level)
        entry["psnr"] = value if np.isfinite(value) else None  # identical: no finite PSNR
        entry["ssim"] = ssim(photo.pixels, pixels, data_range=max_level)
    return entry


def _write_manifest(out: Path, cfg: PhotoProtectConfig, settings: dict, smeta: dict, weights_file: Path | None,
                    dev: torch.device, entries: dict[str, dict], skipped, search_info: dict, t_start: float) -> dict:
    images = [entries[k] for k in sorted(entries)]
    ok = [e for e in images if e.get("status") == "ok"]
    fresh = [e for e in ok if not e.get("resumed")]
    summary = {
        "photos": len(images), "ok": len(ok), "protected_now": len(fresh), "resumed": len(ok) - len(fresh),
        "failed": sum(e.get("status") == "error" for e in images),
        "pending": sum("status" not in e for e in images),
        "mean_psnr": _mean([e.get("psnr") for e in ok]), "mean_ssim": _mean([e.get("ssim") for e in ok]),
        "max_change_levels": max((e.get("max_change_levels", 0) for e in ok), default=0),
        "wall_seconds": time.perf_counter() - t_start,
    }
    manifest = {
        "format": FORMAT, "tool": "unlearnable", "version": __version__, "torch": str(torch.__version__),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(dev),
        "surrogate": {"name": smeta.get("name"), "arch": smeta.get("arch"), "dataset": smeta.get("dataset"),
                      "test_accuracy": smeta.get("test_accuracy"),
                      "file": str(weights_file) if weights_file else f"(shipped) {smeta.get('name')}"},
        "seed": cfg.search.seed, "eps": cfg.search.eps, "eps_255": cfg.search.eps * 255,
        "settings": settings, "search": search_info, "summary": summary,
        "images": images, "skipped_files": [{"path": str(p), "reason": r} for p, r in skipped],
    }
    write_json_atomic(manifest, out / MANIFEST)
    return manifest


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _safe(fn, *args):
    """(result, None) or (None, one-line error) for a per-file call."""
    try:
        return fn(*args), None
    except PhotoError as e:
        return None, str(e)
    except (OSError, ValueError, MemoryError) as e:
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


def _parallel(fn, items: list, workers: int) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
