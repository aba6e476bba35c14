"""APL losses (arXiv 2006.13554) and label-noise injection."""
import pytest
import torch
import torch.nn.functional as F

from unlearnable.data.label_noise import asymmetric_noise_cifar10, symmetric_noise
from unlearnable.errors import UnlearnableError
from unlearnable.train.apl import apl_loss, mae, nce, nfl, rce


def _batch(seed=0, b=16, k=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 3, torch.randint(0, k, (b,), generator=g)


def test_losses_match_their_definitions():
    logits, y = _batch()
    p = F.softmax(logits, 1)
    logp = F.log_softmax(logits, 1)
    torch.testing.assert_close(nce(logits, y), (logp[range(16), y] / logp.sum(1)).mean())
    torch.testing.assert_close(mae(logits, y), (1 - p[range(16), y]).mean())
    torch.testing.assert_close(rce(logits, y), (-torch.log(torch.tensor(1e-4)) * (1 - p.clamp(1e-7, 1)[range(16), y])).mean(), rtol=1e-4,
                               atol=1e-3)
    assert 0 <= float(nfl(logits, y)) <= 1


def test_normalized_losses_sum_to_one_over_labels():
    """The defining property of normalisation (Eq. 3): Σ_k L_norm(f(x), k) = 1 for every x."""
    logits, _ = _batch(b=4)
    for loss in (nce, nfl):
        total = sum(loss(logits, torch.full((4,), k)) for k in range(10))
        torch.testing.assert_close(total, torch.tensor(1.0), rtol=1e-5, atol=1e-5)


def test_paper_alpha_beta_and_combination():
    logits, y = _batch()
    torch.testing.assert_close(apl_loss("nce+rce")(logits, y), nce(logits, y) + rce(logits, y))
    torch.testing.assert_close(apl_loss("nce+rce", dataset="cifar100")(logits, y),
                               10 * nce(logits, y) + 0.1 * rce(logits, y))
    torch.testing.assert_close(apl_loss("nfl+mae", alpha=2, beta=3)(logits, y), 2 * nfl(logits, y) + 3 * mae(logits, y))
    with pytest.raises(UnlearnableError):
        apl_loss("rce+nce")
    with pytest.raises(UnlearnableError):
        apl_loss("ce+rce")


def test_apl_has_gradients():
    logits, y = _batch()
    logits.requires_grad_(True)
    apl_loss("nce+rce")(logits, y).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_symmetric_noise_rate_is_exact_and_never_keeps_the_label():
    y = torch.arange(1000) % 10
    noisy = symmetric_noise(y, 10, 0.4, seed=1)
    changed = noisy != y
    assert int(changed.sum()) == 400
    assert torch.equal(noisy, symmetric_noise(y, 10, 0.4, seed=1))
    counts = torch.bincount(noisy[changed], minlength=10)
    assert counts.min() > 20  # flips go to every class


def test_asymmetric_noise_flips_only_the_paper_pairs():
    y = torch.arange(2000) % 10
    noisy = asymmetric_noise_cifar10(y, 0.4, seed=0)
    pairs = {(int(a), int(b)) for a, b in zip(y[noisy != y], noisy[noisy != y])}
    assert pairs <= {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}
    assert 0.3 < float((noisy[y == 9] != 9).float().mean()) < 0.5
