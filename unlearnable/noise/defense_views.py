"""Defense views: what a trainer's likely defenses do to a protected training image, as one seeded,
batched, on-device random view that the min-min search (``unlearnable.noise.defense_aware``) takes
every PGD step's gradient through and trains its surrogate on: expectation over transformations
(Athalye et al., arXiv 1707.07397), with the transformations of the defenses that undo error-minimising
noise (Image Shortcut Squeezing, Liu et al., ICML 2023, arXiv 2301.13838: grayscale and JPEG-10;
the augmentations of ``unlearnable.train.defenses``). Issue 13, item 2.

A view of a batch z (B, C, H, W) in [0, 1]: first the trainer's random crop (zero padding 4) and
horizontal flip (``data.augment.random_crop_flip``: the training loop applies it before any
data-side defense, ``train.defenses``), then, independently for each image, one of the configured
defenses drawn uniformly:

=========== ==================================================================================
standard    nothing more (the crop + flip alone: a standard trainer)
grayscale   ITU-R BT.601 luma in every channel: ``data.augment.grayscale`` itself
jpeg        JPEG at a random quality in [10, 50] per image, 4:2:0: ``data.jpeg.jpeg`` with
            ``differentiable=True`` (straight-through rounding: the forward is the exact
            non-differentiable ``jpeg()``, measured equal bit for bit)
cutout      one zeroed 16 × 16 square: ``data.augment.cutout`` itself (zero gradient in the hole)
resize      down to a random side in [1/2, 3/4] of the image and back up (bilinear, antialiased
            down): :func:`resize_down_up`, within 2/255 of Pillow's bilinear down-up on uint8 images
mixup       ``data.augment.mixup`` (α = 1) among the images of the batch drawn for mixup
cutmix      ``data.augment.cutmix`` (α = 1) among the images of the batch drawn for cutmix
=========== ==================================================================================

Every transform is the defense's own function (or, for JPEG, its straight-through twin whose forward
pass is the same), so the search sees exactly what the trainer sees; all are differentiable in z
(crop, flip, cutout and cutmix by indexing and masking, grayscale, mixup and resize linearly, JPEG by
BPDA). Random draws come from the engine's CPU generator in a fixed order, so a checkpointed search
resumes bit for bit.

Mixup and cutmix mix images *and labels*. They enter as the defense trains: the image is mixed with
another *perturbed* image of the same batch (both δ get the gradient), and the loss is the defense's
own mixed loss λ CE(f(x̃), y_i) + (1 − λ) CE(f(x̃), y_j) (``view.loss``; the surrogate trains on the
same mix with the soft target λ e_{y_i} + (1 − λ) e_{y_j}, which gives the same cross-entropy). Why:
a victim trained with mixup only ever sees mixes of two *protected* images against a mixed label, so
the noise must stay a shortcut after averaging (mixup) or pasting (cutmix): the mixed noise should
predict the mixed label. Minimising that very loss over δ searches for such noise. Mixing with a
clean image would model an image the victim never sees; leaving mixing out would give the search
no reason to prefer noise whose shortcut survives it. The stop test (``DefenseAwareProblem.score``)
counts a mixed image right when the model predicts the label of the larger share.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.augment import cutmix, cutout, grayscale, mixup, random_crop_flip
from ..data.jpeg import jpeg
from ..errors import UnlearnableError

VIEWS = ("standard", "grayscale", "jpeg", "cutout", "resize", "mixup", "cutmix")
_MIXES: dict[str, Callable] = {"mixup": mixup, "cutmix": cutmix}


def parse_views(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'all' or 'grayscale,jpeg,...' (or a list) -> validated, de-duplicated view names in the given order."""
    names = list(spec) if isinstance(spec, (list, tuple)) else [s.strip().lower() for s in spec.split(",")
                                                                if s.strip()]
    if names == ["all"]:
        return VIEWS
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise UnlearnableError(f"unknown defense view(s) {', '.join(unknown)}; choose from {', '.join(VIEWS)} or "
                               "'all'")
    if not names:
        raise UnlearnableError("give at least one defense view")
    return tuple(dict.fromkeys(names))


@dataclass
class DefenseViewConfig:
    """A defense view (module doc): ``views`` drawn uniformly per image after the trainer's crop
    (``padding`` px) + flip (``crop_flip``); JPEG quality range (inclusive, IJG 1..100), cutout side
    (px), resize side as a share of the image's, mixup/cutmix α. ``warm_start`` (rounds; 0: off) is a
    setting of the search rather than of a view: plain EM (no views) first, for at most that many rounds
    or until it passes its stop test, then the views (``noise.defense_aware``)."""

    views: tuple[str, ...] = VIEWS
    crop_flip: bool = True
    padding: int = 4
    jpeg_quality: tuple[int, int] = (10, 50)
    cutout_size: int = 16
    resize_scale: tuple[float, float] = (0.5, 0.75)
    mix_alpha: float = 1.0
    warm_start: int = 0

    def __post_init__(self) -> None:
        self.views = parse_views(self.views)
        self.jpeg_quality = tuple(int(q) for q in self.jpeg_quality)
        self.resize_scale = tuple(float(s) for s in self.resize_scale)
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise UnlearnableError(f"JPEG quality range must be within 1..100 and ordered, got {self.jpeg_quality}")
        lo, hi = self.resize_scale
        if not 0 < lo <= hi <= 1:
            raise UnlearnableError(f"resize scale must satisfy 0 < low <= high <= 1, got {self.resize_scale}")
        if self.padding < 0 or self.cutout_size < 1 or not self.mix_alpha > 0:
            raise UnlearnableError("defense view: padding >= 0, cutout size >= 1 and mix alpha > 0 required")
        if self.warm_start < 0:
            raise UnlearnableError(f"warm start must be >= 0 rounds (0: off), got {self.warm_start}")

    @classmethod
    def parse(cls, spec: str, **overrides) -> "DefenseViewConfig":
        """From a CLI spec ('all' or a comma list of ``VIEWS``) and any other field."""
        return cls(views=parse_views(spec), **overrides)

    def settings(self) -> dict:
        """The settings as plain JSON types (manifests, fingerprints); ``warm_start`` only when on, so runs
        without it keep the identity they had before it existed."""
        s = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if not s["warm_start"]:
            del s["warm_start"]
        return s


def resize_down_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (B, C, H, W) in [0, 1] down to ``size`` (bilinear with antialiasing, as Pillow's
    BILINEAR downscale) and back to (H, W) (bilinear, half-pixel centres); convex weights, so the
    result stays in [0, 1]; differentiable in x."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


class DefenseView:
    """One random defense view per call (module doc): ``view(z)`` -> (B, C, H, W) in [0, 1],
    differentiable in z. It remembers the last call's mixing (each image's partner in the batch and
    its own share λ; λ = 1 and itself when not mixed) for :meth:`loss`, :meth:`soft_targets` and
    :meth:`dominant`, which take that call's labels."""

    def __init__(self, config: DefenseViewConfig, generator: torch.Generator) -> None:
        self.config, self.generator = config, generator
        self.partner: torch.Tensor | None = None   # (B,) int64 on z's device
        self.lam: torch.Tensor | None = None       # (B,) float32 on z's device

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        c, gen = self.config, self.generator
        b, dev = z.shape[0], z.device
        v = random_crop_flip(z, c.padding, gen) if c.crop_flip else z
        pick = torch.randint(0, len(c.views), (b,), generator=gen)
        partner = torch.arange(b, device=dev)
        lam = torch.ones(b, device=dev)
        out = v
        for k, name in enumerate(c.views):
            rows = torch.nonzero(pick == k).squeeze(1).to(dev)
            if name == "standard" or len(rows) == 0:
                continue
            sub = v.index_select(0, rows)
            if name in _MIXES:   # the batch positions stand in for labels: the mix returns each partner's
                sub, _, mate, share = _MIXES[name](sub, rows, c.mix_alpha, gen)
                partner[rows] = mate
                lam[rows] = share
            else:
                sub = self._squeeze(name, sub)
            out = out.index_copy(0, rows, sub)
        self.partner, self.lam = partner, lam
        return out

    def _squeeze(self, name: str, x: torch.Tensor) -> torch.Tensor:
        c, gen = self.config, self.generator
        if name == "grayscale":
            return grayscale(x)
        if name == "jpeg":
            lo, hi = c.jpeg_quality
            q = torch.randint(lo, hi + 1, (x.shape[0],), generator=gen).to(x.device)
            return jpeg(x, q.float(), differentiable=True)
        if name == "cutout":
            return cutout(x, c.cutout_size, gen)
        if name == "resize":
            lo, hi = c.resize_scale
            share = lo + (hi - lo) * float(torch.rand((), generator=gen))
            h, w = x.shape[-2:]
            return resize_down_up(x, (max(1, round(h * share)), max(1, round(w * share))))
        raise UnlearnableError(f"unknown defense view {name!r}")

    def _mixing(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lam is None or len(labels) != len(self.lam):
            raise UnlearnableError("the defense view's labels must be those of its last batch")
        return labels[self.partner], self.lam

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean of λ CE(logits, y) + (1 − λ) CE(logits, y_partner) over the last call's batch (plain
        CE where nothing was mixed). logits (B, K) float, labels (B,) int."""
        other, lam = self._mixing(labels)
        own = F.cross_entropy(logits, labels, reduction="none")
        mate = F.cross_entropy(logits, other, reduction="none")
        return (lam * own + (1 - lam) * mate).mean()

    def soft_targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(B, K) class probabilities λ e_y + (1 − λ) e_y_partner of the last call's batch."""
        other, lam = self._mixing(labels)
        lam = lam[:, None]
        return lam * F.one_hot(labels, num_classes).float() + (1 - lam) * F.one_hot(other, num_classes).float()

    def dominant(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) the label of the larger share of each image of the last call (its own when λ ≥ 1/2)."""
        other, lam = self._mixing(labels)
        return torch.where(lam >= 0.5, labels, other)


__all__ = ["VIEWS", "DefenseViewConfig", "DefenseView", "parse_views", "resize_down_up"]
