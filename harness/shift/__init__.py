"""Domain-shift measures between sets of feature vectors (e.g. intensity patches of two modality pairs)."""

from harness.shift.mmd import MMDResult, median_heuristic, mmd2, permutation_test

__all__ = ["MMDResult", "median_heuristic", "mmd2", "permutation_test"]
