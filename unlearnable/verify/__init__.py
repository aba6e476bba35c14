"""Verification workflows: ``matrix`` (victims × defenses on a protect-dataset output,
``unlearnable verify``) and ``photos`` (held-out experiment on a photo folder,
``unlearnable verify --photos``)."""
