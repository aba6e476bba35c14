"""An attentive neural process over images (Kim et al., arXiv 1901.05761; Garnelo et al., arXiv
1807.01622), the generative model NP-Attack searches (Bai et al., arXiv 2009.11508).

An image is a function from pixel coordinates to colours: the context is a set of pixels
{(x_i, y_i)} (x_i the (row, col) of a pixel in [0, 1]², y_i its C colours shifted to [-0.5, 0.5]
as in the official code), given here as a mask over the pixel grid. It is encoded along two paths
and a decoder predicts every target pixel's colour:

- deterministic path: v_i = MLP(x_i ⊕ y_i) for the context pixels, then multi-head cross-attention
  from each target pixel to the context pixels gives one representation r_t per target pixel (the
  "R" that NP-Attack-R perturbs);
- latent path: s = mean over the context of MLP(x_i ⊕ y_i) -> a Gaussian q(z | context) with
  mean μ and standard deviation 0.1 + 0.9 · sigmoid(·) (the "Z" that NP-Attack-Z perturbs);
- decoder: (r_t ⊕ z ⊕ x_t) -> MLP -> per-pixel Gaussian (mean, std 0.1 + 0.9 · softplus(·)).

Official code (Sandy-Zeng/NPAttack, ``ANP/ANP_CIFAR.py``): hidden 400, r = z = 128, 4 heads of
dot-product attention over every context point, one point per (pixel, channel) of CIFAR (3,072
points with a channel coordinate). Deviations, all to fit a CPU (its full attention costs 3,072²
weights per head and image, about 4 s per training step of a 128-wide model on this machine):

- one point per pixel with C outputs (the ANP image layout of Kim et al.);
- the cross-attention is local: a target attends to the context pixels in the ``window`` x
  ``window`` square around it, with weights that depend on the offset (a learned logit per head and
  offset, initialised to −|offset|₁: the ANP paper's Laplace attention, truncated to the window;
  absent pixels are masked out, a target with no context pixel in its window gets r = 0), computed
  as a normalised depthwise convolution (the same numbers as the masked softmax, far cheaper);
- default sizes hidden 64, r 32, z 32, 4 heads, window 7;
- no encoder self-attention (the official one builds fresh random layers at every call and scales
  their output by a zero γ, so it is the identity); the latent std without the official factor 0.1.

The model knows nothing about training or attacks (``unlearnable.train.neural_process`` trains it,
``unlearnable.attacks.np_attack`` searches it). Not a classifier: not in the model registry.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class NPConfig:
    """Shape of the images (channels, height, width) and the layer sizes of the NP."""

    channels: int = 3
    height: int = 32
    width: int = 32
    hidden: int = 64
    r_dim: int = 32
    z_dim: int = 32
    heads: int = 4
    window: int = 7

    def __post_init__(self) -> None:
        if min(self.channels, self.height, self.width, self.hidden, self.r_dim, self.z_dim, self.heads) < 1:
            raise ValueError("every NP size must be at least 1")
        if self.r_dim % self.heads:
            raise ValueError(f"r_dim ({self.r_dim}) must be divisible by heads ({self.heads})")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"the attention window must be odd, got {self.window}")

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def pixel_grid(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(H·W, 2) coordinates (row, col) in [0, 1], row-major (the order of ``images_to_points``)."""
    rows = torch.linspace(0, 1, height, device=device)
    cols = torch.linspace(0, 1, width, device=device)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def images_to_points(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, H·W, C) colours in [-0.5, 0.5], row-major."""
    b, c, h, w = images.shape
    return images.reshape(b, c, h * w).transpose(1, 2) - 0.5


def points_to_images(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H·W, C) colours in [-0.5, 0.5] -> (B, C, H, W) images (+0.5; not clipped)."""
    b, n, c = y.shape
    return (y + 0.5).transpose(1, 2).reshape(b, c, height, width)


class NeuralProcess(nn.Module):
    """Attentive NP over images on a pixel grid (see the module docstring). Points are the H·W
    pixels in row-major order; colours (B, H·W, C) in [-0.5, 0.5]; a context is a mask (B, H·W)
    with 1 where the pixel's colour is given; targets are every pixel."""

    def __init__(self, config: NPConfig | None = None) -> None:
        super().__init__()
        cfg = config or NPConfig()
        self.config = cfg
        c, h = cfg.channels, cfg.hidden
        self.det_encoder = _mlp([2 + c, h, h, cfg.r_dim])
        k = cfg.window
        off = torch.arange(k) - k // 2
        laplace = -(off.view(-1, 1).abs() + off.view(1, -1).abs()).float().flatten()
        self.offset_logits = nn.Parameter(laplace.repeat(cfg.heads, 1))      # (heads, window²)
        self.attn_out = nn.Linear(cfg.r_dim, cfg.r_dim)
        self.lat_encoder = _mlp([2 + c, h, h, h])
        self.lat_head = _mlp([h, h, 2 * cfg.z_dim])
        self.decoder = _mlp([cfg.r_dim + cfg.z_dim + 2, h, h, h, 2 * c])
        self.register_buffer("coords", pixel_grid(cfg.height, cfg.width), persistent=False)

    def _with_coords(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.coords.expand(y.shape[0], -1, -1), y], -1)

    def deterministic(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Colours (B, P, C) and context mask (B, P) -> per-target representations r, (B, P, r_dim)."""
        cfg = self.config
        b, p, _ = y.shape
        heads, dh, pad = cfg.heads, cfg.r_dim // cfg.heads, cfg.window // 2
        v = self.det_encoder(self._with_coords(y)) * mask.unsqueeze(-1)               # (B, P, r), absent: 0
        grid = v.transpose(1, 2).reshape(b, cfg.r_dim, cfg.height, cfg.width)
        # softmax over the context pixels of the window with offset logits l: Σ e^l v / Σ e^l m,
        # i.e. a normalised depthwise convolution (max logit subtracted: the softmax is unchanged)
        logits = self.offset_logits - self.offset_logits.amax(1, keepdim=True)
        kernel = torch.exp(logits).view(heads, 1, cfg.window, cfg.window)
        num = F.conv2d(grid, kernel.repeat_interleave(dh, 0), padding=pad, groups=cfg.r_dim)
        den = F.conv2d(mask.view(b, 1, cfg.height, cfg.width).to(v.dtype), kernel, padding=pad)
        r = (num / den.clamp_min(1e-12).repeat_interleave(dh, 1)).reshape(b, cfg.r_dim, p)   # no context: 0
        return self.attn_out(r.transpose(1, 2))

    def latent(self, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colours (B, P, C) and context mask (B, P) -> q(z | context) as (mean, std), each
        (B, z_dim); std in [0.1, 1]."""
        s = self.lat_encoder(self._with_coords(y)) * mask.unsqueeze(-1)
        s = s.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        mu, raw = self.lat_head(s).chunk(2, dim=-1)
        return mu, 0.1 + 0.9 * torch.sigmoid(raw)

    def decode(self, r: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, r_dim), (B, z_dim) -> per-pixel (mean, std), each (B, P, C); the mean in the
        [-0.5, 0.5] colour units (unclipped), std ≥ 0.1."""
        zz = z.unsqueeze(1).expand(-1, r.shape[1], -1)
        out = self.decoder(torch.cat([r, zz, self.coords.expand(r.shape[0], -1, -1)], -1))
        mean, raw = out.chunk(2, dim=-1)
        return mean, 0.1 + 0.9 * F.softplus(raw)

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode (B, C, H, W) images in [0, 1] with every pixel as context: (r (B, H·W, r_dim),
        z mean (B, z_dim), z std (B, z_dim)), the starting point of NP-Attack."""
        y = images_to_points(images)
        mask = torch.ones(y.shape[:2], device=y.device)
        mu, sigma = self.latent(y, mask)
        return self.deterministic(y, mask), mu, sigma

    def decode_images(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Representations (B, H·W, r_dim) and z (B, z_dim) -> the mean image (B, C, H, W) in pixel
        units (unclipped)."""
        mean, _ = self.decode(r, z)
        return points_to_images(mean, self.config.height, self.config.width)

    def forward(self, y: torch.Tensor, mask: torch.Tensor, posterior: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Predict every pixel from the context ``mask`` (B, P) of colours ``y`` (B, P, C).
        ``posterior=True`` (training): z is drawn (from ``generator``, a CPU generator) from the
        posterior q(z | all pixels) and the returned dict holds both Gaussians for the KL term;
        else z is the prior's mean. Returns (mean, std, latents)."""
        mu_c, sd_c = self.latent(y, mask)
        lat = {"prior": (mu_c, sd_c)}
        if posterior:
            mu_t, sd_t = self.latent(y, torch.ones_like(mask))
            lat["posterior"] = (mu_t, sd_t)
            z = mu_t + sd_t * torch.randn(sd_t.shape, generator=generator).to(sd_t.device)
        else:
            z = mu_c
        mean, std = self.decode(self.deterministic(y, mask), z)
        return mean, std, lat


__all__ = ["NPConfig", "NeuralProcess", "pixel_grid", "images_to_points", "points_to_images"]
