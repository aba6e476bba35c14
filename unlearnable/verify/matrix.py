"""Defended verification: the stress test of a protection. For every victim architecture and
every defense (``unlearnable.train.defenses``), train one model on the protected set and one on
the same images clean, evaluate each on the clean test set after every epoch, and record the
accuracy at the epoch a trainer would pick, the final accuracy, PGD robust accuracy (its own
settings: ``MatrixConfig.robust_*``), and (for the chosen defenses) the class-wise predictive
patterns the model learned (arXiv 2101.06898).

Epoch choice. Early stopping is itself a defence against unlearnable examples (the protected
model's test accuracy often peaks early), but picking the epoch by *test* accuracy is an oracle
that reports the best of many draws on the very images it scores. Here a class-balanced share
(``val_share``, default 10 %) of the training images is held out as a validation split, the same
indices for the clean and the protected run. Each run validates on the held-out part of the data
it trains on: protected images for the protected run (a scraper who trains on protected data has
nothing else to validate on), clean images for the clean run. The *chosen epoch* is the first
epoch of highest validation accuracy; the verdict uses the clean test accuracy at that epoch.
The test peak is still recorded, labelled as the oracle it is.

Recipes. Every defense trains with ``MatrixConfig.train`` unless ``MatrixConfig.recipes`` gives
it the recipe of its own paper (``PAPER_RECIPES``); the recipe used is recorded in each cell and
in its fingerprint.

Verdict (``summarize_matrix``): recovery is (protected − chance) / (clean − chance) at the chosen
epochs, against two clean models: the one trained through the same defense, and the standard
(no-defense) one. No verdict when the same-defense clean model did not learn (chosen-epoch
accuracy below chance + ``chance_margin``); *broken* when the protected model recovers at least
half of what the standard clean model learns; *inconclusive* when it recovers at least half of the
same-defense clean model but not of the standard one (the defense neutralises the noise, but
itself trains models too weak to tell); *holds* otherwise.

Each finished cell is written to ``OUT/cells/<arch>--<defense>--<data>.json`` as soon as it
ends, keyed by a fingerprint of everything that determines it, so an interrupted matrix resumes
where it stopped. ``report.json`` gathers the cells; ``report.html`` is rendered from it
(``unlearnable.report.html``) with the image assets of ``assets.pt``.
Under torchrun the cells are spread over the ranks (cell i on rank i mod N, no DDP inside a cell)
and rank 0 assembles the report once (``unlearnable.distributed``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import distributed
from ..data.datasets import ImageTensors, balanced_subset, load_dataset
from ..data.protected import MANIFEST, load_protected, write_json_atomic
from ..data.storage import settings_sha256, write_atomic
from ..device import resolve_device
from ..errors import UnlearnableError
from ..eval.patterns import PatternConfig, classwise_patterns, noise_predictive_power
from ..eval.robust import robust_accuracy
from ..eval.summary import summarize_matrix, summarize_run, verdict_text
from ..events import Event, emitter, epoch_events
from ..train.defenses import DEFENSES, DefenseContext, build_step, parse_defenses, squeezed
from ..train.loop import EpochRecord, TrainConfig, build_model, prepare_batch, train

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
ASSETS = "assets.pt"

# Training recipes of the defenses' own papers, where they differ from the shared one
# (``TrainConfig``'s defaults: the Unlearnable Examples recipe, SGD lr 0.1, wd 5e-4, cosine, clip 5).
PAPER_RECIPES: dict[str, dict] = {
    # APL (arXiv 2006.13554), official configs/cifar10: SGD lr 0.01, momentum 0.9, weight decay 1e-4,
    # cosine annealing, gradient-norm bound 5. With lr 0.1 NCE+RCE does not learn in 10 epochs.
    "apl": {"lr": 0.01, "weight_decay": 1e-4},
    # PGD-AT (Madry et al.; Rice et al.) and AT-AWP (arXiv 2004.05884): SGD lr 0.1, momentum 0.9,
    # weight decay 5e-4, lr ÷10 at 100 and 150 of 200 epochs (= "multistep", 50 % and 75 %), no
    # gradient clipping. CAS keeps the shared recipe (its schedule is not checked against its code).
    "at": {"schedule": "multistep", "grad_clip": None},
    "awp": {"schedule": "multistep", "grad_clip": None},
}


@dataclass
class MatrixConfig:
    """What the matrix trains: victims × defenses × {clean, protected}, and what it measures."""

    archs: list[str] = field(default_factory=lambda: ["resnet18"])
    defenses: list[str] = field(default_factory=lambda: ["standard"])
    train: TrainConfig = field(default_factory=TrainConfig)
    include_clean: bool = True
    at_eps: float = 8 / 255          # PGD radius of AT/AWP/CAS training
    at_steps: int = 10               # PGD steps while training (AT/AWP/CAS)
    at_alpha: float = 2 / 255        # PGD step while training
    awp_gamma: float = 1e-2          # AWP's relative weight perturbation (AT-AWP's γ)
    # the robust-accuracy readout, independent of the training attack: PGD-20, ε 8/255, step 2/255,
    # random start, on the first ``robust_images`` clean test images (the AWP paper's readout; 0: skip)
    robust_images: int = 1000
    robust_eps: float = 8 / 255
    robust_alpha: float = 2 / 255
    robust_steps: int = 20
    patterns_for: list[str] = field(default_factory=lambda: ["standard"])   # defenses whose models get patterns
    pattern: PatternConfig = field(default_factory=PatternConfig)
    pattern_share: float = 0.2       # share of the test set per class searched on (the authors' 20 %)
    test_subset: int | None = None   # evaluate on a class-balanced subset of the test set (None: all of it)
    tcr_warmup_epochs: int = 1       # label-only epochs before TCR starts calibrating (paper: 1)
    val_share: float = 0.1           # share of each class's training images held out for epoch choice (0: final epoch)
    recipes: dict[str, dict] = field(default_factory=lambda: {k: dict(v) for k, v in PAPER_RECIPES.items()})
    chance_margin: float = 0.1       # a clean model below chance + this did not learn: no verdict for its row

    def __post_init__(self) -> None:
        if self.robust_images < 0 or self.robust_steps < 1 or not 0 < self.robust_eps <= 1 or self.robust_alpha <= 0:
            raise UnlearnableError("robust readout: need robust_images ≥ 0, robust_steps ≥ 1, 0 < robust_eps ≤ 1, "
                                   "robust_alpha > 0")
        if not 0 <= self.val_share < 0.5:
            raise UnlearnableError("val_share must be in [0, 0.5)")
        names = {f.name for f in fields(TrainConfig)}
        for d, r in self.recipes.items():
            parse_defenses([d])
            if set(r) - names:
                raise UnlearnableError(f"recipe of {d}: unknown setting(s) {sorted(set(r) - names)}")
        self.defenses = parse_defenses(self.defenses)
        self.patterns_for = [] if self.patterns_for in (["none"], []) else (
            list(self.defenses) if self.patterns_for == ["all"] else parse_defenses(self.patterns_for))
        if not self.archs:
            raise UnlearnableError("give at least one victim architecture")
        if not 0 < self.pattern_share <= 1:
            raise UnlearnableError("pattern_share must be in (0, 1]")


def robust_label(cfg: MatrixConfig, images: int | None = None) -> str:
    """The robust readout in words, written from the settings that run it (never typed by hand)."""
    n = cfg.robust_images if images is None else images
    return (f"PGD-{cfg.robust_steps} (L∞ ε {cfg.robust_eps * 255:.3g}/255, step {cfg.robust_alpha * 255:.3g}/255, "
            f"random start) on {n} clean test images")


def robust_settings(cfg: MatrixConfig, images: int | None = None) -> dict:
    """The robust readout's settings and label as recorded in cells and reports."""
    n = cfg.robust_images if images is None else images
    return {"images": n, "eps": cfg.robust_eps, "alpha": cfg.robust_alpha, "steps": cfg.robust_steps,
            "label": robust_label(cfg, n)}


def defense_train_config(cfg: MatrixConfig, defense: str) -> TrainConfig:
    """The recipe ``defense`` trains with: ``cfg.train`` with the defense's entry of ``cfg.recipes``."""
    return replace(cfg.train, **cfg.recipes.get(defense, {}))


def split_validation(labels: torch.Tensor, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), sorted: ``round(share · n_k)`` images of each class k
    (at least one when ``share`` > 0 and the class has two or more) held out, drawn by ``seed``."""
    if share <= 0:
        return torch.arange(len(labels)), torch.zeros(0, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    held = []
    for k in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == k).squeeze(1)
        n = min(len(idx) - 1, max(1, round(share * len(idx))))
        held.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    val = torch.sort(torch.cat(held)).values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).squeeze(1), val


def load_test(dataset: str, root: str | os.PathLike | None, cfg: MatrixConfig,
              size: int | None = None) -> ImageTensors:
    """The clean test set, or its class-balanced ``cfg.test_subset``; an ImageFolder squashed to
    ``size`` × ``size`` when given (the working size of a mixed-size protection)."""
    test = load_dataset(dataset, "test", root, size)
    if cfg.test_subset and cfg.test_subset < len(test):
        test = test.subset(balanced_subset(test.labels, cfg.test_subset, cfg.train.seed))
    return test


def work_side(manifest: dict) -> int | None:
    """The side the clean images must be squashed to, to match a protect-dataset output: its working
    size when the protection resized a mixed-size ImageFolder, else None (the images' own size)."""
    return int(manifest["work_size"][0]) if manifest.get("resized") else None


def _indices_id(indices) -> str:
    """Short hash of the int64 source indices of a matrix's training images."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def _cell_fingerprint(cfg: MatrixConfig, arch: str, defense: str, data_name: str, dataset: str,
                      data_id: dict) -> str:
    """Everything a cell's result depends on. A clean cell without patterns does not depend on the
    protection, only on the images (``data_id["indices"]``): it is shared between matrices over the
    same images and can be trained before the protection exists (``clean_cells``)."""
    shared = data_name == "clean" and defense not in cfg.patterns_for
    return _fingerprint({"arch": arch, "defense": defense, "data": data_name,
                         "data_id": ({"dataset": dataset, "indices": data_id["indices"],
                                      **({"size": data_id["size"]} if "size" in data_id else {})}
                                     if shared else data_id),
                         "train": asdict(defense_train_config(cfg, defense)),
                         "at": [cfg.at_eps, cfg.at_steps, cfg.at_alpha],
                         "tcr_warmup": cfg.tcr_warmup_epochs if defense == "tcr" else None,
                         "robust": robust_settings(cfg), "val_share": cfg.val_share,
                         "robust_objective": "attack_loss" if defense == "cas" else "ce",
                         "patterns": asdict(cfg.pattern) if defense in cfg.patterns_for else None,
                         "pattern_share": cfg.pattern_share, "test_subset": cfg.test_subset,
                         **({"awp_gamma": cfg.awp_gamma} if defense == "awp" else {})})


def clean_cells(dataset: str, indices, out_dir: str | os.PathLike, config: MatrixConfig | None = None,
                device: str = "auto", data_root: str | os.PathLike | None = None,
                on_event: Event | None = None, size: int | None = None) -> list[dict]:
    """Train (or reuse) the clean cells of a matrix that do not depend on the protection (defenses
    without patterns) on ``dataset``'s training images at source ``indices``, before the protection
    exists; ``verify_defenses`` over a ``protect-dataset`` output of the same images, with the same
    ``config`` and ``out_dir`` (and ``size``: its ``work_side``), reuses them. Returns their records.
    Reports 'model', 'epoch' and 'progress' events (``unlearnable.events``)."""
    emit = emitter(on_event)
    cfg = config or MatrixConfig()
    dev = resolve_device(device)
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    idx = np.asarray(indices, dtype=np.int64)
    test = load_test(dataset, data_root, cfg, size)
    clean = load_dataset(dataset, "train", data_root, size).subset(torch.from_numpy(idx))
    tr_idx, val_idx = split_validation(clean.labels, cfg.val_share, cfg.train.seed)
    train_set, val_set = clean.subset(tr_idx), (clean.subset(val_idx) if len(val_idx) else None)
    data_id = {"indices": _indices_id(idx), **({"size": size} if size else {})}
    plan = [(a, d) for a in cfg.archs for d in cfg.defenses if d not in cfg.patterns_for
            and (a not in GRAPH_VICTIMS or d == "standard")]
    recs = []
    for i, (arch, defense) in enumerate(plan):
        key = cell_key(arch, defense, "clean")
        fp = _cell_fingerprint(cfg, arch, defense, "clean", dataset, data_id)
        path, tpath = out / "cells" / f"{key}.json", out / "cells" / f"{key}.pt"
        found = _read_cell(path, tpath, fp)
        emit("model", {"key": key, "index": i + 1, "total": len(plan), "reused": found is not None})
        if found is None:
            rec, _, _ = run_cell(arch, defense, "clean", train_set, test, cfg, dev, dataset, val_set=val_set,
                                 **epoch_events(emit))
            rec["fingerprint"] = fp
            tpath.unlink(missing_ok=True)
            write_json_atomic(rec, path)
        else:
            rec = found[0]
        recs.append(rec)
    return recs


def _save_atomic(obj, path: Path) -> None:
    """``torch.save`` through the one checked atomic writer (``data.storage.write_atomic``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def _read_cell(path: Path, tpath: Path, fp: str) -> tuple[dict, dict] | None:
    """A finished cell (record, tensors) if its files are readable and its fingerprint is ``fp``;
    None (the cell is trained again, overwriting both) when missing, stale or corrupt."""
    try:
        rec = json.loads(path.read_text())
        if not isinstance(rec, dict) or rec.get("fingerprint") != fp:
            return None
        return rec, (torch.load(tpath, weights_only=True) if tpath.exists() else {})
    except (OSError, ValueError, RuntimeError, EOFError, AttributeError, TypeError):
        return None


def cell_key(arch: str, defense: str, data: str) -> str:
    return f"{arch}--{defense}--{data}"


def _fingerprint(obj: dict) -> str:
    return settings_sha256(obj).hexdigest()[:16]


def _class_firsts(data: ImageTensors) -> torch.Tensor:
    """Index of the first image of each class (K,)."""
    return torch.stack([torch.nonzero(data.labels == k)[0, 0] for k in range(data.num_classes)])


def _float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div_(255)


def class_noise(delta: np.ndarray | torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, C, H, W): the class-wise noise itself, or for sample-wise noise each class's mean δ."""
    d = torch.as_tensor(np.asarray(delta, dtype=np.float32))
    if d.shape[0] == num_classes and d.shape[0] != len(labels):
        return d
    return torch.stack([d[labels == k].mean(0) for k in range(num_classes)])


def run_cell(arch: str, defense: str, data_name: str, train_set: ImageTensors, test_set: ImageTensors,
             cfg: MatrixConfig, device: torch.device, dataset: str, canvases: dict[str, torch.Tensor] | None = None,
             pattern_set: tuple[torch.Tensor, torch.Tensor] | None = None, noise: torch.Tensor | None = None,
             on_epoch: Callable[[EpochRecord], None] | None = None,
             on_batch: Callable[[int, int], None] | None = None,
             val_set: ImageTensors | None = None) -> tuple[dict, dict, torch.nn.Module]:
    """Train one cell (also usable alone, e.g. on clean or label-noisy data) with the defense's
    recipe (``defense_train_config``); returns (JSON record, tensors for the report: pattern
    images, the trained model). ``val_set``: the held-out validation part of the same training
    data, on which the epoch is chosen. Patterns need ``canvases`` and ``pattern_set``. A graph victim
    (``GRAPH_VICTIMS``) has no model to return (None)."""
    if arch in GRAPH_VICTIMS:
        return run_graph_cell(arch, defense, data_name, train_set, test_set, cfg, device)
    tc = defense_train_config(cfg, defense)
    train_set = squeezed(train_set, defense)   # jpeg-iss, grayworld: the stored images once, before the crop
    model = build_model(arch, train_set.num_classes, train_set.images.shape[1], tc.seed, device)
    ctx = DefenseContext(model, len(train_set), train_set.num_classes, dataset, tc.epochs, tc.grad_clip, tc.seed,
                         cfg.at_eps, cfg.at_steps, cfg.at_alpha, cfg.tcr_warmup_epochs,
                         torch.Generator().manual_seed(tc.seed + 1), cfg.awp_gamma,
                         tuple(train_set.images.shape[1:]))
    step = build_step(defense, ctx)
    t0 = time.perf_counter()
    history = train(model, train_set, test_set, tc, step=step, on_epoch=on_epoch, on_batch=on_batch,
                    val_set=val_set)
    seconds = time.perf_counter() - t0
    rec = summarize_run(arch, data_name, history, seconds)
    rec.update(defense=defense, robust_acc=None, recipe=asdict(tc), train_images=len(train_set),
               val_images=len(val_set) if val_set is not None else 0)
    if cfg.robust_images:
        n = min(cfg.robust_images, len(test_set))
        x = prepare_batch(test_set.images[:n].to(device))
        # Adaptive readout: a defense whose step trains against its own objective (CAS: CE + β·aux CE)
        # is attacked with that objective; plain-CE PGD overstates CAS's robustness (arXiv 2103.08307).
        objective = getattr(step, "attack_loss", None)
        rec["robust_acc"] = robust_accuracy(model, x, test_set.labels[:n], cfg.robust_eps, cfg.robust_alpha,
                                            cfg.robust_steps, seed=tc.seed, loss_fn=objective)
        rec["robust_eval"] = {**robust_settings(cfg, n),
                              "objective": objective.__name__ if objective is not None else "ce"}
    tensors: dict = {}
    if defense in cfg.patterns_for and canvases and pattern_set is not None:
        px, py = pattern_set
        rec["patterns"] = {}
        for kind, canv in canvases.items():
            pat = classwise_patterns(model, canv, px, py, config=cfg.pattern)
            rec["patterns"][kind] = {"predictive_power": pat.predictive_power.tolist(),
                                     "mean_predictive_power": float(pat.predictive_power.mean())}
            tensors[f"patterns/{kind}"] = pat.images().half()
        if noise is not None:
            power = noise_predictive_power(model, noise, px, py)
            rec["patterns"]["noise"] = {"predictive_power": power.tolist(),
                                        "mean_predictive_power": float(power.mean())}
    rec["seconds_total"] = time.perf_counter() - t0
    return rec, tensors, model


# Victims that are not trained by SGD on pixels: a kNN graph over frozen features, classified
# transductively by DGC (``unlearnable.graph.victim``); the value names the feature extractor.
GRAPH_VICTIMS = {"dgc-pixels": None, "dgc-surrogate": "smallcnn-cifar10"}


def run_graph_cell(arch: str, defense: str, data_name: str, train_set: ImageTensors, test_set: ImageTensors,
                   cfg: MatrixConfig, device: torch.device) -> tuple[dict, dict, None]:
    """One graph-victim cell: the training images (protected or clean) and the clean test images in one
    kNN graph, DGC propagation, a linear classifier on the training nodes (arXiv 2102.10739). It has
    no epochs and trains through no defense: its record is a one-epoch run scored on the test images,
    with the graph's statistics under ``graph``. ``dgc-surrogate`` embeds with the shipped surrogate,
    which was trained on clean CIFAR-10 (so it has seen clean versions of CIFAR training images)."""
    from ..graph.victim import GraphVictimConfig, graph_victim
    from ..train.surrogate import load_surrogate

    if defense != "standard":
        raise UnlearnableError(f"the graph victim {arch} trains through no defense (got {defense!r})")
    name = GRAPH_VICTIMS[arch]
    extractor = load_surrogate(name, device)[0] if name else None
    gcfg = GraphVictimConfig(seed=cfg.train.seed)
    t0 = time.perf_counter()
    res = graph_victim(train_set.images, train_set.labels, test_set.images, test_set.labels, extractor, gcfg,
                       device)
    seconds = time.perf_counter() - t0
    history = [EpochRecord(epoch=1, lr=gcfg.lr, train_loss=res["train_loss"], train_acc=res["train_acc"],
                           test_loss=None, test_acc=res["test_acc"], seconds=seconds)]
    rec = summarize_run(arch, data_name, history, seconds)
    rec.update(defense=defense, robust_acc=None, recipe={"graph_victim": asdict(gcfg), "extractor": name or "pixels"},
               train_images=len(train_set), val_images=0, graph=res, seconds_total=seconds)
    return rec, {}, None


def verify_defenses(protected_dir: str | os.PathLike, out_dir: str | os.PathLike, config: MatrixConfig | None = None,
                    device: str = "auto", data_root: str | os.PathLike | None = None,
                    on_event: Event | None = None, only_finished: bool = False) -> dict:
    """Run (or resume) the matrix for a ``protect-dataset`` output and write ``report.json``,
    ``assets.pt`` and ``report.html`` under ``out_dir``. Reports a 'model' event as each cell starts
    (``reused`` when it finished earlier), then its 'epoch' and 'progress' events. ``only_finished``: train nothing, report the cells finished so far
    (``report["cells_missing"]`` lists the rest; their rows have no verdict). Returns the report dict."""
    from ..report.html import write_report

    emit = emitter(on_event)
    cfg = config or MatrixConfig()
    dev = distributed.setup_device(device)      # under torchrun: this rank's device, the process group joined
    ctx = distributed.current()
    spread = ctx.active and not only_finished   # torchrun: cell i is trained on rank i mod N
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    protected, manifest = load_protected(protected_dir)
    root = data_root or manifest.get("data_root")
    dataset = manifest["dataset"]
    size = work_side(manifest)
    test = load_test(dataset, root, cfg, size)
    clean = load_dataset(dataset, "train", root, size).subset(torch.from_numpy(protected.meta["indices"]))
    if not torch.equal(clean.labels, protected.labels):
        raise UnlearnableError(f"{protected_dir}: labels do not match {dataset} at the recorded indices")
    # the validation split: the same held-out indices of the clean and the protected images
    tr_idx, val_idx = split_validation(protected.labels, cfg.val_share, cfg.train.seed)
    full = {"clean": clean, "protected": protected} if cfg.include_clean else {"protected": protected}
    sets = {k: v.subset(tr_idx) for k, v in full.items()}
    vals = {k: v.subset(val_idx) if len(val_idx) else None for k, v in full.items()}

    delta = np.load(Path(protected_dir) / "perturbation.npy")
    noise = class_noise(delta, protected.labels, protected.num_classes)
    firsts = _class_firsts(protected)
    test_firsts = _class_firsts(test)
    canvases = {"clean_canvas": _float(test.images[test_firsts]),
                "protected_canvas": _float(protected.images[firsts])}
    pidx = balanced_subset(test.labels, max(test.num_classes, int(len(test) * cfg.pattern_share)), cfg.train.seed)
    pattern_set = (_float(test.images[pidx]), test.labels[pidx])

    data_id = {"manifest": {k: manifest.get(k) for k in ("dataset", "mode", "eps", "seed", "num_images", "surrogate",
                                                          "final_surrogate_acc", "rounds")},
               "indices": _indices_id(protected.meta["indices"]), **({"size": size} if size else {})}
    cells, tensors, missing = [], {}, []
    plan = [(a, d, s) for a in cfg.archs for d in cfg.defenses for s in sets
            if a not in GRAPH_VICTIMS or d == "standard"]
    for i, (arch, defense, data_name) in enumerate(plan):
        if spread and not ctx.owns(i):
            continue                            # another rank's cell
        key = cell_key(arch, defense, data_name)
        fp = _cell_fingerprint(cfg, arch, defense, data_name, dataset, data_id)
        path = out / "cells" / f"{key}.json"
        tpath = out / "cells" / f"{key}.pt"
        rec = _read_cell(path, tpath, fp)
        done = rec is not None
        emit("model", {"key": key, "index": i + 1, "total": len(plan), "reused": done})
        if done:
            rec, cell_tensors = rec
        elif only_finished:
            missing.append(key)
            continue
        else:
            rec, cell_tensors, _ = run_cell(arch, defense, data_name, sets[data_name], test, cfg, dev, dataset,
                                            canvases, pattern_set, noise, val_set=vals[data_name],
                                            **epoch_events(emit))
            rec["fingerprint"] = fp
            if cell_tensors:
                _save_atomic(cell_tensors, tpath)
            else:
                tpath.unlink(missing_ok=True)
            write_json_atomic(rec, path)
        cells.append(rec)
        tensors.update({f"{key}/{k}": v for k, v in cell_tensors.items()})
    if spread:          # every rank wrote its cells: rank 0 assembles the report once, the others get it
        ctx.barrier()
        try:
            report = (verify_defenses(protected_dir, out_dir, config, device, data_root, None, only_finished=True)
                      if ctx.is_writer else None)
        except BaseException as e:
            ctx.share(error=e)
            raise
        return ctx.share(report)

    shown = firsts[: min(10, len(firsts))]
    assets = {"clean": clean.images[shown], "protected": protected.images[shown],
              "noise": torch.as_tensor(np.asarray(delta[shown.numpy()] if len(delta) == len(protected) else
                                                  delta[protected.labels[shown].numpy()], dtype=np.float32)),
              "classes": [protected.classes[int(protected.labels[j])] for j in shown],
              "canvases": {k: v.half() for k, v in canvases.items()}, "cells": tensors}
    _save_atomic(assets, out / ASSETS)
    report = {"kind": "defended-verification", "protected_dir": str(Path(protected_dir).resolve()),
              "dataset": dataset, "classes": protected.classes, "mode": manifest["mode"], "eps": manifest["eps"],
              "surrogate": manifest.get("surrogate"), "train_images": len(tr_idx), "val_images": len(val_idx),
              "protected_images": len(protected), "test_images": len(test),
              "device": str(dev), "train_config": asdict(cfg.train),
              "matrix": {"archs": cfg.archs, "defenses": cfg.defenses, "data": list(sets),
                         "at": {"eps": cfg.at_eps, "steps": cfg.at_steps, "alpha": cfg.at_alpha},
                         "robust": robust_settings(cfg),
                         "recipes": {d: asdict(defense_train_config(cfg, d)) for d in cfg.defenses},
                         "recipe_overrides": {d: cfg.recipes[d] for d in cfg.defenses if d in cfg.recipes},
                         "validation": {"share": cfg.val_share, "images": len(val_idx),
                                        "rule": "first epoch of highest accuracy on the held-out part of the "
                                                "training data each model trains on"},
                         "chance_margin": cfg.chance_margin,
                         "patterns_for": cfg.patterns_for, "pattern": asdict(cfg.pattern),
                         "pattern_images": len(pidx)},
              "defense_summaries": {d: DEFENSES[d].summary for d in cfg.defenses},
              "cells": cells, "cells_missing": missing,
              "summary": summarize_matrix(cells, protected.num_classes, cfg.chance_margin)}
    report["verdict_text"] = verdict_text(report)
    write_json_atomic(report, out / REPORT_JSON)
    write_report(out)
    return report


def train_defended(dataset: str, defense: str, arch: str, config: MatrixConfig | None = None,
                   subset: int | None = None, label_noise: float = 0.0, noise_kind: str = "symmetric",
                   device: str = "auto", data_root: str | os.PathLike | None = None,
                   on_event: Event | None = None) -> tuple[dict, torch.nn.Module]:
    """Train one model through a defense on a (clean) dataset or a ``protect-dataset`` folder,
    optionally with injected label noise; ``config.val_share`` of it is held out to choose the epoch.
    Returns (record with clean and robust test accuracy, model)."""
    from ..data.label_noise import asymmetric_noise_cifar10, symmetric_noise

    cfg = config or MatrixConfig(archs=[arch], defenses=[defense], patterns_for=["none"])
    dev = resolve_device(device)
    size = None
    if Path(dataset).is_dir() and (Path(dataset) / MANIFEST).exists():
        train_set, manifest = load_protected(dataset)
        name = manifest["dataset"]
        data_root = data_root or manifest.get("data_root")
        size = work_side(manifest)
    else:
        name = dataset
        train_set = load_dataset(dataset, "train", data_root)
    test = load_test(name, data_root, cfg, size)
    if subset:
        train_set = train_set.subset(balanced_subset(train_set.labels, subset, cfg.train.seed))
    if label_noise:
        if noise_kind == "symmetric":
            labels = symmetric_noise(train_set.labels, train_set.num_classes, label_noise, cfg.train.seed)
        elif noise_kind == "asymmetric" and name == "cifar10":
            labels = asymmetric_noise_cifar10(train_set.labels, label_noise, cfg.train.seed)
        else:
            raise UnlearnableError(f"label noise {noise_kind!r} is not defined for {name} "
                                   "(symmetric, or asymmetric on cifar10)")
        train_set = replace(train_set, labels=labels)
    tr_idx, val_idx = split_validation(train_set.labels, cfg.val_share, cfg.train.seed)
    val_set = train_set.subset(val_idx) if len(val_idx) else None
    train_set = train_set.subset(tr_idx)
    rec, _, model = run_cell(arch, parse_defenses([defense])[0], name, train_set, test, cfg, dev, name,
                             val_set=val_set, **epoch_events(emitter(on_event)))
    rec.update(dataset=str(dataset), label_noise=label_noise, noise_kind=noise_kind if label_noise else None,
               train_images=len(train_set), val_images=len(val_idx), test_images=len(test))
    return rec, model
