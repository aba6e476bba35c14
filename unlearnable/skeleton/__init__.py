"""Skeleton interactions (actor -> reactor), the reaction model and the constraints of the
adversarial interaction attack (Koren et al., arXiv 2101.06704); the attack itself is
``unlearnable.attacks.skeleton``."""
