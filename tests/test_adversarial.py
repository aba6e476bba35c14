"""PGD adversarial training and AWP steps."""
import copy

import torch
import torch.nn.functional as F

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


def test_awp_update_is_the_gradient_at_the_perturbed_weights():
    """One AT-AWP update computed independently (functional calls, no proxy model): with g = ∇_w CE
    at w (the proxy's ascent direction), v_l = γ ‖w_l‖ g_l / ‖g_l‖ on every conv/linear weight and
    the update is w ← w − lr ∇CE(w + v). Fails for γ = 0 (that update is plain AT's w − lr g)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=3)
    model.train()
    g = torch.Generator().manual_seed(0)
    x_adv, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g)
    w0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}

    def grad_at(params):
        ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = functional_call(model, {**ps, **{k: b.clone() for k, b in buffers.items()}}, (x_adv,))
        return dict(zip(ps, torch.autograd.grad(F.cross_entropy(out, y), list(ps.values()))))

    lr, gamma = 0.1, 1e-2
    g0 = grad_at(w0)
    v = {k: gamma * w0[k].norm() * g0[k] / g0[k].norm() for k in w0 if w0[k].dim() > 1}
    g_awp = grad_at({k: w0[k] + v.get(k, 0) for k in w0})
    expected = {k: w0[k] - lr * g_awp[k] for k in w0}
    plain_at = {k: w0[k] - lr * g0[k] for k in w0}

    step = AWPStep(gamma=gamma)
    step.adversarial = lambda model, x, y, loss_fn=None: x_adv   # fixed examples: the weight step alone
    step(model, torch.optim.SGD(model.parameters(), lr=lr), x_adv, y)
    got = {k: p.detach() for k, p in model.named_parameters()}
    err = max(float((got[k] - expected[k]).abs().max()) for k in w0)
    gap = max(float((expected[k] - plain_at[k]).abs().max()) for k in w0)
    assert err < 1e-6 and gap > 100 * max(err, 1e-8), (err, gap)


def test_awp_defense_uses_the_at_awp_gamma_unless_told():
    from unlearnable.train.defenses import DefenseContext, build_step

    model = create_model("smallcnn", num_classes=10)
    assert build_step("awp", DefenseContext(model, 10, 10)).gamma == 1e-2      # AT-AWP's γ
    assert build_step("awp", DefenseContext(model, 10, 10, awp_gamma=5e-3)).gamma == 5e-3   # TRADES-AWP's
