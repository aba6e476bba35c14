"""Report renderers: self-contained HTML over the JSON the verify workflows write."""
