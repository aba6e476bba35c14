"""Structured error-minimising noise: a linear projection P applied to every stepped δ of the one
min-min engine (option ``MinMinConfig.structure`` of ``unlearnable.noise.minmin``), so that the noise
lives where a trainer's squeezing defenses keep it (issue 13, item 2).

Why. Image Shortcut Squeezing (Liu et al., ICML 2023, arXiv 2301.13838) removes error-minimising
noise (Huang et al., arXiv 2101.04898) by grayscale conversion or JPEG at quality 10: the noise is
mostly colour and high spatial frequency, and both squeezers throw exactly that away. Two
projections keep the noise in what they keep:

- ``luminance``: δ_c ← (1/C) Σ_c δ_c, the same value in R, G and B. The ITU-R BT.601 luma weights
  (0.299, 0.587, 0.114) sum to 1, so grayscale(x + Pδ) = grayscale(x) + Pδ: grayscale keeps all of
  it. In JPEG's colour transform (JFIF) the Cb and Cr rows sum to 0, so Pδ lands entirely in Y,
  which is kept at full resolution (4:2:0 halves the chroma planes) and quantised with the finer
  luma table. A one-channel image is left as it is.
- ``lowpass`` (``lowpass-k``, k = 4 by default): block-constant k × k averaging (blocks from the
  top-left corner; a partial block at the right or bottom edge averages its own pixels). A
  block-constant pattern sits in the lowest DCT coefficients of the 8 × 8 blocks JPEG quantises,
  the ones quality 10 keeps (its luma steps are 80, 55, 60 for DC and the first two AC coefficients
  and over 100 for most others), and a resize down by a factor up to k keeps most of it (an area
  average over aligned k × k blocks keeps it exactly). k = 4 rather than JPEG's 8: the trainer's
  random crop shifts the pattern against JPEG's block grid anyway, and 4 × 4 keeps 4 × more degrees
  of freedom (64 per channel on a 32 × 32 image).

- ``tile`` (``tile-k``, k = 8 by default): periodic with period k in both directions, every pixel the
  mean of the pixels at the same position modulo k (a k × k texture tile repeated over the image;
  edge pixels of a partial tile join their position's mean). Why: a block-constant pattern is a
  *layout*, which the trainer's random crop shifts and its flip mirrors, and which a CNN's small
  filters cannot see locally; measured on CPU, a class-wise luminance + lowpass-8 pattern that the
  search's surrogate learned to 99.7 % was no shortcut for a victim trained with crop and flip
  (47.7 % against 47.4 % clean). A periodic texture is the same everywhere, so a crop only shifts
  its phase and a cutout leaves the other tiles. (Error-minimising noise works as a linearly separable
  shortcut, Yu et al., KDD 2022, arXiv 2111.00898; their synthetic 8 × 8 block noise is trained on
  without crop or flip by default. That a cropping trainer needs the shortcut to be the same
  everywhere is our reading of the measurement above. Class-wise luminance + tile-8 then protected on
  one seed and not on a second, README: an option to measure, not a default.)

- ``balanced``: no colour cast. Each image's δ is offset per channel so that its channel means are
  equal (to their mean over channels, which is kept: a uniform brightness change is no cast), then
  clipped to ±ε, the offsets found by bisection so that the clipped δ has those means. Why: gray-world
  white balance (Buchsbaum 1980; ``data.augment.gray_world``, the ``grayworld`` defense) subtracts
  exactly such a cast, so a search through white-balanced views (``ViewConfig.white_balance``) cannot
  use it, yet sign steps leave one behind (measured on the 7 ``samples/`` photos with the fresh start:
  a mean chroma change of 2.2 levels, visible as a tint). Deviations from the rule below: the
  clipped offset is not linear, so it is a projection onto the cast-free part of the ε-ball but not an
  orthogonal one (the gradient is projected by its linear part, the cast subtracted); it is applied
  last, after the other structures, whose patterns an offset and a clip keep (block-constant,
  periodic); with ``luminance`` it does nothing (every channel is the same already).

``luminance+lowpass-k`` applies both (they commute: one mixes channels, the other pixels);
``tile-t+lowpass-k`` (k dividing t) is a periodic texture of k × k blocks, the mean over the pixels
at the same block of the period.

The step. The engine steps along sign(P∇) (``attacks.pgd.PGD``'s ``grad_projection``), the
L∞-steepest direction inside P's subspace: a structured δ takes a full step of the step size
whatever the signs of the pixel gradients. (Until 2026-11-30 it stepped along sign(∇) and projected
afterwards; a block then moved by the mean of its pixels' random signs, about step/8 for an 8 × 8
luma block, so a class-wise search, one step a round, barely moved: 0.77/255 mean |δ| after 30
rounds. The measurements of structured kinds before that date used that step.)

Properties (``balanced`` excepted: its bullet above). Each P is an orthogonal projection (P² = P,
Pᵀ = P), and each output value is a mean of input values, so ‖Pδ‖∞ ≤ ‖δ‖∞: a point of the ε-ball
stays in it, with no clamp. (A DCT low-pass,
zeroing high-frequency coefficients, is also an orthogonal projection but does not keep the ε-ball:
its ringing overshoots, and the clamp back into the ball would put high frequencies back. That is
why block averaging is used.)

The pixel-range clamp. The engine keeps x + δ ∈ [0, 1] (sample-wise, and each stepped copy before
a class-wise mean). :func:`structured_step` therefore re-projects after P, δ ← Π_[0,1](x + Pδ) − x:
where x + Pδ would leave [0, 1] (saturated pixels, e.g. a white sky or a black border) the clamp
cuts that pixel's value, so the noise there is no longer exactly structured (a luminance δ can lose
its R component on a pixel with R = 255; the pixel's luma then moves by (0.587 + 0.114) δ rather
than δ). Nowhere else is the structure changed, and the written image would be clipped in the same
way (``noise.budget.apply_noise_uint8``), so what is stored is what is written. A class-wise δ is
the mean of such per-image copies, so it is structured up to the pixels some image clipped.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import UnlearnableError

STRUCTURES = ("luminance", "lowpass", "tile", "balanced")
DEFAULT_BLOCK = 4
DEFAULT_PERIOD = 8
Projection = Callable[[torch.Tensor], torch.Tensor]


def luminance(delta: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): every channel the mean over channels (C = 1: unchanged)."""
    if delta.shape[1] == 1:
        return delta
    return delta.mean(1, keepdim=True).expand_as(delta).contiguous()


def lowpass(delta: torch.Tensor, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): each ``block`` × ``block`` block (from the top-left; partial edge
    blocks average their own pixels) replaced by its mean."""
    h, w = delta.shape[-2:]
    means = F.avg_pool2d(delta, block, ceil_mode=True)
    return means.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :h, :w].contiguous()


def tile(delta: torch.Tensor, period: int = DEFAULT_PERIOD, block: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): each pixel replaced by the mean of the pixels at the same position
    modulo ``period`` (a periodic texture; partial tiles at the right or bottom edge included); with
    ``block`` k (dividing the period), of the pixels in the same k × k block of the period, so the
    result is periodic and block-constant on any image size."""
    h, w = delta.shape[-2:]

    def classes(n: int) -> torch.Tensor:                # (n, m) one-hot of each row's (column's) class
        c = (torch.arange(n, device=delta.device) % period) // block
        return F.one_hot(c, period // block).to(delta.dtype)

    ry, rx = classes(h), classes(w)
    counts = ry.sum(0)[:, None] * rx.sum(0)[None, :]                   # pixels per class (all > 0 if h, w ≥ period)
    means = (ry.t() @ delta @ rx) / counts.clamp(min=1)
    return (ry @ means @ rx.t()).contiguous()


def colour_cast(delta: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, 1): each image's colour cast, its channel means minus their mean over
    channels (what gray world subtracts)."""
    m = delta.mean((2, 3), keepdim=True)
    return m - m.mean(1, keepdim=True)


def balanced(delta: torch.Tensor, eps: float | None = None, iters: int = 40) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): δ without its colour cast. ``eps`` None: the cast subtracted (linear,
    for the gradient). Else δ_c − o_c clipped to ±eps, with the offset o_c of each image and channel
    found by bisection (``iters`` halvings of [−2ε, 2ε]) so that each channel's mean is the mean over
    channels of δ's channel means (module doc)."""
    if delta.shape[1] == 1:
        return delta
    if eps is None:
        return (delta - colour_cast(delta)).contiguous()
    target = delta.mean((1, 2, 3), keepdim=True)                      # (B, 1, 1, 1): the gray mean, kept
    lo = torch.full_like(delta[:, :, :1, :1], -2 * eps)
    hi = torch.full_like(lo, 2 * eps)
    for _ in range(iters):                                              # mean(clip(δ − o)) falls as o grows
        mid = (lo + hi) / 2
        above = (delta - mid).clamp(-eps, eps).mean((2, 3), keepdim=True) > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (delta - (lo + hi) / 2).clamp(-eps, eps).contiguous()


def parse_structure(spec: str) -> str:
    """'luminance', 'lowpass', 'lowpass-8', 'tile', 'balanced', 'luminance+lowpass' (also comma-separated)
    -> the canonical spec ('luminance+lowpass-4', 'luminance+tile-8+lowpass-2+balanced': luminance, tile,
    lowpass, balanced in that order, sizes explicit); raises UnlearnableError on anything else (a block
    that does not divide the period included)."""
    parts = [p.strip().lower() for p in re.split(r"[+,]", str(spec)) if p.strip()]
    lum, bal, block, period = False, False, None, None
    for p in parts:
        m = re.fullmatch(r"(lowpass|tile)(?:-(\d+))?", p)
        if p == "luminance" and not lum:
            lum = True
        elif p == "balanced" and not bal:
            bal = True
        elif m and m.group(1) == "lowpass" and block is None:
            block = int(m.group(2) or DEFAULT_BLOCK)
            if block < 2:
                raise UnlearnableError(f"the low-pass block must be at least 2 pixels, got {block}")
        elif m and m.group(1) == "tile" and period is None:
            period = int(m.group(2) or DEFAULT_PERIOD)
            if period < 2:
                raise UnlearnableError(f"the tile period must be at least 2 pixels, got {period}")
        else:
            raise UnlearnableError(f"unknown or repeated noise structure {p!r} in {spec!r}; use luminance, lowpass, "
                                   "lowpass-K (K × K blocks), tile or tile-T (period T), balanced, joined by '+'")
    if not parts:
        raise UnlearnableError("give a noise structure: luminance, lowpass, tile, balanced, or several "
                               "(luminance+lowpass)")
    if block and period and period % block:
        raise UnlearnableError(f"the low-pass block ({block}) must divide the tile period ({period})")
    return "+".join((["luminance"] if lum else []) + ([f"tile-{period}"] if period else [])
                    + ([f"lowpass-{block}"] if block else []) + (["balanced"] if bal else []))


def structure_projection(spec: str, eps: float | None = None) -> Projection:
    """The projection P (δ (B, C, H, W) -> Pδ, same shape) of a structure ``spec`` (see :func:`parse_structure`);
    ``eps`` is the ball ``balanced`` clips to (None: its linear part, the gradient's projection)."""
    names = parse_structure(spec).split("+")
    block = next((int(n.split("-")[1]) for n in names if n.startswith("lowpass")), None)
    period = next((int(n.split("-")[1]) for n in names if n.startswith("tile")), None)

    def project(delta: torch.Tensor) -> torch.Tensor:
        if "luminance" in names:
            delta = luminance(delta)
        if period is not None:
            delta = tile(delta, period, block or 1)
        elif block is not None:
            delta = lowpass(delta, block)
        if "balanced" in names:
            delta = balanced(delta, eps)
        return delta

    return project


def structured_step(step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], spec: str,
                    pgd) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap the engine's noise step ``step(images, labels, delta) -> delta`` (which steps along sign(P∇),
    see the module doc) so that every stepped δ is projected by P, then back onto ``pgd``'s feasible set
    (its ε and pixel-range rule; see the module doc for what the pixel-range clamp does to the structure)."""
    project = structure_projection(spec, pgd.eps)

    def stepped(images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return pgd.project(project(step(images, labels, delta)), images)

    return stepped


__all__ = ["STRUCTURES", "luminance", "lowpass", "tile", "colour_cast", "balanced", "parse_structure",
           "structure_projection", "structured_step"]
