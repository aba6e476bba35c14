import torch
import torch.nn.functional as F

from unlearnable.data.augment import random_crop, random_crop_flip, random_flip


def test_crop_is_a_window_of_the_padded_image():
    x = torch.rand(16, 3, 8, 8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_flips_about_half_and_nothing_else():
    x = torch.rand(400, 1, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped | same).all()
    assert 120 < flipped.sum() < 280


def test_seeded_augmentation_is_reproducible():
    x = torch.rand(8, 3, 32, 32)
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(3))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
