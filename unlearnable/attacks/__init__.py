"""Attacks: the L∞ ball projection and PGD, the primitive under both error-minimising noise
(``unlearnable.noise``) and adversarial training and robust evaluation (``unlearnable.train``,
``unlearnable.eval``)."""
