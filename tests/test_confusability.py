import pytest
import torch

from unlearnable.errors import UnlearnableError
from unlearnable.eval.confusability import confusability, confusability_summary, crop_flip_views


def random_patterns(k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, 3, 32, 32, generator=g).sign() * 8 / 255


def test_views_are_the_trainers_crops_and_flips():
    d = random_patterns(2)
    v = crop_flip_views(d, pad=4, flip=True)
    assert v.shape == (2, 2 * 81, 3, 32, 32)
    assert torch.equal(v[:, 40], d)                                    # no shift, no flip
    assert torch.equal(v[:, 81 + 40], d.flip(-1))                      # the flip alone
    shifted = v[:, (1 + 4) * 9 + (2 + 4)]                              # dy = 1, dx = 2
    assert torch.equal(shifted[..., :31, :30], d[..., 1:, 2:])
    assert torch.equal(shifted[..., 31:, :], torch.zeros_like(shifted[..., 31:, :]))   # the zero padding


def test_a_mirrored_or_shifted_copy_is_confused_and_independent_patterns_are_not():
    a = random_patterns(3)
    mirrored = torch.stack([a[0], a[0].flip(-1), a[1]])
    c = confusability(mirrored)
    assert c[0, 1] == pytest.approx(1.0, abs=1e-5) and c[1, 0] == pytest.approx(1.0, abs=1e-5)
    assert float(c[0, 2]) < 0.1                                        # independent signs: about 1/sqrt(3072) per view
    assert float(confusability(mirrored, flip=False)[0, 1]) < 0.1     # without the flip a mirror is another pattern
    stripes = torch.zeros(2, 1, 32, 32)                                # horizontal stripes, period 8 ...
    stripes[0, 0, 0::8] = stripes[0, 0, 1::8] = 1
    stripes[1, 0, 3::8] = stripes[1, 0, 4::8] = 1                      # ... the second one 3 rows lower
    c = confusability(stripes)
    assert float(c[0, 1]) > 0.9                                        # the crop brings one onto the other
    assert float(confusability(stripes, pad=0)[0, 1]) < 0.1            # no crop: they stay apart


def test_summary_names_the_closest_pair():
    a = random_patterns(4, seed=1)
    a[3] = a[1].flip(-1)
    s = confusability_summary(a)
    assert sorted(s["max_pair"]) == [1, 3] and s["max"] == pytest.approx(1.0, abs=1e-4)
    assert 0.2 < s["mean"] < 0.3                                       # one pair of six at 1, the rest near 0
    with pytest.raises(UnlearnableError):
        confusability_summary(a[:1])
