"""The embedded default surrogate: a small CNN pretrained on a labelled dataset plus a small
class-balanced *reference bank* of that dataset's images, shipped as package data in
``unlearnable/models/weights/`` so that ``unlearnable protect photos/`` runs offline on a CPU.

Why both: the min-min search (arXiv 2101.04898, Eq. 2) needs a classifier over the photos'
classes *and* other classes to tell them from; a flat folder of one person's photos is one
class, so the reference bank supplies the "everything else" the surrogate is trained against.
The searches start from the architecture initialised afresh (``fresh_surrogate``), as the paper's
min-min does: measured, it protects faces far better, and whole photos too once their search views are
white-balanced (README "Where the search's surrogate starts"). The pretrained weights
(``--surrogate-start pretrained``) give the search natural-image features from the first round; whole
photos started from them until 2026-11-30. Label-free clustering uses them either way.

``train_surrogate`` is the recipe that produced the shipped files (``unlearnable
train-surrogate``); the model card next to the weights records its command, data and accuracy.
"""
from __future__ import annotations

import copy
import io
import os
import sys
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.datasets import ImageTensors, balanced_subset, load_dataset, resolve_data_root
from ..data.storage import write_atomic
from ..device import resolve_device
from ..errors import DataNotFoundError, UnlearnableError
from ..events import Event, emitter, epoch_events
from .loop import TrainConfig, build_model, evaluate, train

DEFAULT_NAME = "smallcnn-cifar10"
WEIGHTS_SUFFIX = ".pt"
REFERENCE_SUFFIX = ".reference.npz"
CARD_SUFFIX = ".md"


def weights_dir() -> Path:
    """Folder of the shipped surrogates (package data of ``unlearnable.models``)."""
    return Path(str(resources.files("unlearnable.models"))) / "weights"


def train_surrogate(dataset: str = "cifar10", arch: str = "smallcnn", config: TrainConfig | None = None,
                    reference_per_class: int = 50, data_root: str | os.PathLike | None = None,
                    device: str = "auto", on_event: Event | None = None) -> tuple[nn.Module, dict, ImageTensors]:
    """Train ``arch`` on the training split of ``dataset`` with the standard recipe and pick a
    class-balanced reference bank of ``reference_per_class`` training images per class.
    Returns (model, metadata with test accuracy and history, reference bank); reports 'epoch' and
    'progress' events."""
    cfg = config or TrainConfig(epochs=8)
    dev = resolve_device(device)
    root = resolve_data_root(data_root)
    train_set, test_set = load_dataset(dataset, "train", root), load_dataset(dataset, "test", root)
    model = build_model(arch, train_set.num_classes, train_set.images.shape[1], cfg.seed, dev)
    t0 = time.perf_counter()
    history = train(model, train_set, test_set, cfg, **epoch_events(emitter(on_event)))
    acc, loss = evaluate(model, test_set.to(dev))
    bank_idx = balanced_subset(train_set.labels, reference_per_class * train_set.num_classes, seed=cfg.seed + 1)
    reference = train_set.subset(bank_idx)
    meta = {
        "name": f"{arch}-{dataset}", "arch": arch, "dataset": dataset, "classes": train_set.classes,
        "in_channels": int(train_set.images.shape[1]), "input_size": int(train_set.images.shape[-1]),
        "test_accuracy": acc, "test_loss": loss, "train_images": len(train_set), "test_images": len(test_set),
        "reference_per_class": reference_per_class, "reference_source_indices": bank_idx.tolist(),
        "recipe": asdict(cfg), "train_seconds": time.perf_counter() - t0, "device": str(dev),
        "torch": str(torch.__version__), "tool_version": __version__,
        "history": [asdict(h) for h in history],
    }
    return model, meta, reference


def save_surrogate(out_dir: str | os.PathLike, model: nn.Module, meta: dict, reference: ImageTensors,
                   command: str | None = None) -> Path:
    """Write ``<name>.pt`` (fp16 state dict + metadata), ``<name>.reference.npz`` (uint8 bank) and the
    model card ``<name>.md`` into ``out_dir``; returns the weights path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = meta["name"]
    command = command or " ".join(["unlearnable"] + sys.argv[1:])
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    slim = {k: v for k, v in meta.items() if k not in ("history", "reference_source_indices")}
    weights, bank = io.BytesIO(), io.BytesIO()
    torch.save({"state_dict": state, "meta": {**slim, "command": command}}, weights)
    np.savez_compressed(bank, images=reference.images.cpu().numpy(), labels=reference.labels.cpu().numpy(),
                        classes=np.array(reference.classes),
                        source_indices=np.array(meta["reference_source_indices"], dtype=np.int64))
    write_atomic(out / f"{name}{WEIGHTS_SUFFIX}", weights.getvalue())
    write_atomic(out / f"{name}{REFERENCE_SUFFIX}", bank.getvalue())
    write_atomic(out / f"{name}{CARD_SUFFIX}", model_card(meta, command).encode())
    return out / f"{name}{WEIGHTS_SUFFIX}"


def model_card(meta: dict, command: str) -> str:
    """A short markdown model card: what, data, recipe, the command that reproduces it, accuracy."""
    r = meta["recipe"]
    curve = ", ".join(f"{h['test_acc']:.3f}" for h in meta.get("history", [])[-5:])
    return f"""# `{meta['name']}`: the embedded default surrogate

- **What**: `{meta['arch']}` from `unlearnable.models` ({sum(1 for _ in meta['classes'])} classes, \
{meta['in_channels']}×{meta['input_size']}×{meta['input_size']} inputs in [0, 1]), weights stored in float16.
  It is the starting point of the min-min noise search of `unlearnable protect` on photo folders;
  the search fine-tunes a copy of it, it never changes this file.
- **Data**: {meta['dataset']} training split ({meta['train_images']:,} images), evaluated on its test split
  ({meta['test_images']:,} images). The reference bank `{meta['name']}{REFERENCE_SUFFIX}` holds
  {meta['reference_per_class']} training images per class ({meta['reference_per_class'] * len(meta['classes'])} in all,
  uint8, with their source indices): the "other classes" the photos are told apart from during the search.
  CIFAR-10 (Krizhevsky, 2009) carries no formal licence; it is redistributed widely for research, and the bank
  is 1 % of its training split. Use `--reference` to search against your own reference images instead.
- **Recipe**: SGD lr {r['lr']}, momentum {r['momentum']}, weight decay {r['weight_decay']}, {r['schedule']} schedule,
  batch {r['batch_size']}, {r['epochs']} epochs, grad-norm clip {r['grad_clip']}, random crop (pad 4) + flip, seed {r['seed']}.
- **Reproduce**: `{command}` (needs CIFAR-10 in the data root: `../shared/data/fetch-cifar10`).
  Took {meta['train_seconds'] / 60:.1f} min on `{meta['device']}` (torch {meta['torch']}).
- **Accuracy**: {meta['test_accuracy']:.2%} top-1 on the {meta['dataset']} test set
  (test-loss {meta['test_loss']:.3f}; last epochs: {curve}).
"""


def load_surrogate(name_or_path: str | os.PathLike = DEFAULT_NAME,
                   device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a saved surrogate (a shipped name such as ``smallcnn-cifar10`` or a ``.pt`` path)
    as a float32 model in eval mode on ``device``; returns (model, metadata)."""
    path = _resolve(name_or_path, WEIGHTS_SUFFIX)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    dev = resolve_device(device)
    model = build_model(meta["arch"], len(meta["classes"]), meta["in_channels"], 0, dev)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    model.eval()
    return model, meta


def fresh_surrogate(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every layer initialised afresh (each module's ``reset_parameters``,
    batch-norm statistics included), drawn from ``seed`` on the CPU generator whatever the device, so
    seeded runs match across devices; ``model`` is left unchanged. The photo and face searches start from it by
    default (``PhotoProtectConfig.surrogate_start``): the paper's min-min trains its surrogate from
    scratch along with the noise (arXiv 2101.04898, Sec. 3 and 4.4). Raises ``ValueError`` for a
    module that holds parameters but cannot reset them."""
    device = next(model.parameters()).device
    model = copy.deepcopy(model).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, m in model.named_modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
            elif any(True for _ in m.parameters(recurse=False)):
                raise ValueError(f"cannot initialise {name or 'the model'} ({type(m).__name__}) afresh: it has "
                                 "parameters and no reset_parameters()")
    return model.to(device)


def load_reference(name_or_path: str | os.PathLike = DEFAULT_NAME) -> ImageTensors:
    """The reference bank shipped with a surrogate (uint8 (N, C, H, W) images and labels)."""
    path = _resolve(name_or_path, REFERENCE_SUFFIX)
    with np.load(path) as z:
        return ImageTensors(torch.from_numpy(z["images"].copy()), torch.from_numpy(z["labels"].copy()),
                            [str(c) for c in z["classes"]], f"reference:{path.name}")


def _resolve(name_or_path: str | os.PathLike, suffix: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".pt" and p.exists():
        return p if suffix == WEIGHTS_SUFFIX else p.with_name(p.name[: -len(".pt")] + suffix)
    cand = weights_dir() / f"{name_or_path}{suffix}"
    if cand.exists():
        return cand
    shipped = sorted(f.name[: -len(WEIGHTS_SUFFIX)] for f in weights_dir().glob(f"*{WEIGHTS_SUFFIX}"))
    if not shipped:
        raise DataNotFoundError(f"no surrogate found at {cand}: the package was installed without its weights; "
                                "reinstall it, or make them with `unlearnable train-surrogate`")
    raise UnlearnableError(f"unknown surrogate {str(name_or_path)!r}: shipped ones are {', '.join(shipped)}, "
                           "or give the path of a .pt file written by `unlearnable train-surrogate`")
