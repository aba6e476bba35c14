"""Channel-wise Activation Suppressing (CAS, Bai et al., ICLR 2021, arXiv 2103.08307).

Adversarial examples activate many channels weakly and with the wrong emphasis. CAS inserts,
after a late block, an auxiliary linear classifier h over the globally average-pooled channels
(B, C) -> (B, K) and re-weights the block's output channels by the classifier's weights of one
class: f̃ = f ⊙ W_h[y] with the true label y while training, and with h's own prediction ŷ at
test time (Eq. 2 of the paper). Training adds β · CE(h(GAP(f)), y) to the loss (Eq. 3).

As in the official code (github.com/bymavis/CAS_ICLR2021, ``Standard_Adv_Training/``):

* Placement: ResNet-18 has a CAS module after *both* BasicBlocks of its last stage
  (``models/resnet_cas.py`` l. 112 builds ``layer4`` from ``CASBlock``s, each with its own
  ``fc``, l. 46, masking the block's post-ReLU output, l. 60-70); VGG-16 after each of the three
  conv-BN-ReLU layers of its last conv stage (``models/VGG16_cas.py``, ``layer5``); WRN on the
  pre-activation that feeds the last block's first conv and after the final BN-ReLU
  (``models/wideresnet_cas.py``, ``NetworkBlock_CAS`` and ``extra_fc``). Our ResNet, VGG and WRN
  declare those places as their ``cas_layers`` attribute, which ``default_cas_layers`` reads.
  SmallCNN has no official placement: one module after its last conv-BN-ReLU (our choice).
* Loss: CE(f(x), y) + β · mean over the CAS modules of CE(h_i, y), β = 2 (``train.py`` l. 56
  ``--beta`` default 2, l. 106-111).
* Training attack: PGD maximises the same CE + β · mean aux CE, with the model in eval mode, so
  the masks come from h's predictions (``attack/reg_attack.py`` l. 97-109, called with β at
  ``train.py`` l. 104); the official test attack uses it as well (``train.py`` l. 208-212,
  ``Trades/pgd_attack_cifar10_cas.py`` l. 84-90). ``cas_objective`` is that objective: use it
  for the training attack (``CASStep`` does) and for the robust-accuracy readout
  (``robust_accuracy(..., loss_fn=step.attack_loss)``): plain-CE PGD is not an adaptive attack
  on CAS and overstates its robustness.

The modules are attached with forward hooks, so registry models stay unchanged:
``cas = attach_cas(model)``; train with ``CASStep(cas)`` (or ``CASStep(cas, AdversarialStep())``).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast
from ..errors import UnlearnableError
from .adversarial import AdversarialStep
from .loop import StandardStep

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook replacing ``module``'s output by its masked version. A bound method, so
        ``copy.deepcopy(model)`` re-binds it to the copy's own CAS module."""
        return self(output)


class CASModules(nn.Module):
    """The CAS modules of one model in forward order, with the layer each one follows.
    Registered on the model as ``model.cas`` so its optimizer trains them and its state_dict
    holds them (keys ``cas.mods.<i>.fc.*``)."""

    def __init__(self, layers: Sequence[str], modules: Sequence[CAS]) -> None:
        super().__init__()
        self.layers = list(layers)
        self.mods = nn.ModuleList(modules)

    def __iter__(self) -> Iterator[CAS]:
        return iter(self.mods)

    def __len__(self) -> int:
        return len(self.mods)

    def __getitem__(self, i: int) -> CAS:
        return self.mods[i]

    @property
    def labels(self) -> torch.Tensor | None:
        return self.mods[0].labels

    @labels.setter
    def labels(self, y: torch.Tensor | None) -> None:
        """Set (training mask W[y]) or clear (predicted-class mask) every module's labels."""
        for m in self.mods:
            m.labels = y

    @property
    def aux_logits(self) -> list[torch.Tensor]:
        """Each module's h logits (B, K) from the last forward pass."""
        if any(m.last_logits is None for m in self.mods):
            raise RuntimeError("run the model forward before reading the CAS logits")
        return [m.last_logits for m in self.mods]

    def aux_loss(self, y: torch.Tensor) -> torch.Tensor:
        """Mean over modules of CE(h_i(x), y) for the last forward pass (official: sum / count)."""
        return torch.stack([F.cross_entropy(z.float(), y) for z in self.aux_logits]).mean()


def default_cas_layers(model: nn.Module) -> list[str]:
    """The submodule names where CAS attaches by default: the model's declared ``cas_layers``. Registry
    models declare the official placement (see the module docstring): every block of a ResNet's last
    stage; the ReLUs of a VGG's last conv stage; a WRN's last block's pre-activation (``act1``) and
    final BN-ReLU (``act``); SmallCNN's last conv-BN-ReLU. (Official WRN masks only the conv path of
    that block; ours does too whenever the block keeps its width, as in every registry WRN, but a
    width-changing last block would feed the mask to its shortcut as well.)"""
    layers = getattr(model, "cas_layers", None)
    if layers is None:
        raise UnlearnableError(
            f"{type(model).__name__} declares no default CAS layers: give the class a `cas_layers` "
            "attribute (a tuple of submodule names whose outputs CAS masks, e.g. (\"layer4\",)) "
            "or pass layers= to attach_cas")
    return list(layers)


def attach_cas(model: nn.Module, layers: str | Sequence[str] | None = None,
               input_shape: tuple[int, int, int] = (3, 32, 32)) -> CASModules:
    """Insert a CAS module after each of ``layers`` (submodule names; default
    ``default_cas_layers(model)``), each masking that layer's output (B, C, H, W), and register
    them as ``model.cas``. Returns the ``CASModules``."""
    if hasattr(model, "cas"):
        raise ValueError("this model already has CAS modules attached")
    names = [layers] if isinstance(layers, str) else list(layers or default_cas_layers(model))
    targets = [model.get_submodule(n) for n in names]
    shapes: dict[int, torch.Size] = {}
    probes = [t.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, o.shape))
              for k, t in enumerate(targets)]
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            num_classes = model(torch.zeros(1, *input_shape, device=device)).shape[1]
    finally:
        for p in probes:
            p.remove()
        model.train(was)
    cas = CASModules(names, [CAS(shapes[k][1], num_classes) for k in range(len(names))]).to(device)
    model.add_module("cas", cas)
    for module, target in zip(cas, targets):
        target.register_forward_hook(module.hook)
    return cas


def cas_objective(cas: CASModules, beta: float = 2.0) -> Loss:
    """(logits, y) -> CE(logits, y) + β · mean_i CE(h_i, y), the official CAS training loss and
    attack objective. The h_i logits are read from the modules, so call it right after the forward
    that produced ``logits`` (as ``StandardStep`` and ``PGD`` do)."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y) + beta * cas.aux_loss(y)

    loss.__name__ = f"ce+{beta:g}*cas_aux"
    return loss


class CASStep:
    """One update with the CAS loss CE(f(x), y) + β mean_i CE(h_i(x), y); with ``adversarial`` the
    update is on PGD examples that maximise that same objective against the CAS model (its
    test-time, predicted-class masks), as the official code. ``attack_loss`` is the objective an
    adaptive white-box attack (``robust_accuracy(..., loss_fn=step.attack_loss)``) should use.
    The logits it returns come from the true-label mask, so a training-accuracy readout from them
    is optimistic."""

    def __init__(self, cas: CASModules, adversarial: AdversarialStep | None = None, beta: float = 2.0,
                 grad_clip: float | None = None) -> None:
        self.cas, self.adversarial, self.beta = cas, adversarial, beta
        self.attack_loss = cas_objective(cas, beta)
        self.update = StandardStep(loss_fn=self.attack_loss, grad_clip=grad_clip)

    def __call__(self, model, optimizer, x, y):
        if self.adversarial is not None:
            x = self.adversarial.adversarial(model, x, y, loss_fn=self.attack_loss)
        self.cas.labels = y
        try:
            with autocast(x.device):
                return self.update(model, optimizer, x, y)
        finally:
            self.cas.labels = None
