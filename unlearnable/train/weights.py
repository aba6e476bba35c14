"""Saving a trained model: ``OUT.pt`` (its state dict) and ``OUT.json`` (its training record),
each written atomically and checked (``unlearnable.data.storage``), never over an existing file:
a model the user trained earlier, or any other file, is refused, not replaced. ``load_trained``
reads one back (``weights_only=True``) for the attacks that take a model file."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..data.storage import write_atomic
from ..errors import UnlearnableError


def trained_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, record) paths for ``out`` (any suffix replaced by .pt and .json)."""
    out = Path(out)
    return out.with_suffix(".pt"), out.with_suffix(".json")


def ensure_new(out: str | os.PathLike) -> None:
    """Raise if either file of ``out`` exists (called before training, so nothing is trained in vain)."""
    taken = [str(p) for p in trained_paths(out) if p.exists() or p.is_symlink()]
    if taken:
        raise UnlearnableError(f"{', '.join(taken)} already exist(s): choose another -o/--out or remove them")


def save_trained(out: str | os.PathLike, model: nn.Module, record: dict) -> tuple[Path, Path]:
    """Write the model's state dict and ``record`` next to each other; returns their paths."""
    weights, rec = trained_paths(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    never = lambda path: False  # noqa: E731 - refuse to replace anything
    write_atomic(weights, buf.getvalue(), may_replace=never)
    write_atomic(rec, json.dumps(record, indent=2).encode(), may_replace=never)
    return weights, rec


def load_trained(path: str | os.PathLike, num_classes: int, in_channels: int,
                 device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """A model saved by ``unlearnable train -o OUT`` (``OUT.pt`` + ``OUT.json``; ``path`` is OUT or either
    file): (the model in eval mode on ``device``, its architecture name). Raises ``UnlearnableError``
    (one line) for a missing, unreadable or mismatched file."""
    from .loop import build_model

    weights, record = trained_paths(path)
    for p in (weights, record):
        if not p.is_file():
            raise UnlearnableError(f"{p} not found: give the OUT of `unlearnable train -o OUT`")
    try:
        arch = json.loads(record.read_text())["arch"]
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UnlearnableError(f"cannot read the model {weights} / {record}: {e}".splitlines()[0]) from None
    model = build_model(arch, num_classes, in_channels, 0, device)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise UnlearnableError(f"{weights} does not fit a {arch} with {num_classes} classes: {e}".splitlines()[0]) \
            from None
    return model.eval(), arch
