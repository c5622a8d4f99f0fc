"""Untrained, seeded detectors and random frames for the pyfunc tests, in an MLflow store of their own.

What those tests check is the pyfunc's mapping (frames in, detections out, how it is logged
and loaded), not training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from radlake.dicom.pixels import encode_pixels
from radlake.models.detector import REGRESSION_BIAS, build_detector, vertebra_spec


def fresh_store(root: Path, experiment: str) -> str:
    """Point MLflow at a sqlite store under ``root`` and create ``experiment`` there; returns its id."""
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())


def seeded_detector(*, image_size: int, detections_per_image: int, seed: int):
    """``(spec, model)``: a vertebra detector of ``image_size`` px, weights drawn with ``seed``, no score threshold.

    Untrained, FCOS's box distances come out of a ReLU over a zero-initialised conv, so some
    random draws give only empty boxes (dropped by the pyfunc): the distances start at one
    anchor size, as lesion detectors do.
    """
    spec = vertebra_spec(image_size=image_size, score_threshold=0.0, detections_per_image=detections_per_image)
    torch.manual_seed(seed)
    model = build_detector(spec)
    torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
    return spec, model


def random_frames(
    *, seed: int, shapes_px: Sequence[tuple[int, int]], max_value: int, pixel_spacing_mm: Sequence[float]
) -> pd.DataFrame:
    """Frames of uniform random values in ``[0, max_value)``, one per ``(height, width)``, as the pyfunc takes them."""
    rng = np.random.default_rng(seed)
    rows = []
    for height, width in shapes_px:
        buf, dtype = encode_pixels(rng.integers(0, max_value, (height, width)).astype(np.float32))
        rows.append(
            {"pixels": buf, "dtype": dtype, "height": height, "width": width, "pixel_spacing": list(pixel_spacing_mm)}
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SeededCase:
    """A store, a seeded detector and frames to feed it (:func:`seeded_case`)."""

    experiment_id: str
    spec: Any  # radlake.models.detector.DetectorSpec
    model: torch.nn.Module
    frames: pd.DataFrame


def seeded_case(root: Path, experiment: str) -> SeededCase:
    """:func:`fresh_store` under ``root``, a 128 px detector (5 boxes an image, weights of seed 0) and two
    frames of other sizes and anisotropic pixels (200 x 160 and 96 x 128 px, spacing 0.7 x 0.6 mm)."""
    experiment_id = fresh_store(root, experiment)
    spec, model = seeded_detector(image_size=128, detections_per_image=5, seed=0)
    frames = random_frames(seed=0, shapes_px=((200, 160), (96, 128)), max_value=4000, pixel_spacing_mm=(0.7, 0.6))
    return SeededCase(experiment_id, spec, model, frames)
