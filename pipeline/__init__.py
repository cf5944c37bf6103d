"""Stage commands (``python -m fian_pipeline.<stage> ...``) and the one stage registry."""
