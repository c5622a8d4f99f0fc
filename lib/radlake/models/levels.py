"""Vertebral levels: the class vocabulary of the vertebra detector and a consistent labelling along the spine.

A detector that scores each box's level on its own may call two neighbours ``L3``.
:func:`assign_levels` instead labels the detected bodies of one sagittal image as a
run of consecutive levels: boxes are ordered cranio-caudally (by box centre row, as
sagittal MR is displayed head up) and the run's first level is the one that agrees
best with every box's level scores (the sum of the scores the detector gave each box
for the level the run assigns it).
"""

from __future__ import annotations

import numpy as np

#: Every level the vertebra detector knows, cranial to caudal. Class index = position + 1 (0 is background).
LEVELS: tuple[str, ...] = (
    *(f"C{i}" for i in range(2, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)),
    "S1",
)


def level_to_class(level: str) -> int:
    """Detector class index of ``level`` (1-based; 0 is background).

    Raises
    ------
    ValueError
        For a name that is not in :data:`LEVELS`.
    """
    try:
        return LEVELS.index(level) + 1
    except ValueError:
        raise ValueError(f"Unknown vertebral level {level!r}; known levels are {', '.join(LEVELS)}") from None


def class_to_level(index: int) -> str:
    """Inverse of :func:`level_to_class`."""
    return LEVELS[int(index) - 1]


def assign_levels(center_rows_px: np.ndarray, level_scores: np.ndarray) -> np.ndarray:
    """Consecutive levels for the detected bodies of one image.

    Parameters
    ----------
    center_rows_px
        ``(N,)`` box centre rows in pixels (larger = more caudal).
    level_scores
        ``(N, len(LEVELS))`` detector scores of each box for each level.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` level indices into :data:`LEVELS` (0-based), in the input order; boxes
        ordered cranio-caudally get consecutive levels.

    Examples
    --------
    >>> scores = np.zeros((3, len(LEVELS)))
    >>> scores[0, LEVELS.index("L4")] = 0.9   # the most caudal box looks like L4
    >>> scores[1, LEVELS.index("L2")] = 0.8   # the most cranial looks like L2
    >>> scores[2, LEVELS.index("L2")] = 0.4   # the middle one is ambiguous
    >>> [LEVELS[i] for i in assign_levels(np.array([300.0, 100.0, 200.0]), scores)]
    ['L4', 'L2', 'L3']
    """
    n = len(center_rows_px)
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    order = np.argsort(np.asarray(center_rows_px), kind="stable")
    ordered = np.asarray(level_scores, dtype=np.float64)[order]
    n_levels = ordered.shape[1]
    if n > n_levels:  # more bodies than levels: fall back to each box's best level
        return np.asarray(level_scores).argmax(axis=1)
    best_start, best_total = 0, -np.inf
    for start in range(n_levels - n + 1):
        total = ordered[np.arange(n), start + np.arange(n)].sum()
        if total > best_total:
            best_start, best_total = start, total
    out[order] = best_start + np.arange(n)
    return out
