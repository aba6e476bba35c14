"""The noise engine: error-minimising noise (one min-min engine over problems), views, the uint8
budget, full-resolution upsampling."""
from .budget import apply_noise_uint8, epsilon_levels, linf_levels, parse_epsilon
from .minmin import MinMinConfig, MinMinResult, RoundLog, error_minimizing_noise

__all__ = ["MinMinConfig", "MinMinResult", "RoundLog", "error_minimizing_noise",
           "apply_noise_uint8", "epsilon_levels", "linf_levels", "parse_epsilon"]
