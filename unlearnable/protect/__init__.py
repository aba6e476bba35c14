"""Protection workflows, one module per input kind: ``dataset`` (``unlearnable protect-dataset``)
and ``photos`` (``unlearnable protect``)."""
