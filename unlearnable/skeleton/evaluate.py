"""Stress test of a reaction model by the adversarial interaction attack (Koren et al., arXiv
2101.06704): the figures the issue asks for, as one function over (model, train, test, config)
returning a JSON-ready dict, and the workflow behind ``unlearnable attack skeleton``.

Per ε (data units) on the test split:
- reaction MPJPE of the model on clean actors, on attacked actors (untargeted, maximising the
  error to the true reaction, with the smoothness weight λ and, as an ablation, λ = 0) and on
  random noise of the same size under the same constraints (every joint moved ε in a random
  direction, then the same projection: ``constraints.random_perturbation``);
- constraint figures of each perturbation (``constraints.violations``: largest displacement,
  largest bone-length change, padding change, mean / largest acceleration change);
- targeted: every test sequence towards every other class's mean reaction
  (``reaction.target_reactions``); "reaches" = the predicted reaction's nearest class mean
  (``reaction.nearest_class``) is the target class. Reported beside the same rate for the clean
  and the random-noise predictions (what one gets without attacking), the mean MPJPE to the
  target before and after, and the rate at which the true reactions / clean predictions are
  nearest their own class (how separable the class means are at all).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..attacks.skeleton import SkeletonInteractionAttack
from ..device import resolve_device
from ..errors import UnlearnableError
from ..train.weights import ensure_new
from .constraints import random_perturbation, violations
from .data import Interactions, load_interactions
from .reaction import (ReactionConfig, ReactionGRU, class_mean_reactions, load_reaction, mpjpe, nearest_class, predict,
                       reaction_errors, save_reaction, target_reactions, train_reaction, training_record)


@dataclass
class SkeletonAttackConfig:
    """Attack settings (data units; ``alpha`` None = ε/4) and what to measure."""

    eps: list[float] = field(default_factory=lambda: [0.02])
    alpha: float | None = None
    steps: int = 50
    smooth_weight: float = 1.0
    targeted: bool = True
    ablate_smoothness: bool = True   # also run the untargeted attack with λ = 0
    resample_frames: int = 32        # K of the class-mean reactions
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not self.eps or any(not e > 0 for e in self.eps):
            raise UnlearnableError("give at least one displacement bound ε > 0")
        if self.steps < 1:
            raise UnlearnableError("the attack needs at least one step")


def _batched(fn: Callable[[slice], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(slice(i, i + batch_size)) for i in range(0, n, batch_size)])


def _attack(model: ReactionGRU, data: Interactions, eps: float, cfg: SkeletonAttackConfig, smooth_weight: float,
            targets: torch.Tensor | None = None) -> torch.Tensor:
    atk = SkeletonInteractionAttack(model, data.skeleton, eps=eps, alpha=cfg.alpha, steps=cfg.steps,
                                    smooth_weight=smooth_weight)
    return _batched(lambda sl: atk(data.actor[sl], data.lengths[sl], None if targets is None else targets[sl],
                                   first=data.reactor[sl, 0], reaction=data.reactor[sl]), len(data), cfg.batch_size)


def _entry(model: ReactionGRU, data: Interactions, adv: torch.Tensor, seconds: float | None = None) -> dict:
    out = {"mpjpe": float(mpjpe(predict(model, data, adv), data.reactor, data.lengths).mean()),
           "constraints": violations(adv, data.actor, data.lengths, data.skeleton)}
    if seconds is not None:
        out["seconds"] = seconds
    return out


def evaluate_attack(model: ReactionGRU, train: Interactions, test: Interactions,
                    cfg: SkeletonAttackConfig = SkeletonAttackConfig(),
                    log: Callable[[str], None] | None = None) -> dict:
    """The stress-test figures (module docstring) of ``model`` on ``test``; ``train`` gives the
    baselines and class means. All tensors are moved to the model's device."""
    dev = next(model.parameters()).device
    train, test = train.to(dev), test.to(dev)
    say = log or (lambda _: None)
    gen = torch.Generator().manual_seed(cfg.seed)
    errors = reaction_errors(model, test, train)
    means = class_mean_reactions(train, cfg.resample_frames)
    first = test.reactor[:, 0]
    clean_pred = predict(model, test)
    result: dict = {"dataset": test.name, "test_sequences": len(test), "classes": list(test.classes),
                    "clean": errors, "config": asdict(cfg),
                    "class_separability": {
                        "true_reaction_nearest_own_class": float(
                            (nearest_class(test.reactor, first, test.lengths, means) == test.labels).float().mean()),
                        "clean_prediction_nearest_own_class": float(
                            (nearest_class(clean_pred, first, test.lengths, means) == test.labels).float().mean())},
                    "by_eps": []}
    say(f"{test.name}: clean MPJPE {errors['model']:.4f} (zero motion {errors['zero_motion']:.4f}, "
        f"mean pose {errors['mean_pose']:.4f})")
    c = test.num_classes
    pair_seq = torch.arange(len(test), device=dev).repeat_interleave(c - 1)
    pair_cls = torch.stack([torch.tensor([k for k in range(c) if k != int(y)]) for y in test.labels.cpu()]).flatten()
    pairs = test.subset(pair_seq)
    pair_cls = pair_cls.to(dev)
    for eps in cfg.eps:
        row: dict = {"eps": eps, "clean_mpjpe": errors["model"]}
        rnd = random_perturbation(test.actor, test.lengths, eps, test.skeleton, gen)
        row["random"] = _entry(model, test, rnd)
        t = time.perf_counter()
        adv = _attack(model, test, eps, cfg, cfg.smooth_weight)
        row["untargeted"] = _entry(model, test, adv, time.perf_counter() - t)
        say(f"  ε {eps}: clean {errors['model']:.4f}  random {row['random']['mpjpe']:.4f}  "
            f"attacked {row['untargeted']['mpjpe']:.4f}")
        if cfg.ablate_smoothness and cfg.smooth_weight > 0:
            t = time.perf_counter()
            adv0 = _attack(model, test, eps, cfg, 0.0)
            row["untargeted_no_smoothness"] = _entry(model, test, adv0, time.perf_counter() - t)
            say(f"  ε {eps}: attacked with λ = 0 {row['untargeted_no_smoothness']['mpjpe']:.4f}")
        if cfg.targeted:
            targets = target_reactions(means, pair_cls, pairs.reactor[:, 0], pairs.lengths, pairs.actor.shape[1])
            t = time.perf_counter()
            adv_t = _attack(model, pairs, eps, cfg, cfg.smooth_weight, targets)
            seconds = time.perf_counter() - t
            rnd_t = random_perturbation(pairs.actor, pairs.lengths, eps, pairs.skeleton, gen)
            preds = {k: predict(model, pairs, a) for k, a in (("clean", None), ("random", rnd_t), ("attacked", adv_t))}
            reach = {k: float((nearest_class(p, pairs.reactor[:, 0], pairs.lengths, means) == pair_cls).float().mean())
                     for k, p in preds.items()}
            to_target = {k: float(mpjpe(p, targets, pairs.lengths).mean()) for k, p in preds.items()}
            row["targeted"] = {"pairs": len(pairs), "reach_rate": reach, "mpjpe_to_target": to_target,
                               "constraints": violations(adv_t, pairs.actor, pairs.lengths, pairs.skeleton),
                               "seconds": seconds}
            say(f"  ε {eps}: targeted reach {reach['attacked']:.3f} (clean {reach['clean']:.3f}, random "
                f"{reach['random']:.3f}); MPJPE to target {to_target['clean']:.4f} -> {to_target['attacked']:.4f}")
        result["by_eps"].append(row)
    return result


def run_skeleton_attack(dataset: str, root: str | None = None, model_path: str | None = None,
                        save_model: str | None = None, reaction: ReactionConfig = ReactionConfig(),
                        attack: SkeletonAttackConfig = SkeletonAttackConfig(), device: str = "auto",
                        log: Callable[[str], None] | None = None) -> dict:
    """Load ``dataset`` ('sbu', 'k3hi' or an .npz path; see ``data.load_interactions``), train the
    reaction model on its train split (or load ``model_path``, written by ``save_reaction``; it must
    match the data's joint count), optionally save it to ``save_model`` (OUT.pt + OUT.json, never
    over existing files), and return :func:`evaluate_attack`'s figures plus how the model was made."""
    dev = resolve_device(device)
    data = load_interactions(dataset, root)
    train, test = data.split("train"), data.split("test")
    if len(train) == 0 or len(test) == 0:
        raise UnlearnableError(f"{dataset}: needs sequences in both the train and the test split")
    say = log or (lambda _: None)
    if model_path:
        model, record = load_reaction(model_path, dev)
        if model.num_joints != len(data.skeleton.joints) or model.root != data.skeleton.root:
            raise UnlearnableError(f"{model_path} was trained on another skeleton ({record.get('skeleton')})")
        made = {"loaded": str(model_path), "record": record}
    else:
        if save_model:
            ensure_new(save_model)   # refuse before training, not after
        t = time.perf_counter()
        model = train_reaction(train, reaction, dev)
        seconds = time.perf_counter() - t
        made = {"trained": training_record(train, reaction, seconds)}
        say(f"trained the reaction model in {seconds:.1f} s")
        if save_model:
            weights, rec = save_reaction(save_model, model, made["trained"])
            made["saved"] = [str(weights), str(rec)]
    result = evaluate_attack(model, train, test, attack, say)
    result["model"] = made
    result["device"] = str(dev)
    return result
