"""Protecting personal photo folders (``unlearnable protect photos/ -o OUT``); file discovery, reading and writing live in ``io``."""
