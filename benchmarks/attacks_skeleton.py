"""Skeleton interaction attack benchmark (Koren et al., arXiv 2101.06704). Prints one JSON object
on stdout; progress goes to stderr.

    python benchmarks/attacks_skeleton.py             # the "cpu" configuration
    python benchmarks/attacks_skeleton.py gpu

For SBU and K3HI (``../shared/data/skeleton-interaction`` beside this clone): the reaction model
(``unlearnable.skeleton.reaction``) trained on the train split, then on the test split, per ε
(``unlearnable.skeleton.evaluate.evaluate_attack``): reaction MPJPE clean vs attacked (untargeted,
λ = 1 and λ = 0) vs random noise of the same size under the same constraints, the constraint
figures (max displacement, max bone-length change, mean / max acceleration change beside the
clean mean acceleration), and the targeted attack towards every other class's mean reaction with
its reach rate (nearest class mean = target) beside the clean and random-noise rates.

Configurations: "cpu" (≤ 10 minutes on 2 uncontended cores): the default reaction recipe (GRU 64,
60 epochs), ε ∈ {0.02, 0.05}, 50 steps. "gpu": GRU 256 × 2 layers, 150 epochs, ε ∈ {0.02, 0.05,
0.1}, 200 steps.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from common import log

from unlearnable.device import resolve_device
from unlearnable.skeleton.evaluate import SkeletonAttackConfig, run_skeleton_attack
from unlearnable.skeleton.reaction import ReactionConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "skeleton-interaction"
CONFIGS = {
    "cpu": {"reaction": ReactionConfig(), "attack": SkeletonAttackConfig(eps=[0.02, 0.05], steps=50),
            "threads": 1, "device": "cpu"},
    "gpu": {"reaction": ReactionConfig(hidden=256, layers=2, epochs=150),
            "attack": SkeletonAttackConfig(eps=[0.02, 0.05, 0.1], steps=200), "threads": None, "device": "auto"},
}


def run(config: str = "cpu") -> dict:
    """Both datasets under ``config`` ('cpu' or 'gpu'); returns the JSON-ready figures."""
    if config not in CONFIGS:
        raise SystemExit(f"unknown configuration {config!r}: {', '.join(CONFIGS)}")
    cfg = CONFIGS[config]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    dev = resolve_device(cfg["device"])
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    result = {"benchmark": "attacks_skeleton", "config": config, "device": str(dev), "device_name": name,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "data": str(SHARED),
              "load_average_1min": {"start": os.getloadavg()[0]}, "datasets": {}}
    t0 = time.perf_counter()
    for dataset in ("sbu", "k3hi"):
        t = time.perf_counter()
        log(dataset)
        res = run_skeleton_attack(str(SHARED / f"{dataset}_actor_reactor.npz"), reaction=cfg["reaction"],
                                  attack=cfg["attack"], device=str(dev), log=log)
        res["seconds"] = time.perf_counter() - t
        result["datasets"][dataset] = res
    result["total_seconds"] = time.perf_counter() - t0
    result["load_average_1min"]["end"] = os.getloadavg()[0]
    return result


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2))
