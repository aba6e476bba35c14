"""One fast training loop with replaceable step functions (standard, and later AT/AWP/CAS)."""
from .loop import EpochRecord, StandardStep, StepFn, TrainConfig, build_model, evaluate, make_optimizer, train

__all__ = ["EpochRecord", "StandardStep", "StepFn", "TrainConfig", "build_model", "evaluate",
           "make_optimizer", "train"]
