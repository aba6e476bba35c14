"""NP-Attack (arXiv 2009.11508) against the pixel-space NES baseline (arXiv 1804.08598): the paper's
claim, fewer queries per success at the same ε and query limit, on the same victims and images.

Per dataset: a victim (smallcnn) trained briefly on a class-balanced training subset, an NP
trained on the same subset, ``images`` correctly classified test images (after skipping the first
``skip`` of them), then both attacks with the same ε and per-image query limit. The cpu config
skips 100: NP-Attack's learning rate (0.05, the official ImageNet code's, instead of its CIFAR
code's 0.01) was chosen after a run on the first 100, so the reported figures are on fresh images.
Reported: victim accuracy, NP reconstruction MSE (every pixel as context) against the mean image's,
and per attack the success rate and the mean and median queries over the successes, with every
image's queries and success.

Configs: "cpu" (≤ 15 minutes on 2 uncontended cores: 10k training images, 6 victim epochs, 300 NP
steps, 100 images, 2,000 queries; CIFAR-10 at ε = 8/255 and Fashion-MNIST at the paper's MNIST
ε = 0.2), "gpu" (closer to the paper: the full training sets, 30 victim epochs, resnet18, 3,000 NP
steps of batch 32, 1,000 images, 10,000 queries), "pilot" (a one-minute smoke run). Both attacks run
with their defaults (``NES`` and ``NPAttack`` docstrings); a config's optional "np_attack" dict
overrides NP-Attack's (for diagnostics).

Usage: ``python benchmarks/attacks_blackbox.py cpu`` prints one JSON object.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from unlearnable.attacks.nes import NES
from unlearnable.attacks.np_attack import NPAttack, correctly_classified
from unlearnable.data.augment import to_float
from unlearnable.data.datasets import balanced_subset, load_dataset
from unlearnable.device import resolve_device
from unlearnable.train.loop import TrainConfig, build_model, evaluate, train
from unlearnable.train.neural_process import NPTrainConfig, reconstruction_mse, train_neural_process

CONFIGS = {
    "pilot": {"datasets": {"cifar10": 8 / 255}, "arch": "smallcnn", "train_images": 2000, "epochs": 2,
              "np_steps": 100, "np_batch": 16, "images": 10, "max_queries": 500},
    "cpu": {"datasets": {"cifar10": 8 / 255, "fashion-mnist": 0.2}, "arch": "smallcnn", "train_images": 10000,
            "epochs": 6, "np_steps": 300, "np_batch": 16, "images": 100, "skip": 100, "max_queries": 2000},
    "gpu": {"datasets": {"cifar10": 8 / 255, "fashion-mnist": 0.2}, "arch": "resnet18", "train_images": None,
            "epochs": 30, "np_steps": 3000, "np_batch": 32, "images": 1000, "max_queries": 10000},
}


def run_dataset(name: str, eps: float, cfg: dict, device: torch.device, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    tr, te = load_dataset(name, "train"), load_dataset(name, "test")
    if cfg["train_images"]:
        tr = tr.subset(balanced_subset(tr.labels, cfg["train_images"], seed))
    model = build_model(cfg["arch"], tr.num_classes, tr.images.shape[1], seed, device)
    train(model, tr, config=TrainConfig(epochs=cfg["epochs"], seed=seed))
    model.eval()
    acc, _ = evaluate(model, te)
    t_victim = time.perf_counter() - t0

    npm, np_rec = train_neural_process(tr, NPTrainConfig(steps=cfg["np_steps"], batch_size=cfg["np_batch"],
                                                         seed=seed), device=device)
    x_test = to_float(te.images)
    mean_image = to_float(tr.images[:5000]).mean(0, keepdim=True)
    np_mse = reconstruction_mse(npm, x_test[:500].to(device))
    mean_mse = ((x_test[:500] - mean_image) ** 2).mean().item()
    t_np = time.perf_counter() - t0 - t_victim

    with torch.no_grad():
        victim = lambda x: model(x.to(device))  # noqa: E731 - the attacks only see outputs
        skip = cfg.get("skip", 0)
        idx = correctly_classified(victim, x_test, te.labels, skip + cfg["images"])[skip:]
        x, y = x_test[idx].to(device), te.labels[idx].to(device)
        nes = NES(victim, eps=eps, max_queries=cfg["max_queries"], seed=seed)
        npa = NPAttack(victim, npm, eps=eps, max_queries=cfg["max_queries"], seed=seed, **cfg.get("np_attack", {}))
        settings = {"nes": {"samples": nes.samples, "sigma": nes.sigma, "lr": nes.lr},
                    "np": {"population": npa.population, "lr": npa.lr, "sigma": npa.sigma, "space": npa.space,
                           "residual": npa.residual}}
        methods = {}
        for method, attack in (("nes", nes), ("np", npa)):
            t = time.perf_counter()
            res = attack(x, y)
            methods[method] = {**res.summary(), "settings": settings[method], "seconds": time.perf_counter() - t,
                               "max_abs_perturbation": (res.adv_images.to(device) - x).abs().max().item(),
                               "queries": res.queries.tolist(), "success": res.success.int().tolist()}
    return {"eps": eps, "victim": {"arch": cfg["arch"], "train_images": len(tr), "epochs": cfg["epochs"],
                                   "test_acc": acc, "seconds": t_victim},
            "np": {"steps": cfg["np_steps"], "batch": cfg["np_batch"], "final_loss": np_rec["final_loss"],
                   "recon_mse_full_context": np_mse, "mean_image_mse": mean_mse, "seconds": t_np},
            "attacked_images": len(idx), "skipped_images": skip, "max_queries": cfg["max_queries"], "methods": methods,
            "seconds": time.perf_counter() - t0}


def run(config: str) -> dict:
    """Run the named config (pilot, cpu, gpu); returns the figures as a JSON-ready dict."""
    cfg = CONFIGS[config]
    device = resolve_device("auto" if config == "gpu" else "cpu")
    t0 = time.perf_counter()
    out = {"config": config, "settings": {k: v for k, v in cfg.items() if k != "datasets"},
           "machine": {"device": str(device), "torch_threads": torch.get_num_threads()}, "datasets": {}}
    for name, eps in cfg["datasets"].items():
        out["datasets"][name] = run_dataset(name, eps, cfg, device)
    out["seconds"] = time.perf_counter() - t0
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)   # the machine is shared; see the README's benchmark notes
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=1))
