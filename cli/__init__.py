"""The ``codeindex`` command."""
