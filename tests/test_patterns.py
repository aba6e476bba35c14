import torch
from torch import nn

from unlearnable.eval.patterns import (PatternConfig, classwise_patterns, noise_predictive_power, predictive_power,
                                       top_k_support)


class CornerModel(nn.Module):
    """Says class 1 when the top-left 3x3 corner is bright, else class 0: a known 'pattern'."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        corner = x[:, :, :3, :3].mean(dim=(1, 2, 3))
        s = (corner - 0.5) * 40 + self.w
        return torch.stack([-s, s], 1)


def test_search_finds_the_pixels_the_model_uses():
    model = CornerModel()
    canvases = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])   # class-0 canvas dark, class-1 bright
    images = torch.cat([torch.zeros(20, 3, 8, 8), torch.ones(20, 3, 8, 8) * 0.9])
    images[20:, :, :3, :3] = 1.0
    labels = torch.tensor([0] * 20 + [1] * 20)
    images[:20] = 0.2   # class-0 images: dark everywhere
    res = classwise_patterns(model, canvases, images, labels, config=PatternConfig(top_k=9, epochs=3))
    # class 1's pattern is exactly the model's corner, and pasting it turns every class-0 image into class 1
    assert res.support[1, :3, :3].all() and res.support[1].sum() == 9
    assert res.predictive_power[1] == 1.0
    pics = res.images()
    assert pics.shape == (2, 3, 8, 8) and (pics[1][:, ~res.support[1]] == 1).all()   # white off the pattern


def test_top_k_and_noise_power():
    masks = torch.rand(3, 4, 4)
    sup = top_k_support(masks, 5)
    assert sup.sum(dim=(1, 2)).tolist() == [5, 5, 5]
    assert (masks[sup].view(3, 5).min(1).values >= masks.masked_fill(sup, -1).flatten(1).max(1).values).all()
    model = CornerModel()
    images = torch.full((10, 3, 8, 8), 0.2)
    labels = torch.zeros(10, dtype=torch.long)
    delta = torch.zeros(2, 3, 8, 8)
    delta[1, :, :3, :3] = 0.8      # class 1's "noise" is the corner the model keys on
    assert noise_predictive_power(model, delta, images, labels)[1] == 1.0
    assert predictive_power(model, torch.zeros(2, 3, 8, 8), sup[:2, :, :].repeat(1, 2, 2), images, labels)[1] == 0.0
