import pytest
import torch
import torch.nn.functional as F

from unlearnable.data.datasets import ImageTensors
from unlearnable.train.loop import TrainConfig, build_model, train
from unlearnable.train.tcr import TCRStep, soft_cross_entropy, squeeze, tcr_targets


def test_targets_mix_label_and_previous_prediction():
    y = torch.tensor([0, 2])
    prev = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    t = tcr_targets(y, prev, 3, beta=0.1)
    assert torch.allclose(t, torch.tensor([[0.1 + 0.9 * 0.2, 0.45, 0.27], [0.09, 0.09, 0.1 + 0.72]]))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.equal(tcr_targets(y, None, 3), F.one_hot(y, 3).float())


def test_loss_splits_into_label_and_calibration_terms():
    """Eq. 7: L = β CE(f, ỹ) + (1 − β) CE(f, z)."""
    logits = torch.randn(5, 4)
    y = torch.randint(0, 4, (5,))
    z = torch.softmax(torch.randn(5, 4), 1)
    lhs = soft_cross_entropy(logits, tcr_targets(y, z, 4, 0.3))
    rhs = 0.3 * F.cross_entropy(logits, y) + 0.7 * soft_cross_entropy(logits, z)
    assert torch.allclose(lhs, rhs, atol=1e-6)


def test_squeeze_sharpens_and_keeps_the_argmax():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = squeeze(p, 1.1)
    assert torch.allclose(q.sum(1), torch.ones(1)) and q[0, 0] > p[0, 0] and q.argmax() == 0
    assert torch.allclose(squeeze(p, 1.0), p)


def test_step_uses_last_epochs_predictions_per_sample():
    g = torch.Generator().manual_seed(0)
    data = ImageTensors(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.arange(40) % 4, list("abcd"))
    model = build_model("smallcnn", 4, 3, 0, "cpu")
    step = TCRStep(len(data), 4, squeeze_from=2)
    hist = train(model, data, None, TrainConfig(epochs=1, batch_size=16, augment=False), step=step)
    assert len(hist) == 1 and step.previous is not None and step.epoch == 2
    # every sample's prediction was recorded (no row left at the uniform initial value)
    assert not torch.isclose(step.previous, torch.full_like(step.previous, 0.25)).all(1).any()
    with pytest.raises(ValueError):
        step(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
