"""The ``unlearnable attack transfer`` workflow: load a surrogate and victim model files and a test
split, run the interaction-reduced transfer attack beside plain PGD
(``unlearnable.attacks.interaction.transfer_attack``, Wang et al., arXiv 2010.04055) and write the
result as JSON. The attack and its scoring live in the attack layer, over models and tensors; this
module is the files-in, JSON-out part around them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..attacks.interaction import TransferConfig, transfer_attack
from ..data.datasets import load_dataset
from ..data.protected import write_json_atomic
from ..device import resolve_device
from ..errors import UnlearnableError
from ..train.loop import prepare_batch
from ..train.weights import load_trained

__all__ = ["transfer_from_files"]


def transfer_from_files(surrogate: str | os.PathLike, victims: list[str | os.PathLike], dataset: str,
                        config: TransferConfig | None = None, out: str | os.PathLike | None = None,
                        data_root: str | os.PathLike | None = None, device: str = "auto",
                        on_phase: Callable[[str], None] | None = None) -> dict:
    """:func:`transfer_attack` on saved models and the test split of ``dataset``; the result (with
    the model files and their architectures) is written to ``out`` as JSON when given."""
    if not victims:
        raise UnlearnableError("give at least one victim model")
    dev = resolve_device(device)
    test = load_dataset(dataset, "test", data_root)
    k, c = test.num_classes, test.images.shape[1]
    sur, sur_arch = load_trained(surrogate, k, c, dev)
    models, archs = {}, {}
    for i, v in enumerate(victims):
        model, arch = load_trained(v, k, c, dev)
        name = Path(v).stem if Path(v).stem not in models else f"{Path(v).stem}-{i}"
        models[name], archs[name] = model, arch
    result = transfer_attack(sur, models, prepare_batch(test.images), test.labels, config, on_phase)
    result.update(dataset=dataset, device=str(dev), surrogate={"file": str(surrogate), "arch": sur_arch},
                  victim_files={n: {"file": str(v), "arch": archs[n]} for n, v in zip(models, victims)})
    if out is not None:
        write_json_atomic(result, Path(out))
    return result
