"""Datasets: annotation parsers, feature stores, text, synthetic data and the preloaded loader."""
