"""PGD adversarial training and AWP steps."""
import copy

import torch

from unlearnable.models import create_model
from unlearnable.train.adversarial import AdversarialStep, AWPStep, add_weights, weight_perturbation


def _setup(seed=0):
    torch.manual_seed(seed)
    model = create_model("smallcnn", num_classes=3)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), x, y


def test_adversarial_examples_stay_in_the_ball_and_raise_the_loss():
    model, _, x, y = _setup()
    step = AdversarialStep(generator=torch.Generator().manual_seed(0))
    adv = step.adversarial(model, x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    model.eval()
    ce = torch.nn.functional.cross_entropy
    assert ce(model(adv), y) > ce(model(x), y)


def test_weight_perturbation_is_layerwise_relative():
    model, _, _, _ = _setup()
    proxy = copy.deepcopy(model)
    with torch.no_grad():
        for p in proxy.parameters():
            p.add_(torch.randn_like(p))
    v = weight_perturbation(model, proxy, 5e-3)
    params = dict(model.named_parameters())
    assert v and all(params[k].dim() > 1 for k in v)  # BN and biases untouched
    for k, d in v.items():
        torch.testing.assert_close(d.norm(), 5e-3 * params[k].detach().norm(), rtol=1e-4, atol=1e-7)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    add_weights(model, v, 1.0)
    add_weights(model, v, -1.0)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p, before[k])


def test_awp_changes_the_update_and_gamma_zero_is_plain_at():
    model, opt, x, y = _setup()
    at_model, at_opt, _, _ = _setup()
    loss, logits = AWPStep(gamma=1e-2, generator=torch.Generator().manual_seed(1))(model, opt, x, y)
    AdversarialStep(generator=torch.Generator().manual_seed(1))(at_model, at_opt, x, y)
    assert torch.isfinite(loss) and logits.shape == (16, 3)
    gap = sum(float((p - q).detach().abs().sum()) for p, q in zip(model.parameters(), at_model.parameters()))
    assert gap > 0  # the gradient was taken at w + v, not at w
    # γ = 0 reduces AWP to plain adversarial training (same PGD draws, same update)
    m1, o1, _, _ = _setup()
    m2, o2, _, _ = _setup()
    AWPStep(gamma=0.0, generator=torch.Generator().manual_seed(2))(m1, o1, x, y)
    AdversarialStep(generator=torch.Generator().manual_seed(2))(m2, o2, x, y)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)


def test_awp_defense_uses_the_at_awp_gamma_unless_told():
    from unlearnable.train.defenses import DefenseContext, build_step

    model = create_model("smallcnn", num_classes=10)
    assert build_step("awp", DefenseContext(model, 10, 10)).gamma == 1e-2      # AT-AWP's γ
    assert build_step("awp", DefenseContext(model, 10, 10, awp_gamma=5e-3)).gamma == 5e-3   # TRADES-AWP's
