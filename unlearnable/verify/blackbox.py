"""The ``unlearnable attack black-box`` workflow: load a model file and a test split, pick the images
it classifies correctly, and probe it through queries only with NP-Attack (``unlearnable.attacks.np_attack``,
arXiv 2009.11508; its NP loaded or trained here) or the pixel-space NES baseline
(``unlearnable.attacks.nes``, arXiv 1804.08598). The attacks themselves live in the attack layer and
see only a function from images to scores; this module is the files-in, JSON-out part around them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..attacks.nes import NES
from ..attacks.np_attack import NPAttack, correctly_classified
from ..data.augment import to_float
from ..data.datasets import load_dataset
from ..data.protected import write_json_atomic
from ..device import resolve_device
from ..errors import UnlearnableError
from ..train.neural_process import NPTrainConfig, load_neural_process, save_neural_process, train_neural_process
from ..train.weights import load_trained

__all__ = ["probe_blackbox"]


def probe_blackbox(model_path: str | os.PathLike, dataset: str, method: str = "np",
                   np_path: str | os.PathLike | None = None, train_np_steps: int = 0,
                   np_out: str | os.PathLike | None = None, eps: float = 8 / 255, max_queries: int = 2000,
                   images: int = 100, seed: int = 0, data_root: str | os.PathLike | None = None,
                   device: str = "auto", on_step: Callable[[int, int, float], None] | None = None,
                   out: str | os.PathLike | None = None) -> dict:
    """Attack a saved model through queries only: the first ``images`` correctly classified test
    images of ``dataset``, ``method`` "np" (NP-Attack with the NP in ``np_path``, or one trained here
    for ``train_np_steps`` steps on the training split and saved to ``np_out`` if given) or "nes".
    Returns a JSON-ready dict: settings, the summary (success rate, mean/median queries over the
    successes) and per-image queries and success; written to ``out`` as JSON when given (its folder
    is created; an existing file is replaced through the atomic writer)."""
    if method not in ("np", "nes"):
        raise UnlearnableError(f"method must be np or nes, not {method!r}")
    dev = resolve_device(device)
    test = load_dataset(dataset, "test", data_root)
    model, arch = load_trained(model_path, test.num_classes, test.images.shape[1], dev)
    victim = lambda x: model(x.to(dev))  # noqa: E731 - the attack sees a function, not the model
    x_all = to_float(test.images)
    chosen = correctly_classified(victim, x_all, test.labels, images)
    if len(chosen) == 0:
        raise UnlearnableError("the model classifies none of the test images correctly: nothing to attack")
    x, y = x_all[chosen], test.labels[chosen]
    settings = {"method": method, "model": str(model_path), "arch": arch, "dataset": dataset,
                "eps": eps, "max_queries": max_queries, "images": len(chosen), "seed": seed}
    if method == "np":
        if np_path is not None:
            npm, np_record = load_neural_process(np_path, dev)
            settings["np"] = str(np_path)
        elif train_np_steps > 0:
            train = load_dataset(dataset, "train", data_root)
            npm, np_record = train_neural_process(train, NPTrainConfig(steps=train_np_steps, seed=seed),
                                                  device=dev, on_step=on_step)
            settings["np"] = "trained here"
            if np_out is not None:
                settings["np"] = str(save_neural_process(np_out, npm, np_record))
        else:
            raise UnlearnableError("NP-Attack needs an NP: give an NP file or a number of training steps")
        attack = NPAttack(victim, npm, eps=eps, max_queries=max_queries, seed=seed)
        settings.update(population=attack.population, lr=attack.lr, sigma=attack.sigma, space=attack.space,
                        residual=attack.residual, np_record={k: v for k, v in np_record.items() if k != "train"})
    else:
        attack = NES(victim, eps=eps, max_queries=max_queries, seed=seed)
        settings.update(samples=attack.samples, lr=attack.lr, sigma=attack.sigma)
    result = attack(x, y)
    record = {"settings": settings, "summary": result.summary(), "test_indices": chosen.tolist(),
              "queries": result.queries.tolist(), "success": result.success.tolist(),
              "max_abs_perturbation": (result.adv_images - x).abs().max().item()}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, Path(out))
    return record
