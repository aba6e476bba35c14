"""Photo files: discovery and output guards, decoding, metadata, encoding, the output folder's
journal and lock."""
