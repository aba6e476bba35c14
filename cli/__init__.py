"""``unlearnable`` command line (installed as ``unlearnable.cli``): one small module per verb, one
progress renderer (``progress``), shared options and exit codes (``common``). Each command parses
options, builds a config, calls one library function and renders its result."""
