"""One event vocabulary for progress. Every workflow (``protect``, ``protect-dataset``, ``verify``,
``verify-photos``, ``train``, ``train-surrogate``) reports through ``on_event(kind, info)``; the CLI
renders it in one place (``unlearnable.cli.progress``), a script may log it or ignore it. The
library itself never prints.

========  =====================================================================================
kind      info
========  =====================================================================================
notice    ``message``: a line for the user (a file skipped, a damaged state searched again)
phase     ``name``: a new stage begins (reading photos, searching noise, training victims ...)
progress  ``phase``, ``done``, ``total``: items or batches done within the current stage
round     ``round``, ``surrogate_acc``, ``surrogate_loss``, ``seconds``: a min-min round ended
          (``unlearnable.noise.minmin.RoundLog``)
model     ``key``, ``index``, ``total``, ``reused``: a model of a verification starts (or a
          finished one is reused)
epoch     ``epoch``, ``train_acc``, ``test_acc``, ``val_acc``, ``seconds`` ...: a training epoch
          ended (``unlearnable.train.loop.EpochRecord``)
========  =====================================================================================
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

Event = Callable[[str, dict], None]


def emitter(on_event: Event | None) -> Event:
    """``on_event``, or a callback that ignores everything."""
    return on_event or (lambda kind, info: None)


def epoch_events(emit: Event) -> dict:
    """The ``on_epoch``/``on_batch`` callbacks of the training loop, as events ('epoch'; 'progress' of
    the 'batches' phase)."""
    return {"on_epoch": lambda rec: emit("epoch", asdict(rec)),
            "on_batch": lambda done, total: emit("progress", {"phase": "batches", "done": done, "total": total})}
