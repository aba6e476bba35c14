"""Photo files: ``photo`` (the decoded record, its error, the formats), ``files`` (discovery and the
guards on output paths), ``decode`` (faithful pixels), ``metadata`` (EXIF/XMP/ICC carried over),
``encode`` (writing each format back, checked), ``outdir`` (the output folder's journal, entry log
and lock). Atomic writes and hashes are ``unlearnable.data.storage``'s."""
