"""Defense-aware and structured error-minimising noise, measured side by side (issue 13, item 2): for
each noise kind, all from the one engine (``unlearnable.noise.minmin``) on the same CIFAR-10 subset
and surrogate seed, the generation time relative to plain EM in the same run, the visibility cost
(PSNR and SSIM of the protected uint8 images against the clean ones, ``unlearnable.eval.quality``),
and the clean test accuracy of a SmallCNN victim trained on the protected images under standard,
grayscale and JPEG-10 training (``unlearnable.train.defenses``), each scored at its validation-chosen
epoch as ``verify.matrix`` does (10 % of each class held out, the same images for every run; each
run validates on the held-out part of what it trains on). Clean-data victims give the baseline.
Prints one JSON object on stdout (progress on stderr).

    python benchmarks/defense_aware.py --config smoke   # < 3 min: checks the script, measures nothing
    python benchmarks/defense_aware.py --config cpu     # run it alone; estimated about 2 h on 2 cores (not yet
                                                        # run: from EM's 985 s for 15 rounds on 10,000 images,
                                                        # results/effectiveness-cpu-samplewise.json)
    python benchmarks/defense_aware.py --config cost    # generation cost only, every kind and REM: ~25 min
    python benchmarks/defense_aware.py --config cost-structures   # the same for EM beside the tile and
                                                                  # class-wise kinds: a few minutes

Noise kinds (sample-wise unless named class-wise, ε = 8/255, SmallCNN surrogate):
    em                    plain error-minimising noise (Huang et al., arXiv 2101.04898), the engine's defaults
    defense-aware         through random views of every defense (``noise.defense_views``: crop + flip, then
                          one of standard, grayscale, JPEG 10-50, cutout, resize, mixup, cutmix per image)
    defense-aware-nocrop  the same views without the crop + flip in front (a design check: with a frozen
                          surrogate, 5 PGD steps through views led by crop + flip lowered the view loss no
                          more than plain EM did, while views without it did, tests/test_defense_aware.py's
                          setting; here the surrogate trains through the views too)
    luminance             EM with ``structure='luminance'`` (``noise.structure``)
    lowpass               EM with ``structure='lowpass-4'`` (4 × 4 block-constant)
    luminance+lowpass     both projections
    defense-aware+luminance+lowpass   the views and both projections
    rem (cost only)       REM (Fu et al., arXiv 2203.14533; ``noise.robust``) at ``benchmarks/noise_kinds.py``'s
                          cpu settings: 5 noise steps of 1.6/255, ρ_a = 4/255 with PGD-3 of 2/255, 1 EOT draw,
                          batch 128
    rem-paper (cost only) REM at the official settings (``rem_config()``: 10 noise steps of 1.6/255, ρ_a = 4/255
                          with PGD-10 of 0.8/255, 5 EOT draws, batch 128)
    luminance+tile-8 (cost-structures only)   EM with a periodic 8 × 8 luminance texture
    classwise, classwise+luminance+tile-8 (cost-structures only)   class-wise EM (the engine's class-wise
                          defaults: one PGD step a round over a stratified 20 %), plain and with that structure

smoke: 200 training images (20 per class), 200 test images, 3 PGD steps per round, at most 2 rounds,
       victims 2 epochs; 1 thread. Only checks that every part runs: its figures mean nothing.
cpu:   the defended matrix's scale (``benchmarks/defenses.py`` cpu): a balanced 5,000-image subset of
       CIFAR-10 train, a balanced 2,000-image test subset, the engine's defaults (20 PGD steps of
       0.8/255 per round, 10 surrogate steps, batch 512, stop at 99 % of the stop test) capped at 15
       rounds for every kind (a defense-aware kind's stop test scores views, which may never reach
       99 %: it then runs all 15), victims 10 epochs, batch 128, crop + flip, SGD lr 0.1 cosine, clip 5
       (the shared recipe), JPEG-10 and grayscale as in ``train.defenses``; PSNR/SSIM on the first
       1,000 protected images; 2 threads.
cost:  the generation cost alone, side by side (issue 13: each kind's time relative to plain min-min in
       one run): 1,000 CIFAR-10 training images (100 per class), every kind above for exactly 2 rounds
       (``min_rounds`` = ``max_rounds`` = 2, so no kind stops early), the engine's defaults otherwise;
       no victims; 2 threads. A kind's full cost is its seconds per round times the rounds it needs
       (``benchmarks/noise_kinds.py`` reports those at 5,000 images).
cost-structures: the same, for em, luminance+tile-8, classwise and classwise+luminance+tile-8 (a
       class-wise round does other work than a sample-wise one: its per-round ratio is not a per-step one).

Generation time is measured on the same machine in the same process, one kind after the other, so
the ratios compare like with like; ``relative_time`` is total time over EM's, ``relative_time_per_round``
the same per round (kinds may stop after different numbers of rounds).
"""
from __future__ import annotations

import platform
import time
from dataclasses import replace

import numpy as np
import torch
from common import config_main, log

from unlearnable.data.datasets import balanced_subset, load_dataset
from unlearnable.device import resolve_device
from unlearnable.eval.quality import psnr, ssim
from unlearnable.noise.budget import apply_noise_uint8
from unlearnable.noise.defense_aware import defense_aware_noise
from unlearnable.noise.defense_views import DefenseViewConfig
from unlearnable.noise.minmin import MinMinConfig, error_minimizing_noise
from unlearnable.noise.robust import RobustSettings
from unlearnable.train.loop import TrainConfig, build_model
from unlearnable.verify.matrix import MatrixConfig, run_cell, split_validation

KINDS: dict[str, dict] = {   # "noise": engine settings that replace the config's; "rem": REM's robust settings
    "em": {},
    "defense-aware": {"views": "all"},
    "defense-aware-nocrop": {"views": "all", "crop_flip": False},
    "luminance": {"structure": "luminance"},
    "lowpass": {"structure": "lowpass"},
    "luminance+lowpass": {"structure": "luminance+lowpass"},
    "defense-aware+luminance+lowpass": {"views": "all", "structure": "luminance+lowpass"},
    "rem": {"noise": dict(steps=5, step_size=1.6 / 255, batch_size=128),
            "rem": dict(radius=4 / 255, steps=3, step_size=2 / 255, samples=1)},
    "rem-paper": {"noise": dict(steps=10, step_size=1.6 / 255, batch_size=128), "rem": {}},
    "luminance+tile-8": {"structure": "luminance+tile-8"},
    "classwise": {"mode": "classwise"},
    "classwise+luminance+tile-8": {"mode": "classwise", "structure": "luminance+tile-8"},
}
STRUCTURE_KINDS = ["em", "luminance+tile-8", "classwise", "classwise+luminance+tile-8"]
COST_STRUCTURES_ONLY = STRUCTURE_KINDS[1:]                 # measured by cost-structures alone
VICTIM_KINDS = [k for k in KINDS if not k.startswith("rem") and k not in COST_STRUCTURES_ONLY]
DEFENSES = ["standard", "grayscale", "jpeg"]
CONFIGS = {
    "smoke": dict(train_size=200, test_size=200, surrogate="smallcnn", victim="smallcnn", epochs=2,
                  noise=dict(steps=3, batch_size=100, max_rounds=2), quality_images=200, threads=1,
                  kinds=VICTIM_KINDS, victims=True),
    "cpu": dict(train_size=5000, test_size=2000, surrogate="smallcnn", victim="smallcnn", epochs=10,
                noise=dict(max_rounds=15), quality_images=1000, threads=2, kinds=VICTIM_KINDS, victims=True),
    "cost": dict(train_size=1000, surrogate="smallcnn", noise=dict(min_rounds=2, max_rounds=2), quality_images=1000,
                 threads=2, kinds=[k for k in KINDS if k not in COST_STRUCTURES_ONLY], victims=False),
    "cost-structures": dict(train_size=1000, surrogate="smallcnn", noise=dict(min_rounds=2, max_rounds=2),
                            quality_images=1000, threads=2, kinds=STRUCTURE_KINDS, victims=False),
}
VAL_SHARE = 0.1


def visibility(clean: torch.Tensor, protected: torch.Tensor) -> dict:
    """Mean PSNR and SSIM (dB; Wang et al. 2004) of protected vs clean uint8 (N, C, H, W) images, and the
    mean and largest |Δ| in /255 levels."""
    a = clean.permute(0, 2, 3, 1).numpy()
    b = protected.permute(0, 2, 3, 1).numpy()
    p = [psnr(x, y) for x, y in zip(a, b)]
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"images": len(a), "psnr_mean": round(float(np.mean([v for v in p if np.isfinite(v)])), 3),
            "ssim_mean": round(float(np.mean([ssim(x, y) for x, y in zip(a, b)])), 4),
            "mean_abs_255": round(float(diff.mean()), 3), "max_abs_255": int(diff.max())}


def generate(kind: str, spec: dict, train_set, c: dict, device) -> tuple[torch.Tensor, dict]:
    """The protected uint8 images of ``kind`` and its generation record."""
    robust = None if "rem" not in spec else RobustSettings(**spec["rem"])
    cfg = MinMinConfig(mode=spec.get("mode", "samplewise"), structure=spec.get("structure"), robust=robust,
                       **{**c["noise"], **spec.get("noise", {})})
    surrogate = build_model(c["surrogate"], train_set.num_classes, train_set.images.shape[1], 0, device)

    def on_round(r) -> None:
        log(f"{kind} round {r.round}: acc {r.surrogate_acc:.4f} loss {r.surrogate_loss:.4f} ({r.seconds:.0f}s)")

    t0 = time.perf_counter()
    if "views" in spec:
        views = DefenseViewConfig.parse(spec["views"], crop_flip=spec.get("crop_flip", True))
        res = defense_aware_noise(surrogate, train_set, cfg, on_round=on_round, views=views)
    else:
        views = None
        res = error_minimizing_noise(surrogate, train_set, cfg, on_round=on_round)
    seconds = time.perf_counter() - t0
    rec = {"settings": cfg.settings(), "views": views.settings() if views else None,
           "per_round_seconds": [round(h.seconds, 2) for h in res.history], "rounds": res.rounds,
           "converged": res.converged, "final_stop_test_acc": res.history[-1].surrogate_acc,
           "final_stop_test_loss": round(res.history[-1].surrogate_loss, 4), "seconds": round(seconds, 1),
           "seconds_per_round": round(seconds / res.rounds, 2)}
    return apply_noise_uint8(train_set.images, res.per_sample(train_set.labels), cfg.eps), rec


def run(c: dict) -> dict:
    if c.get("threads"):
        torch.set_num_threads(c["threads"])
    device = resolve_device("cpu")
    train_full = load_dataset("cifar10", "train")
    train_set = train_full.subset(balanced_subset(train_full.labels, c["train_size"], 0))
    out: dict = {"benchmark": "defense_aware", "dataset": "cifar10", "train_images": len(train_set),
                 "surrogate": c["surrogate"],
                 "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device.type}",
                 "torch": torch.__version__, "kinds": {}}
    if c["victims"]:
        test_full = load_dataset("cifar10", "test")
        test_set = test_full.subset(balanced_subset(test_full.labels, c["test_size"], 0))
        tr_idx, val_idx = split_validation(train_set.labels, VAL_SHARE, 0)
        mc = MatrixConfig(archs=[c["victim"]], defenses=DEFENSES, train=TrainConfig(epochs=c["epochs"]),
                          robust_images=0, patterns_for=[], val_share=VAL_SHARE)
        out.update(victim_train_images=len(tr_idx), val_images=len(val_idx), test_images=len(test_set),
                   victim=c["victim"], epochs=c["epochs"], defenses=DEFENSES)

    def victims(name: str, images: torch.Tensor) -> dict:
        data = replace(train_set, images=images)
        acc = {}
        for defense in DEFENSES:
            rec, _, _ = run_cell(c["victim"], defense, name, data.subset(tr_idx), test_set, mc, device, "cifar10",
                                 val_set=data.subset(val_idx))
            acc[defense] = {"chosen_test_acc": rec["chosen_test_acc"], "chosen_epoch": rec["chosen_epoch"],
                            "final_test_acc": rec["final_test_acc"], "seconds": round(rec["seconds"], 1)}
            log(f"victim {defense} on {name}: chosen {rec['chosen_test_acc']:.4f} (epoch {rec['chosen_epoch']})")
        return acc

    if c["victims"]:
        out["clean"] = victims("clean", train_set.images)
    q = c["quality_images"]
    for kind in c["kinds"]:
        protected, rec = generate(kind, KINDS[kind], train_set, c, device)
        rec["visibility"] = visibility(train_set.images[:q], protected[:q])
        if c["victims"]:
            rec["accuracy"] = victims(kind, protected)
        out["kinds"][kind] = rec
    em = out["kinds"]["em"]
    for rec in out["kinds"].values():
        rec["relative_time"] = round(rec["seconds"] / em["seconds"], 2)
        rec["relative_time_per_round"] = round(rec["seconds_per_round"] / em["seconds_per_round"], 2)
    return out


if __name__ == "__main__":
    config_main(__doc__, CONFIGS, run, default="smoke")
