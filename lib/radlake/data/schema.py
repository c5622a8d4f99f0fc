"""Spark schemas of the ``annotations`` and ``splits`` Delta tables.

Box conventions
---------------
Every box is ``xyxy``: ``[x0, y0, x1, y1]`` with x = column and y = row, origin at the
top-left **corner** of the image (torchvision's convention, not the pixel centre): a
box around pixel (row 0, column 0) alone is ``[0, 0, 1, 1]``.

* ``box_xyxy_px`` is in pixels of the stored frame, clipped to ``[0, image_width]`` x
  ``[0, image_height]`` and rounded to 1/1000 pixel.
* ``box_xyxy_mm`` is the same box in mm in the image plane, from the same origin:
  ``x_mm = x_px * column spacing`` and ``y_mm = y_px * row spacing``, where
  ``pixel_spacing = [row spacing, column spacing]`` (DICOM PixelSpacing order). The two
  spacings are never collapsed into one. Null when the frame has no pixel spacing.
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructType,
    TimestampType,
)

from radlake.tables import struct_fields

__all__ = ["ANNOTATIONS", "SPLITS", "VERTEBRA_CROPS"]

_S, _I, _B = StringType(), IntegerType(), BooleanType()
_DOUBLES = ArrayType(DoubleType())


#: One row per box (see the module docstring for the box columns).
#:
#: ``annotation_id`` is the sha256 of the frame, class, level names and rounded pixel box
#: (:func:`radlake.data.labels.annotation_id`); ``label_class`` is ``vertebra`` (with
#: ``level``) or ``schmorl_node`` (with ``parent_level`` and ``endplate``). Study and
#: series UIDs, ``image_height``, ``image_width`` (pixels) and ``pixel_spacing``
#: (``[row, column]`` mm) come from the ``images`` table, not from the labels file.
#: ``clipped`` marks a box moved back inside the image (it overhung by at most 1 pixel).
#: ``source_file`` is the labels file's name (no folder): re-importing a file of that
#: name replaces the boxes it brought for every frame it lists.
ANNOTATIONS = StructType(
    struct_fields(
        ("annotation_id", _S),
        ("sop_instance_uid", _S),
        ("frame_index", _I),
        ("study_instance_uid", _S),
        ("series_instance_uid", _S),
        ("label_class", _S),
        ("level", _S),
        ("parent_level", _S),
        ("endplate", _S),
        ("truncated", _B),
        ("box_xyxy_px", _DOUBLES),
        ("box_xyxy_mm", _DOUBLES),
        ("image_height", _I),
        ("image_width", _I),
        ("pixel_spacing", _DOUBLES),
        ("clipped", _B),
        ("source_file", _S),
        ("import_run_id", _S),
        ("imported_at", TimestampType()),
    )
)

#: One row per study: its split (``train``, ``val`` or ``test``), the seed that drew it and
#: the run that assigned it. A study keeps its row for good (only a forced rebuild rewrites).
SPLITS = StructType(
    struct_fields(
        ("study_instance_uid", _S),
        ("split", _S),
        ("split_seed", LongType()),
        ("assigned_at", TimestampType()),
        ("assign_run_id", _S),
    )
)

#: One row per vertebra crop (:mod:`radlake.models.crops` states the geometry).
#:
#: ``crop_id`` is the sha256 of the vertebra model URI, ``source``, frame and rounded
#: vertebra box. ``source`` is ``predicted`` (a box of the vertebra model, with its
#: ``vertebra_score``) or ``ground_truth`` (a labelled box, no score). Boxes in source
#: pixels of the frame: ``vertebra_box_xyxy_px`` and ``crop_box_xyxy_px`` (the region cut,
#: may reach outside the frame); ``crop_scale`` is crop pixels per source pixel.
#: ``pixels`` / ``dtype`` / ``height`` / ``width`` hold the ``size x size`` crop's values
#: (modality values, MONOCHROME1 inverted, resampled, zero padding; no transform columns:
#: :func:`radlake.dicom.pixels.frame_values` reads them as they are), ``pixel_spacing`` its
#: ``[row, column]`` mm. ``boxes_xyxy_px`` are the Schmorl's nodes inside the crop in crop
#: pixels (``labels`` 1 each) with their labelled ``node_parent_levels`` and
#: ``node_endplates``. The ``vertebra_model_*`` columns name the model version behind the
#: crop (``vertebra_model_uri`` pinned: ``models:/name/version`` or ``runs:/...``).
VERTEBRA_CROPS = StructType(
    struct_fields(
        ("crop_id", _S),
        ("sop_instance_uid", _S),
        ("frame_index", _I),
        ("study_instance_uid", _S),
        ("series_instance_uid", _S),
        ("source", _S),
        ("level", _S),
        ("vertebra_score", DoubleType()),
        ("vertebra_box_xyxy_px", _DOUBLES),
        ("crop_box_xyxy_px", _DOUBLES),
        ("crop_scale", DoubleType()),
        ("source_height", _I),
        ("source_width", _I),
        ("pixels", BinaryType()),
        ("dtype", _S),
        ("height", _I),
        ("width", _I),
        ("pixel_spacing", _DOUBLES),
        ("boxes_xyxy_px", ArrayType(_DOUBLES)),
        ("labels", ArrayType(_I)),
        ("node_parent_levels", ArrayType(_S)),
        ("node_endplates", ArrayType(_S)),
        ("vertebra_model_uri", _S),
        ("vertebra_model_name", _S),
        ("vertebra_model_version", _S),
        ("vertebra_model_run_id", _S),
        ("crops_run_id", _S),
        ("created_at", TimestampType()),
    )
)
