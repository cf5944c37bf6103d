"""fian: the FIAN model (Qu et al., ACM MM 2020) for temporal language localization in videos.

Importing this package does no work: modules are imported where they are used.
"""

__version__ = "0.1.0"

__all__ = ["Moment", "Predictor", "__version__"]


def __getattr__(name: str):  # lazy: ``from fian import Predictor`` imports torch only when asked
    if name in ("Predictor", "Moment"):
        from fian import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'fian' has no attribute {name!r}")
