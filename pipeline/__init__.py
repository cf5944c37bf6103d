"""Stage commands (``python -m pipeline.<stage> ...``) and the one stage registry."""
