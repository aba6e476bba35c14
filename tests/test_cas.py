"""Channel-wise Activation Suppressing: mask from the label in training, from the prediction at test;
the official placement (both blocks of ResNet-18's last stage), loss and adaptive attack objective."""
import copy

import pytest
import torch
import torch.nn.functional as F

from unlearnable.data.datasets import ImageTensors
from unlearnable.errors import UnlearnableError
from unlearnable.eval.robust import robust_accuracy
from unlearnable.models import create_model
from unlearnable.train.adversarial import AdversarialStep
from unlearnable.train.cas import CAS, CASStep, attach_cas, default_cas_layers
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


def test_default_layers_are_the_official_placement():
    # official ResNet-18: both BasicBlocks of layer4; VGG-16: the 3 conv-BN-ReLUs of its last stage;
    # WRN: the last block's pre-activation and the final BN-ReLU
    assert default_cas_layers(create_model("resnet18-narrow")) == ["stages.3.0", "stages.3.1"]
    vgg16 = create_model("vgg16")
    names = default_cas_layers(vgg16)
    assert len(names) == 3 and all(isinstance(vgg16.get_submodule(n), torch.nn.ReLU) for n in names)
    assert names[-1] == f"features.{len(vgg16.features) - 2}"           # just before the last max-pool
    assert default_cas_layers(create_model("wrn16-1")) == ["blocks.5.act1", "act"]
    assert default_cas_layers(create_model("smallcnn")) == ["features"]


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_default_layers_are_what_the_model_declares():
    class Declared(_Tiny):
        cas_layers = ("body.1",)

    cas = attach_cas(Declared())
    assert default_cas_layers(Declared()) == ["body.1"] and cas.layers == ["body.1"] and cas[0].fc.in_features == 4
    with pytest.raises(UnlearnableError, match="cas_layers"):   # no declaration, no guessing
        attach_cas(_Tiny())
    assert attach_cas(_Tiny(), layers="body").layers == ["body"]


@pytest.mark.parametrize("arch,count", [("smallcnn", 1), ("resnet18-narrow", 2), ("vgg11-narrow", 2),
                                        ("wrn16-1", 2)])
def test_attach_cas_to_registry_models(arch, count):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5)
    cas = attach_cas(model)
    assert len(cas) == count
    params = list(model.parameters())
    assert all(any(p is m.fc.weight for p in params) for m in cas)  # trained with the model
    model.eval()
    logits = model(torch.rand(3, 3, 32, 32))
    assert logits.shape == (3, 5) and all(z.shape == (3, 5) for z in cas.aux_logits)
    with pytest.raises(ValueError, match="already"):
        attach_cas(model)


def _manual_resnet(model, x, labels=None):
    """ResNet forward written out by hand, with CAS on each block of the last stage (official
    placement) computed here from the modules' fc weights, independently of the hooks."""
    h = F.relu(model.bn1(model.conv1(x)))
    for stage in model.stages[:-1]:
        h = stage(h)
    aux = []
    for block, cas in zip(model.stages[-1], model.cas):
        out = F.relu(block.bn1(block.conv1(h)))
        h = F.relu(block.bn2(block.conv2(out)) + block.shortcut(h))
        z = h.mean(dim=(2, 3)) @ cas.fc.weight.T + cas.fc.bias
        cls = z.argmax(1) if labels is None else labels
        h = h * cas.fc.weight[cls][:, :, None, None]
        aux.append(z)
    return model.linear(F.adaptive_avg_pool2d(h, 1).flatten(1)), aux


def _resnet_with_cas(seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet18-narrow", num_classes=4)
    cas = attach_cas(model)
    with torch.no_grad():                      # masks far from 1, so a missing mask shows
        for m in cas:
            m.fc.weight.mul_(5)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    return model, cas, torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 4, (6,), generator=g)


def test_cas_suppresses_the_channels_of_both_last_stage_blocks():
    model, cas, x, y = _resnet_with_cas()
    with torch.no_grad():
        for labels in (y, None):               # training mask W[y], then the predicted-class mask
            cas.labels = labels
            logits = model(x)
            ref, aux = _manual_resnet(model, x, labels)
            torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)
            for z, r in zip(cas.aux_logits, aux):
                torch.testing.assert_close(z, r, rtol=1e-4, atol=1e-5)
        cas.labels = None


def test_a_deep_copy_uses_its_own_cas_modules():
    model, cas, x, _ = _resnet_with_cas()
    twin = copy.deepcopy(model)                 # e.g. a best-epoch snapshot
    with torch.no_grad():
        before = model(x)
        for m in twin.cas:
            m.fc.weight.mul_(-1)
        torch.testing.assert_close(model(x), before)
        torch.testing.assert_close(twin(x), _manual_resnet(twin, x)[0], rtol=1e-4, atol=1e-5)


def test_cas_loss_is_ce_plus_beta_times_mean_auxiliary_ce():
    model, cas, x, y = _resnet_with_cas()
    with torch.no_grad():
        ref, aux = _manual_resnet(model, x, y)
    expected = F.cross_entropy(ref, y) + 2.0 * (F.cross_entropy(aux[0], y) + F.cross_entropy(aux[1], y)) / 2
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)   # lr 0: the loss is read at the weights used above
    for m in model.modules():                             # BN on running statistics, as in _manual_resnet
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    loss, _ = CASStep(cas, beta=2.0)(model, opt, x, y)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    assert float(loss) > float(F.cross_entropy(ref, y)) + 0.1    # the auxiliary term counts


def test_attack_objective_is_adaptive_and_used_by_the_training_attack():
    model, cas, x, y = _resnet_with_cas()
    seen = {}

    class Spy(AdversarialStep):
        def adversarial(self, model, x, y, loss_fn=None):
            seen["loss_fn"] = loss_fn
            return super().adversarial(model, x, y, loss_fn)

    step = CASStep(cas, Spy(steps=1, generator=torch.Generator().manual_seed(0)), beta=2.0)
    model.train()
    step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y)
    assert seen["loss_fn"] is step.attack_loss          # the training attack maximises CE + β aux CE
    model.eval()

    def input_grad(objective):
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(xx), xx)
        return g

    g_step = input_grad(lambda xx: step.attack_loss(model(xx), y))
    g_manual = input_grad(lambda xx: (lambda o: F.cross_entropy(o[0], y) + 2.0 * torch.stack(
        [F.cross_entropy(z, y) for z in o[1]]).mean())(_manual_resnet(model, xx)))
    g_ce = input_grad(lambda xx: F.cross_entropy(model(xx), y))
    torch.testing.assert_close(g_step, g_manual, rtol=1e-3, atol=1e-6)
    agree = (g_step.sign() == g_ce.sign()).float().mean()
    assert agree < 0.95                                # a different ascent direction from plain CE


def test_robust_accuracy_attacks_with_the_given_objective():
    model, cas, x, y = _resnet_with_cas()
    calls = []

    def objective(logits, labels):
        calls.append(len(labels))
        return F.cross_entropy(logits, labels) + cas.aux_loss(labels)

    acc = robust_accuracy(model, x, y, steps=3, batch_size=4, loss_fn=objective)
    assert 0.0 <= acc <= 1.0 and calls == [4, 4, 4, 2, 2, 2]    # 3 PGD steps per batch of 4 and 2


@pytest.mark.parametrize("adversarial", [False, True])
def test_cas_training_runs_and_learns_the_auxiliary_classifier(adversarial):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = (labels[:, None, None, None] * 120 + torch.randint(0, 100, (64, 3, 32, 32), generator=g)).to(torch.uint8)
    data = ImageTensors(images, labels, ["a", "b"])
    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=2)
    cas = attach_cas(model)
    before = cas[0].fc.weight.detach().clone()
    step = CASStep(cas, AdversarialStep(steps=2) if adversarial else None)
    hist = train(model, data, data, TrainConfig(epochs=4, batch_size=16, lr=0.05), step=step)
    assert not torch.equal(before, cas[0].fc.weight) and cas.labels is None
    assert max(h.test_acc for h in hist) >= 0.9  # a separable toy task is learned through the CAS mask
