"""Spark schemas of the ``predictions`` and ``study_findings`` Delta tables.

Box conventions (as in :mod:`radlake.data.schema`)
--------------------------------------------------
* ``box_xyxy_px``: ``[x0, y0, x1, y1]`` in pixels of the stored frame, x = column,
  y = row, origin at the top-left **corner** of the frame.
* ``box_xyxy_mm``: the same box in mm in the image plane from the same corner
  (``x_mm = x_px * column spacing``, ``y_mm = y_px * row spacing``, ``pixel_spacing =
  [row, column]``); null when the frame has no pixel spacing.
* ``center_patient_mm``: the box centre in patient coordinates (LPS, mm) from
  ImagePositionPatient, ImageOrientationPatient and PixelSpacing (per frame for
  multi-frame instances); ``corners_patient_mm``: its four corners in the order
  top-left, top-right, bottom-right, bottom-left (x0y0, x1y0, x1y1, x0y1). Null without
  that geometry.

Model pair
----------
Every row names the two models behind it by pinned URI (``models:/name/version`` or
``runs:/...``), registered name, version and run id. A frame scored by two model pairs
has two rows; a re-run with the same pair adds none.
"""

from __future__ import annotations

from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StringType, StructType, TimestampType

from radlake.tables import struct_fields

__all__ = ["FINDING", "LEVEL_FINDING", "MODEL_PAIR_FIELDS", "PREDICTIONS", "RUN_COLUMNS", "STUDY_FINDINGS"]

_S, _I, _D = StringType(), IntegerType(), DoubleType()
_DOUBLES = ArrayType(DoubleType())

#: The geometry of one box (see the module docstring).
BOX_FIELDS = struct_fields(
    ("box_xyxy_px", _DOUBLES),
    ("box_xyxy_mm", _DOUBLES),
    ("center_patient_mm", _DOUBLES),
    ("corners_patient_mm", ArrayType(_DOUBLES)),
)

#: One vertebra found: its level (``L1`` …), decoded over the whole stack
#: (:mod:`radlake.score.stacks`), named only when ``level_status`` is ``identified``; null
#: when it is ``uncertain`` (nothing in view anchors the count: the level is never guessed);
#: ``level_probability`` is the posterior of the most probable level. Score, box.
VERTEBRA = StructType(
    struct_fields(("level", _S), ("level_status", _S), ("level_probability", _D), ("score", _D)) + BOX_FIELDS
)

#: One Schmorl's node found: the level of the vertebra crop it was found in and that level's
#: status (``parent_level`` null when ``uncertain``), the endplate (``superior`` /
#: ``inferior``, from the node's position in that vertebra and the image's head-to-feet
#: direction), score, box.
FINDING = StructType(
    struct_fields(("parent_level", _S), ("parent_level_status", _S), ("endplate", _S), ("score", _D)) + BOX_FIELDS
)

#: The two models behind a row: pinned URI, registered name and version, run id.
MODEL_PAIR_FIELDS = struct_fields(
    *(
        (f"{stage}_model_{what}", _S)
        for stage in ("vertebra", "schmorl")
        for what in ("uri", "name", "version", "run_id")
    )
)

#: One row per scored frame and model pair. Key: ``(sop_instance_uid, frame_index,
#: vertebra_model_uri, schmorl_model_uri)``. ``vertebra_threshold`` / ``schmorl_threshold``
#: are the lowest scores kept (given to the models as pyfunc params); ``crop_margin_fraction``
#: and ``crop_size`` the crop settings of the second stage. ``score_run_id`` is the MLflow
#: run of the scoring job.
PREDICTIONS = StructType(
    struct_fields(
        ("sop_instance_uid", _S),
        ("frame_index", _I),
        ("study_instance_uid", _S),
        ("series_instance_uid", _S),
        ("series_key", _S),
        ("slice_index", _I),
        ("plane", _S),
        ("height", _I),
        ("width", _I),
        ("pixel_spacing", _DOUBLES),
        ("vertebrae", ArrayType(VERTEBRA)),
        ("schmorl_nodes", ArrayType(FINDING)),
        ("n_vertebrae", _I),
        ("n_schmorl_nodes", _I),
        ("max_schmorl_score", _D),
    )
    + MODEL_PAIR_FIELDS
    + struct_fields(
        ("vertebra_threshold", _D),
        ("schmorl_threshold", _D),
        ("crop_margin_fraction", _D),
        ("crop_size", _I),
        ("score_run_id", _S),
        ("scored_at", TimestampType()),
    )
)

#: Columns of ``predictions`` set per scoring run in Spark, not by the executors.
RUN_COLUMNS = (
    *(f.name for f in MODEL_PAIR_FIELDS),
    "vertebra_threshold",
    "schmorl_threshold",
    "crop_margin_fraction",
    "crop_size",
    "score_run_id",
    "scored_at",
)

#: One level of a series with at least one Schmorl's node: the highest node score, the
#: number of nodes and of frames they were found on, the endplates, and the frame of the
#: best node (``best_sop_instance_uid``, ``best_frame_index``). Nodes in vertebrae whose
#: level is uncertain form one entry with ``level`` null and ``level_status`` ``uncertain``.
LEVEL_FINDING = StructType(
    struct_fields(
        ("level", _S),
        ("level_status", _S),
        ("max_score", _D),
        ("nodes", _I),
        ("frames", _I),
        ("endplates", ArrayType(_S)),
        ("best_sop_instance_uid", _S),
        ("best_frame_index", _I),
    )
)

#: One row per series stack and model pair (key ``(series_key, vertebra_model_uri,
#: schmorl_model_uri)``), rebuilt from ``predictions`` for the series a scoring run touched.
#: ``levels_with_nodes`` is ordered head to feet (C2 … S1, :data:`radlake.models.levels.LEVELS`)
#: and holds identified levels only; ``vertebrae_uncertain`` counts the vertebrae (on all
#: frames) whose level is uncertain, and ``nodes_level_uncertain`` the nodes in them.
STUDY_FINDINGS = StructType(
    struct_fields(
        ("study_instance_uid", _S),
        ("series_instance_uid", _S),
        ("series_key", _S),
        ("plane", _S),
        ("frames_scored", _I),
        ("vertebrae_uncertain", _I),
        ("nodes_level_uncertain", _I),
        ("levels_seen", ArrayType(_S)),
        ("levels_with_nodes", ArrayType(_S)),
        ("level_findings", ArrayType(LEVEL_FINDING)),
        ("max_score", _D),
    )
    + MODEL_PAIR_FIELDS
    + struct_fields(("score_run_id", _S), ("updated_at", TimestampType()))
)


#: What an executor reports for each study it exported as DICOM SR (:func:`radlake.score.sr.export_sr`):
#: the file it wrote (null: no frame with boxes and a known SOP class), the study's frames with boxes,
#: those it could use, and the measurement groups of each kind.
SR_EXPORTED = StructType(
    struct_fields(
        ("study_instance_uid", _S),
        ("path", _S),
        ("frames", _I),
        ("usable_frames", _I),
        ("vertebra_groups", _I),
        ("schmorl_groups", _I),
    )
)

#: The columns that name a model pair (pinned URIs): with the frame or the series, a row's key.
MODEL_PAIR_KEYS = ("vertebra_model_uri", "schmorl_model_uri")


def model_pair_filter(vertebra_uri: str, schmorl_uri: str):
    """The rows of ``predictions`` or ``study_findings`` that this model pair (pinned URIs) wrote, as a filter."""
    from pyspark.sql import functions as F

    return (F.col("vertebra_model_uri") == vertebra_uri) & (F.col("schmorl_model_uri") == schmorl_uri)
