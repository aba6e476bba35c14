"""Data-side defenses: shapes, ranges, what each one does to a batch, reproducibility."""
import torch
import torch.nn.functional as F

from unlearnable.data.augment import cutmix, cutout, gray_world, grayscale, mixed_cross_entropy, mixup


def _x(b=8, seed=0):
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_grayscale_is_luma_on_every_channel():
    x = _x()
    g = grayscale(x)
    assert g.shape == x.shape and torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    torch.testing.assert_close(g[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    gray = torch.rand(2, 1, 8, 8)
    assert torch.equal(grayscale(gray), gray)


def test_cutout_zeroes_one_square_per_image():
    x = _x() + 0.01
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(1).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 64).all()
    assert torch.equal(out[out != 0], x[out != 0])
    assert torch.equal(out, cutout(x, 8, torch.Generator().manual_seed(0)))


def test_mixup_is_a_convex_combination_with_matching_labels():
    x, y = _x(), torch.arange(8)
    xm, ya, yb, lam = mixup(x, y, 1.0, torch.Generator().manual_seed(3))
    assert 0 <= lam <= 1 and torch.equal(ya, y)
    perm = yb  # labels are indices here, so y[perm] = perm
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])


def test_cutmix_pastes_a_box_and_lambda_is_its_complement_area():
    x, y = _x(), torch.arange(8)
    xm, ya, yb, lam = cutmix(x, y, 1.0, torch.Generator().manual_seed(5))
    from_other = (xm != x).any(1)  # pixels that came from the partner (differ almost surely)
    area = from_other[yb != ya].float().mean(dim=(1, 2))
    torch.testing.assert_close(area, torch.full_like(area, 1 - lam), atol=0.02, rtol=0)


def test_mixed_cross_entropy():
    logits, a, b = torch.randn(4, 10), torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    torch.testing.assert_close(mixed_cross_entropy(logits, a, b, 0.3),
                               0.3 * F.cross_entropy(logits, a) + 0.7 * F.cross_entropy(logits, b))


def test_gray_world_removes_a_uniform_tint_and_keeps_its_brightness():
    x = 0.2 + 0.6 * _x()                                   # no pixel clips under the tint below
    tint = torch.tensor([8.0, -8.0, 8.0]).view(1, 3, 1, 1) / 255
    torch.testing.assert_close(gray_world(x + tint), gray_world(x) + tint.mean(), atol=1e-6, rtol=0)
    balanced = gray_world(x)
    m = balanced.mean((2, 3))
    torch.testing.assert_close(m, m.mean(1, keepdim=True).expand_as(m), atol=1e-6, rtol=0)
    torch.testing.assert_close(gray_world(balanced), balanced, atol=1e-6, rtol=0)           # idempotent
    gray = torch.rand(2, 1, 8, 8)
    assert torch.equal(gray_world(gray), gray)


def test_every_defense_is_named_in_the_cli_help():
    import inspect

    from unlearnable.cli.train import train_cmd
    from unlearnable.cli.verify import verify_cmd
    from unlearnable.train.defenses import DEFENSES

    verify_help = inspect.signature(verify_cmd).parameters["defenses"].default.help
    train_help = inspect.signature(train_cmd).parameters["defense"].default.help
    for name in DEFENSES:
        assert name in verify_help.replace("'", "").split(": ", 1)[1].split(","), name
        assert name in train_help.replace(" or ", ", ").split(", "), name
