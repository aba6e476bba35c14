"""The noise engine: PGD (minimise or maximise), error-minimising noise, the uint8 budget."""
from .budget import apply_noise_uint8, epsilon_levels, linf_levels, parse_epsilon
from .error_minimizing import MinMinConfig, MinMinResult, RoundLog, error_minimizing_noise
from .pgd import PGD, project

__all__ = ["PGD", "project", "MinMinConfig", "MinMinResult", "RoundLog", "error_minimizing_noise",
           "apply_noise_uint8", "epsilon_levels", "linf_levels", "parse_epsilon"]
