"""``radlake review``: PNGs of a study's sagittal frames with the boxes found drawn on them.

One PNG per sagittal frame of the study (``images`` rows with plane ``SAGITTAL``), in
order of ``series_key`` and ``slice_index``. Frames without a prediction row (or with no
box) are written too, without boxes, so a missed vertebra is as visible as a found one.

Rendering (on the executors, :func:`render_frames` through ``mapInArrow``):

* **Window**: the frame's 1st to 99th percentile of modality values maps to grey levels
  0 to 255 (:func:`window_to_uint8`); values outside are clipped.
* **Size**: the stored pixel grid is kept (no resampling to square pixels: a frame whose
  row and column spacings differ looks stretched) and magnified by a whole number
  ``scale`` with nearest-neighbour so labels stay legible: ``scale = ceil(min_size /
  max(height, width))``, at least 1. The PNG is ``(width * scale) x (height * scale)``.
* **Boxes** (``box_xyxy_px``: pixels, x = column, y = row, origin at the top-left
  **corner** of the frame): a box ``[x0, y0, x1, y1]`` is outlined on the output pixels
  ``x0 * scale`` … ``x1 * scale - 1`` and ``y0 * scale`` … ``y1 * scale - 1`` (rounded), its
  outline inside the box. Vertebrae in :data:`VERTEBRA_COLOUR` with the label ``"L3 0.97"``
  (level, score) at their left; Schmorl's nodes in :data:`NODE_COLOUR` with the label
  ``"SN 0.84"`` at their right.

The driver only receives the PNG bytes and writes the files:
``<out_dir>/<series_key[:12]>_series<SeriesNumber>_slice<slice_index:03d>.png`` (the series
number from ``instances``; ``NA`` when unknown).

Example
-------
>>> summary = write_review(spark, config, study_uid="1.2.3", out_dir="/tmp/review")  # doctest: +SKIP
>>> summary.frames, summary.files[0]  # doctest: +SKIP
(5, '/tmp/review/3f2a9c1e0b7d_series2_slice000.png')
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, BooleanType, IntegerType, StringType, StructType

from radlake.config import RadlakeConfig
from radlake.dicom.geometry import Plane
from radlake.dicom.pixels import VALUE_COLUMNS
from radlake.ingest.schema import with_value_columns
from radlake.score.sr import NoPredictionsError, StudyNotFoundError, select_model_pairs
from radlake.summary import Summary
from radlake.tables import Table, struct_fields, table_ref

if TYPE_CHECKING:
    from PIL import Image
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "NODE_COLOUR",
    "REVIEW_RESULT",
    "VERTEBRA_COLOUR",
    "ReviewSummary",
    "central_slices",
    "render_frame",
    "render_frames",
    "review_file_name",
    "window_to_uint8",
    "write_review",
]

#: RGB outline and label colour of vertebrae (gold).
VERTEBRA_COLOUR = (255, 200, 0)
#: RGB outline and label colour of Schmorl's nodes (magenta).
NODE_COLOUR = (255, 0, 255)
#: Default smallest side, in output pixels, that a frame is magnified to (by a whole factor).
MIN_SIZE = 512
#: Percentiles of the display window.
WINDOW_PERCENTILES = (1.0, 99.0)
#: PNGs per Arrow batch sent back by :func:`render_frames` (a 512 px PNG is ~100-300 KB).
_FRAMES_PER_BATCH = 16

#: What :func:`render_frames` yields per frame: the file name, the PNG and what was drawn.
REVIEW_RESULT = StructType(
    struct_fields(
        ("file_name", StringType()),
        ("png", BinaryType()),
        ("sop_instance_uid", StringType()),
        ("frame_index", IntegerType()),
        ("series_key", StringType()),
        ("slice_index", IntegerType()),
        ("png_height", IntegerType()),
        ("png_width", IntegerType()),
        ("n_vertebrae", IntegerType()),
        ("n_schmorl_nodes", IntegerType()),
        ("has_prediction", BooleanType()),
    )
)


@dataclass(frozen=True)
class ReviewSummary(Summary):
    """What one ``radlake review`` run wrote.

    Attributes
    ----------
    study_instance_uid
        The study.
    out_dir
        Folder of the PNGs.
    files
        PNG paths, in order of series and slice.
    frames
        Frames written (one PNG each).
    frames_with_predictions
        Of which had a prediction row of the model pair (possibly without boxes).
    vertebrae, schmorl_nodes
        Boxes drawn.
    model_pair
        ``[vertebra_model_uri, schmorl_model_uri]`` whose boxes are drawn, or ``None`` when
        the study has no prediction row.
    seconds
        Wall-clock time.
    """

    study_instance_uid: str
    out_dir: str
    files: list[str]
    frames: int
    frames_with_predictions: int
    vertebrae: int
    schmorl_nodes: int
    model_pair: list[str] | None
    seconds: float


def review_file_name(series_key: str | None, series_number: int | None, slice_index: int | None) -> str:
    """PNG file name of one frame: series (stack key prefix and SeriesNumber) and slice.

    Examples
    --------
    >>> review_file_name("3f2a9c1e0b7d44aa", 2, 7)
    '3f2a9c1e0b7d_series2_slice007.png'
    >>> review_file_name(None, None, None)
    'unknown_seriesNA_sliceNA.png'
    """
    key = "".join(c for c in str(series_key or "unknown") if c.isalnum() or c in "-.")[:12] or "unknown"
    number = "NA" if series_number is None else str(int(series_number))
    index = "NA" if slice_index is None else f"{int(slice_index):03d}"
    return f"{key}_series{number}_slice{index}.png"


def window_to_uint8(image: np.ndarray, percentiles: Sequence[float] = WINDOW_PERCENTILES) -> np.ndarray:
    """Map an image's ``percentiles`` window to grey levels 0 … 255.

    Parameters
    ----------
    image
        ``(H, W)`` float modality values. Non-finite values count as the window's low end.
    percentiles
        ``(low, high)`` percentiles, ``0 <= low < high <= 100``.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` uint8. A flat image (window of zero width) is all 0.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``percentiles`` is not an increasing pair in [0, 100].

    Examples
    --------
    >>> window_to_uint8(np.array([[0.0, 50.0], [100.0, 1000.0]]), (0, 100)).tolist()
    [[0, 13], [26, 255]]
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"Argument 'image' must have shape (H, W), got {arr.shape}.")
    low_pct, high_pct = (float(p) for p in percentiles)
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"Argument 'percentiles' must be (low, high) with 0 <= low < high <= 100, got {percentiles}.")
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    low, high = np.percentile(finite, [low_pct, high_pct])
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(arr, nan=low, posinf=high, neginf=low) - low) / (high - low)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def display_scale(height: int, width: int, min_size: int = MIN_SIZE) -> int:
    """Whole magnification that brings the longer side of a frame to at least ``min_size`` pixels (>= 1)."""
    return max(1, math.ceil(int(min_size) / max(int(height), int(width), 1)))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _outline(box: Sequence[float], scale: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Inclusive output-pixel rectangle of ``box`` (xyxy px, corner origin), clipped to the image; None if empty."""
    height, width = shape
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    left, top = max(0, round(x0)), max(0, round(y0))
    right, bottom = min(width, round(x1)) - 1, min(height, round(y1)) - 1
    if right < left or bottom < top:
        return None
    return left, top, right, bottom


def _label(draw, text: str, anchor_xy: tuple[int, int], colour, font, *, side: str, shape: tuple[int, int]) -> None:
    """``text`` on a black patch beside a box (``side`` ``left`` or ``right`` of ``anchor_xy``), kept in the image."""
    height, width = shape
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 2, bottom - top + 2
    x, y = anchor_xy
    x = x - w - 2 if side == "left" else x + 2
    x = min(max(0, x), max(0, width - w))
    y = min(max(0, y - h // 2), max(0, height - h))
    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(0, 0, 0))
    draw.text((x + 1 - left, y + 1 - top), text, fill=colour, font=font)


def render_frame(
    image: np.ndarray,
    vertebrae: Sequence[Mapping[str, Any]] = (),
    schmorl_nodes: Sequence[Mapping[str, Any]] = (),
    *,
    scale: int = 1,
    percentiles: Sequence[float] = WINDOW_PERCENTILES,
) -> Image.Image:
    """Draw one frame with its boxes.

    Parameters
    ----------
    image
        ``(H, W)`` float32 modality values (as :func:`radlake.dicom.pixels.frame_values` gives).
    vertebrae
        Mappings with ``box_xyxy_px`` (``[x0, y0, x1, y1]``, pixels of ``image``, x = column,
        y = row, origin at its top-left corner), ``level`` and ``score`` (:data:`radlake.score.schema.VERTEBRA`).
    schmorl_nodes
        Mappings with ``box_xyxy_px`` and ``score`` (:data:`radlake.score.schema.FINDING`).
    scale
        Whole magnification (nearest-neighbour), >= 1.
    percentiles
        Display window (see :func:`window_to_uint8`).

    Returns
    -------
    PIL.Image.Image
        RGB image of ``(W * scale, H * scale)`` pixels (PIL size order: width, height).

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``scale`` < 1.
    """
    from PIL import Image, ImageDraw

    if int(scale) < 1:
        raise ValueError(f"Argument 'scale' must be a whole number >= 1, got {scale}.")
    scale = int(scale)
    grey = window_to_uint8(image, percentiles)
    if scale > 1:
        grey = np.repeat(np.repeat(grey, scale, axis=0), scale, axis=1)
    canvas = Image.fromarray(np.ascontiguousarray(np.stack([grey] * 3, axis=-1)), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    shape = (grey.shape[0], grey.shape[1])
    line = max(1, scale // 2)
    font = _font(max(10, min(24, 4 * scale + 4)))
    for items, colour, side in ((vertebrae, VERTEBRA_COLOUR, "left"), (schmorl_nodes, NODE_COLOUR, "right")):
        for item in items:
            rect = _outline(item["box_xyxy_px"], scale, shape)
            if rect is None:
                continue
            draw.rectangle(rect, outline=colour, width=line)
            name = str(item.get("level") or "?") if side == "left" else "SN"
            score = item.get("score")
            text = name if score is None else f"{name} {float(score):.2f}"
            anchor = (rect[0], (rect[1] + rect[3]) // 2) if side == "left" else (rect[2], (rect[1] + rect[3]) // 2)
            _label(draw, text, anchor, colour, font, side=side, shape=shape)
    return canvas


def render_frames(batches: Iterator[pa.RecordBatch], *, min_size: int = MIN_SIZE) -> Iterator[pa.RecordBatch]:
    """Executor side: frames (pixels and boxes) → one PNG each (:data:`REVIEW_RESULT`).

    Input columns: ``sop_instance_uid``, ``frame_index``, ``series_key``, ``slice_index``,
    ``series_number``, the pixel columns (:data:`radlake.dicom.pixels.VALUE_COLUMNS`),
    ``vertebrae`` and ``schmorl_nodes`` (null for a frame without a prediction row).
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    from radlake.dicom.pixels import row_values

    schema = to_arrow_schema(REVIEW_RESULT)
    for batch in batches:
        rows: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            image = row_values(row)
            vertebrae = row.get("vertebrae") or []
            nodes = row.get("schmorl_nodes") or []
            canvas = render_frame(image, vertebrae, nodes, scale=display_scale(row["height"], row["width"], min_size))
            buffer = io.BytesIO()
            canvas.save(buffer, format="PNG")
            rows.append(
                {
                    "file_name": review_file_name(row["series_key"], row.get("series_number"), row["slice_index"]),
                    "png": buffer.getvalue(),
                    "sop_instance_uid": row["sop_instance_uid"],
                    "frame_index": row["frame_index"],
                    "series_key": row["series_key"],
                    "slice_index": row["slice_index"],
                    "png_height": canvas.height,
                    "png_width": canvas.width,
                    "n_vertebrae": len(vertebrae),
                    "n_schmorl_nodes": len(nodes),
                    "has_prediction": row.get("vertebrae") is not None or row.get("schmorl_nodes") is not None,
                }
            )
            if len(rows) == _FRAMES_PER_BATCH:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)
                rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)


def central_slices(frames: DataFrame, max_slices: int) -> DataFrame:
    """The ``max_slices`` central frames (by ``slice_index``) of each series stack."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    stack = Window.partitionBy("series_key")
    ordered = stack.orderBy("slice_index", "sop_instance_uid", "frame_index")
    start = F.greatest(F.lit(0), F.floor((F.col("_n") - max_slices) / 2))
    return (
        frames.withColumn("_n", F.count("*").over(stack))
        .withColumn("_i", F.row_number().over(ordered) - 1)
        .where((F.col("_i") >= start) & (F.col("_i") < start + max_slices))
        .drop("_n", "_i")
    )


def write_review(
    spark: SparkSession,
    config: RadlakeConfig,
    *,
    study_uid: str,
    out_dir: str | os.PathLike[str],
    model_pair: Sequence[str] | None = None,
    max_slices: int | None = None,
    min_size: int = MIN_SIZE,
) -> ReviewSummary:
    """Write PNGs of a study's sagittal frames with the vertebrae and Schmorl's nodes found.

    See the module docstring for the window, size, colours and file names.

    Parameters
    ----------
    spark
        The Spark session.
    config
        Locates ``images``, ``predictions`` and ``instances``.
    study_uid
        StudyInstanceUID of the study.
    out_dir
        Folder of the PNGs (created if missing; files of the same name are replaced).
    model_pair
        ``(vertebra_model_uri, schmorl_model_uri)`` whose boxes to draw; default the pair
        that scored this study last (latest ``scored_at``).
    max_slices
        At most this many frames per series stack, the central ones by ``slice_index``
        (the spine is mid-sagittal); default every frame.
    min_size
        Frames are magnified by a whole factor until their longer side is at least this
        many pixels (1: never).

    Returns
    -------
    ReviewSummary
        Files written and counts.

    Raises
    ------
    ValueError
        If ``study_uid`` is empty, ``max_slices`` or ``min_size`` < 1, or ``model_pair`` is
        not two non-empty strings.
    NoPredictionsError
        If the ``predictions`` table does not exist (run ``radlake score``).
    StudyNotFoundError
        If the study has no sagittal frame in ``images``, or ``model_pair`` is given and
        did not score the study.

    Examples
    --------
    >>> write_review(spark, config, study_uid="1.2.3", out_dir="review", max_slices=3)  # doctest: +SKIP
    """
    started = time.perf_counter()
    _check_review_arguments(study_uid, max_slices, min_size)
    predictions_ref = table_ref(config, Table.PREDICTIONS)
    if not predictions_ref.exists(spark):
        raise NoPredictionsError(
            f"Table 'predictions' does not exist yet at {predictions_ref.location}: run `radlake score` first."
        )
    frames = _sagittal_frames(spark, config, study_uid)
    boxes, pair = _boxes_of_pair(predictions_ref.read(spark), study_uid, model_pair)
    series_numbers = (
        table_ref(config, Table.INSTANCES)
        .read(spark)
        .where(F.col("study_instance_uid") == study_uid)
        .select("sop_instance_uid", "series_number")
        .dropDuplicates(["sop_instance_uid"])
    )
    if max_slices is not None:
        frames = central_slices(frames, int(max_slices))
    work = frames.join(boxes, _FRAME_KEYS, "left").join(series_numbers, "sop_instance_uid", "left")
    rendered = work.mapInArrow(partial(render_frames, min_size=int(min_size)), REVIEW_RESULT)
    summary = _write_pngs(rendered, Path(out_dir))
    return ReviewSummary(
        study_instance_uid=study_uid,
        model_pair=pair,
        seconds=round(time.perf_counter() - started, 2),
        **summary,
    )


_FRAME_KEYS = ["sop_instance_uid", "frame_index"]


def _check_review_arguments(study_uid: str, max_slices: int | None, min_size: int) -> None:
    if not isinstance(study_uid, str) or not study_uid:
        raise ValueError(f"Argument 'study_uid' must be a non-empty string, got {study_uid!r}.")
    if max_slices is not None and int(max_slices) < 1:
        raise ValueError(f"Argument 'max_slices' must be >= 1 or None, got {max_slices}.")
    if int(min_size) < 1:
        raise ValueError(f"Argument 'min_size' must be >= 1, got {min_size}.")


def _sagittal_frames(spark: SparkSession, config: RadlakeConfig, study_uid: str) -> DataFrame:
    """The study's sagittal frames in ``images`` with their pixels and place in their stack."""
    frames = (
        with_value_columns(table_ref(config, Table.IMAGES).read(spark))
        .where((F.col("study_instance_uid") == study_uid) & (F.col("plane") == Plane.SAGITTAL.value))
        .select(*_FRAME_KEYS, "series_key", "slice_index", *VALUE_COLUMNS)
    )
    if frames.select(*_FRAME_KEYS).limit(1).count() == 0:
        raise StudyNotFoundError(
            f"Study '{study_uid}' has no sagittal frame in table 'images': check the UID (ingested studies are "
            "listed by `radlake tables`)."
        )
    return frames


def _boxes_of_pair(
    predictions: DataFrame, study_uid: str, model_pair: Sequence[str] | None
) -> tuple[DataFrame, list[str] | None]:
    """Per frame, the boxes the chosen model pair found in the study, and that pair (None: never scored)."""
    study_rows = predictions.where(F.col("study_instance_uid") == study_uid)
    chosen = select_model_pairs(study_rows, model_pair)
    pair_row = chosen.select("vertebra_model_uri", "schmorl_model_uri").limit(1).collect()
    if model_pair is not None and not pair_row:
        raise StudyNotFoundError(
            f"Study '{study_uid}' was not scored by model pair ({model_pair[0]}, {model_pair[1]})."
        )
    pair = [pair_row[0][0], pair_row[0][1]] if pair_row else None
    return chosen.select(*_FRAME_KEYS, "vertebrae", "schmorl_nodes").dropDuplicates(_FRAME_KEYS), pair


def _write_pngs(rendered: DataFrame, target: Path) -> dict:
    """Each rendered frame into ``target`` (written whole, then renamed); the files and counts."""
    target.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, int, str]] = []
    with_predictions = n_vertebrae = n_nodes = 0
    for row in rendered.toLocalIterator(prefetchPartitions=False):
        path = target / row["file_name"]
        partial_path = path.with_name(path.name + ".partial")
        partial_path.write_bytes(row["png"])
        os.replace(partial_path, path)
        written.append((row["series_key"] or "", row["slice_index"] or 0, str(path)))
        with_predictions += bool(row["has_prediction"])
        n_vertebrae += int(row["n_vertebrae"] or 0)
        n_nodes += int(row["n_schmorl_nodes"] or 0)
    return {
        "out_dir": str(target),
        "files": [p for _, _, p in sorted(written)],
        "frames": len(written),
        "frames_with_predictions": with_predictions,
        "vertebrae": n_vertebrae,
        "schmorl_nodes": n_nodes,
    }
