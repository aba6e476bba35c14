"""Channel-wise Activation Suppressing: mask from the label in training, from the prediction at test."""
import pytest
import torch

from unlearnable.data.datasets import ImageTensors
from unlearnable.models import create_model
from unlearnable.train.adversarial import AdversarialStep
from unlearnable.train.cas import CAS, CASStep, attach_cas
from unlearnable.train.loop import TrainConfig, train


def test_cas_mask_uses_label_then_prediction():
    cas = CAS(4, 3)
    feat = torch.rand(2, 4, 5, 5)
    cas.labels = torch.tensor([0, 2])
    out = cas(feat)
    torch.testing.assert_close(out, feat * cas.fc.weight[[0, 2]][:, :, None, None])
    cas.labels = None
    out = cas(feat)
    pred = cas.last_logits.argmax(1)
    torch.testing.assert_close(out, feat * cas.fc.weight[pred][:, :, None, None])


@pytest.mark.parametrize("arch", ["smallcnn", "resnet18-narrow", "vgg11-narrow", "wrn16-1"])
def test_attach_cas_to_registry_models(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5)
    cas = attach_cas(model)
    assert any(p is cas.fc.weight for p in model.parameters())  # trained with the model
    model.eval()
    logits = model(torch.rand(3, 3, 32, 32))
    assert logits.shape == (3, 5) and cas.last_logits.shape == (3, 5)


@pytest.mark.parametrize("adversarial", [False, True])
def test_cas_training_runs_and_learns_the_auxiliary_classifier(adversarial):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = (labels[:, None, None, None] * 120 + torch.randint(0, 100, (64, 3, 32, 32), generator=g)).to(torch.uint8)
    data = ImageTensors(images, labels, ["a", "b"])
    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=2)
    cas = attach_cas(model)
    before = cas.fc.weight.detach().clone()
    step = CASStep(cas, AdversarialStep(steps=2) if adversarial else None)
    hist = train(model, data, data, TrainConfig(epochs=4, batch_size=16, lr=0.05), step=step)
    assert not torch.equal(before, cas.fc.weight) and cas.labels is None
    assert max(h.test_acc for h in hist) >= 0.9  # a separable toy task is learned through the CAS mask
