"""How much of a noise structure (``unlearnable.noise.structure``) survives the squeezing defenses,
without training anything: a cheap physical check of why a structured search should (or cannot)
hold under JPEG-10 and grayscale (issue 13, item 2).

For each structure, a pattern of full amplitude ε in that structure (the sign of a seeded Gaussian
projected by P, so every one of its degrees of freedom is ±ε) is added to real CIFAR-10 test images
(clipped to [0, 1]); both the protected and the clean image are shifted as the trainer's random crop
does (4-pixel zero padding, the shifts below) and squeezed; the figure is the share of the change
the squeezer keeps, projected on the change that went in:

    survival = <s(x + δ) − s(x), δ'> / <δ', δ'>,  δ' = (x + δ) − x after clipping and the shift,

1 when the squeezer passes the change untouched, 0 when it removes it (or leaves only what is
orthogonal to it). ``aligned`` is the zero shift (the pattern on JPEG's 8 × 8 grid), ``shifted`` the
mean over all the shifts. Squeezers: JPEG at quality 10 and 30 (``unlearnable.data.jpeg``, libjpeg's
rounding, 4:2:0) and grayscale (the grey image in all three channels, as the trainer's defense feeds
it: a luminance δ survives whole, a pixel-wise one about a third). ``dof`` is the pattern's degrees of
freedom on a 32 × 32 RGB image (the trace of its projection).

``quantisation_reach``: the bound behind these shares (``unlearnable.data.jpeg.quantisation_reach``).
Per quality and ε, the DCT coefficients that an L∞-bounded pattern can move by a whole quantisation step
on every image (``reach`` ≥ 1: it survives for certain), each with ``over_content``, the most the pattern
can move it over the spread (std) of that coefficient in the images' own blocks: where it is below 1, the
change that survives is smaller than what the content itself puts there, so a victim cannot read it
block by block.

    python benchmarks/structure_survival.py [--images 1000]      # seconds on a 2-core CPU
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import runtime  # noqa: E402

from unlearnable.data.augment import crop_shift, grayscale  # noqa: E402
from unlearnable.data.datasets import load_dataset, resolve_data_root  # noqa: E402
from unlearnable.data.jpeg import coefficient_spread, jpeg, quant_tables, quantisation_reach  # noqa: E402
from unlearnable.noise.structure import structure_projection  # noqa: E402

STRUCTURES = [None, "luminance", "lowpass-4", "luminance+lowpass-4", "luminance+lowpass-8", "luminance+tile-4",
              "luminance+tile-8", "luminance+tile-4+lowpass-2", "luminance+tile-8+lowpass-2",
              "luminance+tile-8+lowpass-4", "luminance+tile-16+lowpass-4", "luminance+tile-16+lowpass-8"]
SHIFTS = [(0, 0), (1, 0), (0, 1), (2, 3), (-3, 1), (4, -2), (-1, -4), (3, 3), (-4, -4)]   # (dx, dy); first: aligned


def survival(squeeze, x: torch.Tensor, delta: torch.Tensor) -> list[float]:
    """Per shift, the share of the change that ``squeeze`` keeps (module doc)."""
    xp = (x + delta).clamp(0, 1)
    out = []
    for dx, dy in SHIFTS:
        a, b = crop_shift(x, dx, dy), crop_shift(xp, dx, dy)
        kept, went_in = squeeze(b) - squeeze(a), b - a
        out.append(float((kept * went_in).sum() / (went_in * went_in).sum()))
    return out


def dof(spec: str | None) -> int:
    """Degrees of freedom of ``spec`` on a 32 × 32 RGB image: the trace of its projection (= its rank)."""
    if spec is None:
        return 3 * 32 * 32
    eye = torch.eye(3 * 32 * 32).view(-1, 3, 32, 32)
    return round(float(torch.diagonal(structure_projection(spec)(eye).flatten(1)).sum()))


def reach_rows(x: torch.Tensor, qualities: list[int], eps_255: list[float]) -> dict:
    """Per quality and ε, the coefficients moved for certain and how far they stand out of the content."""
    spread = coefficient_spread(x)
    out = {}
    for q in qualities:
        tables = quant_tables(q, dtype=torch.float64)
        for e in eps_255:
            row = {}
            for name, reach, table, sd in zip(("luma", "chroma"), quantisation_reach(q, e / 255), tables, spread):
                certain = [{"uv": [u, v], "reach": round(float(reach[u, v]), 2),
                            "over_content": round(float(reach[u, v] * table[u, v] / sd[u, v]), 2)}
                           for u in range(8) for v in range(8) if reach[u, v] >= 1]
                row[name] = {"certain": len(certain),
                             "certain_over_content_at_least_1": sum(c["over_content"] >= 1 for c in certain),
                             "coefficients": certain}
            out[f"jpeg{q}_eps{e:g}"] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=8, help="ε in /255 levels")
    ap.add_argument("--reach-eps", default="8,16", help="ε values (/255) for the quantisation-reach section")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    x = load_dataset("cifar10", "test", resolve_data_root(args.data_root)).images[:args.images].float() / 255
    eps = args.eps / 255
    squeezers = {"jpeg10": lambda z: jpeg(z, 10), "jpeg30": lambda z: jpeg(z, 30), "grayscale": grayscale}
    rows = {}
    for spec in STRUCTURES:
        g = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        delta = ((structure_projection(spec)(g) if spec else g).sign() * eps).expand_as(x)
        row = {"dof": dof(spec)}
        for name, fn in squeezers.items():
            s = survival(fn, x, delta)
            row[name] = {"aligned": round(s[0], 3), "shifted": round(sum(s) / len(s), 3)}
        rows[spec or "pixel-wise"] = row
    rec = {"benchmark": "structure_survival", "images": len(x), "data": "CIFAR-10 test, the first images",
           "eps_255": args.eps, "shifts": SHIFTS, "structures": rows,
           "quantisation_reach": reach_rows(x, [10, 30], [float(e) for e in args.reach_eps.split(",")]),
           "total_seconds": round(time.perf_counter() - t0, 1), **runtime(torch.device("cpu"))}
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
