"""Verification workflows: ``matrix`` (victims × defenses on a protect-dataset output,
``unlearnable verify``), ``photos`` (held-out experiment on a photo folder,
``unlearnable verify-photos``), ``faces`` (its face scraper and recogniser), and the attack
probes of model files, ``transfer`` (``unlearnable attack transfer``) and ``blackbox``
(``unlearnable attack black-box``)."""
