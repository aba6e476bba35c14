"""Protect a folder of personal photos: previews -> min-min noise search -> full-size outputs.

Three phases, each resumable:

1. *Previews*: every photo's sha256 is recorded; the photos that need a search (or, with
   ``--label-free``, a cluster) are decoded once at reduced scale, from the very bytes that were
   hashed, and squashed to ``work_size`` × ``work_size``. Unreadable files get one error line and are
   left out.
2. *Search*: ``photo_noise`` against the embedded (or a given) surrogate, by default its architecture
   initialised afresh from the seed, or (``surrogate_start`` pretrained) from its weights, and its
   reference bank. The
   patterns are saved to ``OUT/.unlearnable/search.pt`` with the hashes and classes they were
   searched for, so a crash in phase 3 does not redo it, and *a class keeps one pattern*: a photo
   added to a class after a finished run gets that class's stored pattern (``"pattern":
   "class-reused"`` in its manifest entry); only classes without a stored pattern (and, sample-wise,
   photos without one) are searched. Everything loaded is validated, the ε budget included
   (‖δ‖∞ ≤ ε); a damaged, foreign or over-budget state is reported and searched again.
3. *Outputs*: each photo is decoded at full size from the bytes it is hashed from (its hash must still
   be the one of phase 1), δ is upsampled onto it (``apply_noise``), and it is written in the source
   format by ``write_photo``, which decodes the written file again before renaming it into place.
   That decode is what a scraper gets, so the manifest's ``max_change_levels``, ``psnr`` and ``ssim``
   describe the written file (for JPEG the change exceeds ε: compression adds to the noise), next to
   the budget ``eps`` and the change the noise itself made (``noise_max_levels``). Each finished
   photo's entry is appended to ``OUT/.unlearnable/entries.jsonl`` (``outdir.EntryLog``) and
   ``OUT/manifest.json`` is written atomically once, at the end (or on Ctrl-C); a killed run's
   entries are rebuilt from the earlier manifest plus that log. On a rerun, photos whose recorded
   input, pattern and output hashes still match are skipped.

Reads of each input file: one in phase 1 (hash and preview), one in phase 3 (hash check and full
decode); with ``perceptual`` one more in phase 2 for each photo searched (a 256-pixel preview for its
JND mask, ``noise.perceptual.preview_masks``); a file over ``storage.KEEP_IN_MEMORY`` (256 MiB) is not
held in memory, so it is read once more in each phase where it is decoded. Photos resumed from an
earlier run are read in phase 1 only. Holding every file's bytes from phase 1 to phase 3 would save a
read but cost the whole album in memory during the search.

The output folder is guarded by ``outdir``: one run at a time (lock), no file the tool did not write
is replaced (journal of written files; such a file makes the run refuse to start), no output through
a symbolic link out of OUT, and temp files of a killed run are removed on the next run.
"""
from __future__ import annotations

import functools
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..data.datasets import ImageTensors, balanced_subset, imagefolder_root, load_dataset
from ..data.photos.decode import read_photo, read_preview, to_rgb8
from ..data.photos.encode import write_photo
from ..data.photos.files import PhotoFile, UsageError, discover
from ..data.photos.outdir import STATE_DIR, EntryLog, Journal, OutputLock, check_inside, remove_leftovers, state_dir
from ..data.photos.photo import Photo, PhotoError
from ..data.pseudo_labels import nearest_cluster, pseudo_labels_with_centroids
from ..data.storage import OutputError, read_hashed, sha256_bytes, sha256_file, write_atomic
from ..device import resolve_device
from ..errors import UnlearnableError
from ..eval.blotch import blotch
from ..eval.quality import max_abs_difference, psnr, ssim, ssim_defined
from ..events import Event, emitter
from ..faces.align import CROP_SIZE, fit_similarity
from ..faces.detect import detect_faces
from ..faces.noise import SMALL_FACE, aligned_crops, face_config, face_noise, paste_faces
from ..faces.surrogate import face_surrogate
from ..noise.minmin import MinMinConfig
from ..noise.perceptual import noise_shaper, perceptual_photo_noise, preview_masks, settings as perceptual_settings
from ..noise.problems import photo_noise
from ..noise.upsample import EPS_TOLERANCE, apply_noise
from ..noise.views import FACE_VIEW, PHOTO_VIEW, ViewConfig
from ..train.surrogate import DEFAULT_NAME, fresh_surrogate, load_reference, load_surrogate

NO_FACE_RULES = ("skip", "whole")
SURROGATE_STARTS = ("fresh", "pretrained")
MANIFEST = "manifest.json"
STATE = "search.pt"
FORMAT = "unlearnable-protected-photos/1"
STATE_FORMAT = "unlearnable-photo-search/2"
# What the manifest's figures measure (written into it, so that a reader need not guess).
MEASURED = {
    "eps": "noise budget: every pixel of the added noise is within ±ε before encoding",
    "noise_max_levels": "largest change the noise made to a pixel before encoding (≤ round(ε · max level))",
    "max_change_levels": "largest change of a pixel of the written file, as decoded, against the original as "
                         "decoded (what a scraper gets; JPEG/lossy WebP/HEIF compression adds to the noise)",
    "psnr_ssim": "PSNR (dB) and SSIM (Wang et al. 2004, 11x11 Gaussian window) of the written file as decoded "
                 "against the original as decoded; SSIM is null below 11x11 pixels, both null with --no-metrics",
    "blotch": "RMS (8-bit levels) of the written file's chroma change (blotch_luma: luma change), low-passed by a "
              "9x9 box mean, over the flat pixels of the original (7x7 luma std < 3 levels; flat_share of the "
              "photo): the smooth colour blotches PSNR/SSIM miss (unlearnable.eval.blotch); null without flat pixels",
}
MEASURED_FACES = {
    "faces": "every face MTCNN found (box [x1, y1, x2, y2] and size in full-size pixels, probability); each got "
             "its person's pattern through the inverse alignment; 'small' faces (box under 40 pixels) are "
             "protected but weakly: a scraper upsamples them",
    "face_psnr_ssim": "PSNR/SSIM of the written file against the original on each face's box (clipped to the photo)",
}


def search_config(faces: bool, **overrides) -> MinMinConfig:
    """The search schedule of a protect run: the face one (``faces.noise.face_config``) with ``faces``,
    else the photo one (``MinMinConfig.for_photos``), with ``overrides``."""
    return (face_config if faces else MinMinConfig.for_photos)(**overrides)


@dataclass
class PhotoProtectConfig:
    """What ``unlearnable protect`` does; ε in [0, 1] pixel units (the CLI's 8 means 8/255)."""

    search: MinMinConfig = field(default_factory=MinMinConfig.for_photos)
    view: ViewConfig = field(default_factory=lambda: replace(PHOTO_VIEW))  # the search's scraper views (views.py)
    reference_batch: int = 64       # clean reference images per surrogate step
    photo_batch: int = 32           # perturbed photos per surrogate step (drawn with replacement)
    work_size: int = 64             # photos are searched squashed to work_size x work_size
    label_free: bool = False        # pseudo-classes from clustering instead of folder names
    clusters: int | None = None     # number of pseudo-classes with label_free (default: about n/5, 2..10)
    surrogate: str = DEFAULT_NAME   # shipped name or path of a .pt from `unlearnable train-surrogate`
    # "fresh": the search trains the surrogate's architecture from scratch (train.surrogate.fresh_surrogate),
    # "pretrained": from its weights; None: fresh, but pretrained with face_weights (measured: README "Where
    # the search's surrogate starts"; whole photos start fresh since 2026-11-30, with the white-balanced views)
    surrogate_start: str | None = None
    reference: str | None = None    # None: the surrogate's shipped bank; else a dataset name / ImageFolder
    reference_per_class: int = 50
    quality: int = 95               # JPEG/WebP quality of the outputs
    keep_gps: bool = False
    max_megapixels: float = 150.0
    workers: int = 2                # threads decoding/encoding photos (Pillow releases the GIL)
    metrics: bool = True            # PSNR/SSIM of every written file against its original
    faces: bool = False             # protect the faces: one pattern per person on aligned crops (unlearnable.faces)
    no_face: str = "skip"           # faces mode, photo without a face: "skip" (not written) or "whole"
    detect_side: int = 1024         # faces mode: detect on a copy at most this many pixels on its long side
    face_weights: str | None = None  # faces mode: a facenet-pytorch state dict -> Inception-ResNet-v1 surrogate
    perceptual: bool = False        # JND-shaped, luma-heavy noise, in the search too (unlearnable.noise.perceptual)
    data_root: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        bad = [f"{name} must be {rule}, got {value}" for name, value, ok, rule in (
            ("work size", self.work_size, self.work_size >= 1, ">= 1"),
            ("clusters", self.clusters, self.clusters is None or self.clusters >= 1, ">= 1"),
            ("max megapixels", self.max_megapixels, self.max_megapixels > 0, "> 0"),
            ("workers", self.workers, self.workers >= 1, ">= 1"),
            ("quality", self.quality, 1 <= self.quality <= 100, "in 1..100"),
            ("reference per class", self.reference_per_class, self.reference_per_class >= 1, ">= 1"),
            ("no-face rule", self.no_face, self.no_face in NO_FACE_RULES, " or ".join(NO_FACE_RULES)),
            ("detection side", self.detect_side, self.detect_side >= 64, ">= 64"),
            ("surrogate start", self.surrogate_start, self.surrogate_start in SURROGATE_STARTS + (None,),
             " or ".join(SURROGATE_STARTS)),
        ) if not ok]
        if self.surrogate_start is None:
            self.surrogate_start = "pretrained" if self.face_weights else "fresh"
        if self.face_weights and self.surrogate_start == "fresh":
            bad.append("--face-weights gives a pretrained surrogate; --surrogate-start fresh would discard its "
                       "weights")
        if self.faces and self.view == PHOTO_VIEW:  # the photo views are the default: take the face views
            self.view = FACE_VIEW
        if self.faces and self.search == MinMinConfig.for_photos():  # likewise the face schedule (face_config)
            self.search = face_config()
        if self.faces and (self.search.mode != "classwise" or self.label_free):
            bad.append("--faces protects one pattern per person: it needs --mode classwise and folder labels "
                       "(not --label-free)")
        if self.faces and self.perceptual:
            bad.append("--perceptual shapes whole-photo noise; it does not apply with --faces")
        if bad:
            raise UsageError("; ".join(bad))

    def fingerprint(self) -> dict:
        """The settings that change the outputs (a rerun with other ones must not mix outputs)."""
        s = asdict(self)
        s["search"] = self.search.settings()
        for k in ("workers", "metrics", "device", "data_root", "max_megapixels"):
            s.pop(k)
        if not self.faces:  # settings of photo mode stay what they were before faces existed
            for k in ("faces", "no_face", "detect_side", "face_weights"):
                s.pop(k)
        if self.surrogate_start == "pretrained":  # settings of pretrained runs stay what they were before
            s.pop("surrogate_start")
        if not self.view.white_balance:  # settings without white-balanced views stay what they were before them
            s["view"].pop("white_balance")
        if self.perceptual:
            s["perceptual"] = perceptual_settings()
        else:  # settings without the perceptual budget stay what they were before it existed
            s.pop("perceptual")
        return s

    @property
    def pattern_size(self) -> int:
        """Side of the stored patterns: the aligned face crop with ``faces``, else ``work_size``."""
        return CROP_SIZE if self.faces else self.work_size


def protect_photos(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   config: PhotoProtectConfig | None = None, on_event: Event | None = None) -> dict:
    """Protect every photo under ``inputs`` into ``out_dir`` (same relative paths, formats and sizes).

    Returns the manifest (also written to ``out_dir/manifest.json``). Per-file problems are recorded
    as ``status: "error"`` entries, folders that cannot be read under ``unreadable``; if the manifest
    itself could not be written (full disk), ``manifest_error`` says why. Raises :class:`UsageError`
    (nothing written) for bad inputs or settings, an existing file in OUT that this tool did not write,
    an output through a symbolic link, or another run holding OUT; :class:`OutputError` when OUT
    cannot be written at all. ``on_event(kind, info)`` (``unlearnable.events``) reports 'notice',
    'progress' (phases 'reading photos', 'searching noise (train|search)', 'writing photos', the last
    with each written photo's manifest ``entry``) and 'round' events."""
    cfg = config or PhotoProtectConfig()
    emit = emitter(on_event)
    t_start = time.perf_counter()
    out = Path(out_dir)
    unreadable: list[tuple[Path, str]] = []
    photos, skipped = discover([Path(p) for p in inputs], out, unreadable, include_refused=True)
    check_inside(out, [p.rel for p in photos])
    dev = resolve_device(cfg.device)
    if cfg.faces and (cfg.face_weights or (cfg.reference is not None and
                                           imagefolder_root(cfg.reference, "train") is not None)):
        # other people's faces: a fresh head over them (unlearnable.faces.surrogate)
        surrogate, smeta = face_surrogate(cfg.face_weights, cfg.reference, dev, cfg.surrogate)
    else:
        surrogate, smeta = load_surrogate(cfg.surrogate, dev)
    # read-only checks first, so that a refusal leaves nothing behind
    journal = Journal(out)
    _survey(out, journal)
    _refuse_foreign(out, photos, journal)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    with OutputLock(out):
        journal.reload()
        run = _Run(cfg, out, emit, journal, smeta, dev, t_start, photos, skipped, unreadable)
        return run.go(surrogate)


def _survey(out: Path, journal: Journal) -> tuple[dict | None, str | None]:
    """(our earlier manifest or None, why it is damaged or None). An OUT/manifest.json that is not ours
    raises :class:`UsageError`; one that is unreadable counts as ours (and damaged) only if this tool
    has worked in OUT before (its journal exists). Outputs it records are added to ``journal``."""
    path = out / MANIFEST
    if not os.path.lexists(path):
        return None, None
    if os.path.islink(path) or not path.is_file():
        raise UsageError(f"{path} exists and is not a manifest written by unlearnable; refusing to replace it: "
                         "move it away or choose another output folder")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        if journal.exists:
            return None, f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise UsageError(f"{path} exists, is not valid JSON and no earlier run of unlearnable is recorded in "
                         f"{out}; refusing to replace it: move it away or choose another output folder") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt != FORMAT:
        what = f"its format is {fmt!r}" if fmt is not None else "it has no unlearnable format field"
        raise UsageError(f"{path} exists and was not written by unlearnable ({what}); refusing to replace it: "
                         "move it away or choose another output folder")
    data["images"] = [e for e in data.get("images", []) if isinstance(e, dict) and isinstance(e.get("output"), str)
                      and isinstance(e.get("output_sha256"), str)] if isinstance(data.get("images"), list) else []
    for e in data["images"]:
        journal.add(e["output"], e["output_sha256"])
    return data, None


def _refuse_foreign(out: Path, photos: list[PhotoFile], journal: Journal) -> None:
    """:class:`UsageError` if a file is at some output path and this tool did not write it (as it is)."""
    foreign = [out / p.rel for p in photos if not journal.owns(out / p.rel)]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        changed = journal.wrote_path(foreign[0])
        why = "was changed since unlearnable wrote it" if changed else "was not written by unlearnable"
        raise UsageError(f"{foreign[0]}{more} is in the output folder and {why}; refusing to overwrite it: "
                         f"move {'them' if more else 'it'} away (or delete to redo) or choose another output folder")


@dataclass
class _Noise:
    """The pattern a photo gets: δ (3, S, S) in [-ε, ε], its hash, and where it came from."""

    delta: torch.Tensor
    sha256: str
    source: str  # "searched" (this run), "stored" (an earlier search that included it), "class-reused"
    label: str   # its class


class _Run:
    """One protect run under the lock (state kept here rather than passed through ten functions)."""

    def __init__(self, cfg, out, emit, journal, smeta, dev, t_start, photos, skipped, unreadable) -> None:
        self.cfg, self.out, self.emit, self.journal = cfg, out, emit, journal
        self.smeta, self.dev, self.t_start = smeta, dev, t_start
        self.photos, self.skipped, self.unreadable = photos, skipped, unreadable
        self.settings = json.loads(json.dumps(cfg.fingerprint()))  # as it reads back from the manifest
        self.noise_settings = {k: v for k, v in self.settings.items() if k not in ("quality", "keep_gps")}
        self.weights_file = (Path(cfg.face_weights) if cfg.faces and cfg.face_weights else
                             Path(cfg.surrogate) if str(cfg.surrogate).endswith(".pt") else None)
        self.manifest_error: str | None = None
        self.entries: dict[str, dict] = {}
        self.log = EntryLog(out)
        self.log_failed = False
        self.found_faces: dict[Path, list] = {}   # faces mode: path -> faces found when read for the search
        self.search_info: dict = {"phase_seconds": {}}

    def notice(self, message: str) -> None:
        self.emit("notice", {"message": message})

    def go(self, surrogate) -> dict:
        cfg, out = self.cfg, self.out
        sdir = state_dir(out)
        prev, damaged = _survey(out, self.journal)
        self.journal.touch()  # from now on OUT is known to be ours to work in
        if damaged:
            kept = sdir / f"manifest.damaged-{time.strftime('%Y%m%dT%H%M%S')}.json"
            try:
                os.replace(out / MANIFEST, kept)
                where = f"kept as {kept}"
            except OSError as e:
                where = f"could not be moved aside ({e.strerror or e})"
            self.notice(f"{out / MANIFEST} was damaged ({damaged}); {where}; redoing the work it recorded")
        old: dict[str, dict] = {}
        if prev is not None and prev.get("settings") == self.settings:
            old = {e["output"]: e for e in prev["images"]}
        old.update(self.log.read(self.settings))  # what a run killed after that manifest finished
        removed = remove_leftovers(out, [p.rel for p in self.photos])
        if removed:
            self.notice(f"removed {len(removed)} temporary file(s) left by an interrupted run")

        # phase 1: hashes, and previews of the photos to search or cluster (one read of each file)
        t0 = time.perf_counter()
        state = self.load_state()
        readable, previews = self.scan(state)

        # phase 2: the noise of every readable photo (stored, or searched now)
        noise = self.noise_for(readable, previews, state, surrogate, t0)
        todo = []
        for p, h in readable:
            rel, n = p.rel.as_posix(), noise.get(p.rel.as_posix())
            if n is None and cfg.faces and "status" not in self.entries[rel]:
                self.entries[rel].update(status="skipped", faces=[], reason="no face found (in no photo of its "
                                         "class either, so there is no pattern to give it)")
            if n is None:
                continue  # its preview failed: already an error entry
            self.entries[rel]["class"] = n.label
            if rel in old and self.resumable(old[rel], h, n):
                self.entries[rel] = {**old[rel], "input": str(p.path), "class": n.label, "resumed": True}
            else:
                self.entries[rel].update(pattern=n.source, pattern_sha256=n.sha256)
                todo.append((p, h, n))

        # phase 3: full-size outputs
        t_write = time.perf_counter()
        max_px = int(cfg.max_megapixels * 1e6)
        pool = ThreadPoolExecutor(max_workers=cfg.workers)
        futures = [pool.submit(_protect_one, p, h, n, out, cfg, max_px, self.journal, self.found_faces.get(p.path))
                   for p, h, n in todo]
        done = 0
        try:
            for (p, _, _), fut in zip(todo, futures):
                self.record(p, fut.result())
                done += 1
                self.emit("progress", {"phase": "writing photos", "done": done, "total": len(todo),
                                       "entry": self.entries[p.rel.as_posix()]})
        except BaseException:  # Ctrl-C: finish the photos being written, start no more, record what is done
            pool.shutdown(wait=True, cancel_futures=True)
            for (p, _, _), fut in list(zip(todo, futures))[done:]:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self.record(p, fut.result())
            self.write_manifest()
            raise
        pool.shutdown(wait=True)
        self.search_info["phase_seconds"]["write"] = time.perf_counter() - t_write
        return self.write_manifest()

    def record(self, p: PhotoFile, result: dict) -> None:
        """Take a written photo's result into its entry and, when it is ok, log the entry at once
        (``outdir.EntryLog``): a run killed before the manifest is written resumes from the log."""
        entry = self.entries[p.rel.as_posix()]
        entry.update(result)
        if entry.get("status") != "ok":
            return
        try:
            self.log.append(entry)
        except OSError as e:
            if not self.log_failed:
                self.notice(f"cannot log finished photos in {self.log.path} ({e.strerror or e}); they are "
                            "recorded in the manifest at the end (if this run is killed first, a rerun "
                            "writes them again)")
            self.log_failed = True

    def resumable(self, entry: dict, in_hash: str, n: _Noise) -> bool:
        if entry.get("status") != "ok" or entry.get("input_sha256") != in_hash:
            return False
        if entry.get("pattern_sha256") != n.sha256 or not isinstance(entry.get("output"), str):
            return False
        return self.journal.hash_of(self.out / entry["output"]) == entry.get("output_sha256")

    # ------------------------------------------------------------------------------------------- noise

    def scan(self, state: dict | None) -> tuple[list[tuple[PhotoFile, str]], list[tuple[PhotoFile, str, np.ndarray]]]:
        """Hash every photo and decode a preview of those that need one (to be searched, or, label-free,
        to join a stored cluster), from one read of each file. Returns (readable photos with their
        hashes, previews in photo order); failures become error entries."""
        cfg = self.cfg
        at = {h: i for i, h in enumerate(state["hashes"])} if state else set()
        classes = set(state["classes"]) if state else set()
        if cfg.search.mode == "classwise" and not cfg.label_free:
            def wants(p: PhotoFile, h: str) -> bool:
                return p.label not in classes
        else:
            def wants(p: PhotoFile, h: str) -> bool:
                return h not in at
        max_px = int(cfg.max_megapixels * 1e6)
        if cfg.faces:  # the aligned crops of its faces
            preview: Callable = lambda path, data: _face_crops(path, max_px, data, cfg.detect_side,  # noqa: E731
                                                               self.found_faces)
        else:
            preview = lambda path, data: read_preview(path, cfg.work_size, max_px, data)  # noqa: E731
        scanned = _parallel(lambda p: _scan(p, wants, preview), self.photos, cfg.workers)
        readable: list[tuple[PhotoFile, str]] = []
        need = []
        for p, (h, err, preview) in zip(self.photos, scanned):
            rel = p.rel.as_posix()
            self.entries[rel] = {"input": str(p.path), "output": rel, "label": p.label}
            if err:
                self.entries[rel].update(status="error", error=err)
                continue
            self.entries[rel]["input_sha256"] = h
            readable.append((p, h))
            if preview is not None:
                need.append((p, h, preview))
        ready = []
        for p, h, (arr, err) in need:
            if err:
                self.entries[p.rel.as_posix()].update(status="error", error=err)
            else:
                ready.append((p, h, arr))
            self.emit("progress", {"phase": "reading photos", "done": len(ready), "total": len(need)})
        return readable, ready

    def noise_for(self, readable: list[tuple[PhotoFile, str]], previews: list[tuple[PhotoFile, str, np.ndarray]],
                  state: dict | None, surrogate, t0: float) -> dict[str, _Noise]:
        """The noise of every readable photo: stored in ``state``, or searched now on ``previews``."""
        cfg = self.cfg
        classwise = cfg.search.mode == "classwise"
        at = {h: i for i, h in enumerate(state["hashes"])} if state else {}
        classes = list(state["classes"]) if state else []

        def stored_label(h: str) -> str | None:
            return classes[int(state["photo_class"][at[h]])] if state and h in at else None

        t_search = time.perf_counter()
        self.search_info["phase_seconds"]["read"] = t_search - t0
        labels: dict[str, str] = {}  # rel -> class
        for p, h in readable:
            labels[p.rel.as_posix()] = p.label if not cfg.label_free else (stored_label(h) or "")
        searched_now: dict | None = None
        if cfg.label_free and state is not None and previews:  # join the nearest stored cluster
            x = _stack([a for _, _, a in previews])
            near = nearest_cluster(surrogate, x, state["centroids"]).tolist()
            for (p, _, _), k in zip(previews, near):
                labels[p.rel.as_posix()] = classes[k]
            to_search = [] if classwise else previews
        else:
            to_search = previews
        if to_search:
            state, searched_now = self.search(to_search, state, labels, surrogate)
            if state is None:  # faces mode, and not one face in any photo
                return {}
            at = {h: i for i, h in enumerate(state["hashes"])}
            classes = list(state["classes"])
        self.search_info["phase_seconds"]["search"] = time.perf_counter() - t_search

        noise: dict[str, _Noise] = {}
        if state is None:
            return noise
        shas = [sha256_bytes(d.contiguous().numpy().tobytes()) for d in state["patterns"]]
        searched = set(searched_now["hashes"]) if searched_now else set()
        for p, h in readable:
            rel = p.rel.as_posix()
            if cfg.label_free and not labels[rel]:
                continue  # no preview: error entry
            if classwise:
                if labels[rel] not in classes:
                    continue
                k = classes.index(labels[rel])
                in_search = h in at and int(state["photo_class"][at[h]]) == k  # searched as one of this class
                src = "searched" if h in searched else ("stored" if in_search else "class-reused")
            else:
                if h not in at:
                    continue
                k = at[h]
                src = "searched" if h in searched else "stored"
            noise[rel] = _Noise(state["patterns"][k], shas[k], src, labels[rel])
        self.describe_search(state, searched_now, noise)
        return noise

    def search(self, ready: list[tuple[PhotoFile, str, np.ndarray]], state: dict | None, labels: dict[str, str],
               surrogate) -> tuple[dict, dict]:
        """Search the noise of ``ready`` and merge it into ``state`` (a new one if None); save it."""
        cfg = self.cfg
        if cfg.faces:
            return self.search_faces(ready, state, labels, surrogate)
        x = _stack([a for _, _, a in ready])
        centroids = state["centroids"] if state else None
        if cfg.label_free and state is None:
            lab, names, centroids = pseudo_labels_with_centroids(surrogate, x, cfg.clusters, cfg.search.seed)
            for (p, _, _), k in zip(ready, lab.tolist()):
                labels[p.rel.as_posix()] = names[k]
        local = sorted({labels[p.rel.as_posix()] for p, _, _ in ready})
        y = torch.tensor([local.index(labels[p.rel.as_posix()]) for p, _, _ in ready])
        search = photo_noise
        if cfg.perceptual:  # the JND masks enter the search (noise.perceptual.PerceptualProblem)
            masks = preview_masks([p.path for p, _, _ in ready], cfg.work_size, cfg.search.eps,
                                  int(cfg.max_megapixels * 1e6))
            search = functools.partial(perceptual_photo_noise, masks=masks)
        delta, history = search(
            x, y, len(local), self.search_model(surrogate), _load_reference(cfg, self.smeta), cfg.search,
            on_round=lambda r: self.emit("round", asdict(r)),
            on_progress=lambda phase, d, t: self.emit("progress", {"phase": f"searching noise ({phase})", "done": d,
                                                                   "total": t}),
            view=cfg.view, reference_batch=cfg.reference_batch, photo_batch=cfg.photo_batch)
        return self.merge(state, ready, local, y, delta, history, centroids)

    def search_model(self, surrogate):
        """The surrogate the min-min starts from: ``surrogate`` itself, or (``surrogate_start`` fresh) its
        architecture initialised afresh from the search seed. Label-free clustering keeps the pretrained one."""
        if self.cfg.surrogate_start == "pretrained":
            return surrogate
        return fresh_surrogate(surrogate, self.cfg.search.seed)

    def surrogate_record(self) -> dict:
        """The manifest's account of the search's surrogate: the loaded one, or (fresh start) its architecture
        initialised afresh, named so, with no weights file or accuracy (those of the loaded model it was
        built from did not reach the search; ``built_from`` names it)."""
        cfg, smeta = self.cfg, self.smeta
        rec = {"name": smeta.get("name"), "arch": smeta.get("arch"), "dataset": smeta.get("dataset"),
               "test_accuracy": smeta.get("test_accuracy"), "start": cfg.surrogate_start,
               "file": str(self.weights_file) if self.weights_file else f"(shipped) {smeta.get('name')}"}
        if cfg.surrogate_start == "fresh":
            rec.update(name=f"{smeta.get('arch')} initialised afresh (seed {cfg.search.seed})", test_accuracy=None,
                       file=None, built_from=smeta.get("name"))
        return rec

    def search_faces(self, ready: list[tuple[PhotoFile, str, torch.Tensor]], state: dict | None,
                     labels: dict[str, str], surrogate) -> tuple[dict, dict]:
        """Faces mode: one pattern per person (class) on the aligned crops of its photos' faces. Classes
        none of whose photos has a face get no pattern (their photos follow the no-face rule)."""
        cfg = self.cfg
        local = sorted({labels[p.rel.as_posix()] for p, _, c in ready if len(c)})
        crops = [c for p, _, c in ready if len(c)]
        people = [local.index(labels[p.rel.as_posix()]) for p, _, c in ready if len(c) for _ in range(len(c))]
        if not local:
            return state, None
        delta, history = face_noise(
            torch.cat(crops), torch.tensor(people), len(local), self.search_model(surrogate),
            _load_reference(cfg, self.smeta),
            cfg.search, view=cfg.view,
            on_round=lambda r: self.emit("round", asdict(r)),
            on_progress=lambda phase, d, t: self.emit("progress", {"phase": f"searching noise ({phase})",
                                                                   "done": d, "total": t}),
            reference_batch=cfg.reference_batch, photo_batch=cfg.photo_batch)
        searched = [(p, h, c) for p, h, c in ready if labels[p.rel.as_posix()] in local]
        y = torch.tensor([local.index(labels[p.rel.as_posix()]) for p, _, _ in searched], dtype=torch.long)
        return self.merge(state, searched, local, y, delta, history, None, faces=len(people))

    def merge(self, state: dict | None, ready: list, local: list[str], y: torch.Tensor, delta: torch.Tensor,
              history: list, centroids, faces: int | None = None) -> tuple[dict, dict]:
        """Take a search's patterns (``delta``, rows = ``local`` classes or ``ready`` photos) into ``state``
        (a new one if None) and save it."""
        cfg = self.cfg
        hashes = [h for _, h, _ in ready]
        record = {"classes": local, "photos": len(ready), "rounds": len(history),
                  "seconds": sum(r.seconds for r in history), "history": [asdict(r) for r in history]}
        if faces is not None:
            record["faces"] = faces
        if state is None:
            state = {"format": STATE_FORMAT, "settings": self.noise_settings, "mode": cfg.search.mode,
                     "classes": [], "patterns": delta[:0], "hashes": [],
                     "photo_class": torch.zeros(0, dtype=torch.long),
                     "centroids": centroids, "searches": []}
        classes = list(state["classes"]) + [c for c in local if c not in state["classes"]]
        glob = torch.tensor([classes.index(c) for c in local], dtype=torch.long)
        state = dict(state, classes=classes, patterns=torch.cat([state["patterns"], delta]),
                     hashes=list(state["hashes"]) + hashes,
                     photo_class=torch.cat([state["photo_class"], glob[y]]),
                     searches=list(state["searches"]) + [record])
        try:
            buf = io.BytesIO()
            torch.save(state, buf)
            write_atomic(self.out / STATE_DIR / STATE, buf.getvalue())
        except OutputError as e:
            self.notice(f"{e}; the search is not saved (a rerun searches again)")
        return state, dict(record, hashes=hashes)

    def load_state(self) -> dict | None:
        """The saved search, validated against the settings and the ε budget; None (with a notice) if
        absent, damaged, from another version or other settings, or over budget."""
        path = self.out / STATE_DIR / STATE
        if not path.exists():
            return None
        try:
            blob = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated, garbage, or not a weights-only pickle
            self.notice(f"{path} is damaged ({type(e).__name__}); searching again")
            return None
        try:
            why = _check_state(blob, self.noise_settings, self.cfg)
        except Exception as e:  # noqa: BLE001 - malformed fields
            why = f"malformed ({type(e).__name__}: {e})".splitlines()[0]
        if why:
            self.notice(f"{path}: {why}; searching again")
            return None
        return blob

    def describe_search(self, state: dict, searched_now: dict | None, noise: dict[str, _Noise]) -> None:
        searches = state["searches"]
        counts: dict[str, int] = {}
        for n in noise.values():
            counts[n.label] = counts.get(n.label, 0) + 1
        reused = sorted({n.label for n in noise.values() if n.source == "class-reused"})
        self.search_info.update(
            resumed=searched_now is None, rounds=sum(s["rounds"] for s in searches),
            seconds=sum(s["seconds"] for s in searches), history=searches[-1]["history"] if searches else [],
            searches=[{k: s[k] for k in ("classes", "photos", "rounds", "seconds")} for s in searches],
            classes=list(state["classes"]), class_sizes=[counts.get(c, 0) for c in state["classes"]],
            searched_now=None if searched_now is None else {"classes": searched_now["classes"],
                                                             "photos": searched_now["photos"]},
            class_patterns_reused=reused)

    # --------------------------------------------------------------------------------------- manifest

    def write_manifest(self) -> dict:
        images = [self.entries[k] for k in sorted(self.entries)]
        ok = [e for e in images if e.get("status") == "ok"]
        fresh = [e for e in ok if not e.get("resumed")]
        summary = {
            "photos": len(images), "ok": len(ok), "protected_now": len(fresh), "resumed": len(ok) - len(fresh),
            "failed": sum(e.get("status") == "error" for e in images),
            "pending": sum("status" not in e for e in images),
            "unreadable": len(self.unreadable),
            "class_pattern_reused": sum(e.get("pattern") == "class-reused" for e in fresh),
            "mean_psnr": _mean([e.get("psnr") for e in ok]), "mean_ssim": _mean([e.get("ssim") for e in ok]),
            "mean_blotch": _mean([e.get("blotch") for e in ok]),
            "max_change_levels": max((e.get("max_change_levels", 0) for e in ok), default=0),
            "max_change": max((e.get("max_change", 0.0) for e in ok), default=0.0),
            "noise_max_levels": max((e.get("noise_max_levels", 0) for e in ok if "noise_max_levels" in e), default=0),
            "wall_seconds": time.perf_counter() - self.t_start,
        }
        if self.cfg.faces:
            found = [f for e in ok for f in e.get("faces", [])]
            summary.update(faces=len(found), small_faces=sum(f["small"] for f in found),
                           no_face=sum(e.get("status") == "skipped" or (e.get("status") == "ok" and not e.get("faces"))
                                       for e in images),
                           mean_face_ssim=_mean([f["ssim"] for f in found]),
                           mean_face_psnr=_mean([f["psnr"] for f in found]))
        cfg = self.cfg
        manifest = {
            "format": FORMAT, "tool": "unlearnable", "version": __version__, "torch": str(torch.__version__),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(self.dev),
            "surrogate": self.surrogate_record(),
            "seed": cfg.search.seed, "eps": cfg.search.eps, "eps_255": cfg.search.eps * 255,
            "measured": {**MEASURED, **(MEASURED_FACES if cfg.faces else {})}, "settings": self.settings,
            "search": self.search_info, "summary": summary,
            "images": images, "unreadable": [{"path": str(p), "error": r} for p, r in self.unreadable],
            "skipped_files": [{"path": str(p), "reason": r} for p, r in self.skipped],
        }
        try:
            write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
            self.manifest_error = None
            self.log.remove()  # compacted: the manifest now holds every entry the log had
        except OutputError as e:  # reported once, by the caller, from manifest["manifest_error"]
            self.manifest_error = (f"{e}; the photos written are recorded in {self.journal.path}: free space and "
                                   "rerun the same command to finish")
        if self.manifest_error:
            manifest["manifest_error"] = self.manifest_error
        return manifest


def _check_state(blob, settings: dict, cfg: PhotoProtectConfig) -> str | None:
    """Why a loaded search state cannot be used, or None. Checks every field's type and shape, and
    that every pattern is finite and within the ε budget (a tampered δ × 30 is refused here)."""
    if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
        return "written by another version of unlearnable"
    if blob.get("settings") != settings:
        return "made with other settings"
    pat, classes, hashes, pc = blob["patterns"], blob["classes"], blob["hashes"], blob["photo_class"]
    s = cfg.pattern_size
    if not (isinstance(pat, torch.Tensor) and pat.dtype == torch.float32 and pat.ndim == 4
            and tuple(pat.shape[1:]) == (3, s, s)):
        return f"patterns are not float32 (K, 3, {s}, {s})"
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        return "class names malformed"
    if not (isinstance(hashes, list) and all(isinstance(h, str) and len(h) == 64 for h in hashes)):
        return "photo hashes malformed"
    if not (isinstance(pc, torch.Tensor) and pc.dtype == torch.long and pc.shape == (len(hashes),)
            and (len(pc) == 0 or (int(pc.min()) >= 0 and int(pc.max()) < len(classes)))):
        return "photo classes malformed"
    rows = len(classes) if cfg.search.mode == "classwise" else len(hashes)
    if blob.get("mode") != cfg.search.mode or pat.shape[0] != rows:
        return f"has {pat.shape[0]} patterns for {rows} {'classes' if cfg.search.mode == 'classwise' else 'photos'}"
    cen = blob.get("centroids")
    if cfg.label_free and not (isinstance(cen, torch.Tensor) and cen.ndim == 2 and cen.shape[0] == len(classes)):
        return "cluster centroids malformed"
    if not isinstance(blob.get("searches"), list):
        return "search log malformed"
    worst = float(pat.abs().max()) if pat.numel() else 0.0
    if not np.isfinite(worst) or worst > cfg.search.eps + EPS_TOLERANCE:
        return (f"its noise exceeds the budget (max |δ| = {worst * 255:.3g}/255 > ε = {cfg.search.eps * 255:.3g}/255): "
                "rejected")
    return None


def _load_reference(cfg: PhotoProtectConfig, surrogate_meta: dict) -> ImageTensors:
    if cfg.reference is None:
        return load_reference(cfg.surrogate)
    data = load_dataset(cfg.reference, "train", cfg.data_root, size=surrogate_meta["input_size"])
    if data.num_classes != len(surrogate_meta["classes"]):
        raise UnlearnableError(f"reference {cfg.reference} has {data.num_classes} classes but the surrogate "
                               f"was trained on {len(surrogate_meta['classes'])}")
    per_class = min(cfg.reference_per_class, int(torch.bincount(data.labels).min()))  # a person with fewer faces
    idx = balanced_subset(data.labels, per_class * data.num_classes, cfg.search.seed)
    return data.subset(idx)


def _protect_one(p: PhotoFile, in_hash: str, n: _Noise, out: Path, cfg: PhotoProtectConfig, max_px: int,
                 journal: Journal, faces: list | None = None) -> dict:
    entry, err = _safe(_write_protected, p, in_hash, n, out, cfg, max_px, journal, faces)
    return {"status": "error", "error": err} if err else entry


def _write_protected(p: PhotoFile, in_hash: str, n: _Noise, out: Path, cfg: PhotoProtectConfig, max_px: int,
                     journal: Journal, faces: list | None = None) -> dict:
    """Read one photo at full size, add its upsampled δ, write it (checked), and measure the written
    file as decoded against the original (manifest entry). Faces mode: ``faces`` are those found when the
    same bytes (``in_hash``, checked) were read for the search; None: detect them now (a resumed run)."""
    photo, sha = _read_input(p.path, max_px, cfg.keep_gps)
    if sha != in_hash:
        raise PhotoError("the file changed while it was being protected; run again")
    if not cfg.faces:
        faces = None
        shape = noise_shaper(photo.pixels, cfg.search.eps) if cfg.perceptual else None
        pixels, noise_levels = apply_noise(photo.pixels, n.delta, eps=cfg.search.eps, shape=shape)
    else:
        if faces is None:
            faces = _faces_of(photo.pixels, cfg.detect_side)[0]
        if faces:
            m = fit_similarity(np.stack([f.landmarks for f in faces]))
            pixels, noise_levels, _ = paste_faces(photo.pixels, n.delta.expand(len(faces), -1, -1, -1), m,
                                                  cfg.search.eps)
        elif cfg.no_face == "skip":
            return {"status": "skipped", "faces": [], "reason": "no face found (--no-face skip: not written)"}
        else:  # "whole": the person's pattern stretched over the whole photo
            pixels, noise_levels = apply_noise(photo.pixels, n.delta, eps=cfg.search.eps)
    rel = p.rel.as_posix()
    written = write_photo(out / p.rel, photo, pixels, quality=cfg.quality, may_replace=journal.owns,
                          before_rename=lambda sha: journal.remember(rel, sha))
    del pixels
    max_level = float(np.iinfo(photo.pixels.dtype).max)
    change = max_abs_difference(photo.pixels, written.pixels)
    notes = list(photo.notes)
    entry = {"status": "ok", "output_sha256": written.sha256, "output_bytes": written.size,
             "width": photo.size[0], "height": photo.size[1], "format": photo.format,
             "source_mode": photo.source_mode, "channels": int(photo.pixels.shape[2]),
             "bit_depth": 16 if max_level > 255 else 8, "eps": cfg.search.eps, "eps_255": cfg.search.eps * 255,
             "noise_max_levels": noise_levels, "max_change_levels": change, "max_change": change / max_level,
             "pattern": n.source, "pattern_sha256": n.sha256, "psnr": None, "ssim": None, "notes": notes}
    if cfg.metrics:
        value = psnr(photo.pixels, written.pixels, data_range=max_level)
        entry["psnr"] = value if np.isfinite(value) else None  # identical: no finite PSNR
        h, w = photo.pixels.shape[:2]
        if ssim_defined(h, w):
            entry["ssim"] = ssim(photo.pixels, written.pixels, data_range=max_level)
        else:
            notes.append(f"SSIM not computed: it needs at least 11x11 pixels, this photo is {w}x{h}")
        entry.update(blotch(photo.pixels, written.pixels, data_range=max_level))
    if faces is not None:
        entry["faces"] = [_face_entry(f, photo.pixels, written.pixels, max_level, cfg.metrics) for f in faces]
        if not faces:
            notes.append("no face found: the person's pattern was spread over the whole photo (--no-face whole)")
    return entry


def _face_entry(face, before: np.ndarray, after: np.ndarray, max_level: float, metrics: bool) -> dict:
    """A found face in the manifest: box, size, probability, whether it is small, PSNR/SSIM on its box."""
    h, w = before.shape[:2]
    x0, y0 = max(0, int(np.floor(face.box[0]))), max(0, int(np.floor(face.box[1])))
    x1, y1 = min(w, int(np.ceil(face.box[2])) + 1), min(h, int(np.ceil(face.box[3])) + 1)
    e = {"box": [round(float(v), 1) for v in face.box], "size": round(face.size, 1), "prob": round(face.prob, 4),
         "small": face.size < SMALL_FACE, "psnr": None, "ssim": None}
    if metrics and x1 > x0 and y1 > y0:
        a, b = before[y0:y1, x0:x1], after[y0:y1, x0:x1]
        value = psnr(a, b, data_range=max_level)
        e["psnr"] = value if np.isfinite(value) else None
        e["ssim"] = ssim(a, b, data_range=max_level) if ssim_defined(y1 - y0, x1 - x0) else None
    return e


def _hash_input(path: Path) -> tuple[str, bytes | None]:
    """(sha256, the file's bytes when small enough to keep: ``storage.KEEP_IN_MEMORY``, else None)."""
    try:
        sha, _, data = read_hashed(path)
    except OSError as e:
        raise PhotoError(f"cannot read file: {e.strerror or e}", path) from None
    return sha, data


def _scan(p: PhotoFile, wants: Callable[[PhotoFile, str], bool], preview: Callable
          ) -> tuple[str | None, str | None, tuple[np.ndarray | None, str | None] | None]:
    """(sha256, error, preview) of one photo: ``preview`` is None when ``wants(p, sha256)`` is False,
    else ``(preview(path, bytes), None)`` or ``(None, error)``: decoded from the bytes that were hashed."""
    got, err = _safe(_hash_input, p.path)
    if err:
        return None, err, None
    sha, data = got
    if not wants(p, sha):
        return sha, None, None
    return sha, None, _safe(preview, p.path, data)


def _faces_of(pixels: np.ndarray, detect_side: int) -> tuple[list, np.ndarray]:
    """(faces found by MTCNN, the RGB uint8 view they were found on) of decoded ``pixels``."""
    rgb = to_rgb8(pixels)
    return detect_faces([rgb], max_side=detect_side)[0], rgb


def _face_crops(path: Path, max_px: int, data: bytes | None, detect_side: int,
                found: dict[Path, list] | None = None) -> torch.Tensor:
    """The faces of one photo as aligned uint8 (F, 3, 112, 112) crops (F = 0 without a face); the faces
    are also kept in ``found[path]`` so that writing the photo does not detect them again."""
    photo = read_photo(path, max_pixels=max_px, data=data)
    faces, rgb = _faces_of(photo.pixels, detect_side)
    if found is not None:
        found[path] = faces
    return aligned_crops(rgb, faces)[0]


def _read_input(path: Path, max_px: int, keep_gps: bool) -> tuple[Photo, str]:
    """The photo at full size and the sha256 of the bytes it was decoded from: one read of the file when
    it fits in ``storage.KEEP_IN_MEMORY``; else (or when it cannot be read whole) decoded from the
    file, then hashed (two reads)."""
    try:
        sha, _, data = read_hashed(path)
    except OSError:
        data = None  # let the decoder say what is wrong with it (missing, unreadable, ...)
    photo = read_photo(path, max_pixels=max_px, keep_gps=keep_gps, data=data)
    if data is None:
        try:
            sha = sha256_file(path)
        except OSError as e:
            raise PhotoError(f"cannot read file: {e.strerror or e}", path) from None
    return photo, sha


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


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
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        return list(pool.map(fn, items))
    finally:  # on Ctrl-C, do not work through the rest of the queue first
        pool.shutdown(wait=True, cancel_futures=True)
