"""APL losses (arXiv 2006.13554) and label-noise injection."""
import math

import pytest
import torch
import torch.nn.functional as F

from unlearnable.data.label_noise import asymmetric_noise_cifar10, symmetric_noise
from unlearnable.errors import UnlearnableError
from unlearnable.train.apl import apl_loss, mae, nce, nfl, rce


def _batch(seed=0, b=16, k=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 3, torch.randint(0, k, (b,), generator=g)


def test_losses_on_hand_computed_numbers():
    """logits (0, ln 2, ln 3) give p = (1/6, 2/6, 3/6), so Σ_k log p_k = −ln 36 = −2 ln 6:
    NCE(y=0) = ln 6 / ln 36 = 1/2, NCE(y=1) = ln 3 / ln 36, NCE(y=2) = ln 2 / ln 36; uniform logits
    over 3 classes give 1/3. RCE(y=2) = −(1/6 + 2/6) ln 1e-4 = ½ ln 1e4; MAE(y=2) = 1 − 3/6."""
    row = torch.tensor([[0.0, math.log(2), math.log(3)]])
    ln36 = math.log(36)
    for y, want in [(0, 0.5), (1, math.log(3) / ln36), (2, math.log(2) / ln36)]:
        assert float(nce(row, torch.tensor([y]))) == pytest.approx(want, rel=1e-5)
    two = torch.cat([row, torch.zeros(1, 3)])
    assert float(nce(two, torch.tensor([0, 1]))) == pytest.approx((0.5 + 1 / 3) / 2, rel=1e-5)   # batch mean
    assert float(rce(row, torch.tensor([2]))) == pytest.approx(0.5 * math.log(1e4), rel=1e-5)
    assert float(mae(row, torch.tensor([2]))) == pytest.approx(0.5, rel=1e-5)


def test_nce_and_nfl_against_a_loop_over_classes():
    """Brute force in plain Python floats: softmax by hand, then the ratio of the loss at the label
    to the loss summed over every class (Eq. 3), FL(k) = −(1 − p_k)^0.5 log p_k."""
    logits, y = _batch(b=5, k=4)
    want_nce = want_nfl = 0.0
    for row, label in zip(logits.tolist(), y.tolist()):
        exps = [math.exp(v) for v in row]
        probs = [e / sum(exps) for e in exps]
        ce = [-math.log(q) for q in probs]
        fl = [(1 - q) ** 0.5 * c for q, c in zip(probs, ce)]
        want_nce += ce[label] / sum(ce) / 5
        want_nfl += fl[label] / sum(fl) / 5
    assert float(nce(logits, y)) == pytest.approx(want_nce, rel=1e-5)
    assert float(nfl(logits, y)) == pytest.approx(want_nfl, rel=1e-5)


def test_losses_match_their_definitions():
    logits, y = _batch()
    p = F.softmax(logits, 1)
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
