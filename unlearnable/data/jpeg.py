"""Batched JPEG compression simulated in torch, optionally differentiable.

Two uses: (a) the data-side defence "JPEG compression, quality 10" of *Image shortcut
squeezing* (Liu et al., arXiv 2301.13838), applied to whole batches on the device; (b) inside a
PGD noise search as a differentiable stand-in for the JPEG re-encode a scraper applies
(quality ~75), so that the noise is optimised to survive it.

The pipeline follows libjpeg baseline (what PIL's ``save(..., "JPEG")`` runs), ITU-T T.81 /
JFIF 1.02:

1. RGB -> YCbCr (JFIF full range), level shift by -128;
2. 4:2:0 chroma subsampling by 2x2 averaging (``subsampling=True``);
3. edge-replication padding to whole blocks (MCUs of 16x16 with subsampling, 8x8 without);
4. 8x8 blockwise orthonormal DCT-II, ``C = D X D^T``, done for all blocks at once as one
   GEMM with the 64x64 matrix ``D kron D``;
5. quantisation ``round(C / Q)`` with the IJG standard tables (T.81 Annex K) scaled by quality
   as ``jpeg_set_quality`` does; dequantisation ``C' = Q round(C / Q)``;
6. IDCT, clamp each component to its 8-bit range, chroma upsampling by libjpeg's "fancy"
   triangle filter (weights 3/4, 1/4 = bilinear with half-pixel centres, edge replicated at
   the real image border), YCbCr -> RGB, crop, clamp to [0, 1].

Like libjpeg, the colour planes are rounded to 8-bit integers before the DCT and after the
IDCT; the DCT itself is exact float (libjpeg's is integer) and the 2x2 chroma average is not
rounded (that measured closer to libjpeg-turbo). Measured against PIL 13 / libjpeg-turbo 3.2
with 4:2:0 on 128x128 crops of skimage's astronaut and coffee: PSNR(ours, PIL) 48-49 dB at
quality 75 and 49-50 dB at quality 10 (mean absolute difference 0.3-0.6 levels), versus a
PIL-vs-input PSNR of 34-35 dB and 27 dB; the full 512x512 astronaut gives 48 / 46.5 dB.

``differentiable=True`` replaces every ``round`` with a straight-through estimator: the
forward pass is exact JPEG rounding (so the loss a PGD step sees is the loss on the really
compressed image), the backward pass treats rounding as the identity (BPDA, Athalye et al.,
arXiv 1802.00420). We chose it over the cubic approximation ``round(x) + (x - round(x))**3``
of Shin & Song (2017) because the latter changes the forward value and its gradient vanishes
near integers, where most quantised high-frequency coefficients sit at low quality.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# IJG / T.81 Annex K standard quantisation tables, natural (row-major) order.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

# JFIF RGB -> YCbCr (rows Y, Cb, Cr) without the +128 chroma offset, and its inverse.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136286, -0.714136286),
    (1.0, 1.772, 0.0),
)


def quality_scale(quality: int | float | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """IJG ``jpeg_quality_scaling``: quality in [1, 100] -> percentage scale factor
    (``5000 // q`` below 50, ``200 - 2q`` from 50 on); float or (B,) tensor in, float32 tensor
    out on ``device`` (default: the quality tensor's, else the CPU). float32 is exact here: the
    integers involved stay far below 2**24, and 5000 / q is never within rounding of an integer."""
    if device is None and isinstance(quality, torch.Tensor):
        device = quality.device
    q = torch.as_tensor(quality, dtype=torch.float32, device=device).clamp(1, 100)
    return torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q)


def quant_tables(quality: int | float | torch.Tensor, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance and chrominance quantisation tables for ``quality`` as ``jpeg_set_quality``
    builds them with ``force_baseline``: ``floor((T * scale + 50) / 100)`` clamped to [1, 255].

    A scalar quality gives two (8, 8) tables; a (B,) tensor gives two (B, 8, 8) stacks. Built
    on ``device`` without a host round trip, so a per-image quality tensor on the GPU is fine.
    """
    scale = quality_scale(quality, device)[..., None, None]
    out = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        t = torch.tensor(base, dtype=torch.float32, device=scale.device)
        out.append(torch.floor((t * scale + 50) / 100).clamp(1, 255).to(dtype))
    return out[0], out[1]


def dct_matrix(n: int = 8, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n, n): ``D @ x`` transforms a column, ``D.T @ c`` inverts it.
    For n = 8, ``D X D^T`` equals T.81's FDCT ``1/4 C(u) C(v) sum ...``."""
    k = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def _round(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """Round half to even; with ``differentiable`` a straight-through estimator (grad 1)."""
    if differentiable:
        return x + (torch.round(x) - x).detach()
    return torch.round(x)


def _dct_kron(device: torch.device | str | None, dtype: torch.dtype) -> torch.Tensor:
    """D kron D (64, 64): vec(D X D^T) = (D kron D) vec(X) for a row-major 8 × 8 block X, so one
    (N, 64) x (64, 64) GEMM transforms all blocks."""
    d = dct_matrix(8, device, dtype)
    return torch.kron(d, d)


def _to_blocks(planes: torch.Tensor) -> torch.Tensor:
    """planes (B, C, H, W), H and W multiples of 8 -> (B, C, H/8, W/8, 64), each block row-major."""
    b, c, h, w = planes.shape
    return planes.reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4).reshape(b, c, h // 8, w // 8, 64)


def _to_ycbcr(rgb255: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB on the 8-bit scale -> JFIF Y, Cb, Cr (chroma centred at 0, no level shift)."""
    return torch.einsum("ij,bjhw->bihw", torch.tensor(_RGB_TO_YCBCR, device=rgb255.device, dtype=rgb255.dtype),
                        rgb255)


def block_dct(planes: torch.Tensor) -> torch.Tensor:
    """The 8 × 8 blockwise orthonormal DCT of planes (B, C, H, W), H and W multiples of 8:
    (B, C, H/8, W/8, 64), coefficient (u, v) at index 8u + v (u vertical, v horizontal frequency, the
    quantisation tables' order)."""
    return _to_blocks(planes) @ _dct_kron(planes.device, planes.dtype).T


def quantisation_reach(quality: int | float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """How far a bounded pattern can move each quantised DCT coefficient: (luma, chroma), each (8, 8),
    in quantisation steps of ``quality``'s tables, for any δ with ‖δ‖∞ ≤ ``eps`` (pixels in [0, 1]).

    reach(u, v) = 255 · eps · g · Σ|b_uv| / Q(u, v): Σ|b_uv| (the L1 norm of the orthonormal basis block)
    is the most an L∞-bounded change can move its coefficient (Hölder; reached by ±eps · sign(b_uv)), and
    g = Σ_c |M_kc| = 1 for Y, Cb and Cr alike is the most an RGB change of 1 moves the plane (4:2:0
    averaging keeps it: a δ constant over 2 × 2 passes whole). reach ≥ 1: the pattern moves that quantised
    coefficient by at least one step whatever the image under it, so it survives for certain; reach < 1:
    only where the image's own coefficient lies within reach of a rounding boundary (a share of about
    reach when the content spreads over many steps). The bound ignores the planes' 8-bit rounding and
    clipping at 0 and 255, and one δ spends its whole budget on one coefficient to reach it."""
    l1 = _dct_kron(None, torch.float64).abs().sum(1).reshape(8, 8)
    to_ycc = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64).abs().sum(1)
    luma_q, chroma_q = quant_tables(quality, dtype=torch.float64)
    return 255 * eps * to_ycc[0] * l1 / luma_q, 255 * eps * to_ycc[1:].max() * l1 / chroma_q


def coefficient_spread(x: torch.Tensor, subsampling: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(luma, chroma) (8, 8): the std of each DCT coefficient over all blocks of images x (B, 3, H, W) in
    [0, 1], H and W multiples of 16, on JPEG's 8-bit scale; chroma (Cb and Cr pooled) after 4:2:0 averaging
    with ``subsampling``. How much the images' own content puts in each coefficient, to compare a
    pattern's :func:`quantisation_reach` with."""
    ycc = _to_ycbcr(x.double() * 255)
    chroma = F.avg_pool2d(ycc[:, 1:], 2) if subsampling else ycc[:, 1:]
    return (block_dct(ycc[:, :1] - 128).reshape(-1, 64).std(0).reshape(8, 8),
            block_dct(chroma).reshape(-1, 64).std(0).reshape(8, 8))


def _blockwise_quantise(planes: torch.Tensor, table: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """planes (B, C, H, W), H and W multiples of 8, level-shifted 8-bit scale; table (8, 8) or
    (B, 8, 8). Returns the planes after DCT, quantise, dequantise, IDCT (same shape)."""
    b, c, h, w = planes.shape
    k = _dct_kron(planes.device, planes.dtype)
    coef = _to_blocks(planes) @ k.T
    table = table.reshape(-1, 1, 1, 1, 64)  # (1 or B, 1, 1, 1, 64)
    coef = _round(coef / table, differentiable) * table
    blocks = (coef @ k).reshape(b, c, h // 8, w // 8, 8, 8)
    return blocks.transpose(3, 4).reshape(b, c, h, w)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Edge-replicate x (B, C, H, W) on the bottom/right up to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def jpeg(x: torch.Tensor, quality: int | float | torch.Tensor = 75, differentiable: bool = False,
         subsampling: bool = True) -> torch.Tensor:
    """JPEG-compress and decode a batch, as libjpeg baseline does (see module docstring).

    Args:
        x: (B, 3, H, W) RGB or (B, 1, H, W) grayscale, float in [0, 1], any H, W >= 1, any device.
        quality: IJG quality in [1, 100]; a number for the whole batch or a (B,) tensor, one
            quality per image (e.g. a random quality per sample for augmentation).
        differentiable: if True, coefficient rounding is a straight-through estimator (forward
            exact, backward identity), so gradients w.r.t. ``x`` flow; if False rounding has
            zero gradient (use under ``torch.no_grad`` as a defence).
        subsampling: 4:2:0 chroma subsampling (PIL's default, ``subsampling=2``); False = 4:4:4.
            Ignored for grayscale.

    Returns:
        (B, C, H, W) float in [0, 1], same dtype and device as ``x``: the decoded image.
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg expects (B, 1 or 3, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    dtype = x.dtype
    xf = x.float() * 255.0
    if isinstance(quality, torch.Tensor) and quality.dim() > 0:
        if quality.shape != (b,):
            raise ValueError(f"per-image quality must have shape ({b},), got {tuple(quality.shape)}")
        quality = quality.detach()
    luma_q, chroma_q = quant_tables(quality, x.device)

    if c == 1:
        y = _pad_to(_round(xf, differentiable) - 128.0, 8)
        y = _round(_blockwise_quantise(y, luma_q, differentiable).clamp(-128.0, 127.0), differentiable)
        return ((y[..., :h, :w] + 128.0) / 255.0).clamp(0.0, 1.0).to(dtype)

    to_rgb = torch.tensor(_YCBCR_TO_RGB, device=x.device)
    ycc = _to_ycbcr(xf)
    ycc = torch.cat([ycc[:, :1] - 128.0, ycc[:, 1:]], dim=1)  # level shift; chroma already centred
    ycc = _round(ycc, differentiable).clamp(-128.0, 127.0)  # libjpeg's planes are 8-bit integers

    if subsampling:
        ycc = _pad_to(ycc, 16)
        y = _blockwise_quantise(ycc[:, :1], luma_q, differentiable)
        chroma = F.avg_pool2d(ycc[:, 1:], 2)
        chroma = _blockwise_quantise(chroma, chroma_q, differentiable)
        # libjpeg upsamples the real chroma samples only (ceil(H/2) x ceil(W/2)), replicating
        # its own edge; bilinear with align_corners=False is exactly the 3/4-1/4 triangle filter.
        chroma = _round(chroma[..., : (h + 1) // 2, : (w + 1) // 2].clamp(-128.0, 127.0), differentiable)
        chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
        y = _round(y[..., :h, :w].clamp(-128.0, 127.0), differentiable)
        ycc = torch.cat([y, chroma[..., :h, :w]], dim=1)
    else:
        ycc = _pad_to(ycc, 8)
        y = _blockwise_quantise(ycc[:, :1], luma_q, differentiable)
        chroma = _blockwise_quantise(ycc[:, 1:], chroma_q, differentiable)
        ycc = _round(torch.cat([y, chroma], dim=1)[..., :h, :w].clamp(-128.0, 127.0), differentiable)

    ycc = torch.cat([ycc[:, :1] + 128.0, ycc[:, 1:]], dim=1)
    rgb = torch.einsum("ij,bjhw->bihw", to_rgb, ycc)
    return (rgb / 255.0).clamp(0.0, 1.0).to(dtype)


class JPEG(nn.Module):
    """Module wrapper of :func:`jpeg` (kornia style): ``JPEG(quality=10)(x)`` with x (B, C, H, W)
    in [0, 1]. ``quality`` may be a number or a (B,) tensor for a fixed batch size."""

    def __init__(self, quality: int | float | torch.Tensor = 75, differentiable: bool = False,
                 subsampling: bool = True) -> None:
        super().__init__()
        self.quality, self.differentiable, self.subsampling = quality, differentiable, subsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg(x, self.quality, self.differentiable, self.subsampling)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, differentiable={self.differentiable}, subsampling={self.subsampling}"
