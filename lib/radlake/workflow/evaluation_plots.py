"""The figures of an evaluation run: FROC curve, level confusion, headline figures per study.

Each function returns a matplotlib figure (Agg backend, no display) for ``mlflow.log_figure``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from radlake.train.metrics import FROC_RATES, LESION_IOU, ImageResult, match  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


def close(figure: Figure) -> None:
    """Free a figure once logged."""
    plt.close(figure)


def froc_curve(nodes: list[ImageResult]) -> Figure:
    """Lesion sensitivity against false positives per frame (log axis), with the FROC read-out rates marked."""
    fig, ax = plt.subplots(figsize=(5, 4))
    n_true = sum(len(r.true_boxes) for r in nodes)
    if n_true and nodes:
        scores = np.concatenate([r.pred_scores for r in nodes]) if nodes else np.zeros(0)
        hits = np.concatenate([match(r, -np.inf, LESION_IOU)[1] for r in nodes]) if nodes else np.zeros(0, bool)
        order = np.argsort(-scores, kind="stable")
        tp, fp = np.cumsum(hits[order]), np.cumsum(~hits[order])
        ax.plot(np.r_[1e-3, fp / len(nodes)], np.r_[0.0, tp / n_true], color="tab:blue")
    for rate in FROC_RATES:
        ax.axvline(rate, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(0.1, 10)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positives per frame")
    ax.set_ylabel(f"sensitivity (IoU >= {LESION_IOU})")
    ax.set_title(f"Schmorl's nodes end to end ({n_true} labelled)", fontsize=9)
    fig.tight_layout()
    return fig


def level_confusion(vertebrae: list[ImageResult]) -> Figure:
    """True level (rows) against the level named for the found vertebra (columns; ``?`` = uncertain)."""
    from radlake.models.levels import LEVELS

    pairs = []
    for r in vertebrae:
        truth_to_pred, _ = match(r, 0.0)
        for t, p in enumerate(truth_to_pred):
            if p >= 0:
                pairs.append((int(r.true_classes[t]), int(r.pred_classes[p])))
    used = sorted({t for t, _ in pairs} | {p for _, p in pairs if p > 0})
    labels = [LEVELS[i - 1] for i in used]
    columns = [*used, 0]
    matrix = np.zeros((len(used), len(columns)), dtype=np.int64)
    for t, p in pairs:
        matrix[used.index(t), columns.index(p)] += 1
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(columns), 1 + 0.4 * max(1, len(used))))
    if not used:  # no vertebra found: an image of no rows has no extent to draw (matplotlib warns)
        ax.text(0.5, 0.5, "none found", ha="center", va="center", transform=ax.transAxes, fontsize=7)
        matrix = np.zeros((1, len(columns)), dtype=np.int64)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(columns)), [*labels, "?"], fontsize=7)
    ax.set_yticks(range(len(used)), labels, fontsize=7)
    ax.set_xlabel("level named")
    ax.set_ylabel("true level")
    ax.set_title("Found vertebrae: levels", fontsize=9)
    fig.tight_layout()
    return fig


def per_study(frame: pd.DataFrame, bars: dict[str, tuple[str, float]]) -> Figure:
    """One panel per headline figure: its value in each study, with the bar drawn."""
    keys = [k for k in bars if k in frame.columns]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.6 * max(1, len(keys))), squeeze=False)
    x = np.arange(len(frame))
    for ax, key in zip(axes[:, 0], keys, strict=True):
        ax.bar(x, frame[key].to_numpy(dtype=float), color="tab:blue")
        ax.axhline(bars[key][1], color="tab:red", lw=1)
        ax.set_ylabel(key, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_xticks(x, [str(s)[-6:] for s in frame["study_instance_uid"]], fontsize=6, rotation=90)
    axes[0, 0].set_title("Per study (red: the bar)", fontsize=9)
    fig.tight_layout()
    return fig
