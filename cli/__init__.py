"""The ``unlearnable`` command line (Typer): parses options, calls the library, renders results."""
