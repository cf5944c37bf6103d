"""fian: the FIAN model (Qu et al., ACM MM 2020) for temporal language localization in videos.

Importing this package does no work: modules are imported where they are used.
"""

__version__ = "0.1.0"
