"""The classifier head API shared by every registry model, as in timm: ``get_classifier()``
returns the final ``nn.Linear``, ``reset_classifier(num_classes)`` replaces it by a fresh one, and
``forward(x) = forward_head(forward_features(x))``. :class:`Classifier` implements these once; a
model names its classifier attribute (``classifier_attr``) and defines the two forwards.
``add_classes`` grows a model's classifier by new classes through that API (the reference-bank
photo problem appends the photos' classes to a pretrained surrogate's).

Deviation from timm: ``reset_classifier(0)`` gives a ``Linear`` with no outputs, not an
``nn.Identity``; use ``forward_head(x, pre_logits=True)`` for features.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def fresh_linear(like: nn.Linear, num_classes: int) -> nn.Linear:
    """A newly initialised ``nn.Linear(like.in_features, num_classes)`` (bias iff ``like`` has one)
    on ``like``'s device and dtype. Built on the CPU and then moved, so its initialisation draws
    from the CPU generator whatever the device (seeded runs match across devices)."""
    new = nn.Linear(like.in_features, num_classes, bias=like.bias is not None)
    return new.to(device=like.weight.device, dtype=like.weight.dtype)


class Classifier(nn.Module):
    """Base of the registry's models. Subclasses define ``forward_features`` (the feature map before
    global pooling), ``forward_head(x, pre_logits=False)`` (pooling, then the classifier),
    ``num_features``, ``cas_layers`` (where CAS attaches by default, arXiv 2103.08307) and
    ``classifier_attr`` (the name of their final ``nn.Linear``)."""

    classifier_attr: str = "head"
    num_features: int
    cas_layers: tuple[str, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs."""
        setattr(self, self.classifier_attr, fresh_linear(self.get_classifier(), num_classes))


def add_classes(model: nn.Module, extra: int) -> nn.Module:
    """A deep copy of ``model`` whose classifier (``get_classifier()``) has ``extra`` more outputs.
    The old classes keep their rows; each new row starts at the mean of the old rows and its bias at
    the mean bias, so the new classes begin as 'average'. ``model`` is left unchanged."""
    model = copy.deepcopy(model)
    old = model.get_classifier()
    model.reset_classifier(old.out_features + extra)
    new = model.get_classifier()
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.weight[old.out_features:] = old.weight.mean(0, keepdim=True)
        if old.bias is not None:
            new.bias[: old.out_features] = old.bias
            new.bias[old.out_features:] = old.bias.mean()
    return model
