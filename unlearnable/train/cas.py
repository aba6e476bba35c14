"""Channel-wise Activation Suppressing (CAS, Bai et al., ICLR 2021, arXiv 2103.08307).

Adversarial examples activate many channels weakly and with the wrong emphasis. CAS inserts,
after a late block, an auxiliary linear classifier h over the globally average-pooled channels
(B, C) -> (B, K) and re-weights the block's output channels by the classifier's weights of one
class: f̃ = f ⊙ W_h[y] with the true label y while training, and with h's own prediction ŷ at
test time (Eq. 2 of the paper). Training adds β · CE(h(GAP(f)), y) to the loss (Eq. 3);
β = 2 is the paper's default. It works with standard and adversarial training.

The module is attached with a forward hook, so registry models stay unchanged:
``cas = attach_cas(model)``; train with ``CASStep(cas)`` (or ``CASStep(cas, AdversarialStep())``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast
from .adversarial import AdversarialStep
from .loop import StandardStep

DEFAULT_LAYER = {"ResNet": "stages", "SmallCNN": "features", "VGG": "features", "WideResNet": "blocks"}


class CAS(nn.Module):
    """Auxiliary classifier over channels + channel mask. ``labels`` set → training mask W[y];
    unset → mask of the predicted class. ``last_logits`` keeps h's logits of the last forward."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)
        self.labels: torch.Tensor | None = None
        self.last_logits: torch.Tensor | None = None

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat (B, C, H, W) -> feat ⊙ mask (B, C, 1, 1)."""
        logits = self.fc(feat.mean(dim=(2, 3)))
        self.last_logits = logits
        cls = self.labels if self.labels is not None else logits.argmax(1)
        mask = self.fc.weight[cls]                                   # (B, C)
        return feat * mask[:, :, None, None].to(feat.dtype)


def attach_cas(model: nn.Module, layer: str | None = None, input_shape: tuple[int, int, int] = (3, 32, 32)) -> CAS:
    """Insert a CAS module after ``layer`` (default: the model's last convolutional stage) and
    register it as ``model.cas`` so the optimizer trains it. Returns the module."""
    name = layer or DEFAULT_LAYER.get(type(model).__name__)
    if name is None:
        raise ValueError(f"no default CAS layer for {type(model).__name__}; pass layer=")
    target = model.get_submodule(name)
    shapes: list[torch.Size] = []
    probe = target.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape, device=device))
    probe.remove()
    model.train(was)
    num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    cas = CAS(shapes[-1][1], num_classes).to(device)
    model.add_module("cas", cas)
    target.register_forward_hook(lambda m, i, o: cas(o))
    return cas


class CASStep:
    """One update with the CAS loss CE(f(x), y) + β CE(h(x), y); with ``adversarial`` the update is
    on PGD examples crafted against the CAS model (its test-time mask). The logits it returns come
    from the true-label mask, so a training-accuracy readout from them is optimistic."""

    def __init__(self, cas: CAS, adversarial: AdversarialStep | None = None, beta: float = 2.0,
                 grad_clip: float | None = None) -> None:
        self.cas, self.adversarial, self.beta = cas, adversarial, beta
        self.update = StandardStep(loss_fn=self._loss, grad_clip=grad_clip)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y) + self.beta * F.cross_entropy(self.cas.last_logits.float(), y)

    def __call__(self, model, optimizer, x, y):
        if self.adversarial is not None:
            x = self.adversarial.adversarial(model, x, y)
        self.cas.labels = y
        try:
            with autocast(x.device):
                return self.update(model, optimizer, x, y)
        finally:
            self.cas.labels = None
