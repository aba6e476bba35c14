"""The constraints of the adversarial interaction attack (Koren et al., arXiv 2101.06704) on a
perturbed actor skeleton x' = x + δ, and the projection that makes them hold together.

The paper constrains the perturbed actor by (i) a bound on each joint's displacement, (ii)
preserved bone lengths and (iii) temporal smoothness. It publishes no code and the stored copies
we could read give its abstract and introduction only, so the definitions below are ours
(the bone and smoothness terms follow the same ideas in CIASA, Liu et al., arXiv 1909.06500):

(i)   displacement: ‖x'_{t,j} − x_{t,j}‖₂ ≤ ε for every real frame t and joint j (Euclidean norm of
      the joint's 3-D offset, in the data's units); padding frames are never changed (δ = 0 there);
(ii)  bones: ‖x'_{t,c} − x'_{t,p(c)}‖ = ‖x_{t,c} − x_{t,p(c)}‖ for every bone (p(c), c) of the
      kinematic tree, frame by frame (the clean frame's lengths: Kinect's own bone lengths jitter
      by 2-9 % between frames, and the attack must not change them at all);
(iii) smoothness: the change of acceleration, a_t(x') − a_t(x) = Δ²δ_t = δ_{t+1} − 2δ_t + δ_{t−1}
      over frames whose three neighbours are real, is penalised in the attack's objective
      (:func:`smoothness_penalty`, the mean of ‖Δ²δ‖²) and reported (:func:`violations`); it is a
      penalty, not a hard bound (choice: a hard acceleration bound cannot in general be met
      together with (i) and (ii) by a cheap projection).

Projection (:func:`project_skeleton`), which makes (i) and (ii) hold exactly (up to float32
rounding), in one sweep over the tree from the root (the torso):
- root r: x'_r = x_r + δ_r clipped to the ε-ball;
- joint c with parent p already placed at x'_p: the proposed position y_c is pulled onto the
  sphere of radius ℓ = ‖x_c − x_p‖ around x'_p (along y_c − x'_p); if that point is farther than ε
  from x_c it is rotated towards x_c − x'_p, in the plane of the two directions, to the nearest
  point of the spherical cap {‖x'_c − x'_p‖ = ℓ, ‖x'_c − x_c‖ ≤ ε}. The cap is never empty:
  x_c + (x'_p − x_p) lies on it (rigid translation of the bone), since ‖x'_p − x_p‖ ≤ ε.
Every joint then sits at distance exactly ℓ from its parent and within ε of its clean position.
The map is the identity on feasible skeletons (a feasible x' is returned unchanged) but it is a
sequential projection, not the Euclidean nearest point of the whole skeleton (which would need an
iterative solver); that is our choice. The arithmetic is float64; the result is cast back to the
input dtype. The cap is built with ε minus :func:`rounding_margin` (4 float32 spacings at the
largest coordinate) so that the float32 result, measured in float64, stays ≤ ε. Guaranteed (and tested): displacement ≤ ε and every bone within ``BONE_TOL`` = 10⁻⁵
data units of its clean length (float32 spacing at |x| ≤ 4 is 4.8·10⁻⁷).
"""
from __future__ import annotations

import torch

from ..errors import UnlearnableError
from .data import Skeleton, frame_mask

BONE_TOL = 1e-5   # data units: the bone-length change the projection guarantees


def bone_lengths(x: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """(..., J, 3) -> (..., B): the length of each bone of ``skeleton`` (in ``skeleton.bones`` order)."""
    parents = [p for p, _ in skeleton.bones]
    children = [c for _, c in skeleton.bones]
    return (x[..., children, :] - x[..., parents, :]).norm(dim=-1)


def rounding_margin(clean: torch.Tensor, eps: float) -> float:
    """How far inside ε the projection aims, so that casting its float64 result back to
    ``clean.dtype`` cannot push a displacement past ε: 4 units of that dtype's spacing at the
    largest coordinate (float32, |x| ≤ 3: 1.4·10⁻⁶ data units)."""
    scale = float(clean.detach().abs().max()) + eps if clean.numel() else eps
    return 4 * torch.finfo(clean.dtype).eps * scale


def _unit(v: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    n = v.norm(dim=-1, keepdim=True)
    return torch.where(n > 1e-12, v / n.clamp_min(1e-12), fallback)


def project_skeleton(proposed: torch.Tensor, clean: torch.Tensor, eps: float, skeleton: Skeleton,
                     lengths: torch.Tensor | None = None) -> torch.Tensor:
    """A skeleton sequence near ``proposed`` that meets constraints (i) and (ii) of the module
    docstring with respect to ``clean``. ``proposed``, ``clean``: (N, T, J, 3); ``eps`` > 0 in data
    units; ``lengths`` (N,) int: frames at and after ``lengths[i]`` are returned as in ``clean``
    (None: all frames are real)."""
    x = clean.double()
    y = proposed.double()
    margin = rounding_margin(clean, eps)
    if not eps > 2 * margin:
        raise UnlearnableError(f"the displacement bound must be > {2 * margin:.1e} data units, got {eps}")
    radius = eps - margin
    out = torch.empty_like(x)
    root = skeleton.root
    d = y[..., root, :] - x[..., root, :]
    out[..., root, :] = x[..., root, :] + d * (radius / d.norm(dim=-1, keepdim=True).clamp_min(radius)).clamp(max=1)
    for c in skeleton.order[1:]:
        p = skeleton.parents[c]
        bone0 = x[..., c, :] - x[..., p, :]
        ell = bone0.norm(dim=-1, keepdim=True)
        u0 = _unit(bone0, torch.zeros_like(bone0))
        placed = out[..., p, :]
        u = _unit(y[..., c, :] - placed, u0)
        cand = placed + ell * u
        # the cap: directions u with ‖placed + ℓu − x_c‖ ≤ radius, i.e. u·a ≥ cos_max with a towards x_c
        to_clean = x[..., c, :] - placed
        dist = to_clean.norm(dim=-1, keepdim=True)
        a = _unit(to_clean, u0)
        cos_max = ((ell ** 2 + dist ** 2 - radius ** 2) / (2 * ell * dist).clamp_min(1e-30)).clamp(-1, 1)
        sin_max = (1 - cos_max ** 2).clamp_min(0).sqrt()
        w = _unit(u - (u * a).sum(-1, keepdim=True) * a, torch.zeros_like(u))   # 0 when u is (anti)parallel to a
        rotated = placed + ell * (cos_max * a + sin_max * w)
        rotated = torch.where(w.norm(dim=-1, keepdim=True) > 0, rotated, placed + ell * a)
        inside = (cand - x[..., c, :]).norm(dim=-1, keepdim=True) <= radius
        out[..., c, :] = torch.where(inside, cand, rotated)
    if lengths is not None:
        real = frame_mask(lengths.to(x.device), x.shape[1])[:, :, None, None]
        out = torch.where(real, out, x)
    return out.to(clean.dtype)


def triple_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(N, T − 2) bool: True where frames t, t+1, t+2 are all real (a defined acceleration)."""
    return frame_mask(lengths - 2, num_frames - 2)


def acceleration(x: torch.Tensor) -> torch.Tensor:
    """(N, T, J, 3) -> (N, T − 2, J, 3): second differences x_{t+2} − 2x_{t+1} + x_t."""
    return x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2]


def smoothness_penalty(delta: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N,) per sequence: mean over real frame triples and joints of ‖Δ²δ‖² (data units²), the
    change of acceleration that ``delta`` (N, T, J, 3) causes. 0 for sequences shorter than 3."""
    m = triple_mask(lengths, delta.shape[1]).to(delta.dtype)
    sq = acceleration(delta).pow(2).sum(-1).mean(-1)
    return (sq * m).sum(1) / m.sum(1).clamp_min(1)


def violations(adv: torch.Tensor, clean: torch.Tensor, lengths: torch.Tensor, skeleton: Skeleton) -> dict:
    """Constraint figures of a perturbed batch, in data units (float64 arithmetic): the largest
    joint displacement on real frames, the largest change on padding frames (must be 0), the
    largest bone-length change, and the mean / largest per-joint acceleration change
    ‖a_t(x') − a_t(x)‖ over real frame triples, beside the clean sequences' mean acceleration."""
    adv, clean = adv.double(), clean.double()
    real = frame_mask(lengths, clean.shape[1])
    disp = (adv - clean).norm(dim=-1)                          # (N, T, J)
    bone = (bone_lengths(adv, skeleton) - bone_lengths(clean, skeleton)).abs()
    trip = triple_mask(lengths, clean.shape[1])
    acc_change = acceleration(adv - clean).norm(dim=-1)[trip]  # (frames, J)
    acc_clean = acceleration(clean).norm(dim=-1)[trip]
    return {"max_displacement": float(disp[real].max()) if real.any() else 0.0,
            "mean_displacement": float(disp[real].mean()) if real.any() else 0.0,
            "max_padding_change": float((adv - clean).abs()[~real].max()) if (~real).any() else 0.0,
            "max_bone_length_change": float(bone[real].max()) if real.any() else 0.0,
            "mean_acceleration_change": float(acc_change.mean()) if acc_change.numel() else 0.0,
            "max_acceleration_change": float(acc_change.max()) if acc_change.numel() else 0.0,
            "mean_clean_acceleration": float(acc_clean.mean()) if acc_clean.numel() else 0.0}


def random_perturbation(clean: torch.Tensor, lengths: torch.Tensor, eps: float, skeleton: Skeleton,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The random baseline: every real joint of every frame moved by ε in an independent uniformly
    random 3-D direction, then :func:`project_skeleton` (same constraints as the attack). Returns
    the perturbed sequences (N, T, J, 3); padding unchanged. Draws on the CPU from ``generator``."""
    g = torch.randn(clean.shape, generator=generator, dtype=torch.float64).to(clean.device)
    step = eps * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return project_skeleton(clean.double() + step, clean, eps, skeleton, lengths)
