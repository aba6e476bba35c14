"""Does protecting a photo folder stop a model from learning it? A held-out experiment.

For each class (subfolder) of the folder, a share of the photos is held out *clean*; the rest is
protected with ``protect_photos``. Two fresh victims are then trained the way a scraper would:
a labelled reference dataset plus the folder's photos as extra classes, every photo passed
through the scraper pipeline (squash-resize to training size, JPEG re-encode at quality 75) and
trained with random crop + flip. One victim sees the protected photos, the other the same photos
unprotected. The number that matters is the held-out accuracy: the share of the held-out clean
photos each victim puts in their own class. Protection works when the protected victim's is low
and the unprotected victim's is not.

Verdict (``photo_verdict``, the rule of ``unlearnable.verify.matrix.summarize_matrix``): no verdict when
the unprotected victim's held-out accuracy is below chance + 10 points (the experiment cannot show
anything); *broken* when the protected victim recovers at least half of the unprotected one's gain
over chance; *holds* otherwise. Both victims are scored after their last epoch (no epoch choice,
so nothing is picked on the held-out photos). ``report.html`` beside the JSON shows it in plain
words, with the learning curves on the held-out photos and before/after thumbnails.

The reference dataset is loaded and checked before anything is protected or written, so a
missing dataset fails in one line without leaving a half-done output folder.

Faces (``faces=True``, ``verify-photos --faces``): the folder's photos are protected with
``protect --faces`` (one pattern per person; a ``protect`` config without ``faces`` measures the
whole-photo mode against the same face scraper), and the scraper is a face scraper
(``unlearnable.verify.faces.scrape_faces``: MTCNN detection, the most confident face aligned to 112 ×
112, then resized to ``size`` and JPEG re-encoded); photos where it finds no face are left out of
training and testing (counted in the report). The reference is *other people*: a folder of aligned
face crops, one subfolder per person (with ``train/`` and ``test/`` splits, or one folder used for
training only); its test split measures how well the victim recognises the unprotected identities
(``reference_test_accuracy``).

The reference images (both modes) are re-encoded with the scraper's JPEG too: a scraper re-encodes all
it trains on, and a victim that saw JPEG artifacts on the folder's photos only could tell them from the
reference classes by the artifacts alone, held-out photos included. (Reports before this rule, e.g. the
README's earlier verify-photos figures, trained on clean reference images.)

Visibility (``protection.visibility``): for each protected training photo, the share of its flat pixels
(``unlearnable.eval.blotch.flat_mask``) whose colour changed visibly in the written file: S-CIELAB's
colour part above one JND, at 1:1 on a 96-ppi screen from 60 cm (``unlearnable.eval.scielab``), and
the mean over the photos that have flat pixels. At full resolution a 12-megapixel photo takes about
9 s and 2.7 GB on a 2-core CPU, so only the first ``visibility_photos`` (20) training photos are scored.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import ImageTensors, balanced_subset, load_dataset
from ..data.photos.decode import read_photo, to_rgb8
from ..data.photos.files import discover
from ..data.protected import write_json_atomic
from ..device import resolve_device
from ..errors import DataNotFoundError, UnlearnableError
from ..eval.blotch import flat_mask
from ..eval.scielab import JND, SAMPLES_PER_DEGREE, scielab
from ..eval.summary import photo_verdict
from ..events import Event, emitter, epoch_events
from ..noise.views import scraper_pipeline
from ..protect.photos import PhotoProtectConfig, protect_photos
from ..train.defenses import DEFENSES, DefenseContext, build_step, parse_defenses, squeezed
from ..train.loop import TrainConfig, build_model, evaluate, train
from .faces import scrape_faces

REPORT = "verify-photos.json"
REPORT_HTML = "report.html"



@dataclass
class PhotoVerifyConfig:
    holdout: float = 0.25                   # share of each class's photos kept clean for testing
    reference: str = "cifar10"              # labelled dataset the victim also trains on
    reference_per_class: int | None = None  # None: as many as the protected photos per class (no minority class)
    exclude_classes: tuple[str, ...] = ()   # reference classes to drop (e.g. the photos' own category)
    size: int = 32                          # the scraper's training resolution
    jpeg_quality: int | None = 75           # the scraper's re-encode (None: off)
    arch: str = "resnet18-narrow"           # victim architecture
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30))
    protect: PhotoProtectConfig = field(default_factory=PhotoProtectConfig)
    faces: bool = False                     # face scraper (detect + align) and protect --faces; reference = faces
    defense: str = "standard"               # how both victims train (``train.defenses``; e.g. grayworld, at)
    visibility_photos: int = 20             # training photos scored by S-CIELAB (the first ones; 0: none)
    seed: int = 0
    data_root: str | None = None
    device: str = "auto"


def split_holdout(labels: list[str], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), ``share`` of each class held out (at least one photo of a
    class with two or more, and at least one kept for training)."""
    if not 0 < share < 1:
        raise UnlearnableError(f"holdout share must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in sorted(set(labels)):
        idx = [i for i, l in enumerate(labels) if l == cls]
        rng.shuffle(idx)
        n_hold = min(len(idx) - 1, max(1, round(share * len(idx)))) if len(idx) > 1 else 0
        held += idx[:n_hold]
        keep += idx[n_hold:]
    return sorted(keep), sorted(held)


def _scraped_faces(paths: list[Path], size: int, quality: int | None) -> tuple[torch.Tensor, list[int]]:
    """Photos through the face scraper -> uint8 (M, 3, size, size) crops and the indices of the photos
    they came from (those where a face was found): detection and alignment, then resize and JPEG."""
    crops, index = scrape_faces([to_rgb8(read_photo(p).pixels) for p in paths])
    return _through_pipeline(crops, size, quality), index


def _through_pipeline(images: torch.Tensor, size: int, quality: int | None) -> torch.Tensor:
    """uint8 (N, 3, S, S) images through the scraper pipeline (``noise.views.scraper_pipeline``: resize
    to ``size``, JPEG at ``quality``) -> uint8 (N, 3, size, size)."""
    arrays = [scraper_pipeline(x.permute(1, 2, 0).numpy(), size, quality) for x in images]
    if not arrays:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _per_class(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, first: int, n: int,
               dev: torch.device) -> list[float]:
    """Held-out accuracy of each of the folder's ``n`` classes (labels ``first`` .. ``first + n - 1``)."""
    out = []
    for k in range(first, first + n):
        mask = labels == k
        out.append(_accuracy(model, images[mask], labels[mask], dev) if bool(mask.any()) else float("nan"))
    return out


def _scraped(paths: list[Path], size: int, quality: int | None) -> torch.Tensor:
    """Photos through the scraper pipeline -> uint8 (N, 3, size, size)."""
    arrays = []
    for p in paths:
        arrays.append(scraper_pipeline(to_rgb8(read_photo(p).pixels), size, quality))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def visibility(pairs: list[tuple[Path, Path]]) -> dict:
    """Visible colour change of written files against their originals (module doc, "Visibility"):
    ``pairs`` of (original, written) paths -> per photo (by the written file's name under its class
    folder) the share of flat pixels over one JND (None without flat pixels), and their mean."""
    per = {}
    for src, dst in pairs:
        a, b = read_photo(src).pixels, read_photo(dst).pixels
        top = float(np.iinfo(a.dtype).max)           # as the protect manifest measures: 255 or 65535
        s = scielab(a, b, SAMPLES_PER_DEGREE, top, mask=flat_mask(a, top))
        per[f"{dst.parent.name}/{dst.name}"] = None if s["colour_over_jnd"] is None else round(s["colour_over_jnd"], 4)
    shares = [v for v in per.values() if v is not None]
    return {"measure": f"S-CIELAB colour difference over {JND} (one JND) at {SAMPLES_PER_DEGREE:g} pixels per degree "
                       "(1:1 on a 96-ppi screen from 60 cm), share of each photo's flat pixels",
            "flat_visible_colour_share_mean": round(float(np.mean(shares)), 4) if shares else None,
            "per_photo": per}


def verify_photo_folder(folder: str | os.PathLike, out_dir: str | os.PathLike,
                        config: PhotoVerifyConfig | None = None,
                        on_event: Event | None = None) -> dict:
    """Run the held-out experiment on ``folder`` (subfolders = classes), writing the protected
    copies, and ``verify-photos.json``, under ``out_dir``. Returns the report. Reports 'phase'
    events, the protection's events, then a 'model' event per victim and its 'epoch'/'progress'
    events (``unlearnable.events``)."""
    cfg = config or PhotoVerifyConfig()
    emit = emitter(on_event)
    out = Path(out_dir)
    t0 = time.perf_counter()
    defense = DEFENSES[parse_defenses([cfg.defense])[0]]      # an unknown name fails before anything is written
    # the reference data first: a missing or mismatched dataset must fail before anything is written
    ref_train = load_dataset(cfg.reference, "train", cfg.data_root, size=cfg.size)
    try:
        ref_test = load_dataset(cfg.reference, "test", cfg.data_root, size=cfg.size)
    except DataNotFoundError:
        if not cfg.faces:
            raise
        ref_test = ImageTensors(ref_train.images[:0], ref_train.labels[:0], ref_train.classes, "no test split")
    unknown = set(cfg.exclude_classes) - set(ref_train.classes)
    if unknown:
        raise UnlearnableError(f"{sorted(unknown)} not among {cfg.reference}'s classes {ref_train.classes}")
    photos, _ = discover([Path(folder)], out)
    labels = [p.label for p in photos]
    keep, held = split_holdout(labels, cfg.holdout, cfg.seed)
    if not held:
        raise UnlearnableError("every class needs at least two photos: one to protect, one to hold out")
    # stage the training part (links to the originals, by class) and protect it
    stage = out / "train-originals"
    if stage.exists():
        shutil.rmtree(stage)
    for i in keep:
        link = stage / photos[i].label / photos[i].path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(photos[i].path.resolve())
        except OSError:
            shutil.copy2(photos[i].path, link)
    emit("phase", {"name": f"protecting {len(keep)} photos ({len(held)} held out clean)"})
    manifest = protect_photos([stage], out / "protected", cfg.protect,
                              on_event=emit)
    ok = {e["output"]: e for e in manifest["images"] if e.get("status") == "ok"}
    train_idx = [i for i in keep if f"{photos[i].label}/{photos[i].path.name}" in ok]
    if len(train_idx) < len(keep):
        emit("phase", {"name": f"{len(keep) - len(train_idx)} photos failed to protect and are left out"})
    emit("phase", {"name": f"measuring the visibility of the noise on {min(len(train_idx), cfg.visibility_photos)} "
                           "photos (S-CIELAB)"})
    seen = visibility([(photos[i].path, out / "protected" / photos[i].label / photos[i].path.name)
                       for i in train_idx[:cfg.visibility_photos]])
    seen["photos_scored"] = f"{len(seen['per_photo'])} of {len(train_idx)} training photos"
    classes = sorted(set(labels))
    emit("phase", {"name": "scraping photos (" + ("face detection and alignment, " if cfg.faces else "") +
                   "resize, JPEG)"})
    no_face = {}
    if cfg.faces:  # a face scraper: photos where it finds no face are not used
        prot_x, found = _scraped_faces([out / "protected" / photos[i].label / photos[i].path.name for i in train_idx],
                                       cfg.size, cfg.jpeg_quality)
        clean_x, found_clean = _scraped_faces([photos[i].path for i in train_idx], cfg.size, cfg.jpeg_quality)
        both = sorted(set(found) & set(found_clean))
        prot_x, clean_x = prot_x[[found.index(j) for j in both]], clean_x[[found_clean.index(j) for j in both]]
        no_face["training"] = len(train_idx) - len(both)
        train_idx = [train_idx[j] for j in both]
        held_x, found_held = _scraped_faces([photos[i].path for i in held], cfg.size, cfg.jpeg_quality)
        no_face["held_out"] = len(held) - len(found_held)
        held = [held[j] for j in found_held]
        if not train_idx or not held:
            raise UnlearnableError("the face scraper found no face in the training or the held-out photos")
    else:
        prot_x = _scraped([out / "protected" / photos[i].label / photos[i].path.name for i in train_idx],
                          cfg.size, cfg.jpeg_quality)
        clean_x = _scraped([photos[i].path for i in train_idx], cfg.size, cfg.jpeg_quality)
        held_x = _scraped([photos[i].path for i in held], cfg.size, cfg.jpeg_quality)

    kept_cls = [c for c in ref_train.classes if c not in cfg.exclude_classes]
    ref_train, ref_test = _keep_classes(ref_train, kept_cls), _keep_classes(ref_test, kept_cls)
    per_class = cfg.reference_per_class or max(10, round(len(train_idx) / len(classes)))
    per_class = min(per_class, int(torch.bincount(ref_train.labels).min()))
    ref_train = ref_train.subset(balanced_subset(ref_train.labels, per_class * len(kept_cls), cfg.seed))
    # the scraper re-encodes everything it trains on, the reference too: otherwise JPEG's artifacts
    # alone would tell the folder's photos (train and held out) from the reference classes
    ref_train, ref_test = reencoded(ref_train, cfg.jpeg_quality), reencoded(ref_test, cfg.jpeg_quality)
    k_ref = len(kept_cls)
    y_photo = torch.tensor([k_ref + classes.index(labels[i]) for i in train_idx])
    y_held = torch.tensor([k_ref + classes.index(labels[i]) for i in held])
    all_classes = kept_cls + [f"photos:{c}" for c in classes]
    dev = resolve_device(cfg.device)
    held_set = ImageTensors(held_x, y_held, all_classes, "held-out photos")

    runs = []
    for i, (name, px) in enumerate((("protected", prot_x), ("unprotected", clean_x))):
        emit("model", {"key": f"victim on {name} photos", "index": i + 1, "total": 2, "reused": False})
        data = ImageTensors(torch.cat([ref_train.images, px]), torch.cat([ref_train.labels, y_photo]),
                            all_classes, f"{cfg.reference}+photos:{name}")
        data = squeezed(data, defense.name)     # e.g. grayworld: each scraped image once, before the crop and flip
        model = build_model(cfg.arch, len(all_classes), 3, cfg.seed, dev)
        ctx = DefenseContext(model, len(data), len(all_classes), cfg.reference, cfg.train.epochs,
                             cfg.train.grad_clip, cfg.train.seed, input_shape=tuple(data.images.shape[1:]),
                             generator=torch.Generator().manual_seed(cfg.train.seed + 1))
        # the held-out photos are scored every epoch for the curves only; the figure is the last epoch's
        hist = train(model, data, held_set, cfg.train, step=build_step(defense.name, ctx), **epoch_events(emit))
        runs.append({
            "trained_on": name,
            "heldout_accuracy": hist[-1].test_acc,
            "heldout_curve": [h.test_acc for h in hist], "train_curve": [h.train_acc for h in hist],
            "photo_train_accuracy": _accuracy(model, px, y_photo, dev),
            "reference_test_accuracy": _accuracy(model, ref_test.images, ref_test.labels, dev),
            "heldout_per_class": _per_class(model, held_x, y_held, k_ref, len(classes), dev),
            "final_train_accuracy": hist[-1].train_acc, "train_seconds": sum(h.seconds for h in hist),
        })
    report = {
        "folder": str(folder), "photos": len(photos), "classes": classes,
        "protected_for_training": len(train_idx), "held_out_clean": len(held),
        "held_out_files": [str(photos[i].path) for i in held],
        "reference": cfg.reference, "reference_classes": kept_cls, "reference_train_images": len(ref_train),
        "scraper": {"size": cfg.size, "jpeg_quality": cfg.jpeg_quality, "augment": "random crop (pad 4) + flip",
                    "reference_reencoded": cfg.jpeg_quality is not None,
                    **({"faces": "MTCNN, most confident face, aligned to 112x112", "no_face_photos": no_face}
                       if cfg.faces else {})},
        "victim": cfg.arch, "defense": defense.name, "defense_summary": defense.summary, "train": asdict(cfg.train),
        "device": str(dev),
        "protection": {"eps_255": manifest["eps_255"], "mean_psnr": manifest["summary"]["mean_psnr"],
                       "mean_ssim": manifest["summary"]["mean_ssim"], "visibility": seen,
                       **({k: manifest["summary"][k] for k in ("faces", "small_faces", "no_face", "mean_face_psnr",
                                                                 "mean_face_ssim")} if cfg.protect.faces else {}),
                       "search": {
                           k: manifest["search"].get(k) for k in ("rounds", "seconds")}},
        "runs": runs, "chance_heldout_accuracy": 1 / len(all_classes),
        "wall_seconds": time.perf_counter() - t0,
    }
    report.update(photo_verdict(runs, report["chance_heldout_accuracy"]))
    write_json_atomic(report, out / REPORT)
    from ..report.html import write_photo_report

    shown = list(range(min(8, len(train_idx))))
    write_photo_report(out / REPORT_HTML, report, {"clean": clean_x[shown], "protected": prot_x[shown],
                                                   "names": [photos[train_idx[j]].path.name for j in shown]})
    return report


def reencoded(data: ImageTensors, quality: int | None) -> ImageTensors:
    """``data`` (uint8 images at training size) JPEG re-encoded at ``quality`` as the scraper pipeline
    re-encodes the photos (``noise.views.scraper_pipeline``; None: unchanged)."""
    if quality is None or not len(data):
        return data
    return replace(data, images=_through_pipeline(data.images, data.images.shape[-1], quality))


def _keep_classes(data: ImageTensors, keep: list[str]) -> ImageTensors:
    old = [data.classes.index(c) for c in keep]
    mask = torch.isin(data.labels, torch.tensor(old))
    remap = torch.full((len(data.classes),), -1, dtype=torch.long)
    remap[torch.tensor(old)] = torch.arange(len(old))
    return ImageTensors(data.images[mask], remap[data.labels[mask]], list(keep), data.name)


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dev: torch.device) -> float:
    """Accuracy of ``model`` on uint8 images (N, C, H, W); NaN when there are none."""
    if not len(images):
        return float("nan")
    return evaluate(model, ImageTensors(images, labels, [""] * (int(labels.max()) + 1)).to(dev))[0]
