"""Small, local data sets for the bilevel examples: scikit-learn's bundled 8×8 digits.

``sklearn.datasets.load_digits()`` reads a file shipped inside the scikit-learn package
(1797 images, 64 pixels with values 0…16, 10 classes); nothing is downloaded.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "load_digits_split", "one_hot"]


class Split(NamedTuple):
    """Train / validation / test arrays. ``X*`` are ``(n, 64)`` pixels scaled to [0, 1];
    ``y*`` are integer labels in ``0 … n_classes − 1`` (re-indexed when ``classes`` is given)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n,)`` integer labels to an ``(n, n_classes)`` float64 one-hot matrix."""
    return np.eye(n_classes)[np.asarray(y)]


def load_digits_split(
    n_train: int, n_val: int, n_test: int = 0, *, classes: tuple[int, ...] | None = None,
    seed: int = 0,
) -> Split:
    """Random disjoint subsets of the scikit-learn digits (pixels / 16, float64).

    Args:
      n_train, n_val, n_test: sizes of the three subsets (their sum must not exceed the number
        of images of the selected classes).
      classes: keep only these digits, relabelled ``0 … len(classes) − 1`` in the given order
        (e.g. ``(3, 8)`` for a binary task); all ten by default.
      seed: seed of the random permutation.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    if classes is not None:
        keep = np.isin(y, classes)
        X, y = X[keep], y[keep]
        y = np.array([classes.index(int(label)) for label in y], dtype=np.int64)
    total = n_train + n_val + n_test
    if total > len(y):
        raise ValueError(f"asked for {total} images, only {len(y)} available")
    perm = np.random.default_rng(seed).permutation(len(y))[:total]
    a, b = n_train, n_train + n_val
    n_classes = 10 if classes is None else len(classes)
    return Split(X[perm[:a]], y[perm[:a]], X[perm[a:b]], y[perm[a:b]], X[perm[b:]], y[perm[b:]],
                 n_classes)
