"""Import box annotations into the ``annotations`` Delta table, checked against ``images``.

Two file formats are read (see :func:`read_labels_file`):

* the synthetic archive's ``labels.json`` (format ``radlake-synth-labels``, see
  :mod:`radlake.synth.labels`): ``vertebrae`` become class ``vertebra`` with their
  ``level``; ``nodes`` become class ``schmorl_node`` with ``parent_level`` and ``endplate``;
* COCO-style JSON keyed by SOPInstanceUID::

    {"images": [{"id": 1, "sop_instance_uid": "1.2.3", "frame_index": 0, "width": 384, "height": 384}],
     "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h],
                      "level": "L3"}],                       # or "parent_level" + "endplate"
     "categories": [{"id": 1, "name": "vertebra"}, {"id": 2, "name": "schmorl_node"}]}

  ``bbox`` is COCO's ``[x, y, width, height]`` in pixels; ``frame_index`` defaults to 0,
  ``width`` and ``height`` are optional (checked against the stored frame when given).

Boxes are ``xyxy`` in pixels with x = column and y = row, origin at the top-left
**corner** of the image (a box around pixel (row 0, column 0) alone is ``[0, 0, 1, 1]``).

Validation and what is kept
---------------------------
Every box is joined to ``images`` on (``sop_instance_uid``, ``frame_index``), reading only
metadata columns, never the pixels. A box is **rejected**, with its place in the file and
a reason, when its frame is not in ``images``, when the file gives the frame another size
than the stored one, when it is degenerate (``x1 <= x0`` or ``y1 <= y0``), when it extends
more than 1 pixel outside the image, when it is malformed (not four finite numbers, unknown
category, unknown level or endplate), or when it repeats an earlier box of the file.
Boxes overhanging by at most 1 pixel are clipped to the image (``clipped`` is true and so
is ``truncated``). Rejected boxes are never written; they are counted and listed in
:class:`LabelsImportSummary`.

Re-imports
----------
Rows are keyed by ``annotation_id``, a sha256 of the frame, class, level names and the
pixel box rounded to 1/1000 pixel (:func:`annotation_id`), and written with one Delta
MERGE (one commit) per import:

* a box already in the table is left as it is (whichever file brought it first), so
  importing the same file twice adds nothing (and commits nothing);
* the file is the truth for every frame it lists: rows that an earlier file **of the same
  name** (``source_file``, the name without its folder) brought for a frame listed in this
  file, and that this file no longer holds, are deleted in the same MERGE. So a corrected
  file replaces its own boxes frame by frame; boxes from other files are never touched,
  and frames the file does not list keep their boxes. A frame listed without boxes (the
  synth format lists every sagittal image; COCO ``images`` may have no annotations) loses
  that source's boxes. A box rejected in the corrected file is therefore removed, not kept
  from the earlier import.

Example
-------
>>> from radlake.config import load_config
>>> from radlake.spark import get_spark
>>> cfg = load_config()                                                         # doctest: +SKIP
>>> summary = import_labels(get_spark(cfg), cfg, "archive/labels.json")         # doctest: +SKIP
>>> summary.inserted, summary.rejected                                          # doctest: +SKIP
(1843, 0)

"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, DoubleType, IntegerType, StringType, StructField, StructType

from radlake.config import RadlakeConfig
from radlake.data.schema import ANNOTATIONS
from radlake.errors import ConfigError, RadlakeError
from radlake.models.levels import LEVELS
from radlake.spark import local_frame, persist, unpersist
from radlake.summary import Summary
from radlake.tables import Table, table_ref
from radlake.vocabulary import Endplate, LabelClass

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "CLIP_TOLERANCE_PX",
    "LabelBox",
    "LabelClass",
    "LabelsError",
    "LabelsFormat",
    "LabelsFormatError",
    "LabelsImportSummary",
    "ParsedLabels",
    "RejectedLabel",
    "annotation_id",
    "import_labels",
    "read_labels_file",
]

#: A box may overhang the image by at most this many pixels (then it is clipped); more is rejected.
CLIP_TOLERANCE_PX = 1.0
#: Box coordinates are rounded to this many decimals of a pixel (in the id and in the table).
BOX_DECIMALS = 3
_SYNTH_FORMAT = "radlake-synth-labels"  # radlake.synth.labels.FORMAT (not imported: it loads the renderer)
_SYNTH_VERSIONS = (1,)
_ENDPLATES = tuple(e.value for e in Endplate)


class LabelsError(RadlakeError):
    """A labels file cannot be imported: it is missing, or the tables it needs are."""


class LabelsFormatError(LabelsError):
    """A labels file is neither the radlake synth format nor COCO-style JSON keyed by SOPInstanceUID."""


class LabelsFormat(str, Enum):
    """The labels file formats :func:`read_labels_file` reads."""

    SYNTH = "radlake-synth"
    """``labels.json`` of :func:`radlake.synth.generate_archive`."""
    COCO = "coco"
    """COCO-style ``images`` / ``annotations`` / ``categories`` keyed by SOPInstanceUID."""


@dataclass(frozen=True)
class LabelBox:
    """One box read from a labels file (not yet checked against ``images``).

    Attributes
    ----------
    item: str
        Where it is in the file, e.g. ``images[1.2.3].vertebrae[2]`` or ``annotations[5] (id 17)``.
    sop_instance_uid, frame_index
        The frame it is drawn on (``frame_index`` zero-based).
    label_class: LabelClass
    level, parent_level, endplate: str | None
        Vertebral level of a vertebra; parent level and endplate of a Schmorl's node.
    truncated: bool | None
        The file's flag for an object cut by the image edge (None when the file does not say).
    xyxy: tuple[float, float, float, float]
        ``(x0, y0, x1, y1)`` in pixels, x = column, y = row, origin at the image's top-left
        corner, rounded to 1/1000 pixel.
    file_width, file_height: int | None
        The frame size in pixels that the file states, if any.
    """

    item: str
    sop_instance_uid: str
    frame_index: int
    label_class: LabelClass
    level: str | None
    parent_level: str | None
    endplate: str | None
    truncated: bool | None
    xyxy: tuple[float, float, float, float]
    file_width: int | None = None
    file_height: int | None = None


@dataclass(frozen=True)
class RejectedLabel:
    """A box (or image entry) of the file that was not imported, and why."""

    item: str
    sop_instance_uid: str | None
    frame_index: int | None
    reason: str


@dataclass(frozen=True)
class ParsedLabels:
    """What :func:`read_labels_file` found.

    Attributes
    ----------
    format: LabelsFormat
    boxes: list[LabelBox]
        Well-formed boxes, in file order.
    frames: list[tuple[str, int]]
        Every (SOPInstanceUID, frame index) the file lists, with or without boxes: the
        frames whose boxes from this source an import replaces.
    rejected: list[RejectedLabel]
        Malformed entries.
    """

    format: LabelsFormat
    boxes: list[LabelBox]
    frames: list[tuple[str, int]]
    rejected: list[RejectedLabel]


@dataclass(frozen=True)
class LabelsImportSummary(Summary):
    """What one :func:`import_labels` call did.

    ``boxes_in_file`` = ``accepted`` + ``rejected``; ``accepted`` = ``inserted`` + ``unchanged``.
    ``replaced`` counts rows of earlier imports of the same file name deleted because this
    file no longer holds them. ``by_class`` counts accepted boxes per ``label_class``.
    """

    run_id: str
    source_file: str
    path: str
    format: str
    frames_in_file: int
    boxes_in_file: int
    accepted: int
    inserted: int
    unchanged: int
    replaced: int
    clipped: int
    without_spacing: int
    rejected: int
    by_class: dict[str, int]
    rejections: list[RejectedLabel] = field(default_factory=list)
    seconds: float = 0.0


def annotation_id(
    sop_instance_uid: str,
    frame_index: int,
    label_class: LabelClass | str,
    xyxy: Sequence[float],
    *,
    level: str | None = None,
    parent_level: str | None = None,
    endplate: str | None = None,
) -> str:
    """The ``annotation_id`` of a box: hex sha256 of its frame, class, level names and rounded box.

    Parameters
    ----------
    sop_instance_uid, frame_index
        The frame (``frame_index`` zero-based).
    label_class
        ``vertebra`` or ``schmorl_node``.
    xyxy
        ``(x0, y0, x1, y1)`` pixels (x = column, y = row, origin at the image's top-left
        corner) as stored, i.e. clipped to the image; rounded here to 1/1000 pixel.
    level, parent_level, endplate
        Missing values hash as empty strings.

    Returns
    -------
    str
        64 hex characters; the same value the import computes in Spark.

    Examples
    --------
    >>> annotation_id("1.2.3", 0, "vertebra", [10, 20, 30, 40], level="L3")[:12]
    'fac082058c09'
    """
    class_ = LabelClass(label_class)
    if len(xyxy) != 4:
        raise ValueError(f"Argument 'xyxy' must have 4 values (x0, y0, x1, y1), got {len(xyxy)}.")
    parts = [
        sop_instance_uid,
        str(int(frame_index)),
        class_.value,
        level or "",
        parent_level or "",
        endplate or "",
        *(f"{round(float(v), BOX_DECIMALS) + 0.0:.{BOX_DECIMALS}f}" for v in xyxy),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def read_labels_file(file: str | os.PathLike[str]) -> ParsedLabels:
    """Read a labels file in the radlake synth format or COCO style (see the module docstring).

    Parameters
    ----------
    file
        Path of the JSON file (a local path or a mounted Volume path).

    Returns
    -------
    ParsedLabels
        Well-formed boxes in pixels (xyxy, x = column, y = row, origin at the top-left
        corner), the frames listed and the malformed entries.

    Raises
    ------
    LabelsError
        If the file does not exist.
    LabelsFormatError
        If it is not JSON, or is in neither format (the message names the file and both formats).
    """
    path = Path(file)
    if not path.is_file():
        raise LabelsError(f"Labels file '{path}' does not exist.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsFormatError(f"Labels file '{path}' is not valid JSON ({exc}); {_EXPECTED}") from exc
    if isinstance(doc, dict) and doc.get("format") == _SYNTH_FORMAT:
        if doc.get("version") not in _SYNTH_VERSIONS:
            raise LabelsFormatError(
                f"Labels file '{path}' is {_SYNTH_FORMAT} version {doc.get('version')!r}; "
                f"radlake reads version {', '.join(map(str, _SYNTH_VERSIONS))}."
            )
        if not isinstance(doc.get("images"), dict):
            raise LabelsFormatError(f"Labels file '{path}' ({_SYNTH_FORMAT}) has no 'images' mapping.")
        return _parse_synth(doc["images"])
    if isinstance(doc, dict) and all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        return _parse_coco(doc)
    if isinstance(doc, dict):
        found = f"an object with keys {sorted(doc)[:8]}"
    else:
        found = f"a JSON {type(doc).__name__}"
    raise LabelsFormatError(f"Labels file '{path}' is in no supported format: found {found}; {_EXPECTED}")


_EXPECTED = (
    f'expected a radlake synth labels.json ("format": "{_SYNTH_FORMAT}") or COCO-style JSON with '
    "'images' (each with a sop_instance_uid), 'annotations' (bbox [x, y, w, h] in pixels) and 'categories' "
    f"({', '.join(c.value for c in LabelClass)}) lists."
)


def import_labels(
    spark: SparkSession, config: RadlakeConfig, file: str | os.PathLike[str] | None = None
) -> LabelsImportSummary:
    """Check a labels file's boxes against ``images`` and MERGE them into ``annotations``.

    Parameters
    ----------
    spark
        The Delta-enabled session.
    config
        Supplies the table locations and, when ``file`` is None, ``labels.file``.
    file
        The labels file (synth ``labels.json`` or COCO style); default ``labels.file``.

    Returns
    -------
    LabelsImportSummary
        Counts of this import and every rejected box with its reason.

    Raises
    ------
    ConfigError
        If no file is given and ``labels.file`` is unset.
    LabelsError
        If the file or the ``images`` table does not exist.
    LabelsFormatError
        If the file is in neither supported format.
    """
    started = time.perf_counter()
    file = file if file is not None else config.labels.file
    if not file:
        raise ConfigError("No labels file given: pass --file or set labels.file.")
    parsed = read_labels_file(file)
    images_ref = table_ref(config, Table.IMAGES)
    if not images_ref.exists(spark):
        raise LabelsError(
            f"Table 'images' ({images_ref.location}) does not exist: run `radlake ingest` before importing labels."
        )
    source_file = Path(file).name
    run_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    ref = table_ref(config, Table.ANNOTATIONS)
    ref.ensure(spark, ANNOTATIONS)

    actions = _label_actions(spark, parsed, images_ref.read(spark), ref.read(spark), source_file, run_id, now)
    stats = _action_stats(actions)
    rejected = list(parsed.rejected) + [
        RejectedLabel(r["_item"], r["sop_instance_uid"], r["frame_index"], r["_reason"])
        for r in sorted(stats["rejects"], key=lambda r: r["_seq"])
    ]
    counts = {a: int(stats[a] or 0) for a in ("insert", "keep", "delete")}
    _write_actions(spark, ref, actions, counts)
    unpersist(actions)
    n_accepted = counts["insert"] + counts["keep"]
    return LabelsImportSummary(
        run_id=run_id,
        source_file=source_file,
        path=str(file),
        format=parsed.format.value,
        frames_in_file=len(set(parsed.frames)),
        boxes_in_file=n_accepted + len(rejected),
        accepted=n_accepted,
        inserted=counts["insert"],
        unchanged=counts["keep"],
        replaced=counts["delete"],
        clipped=int(stats["clipped"] or 0),
        without_spacing=int(stats["without_spacing"] or 0),
        rejected=len(rejected),
        by_class={c.value: int(stats[c.value] or 0) for c in LabelClass},
        rejections=rejected,
        seconds=round(time.perf_counter() - started, 2),
    )


def _label_actions(
    spark: SparkSession, parsed, images: DataFrame, stored: DataFrame, source_file: str, run_id: str, now: datetime
) -> DataFrame:
    """Every box of the file with its action, and the stored rows this file no longer holds (cached).

    Actions: reject (with ``_reason``), insert (a new id), keep (the id is already in the
    table), and delete for the rows that an earlier file of this name brought for the
    frames listed here but that this file no longer holds.
    """
    checked = _check_boxes(spark, parsed.boxes, images)
    target = stored.select("annotation_id", "source_file", "sop_instance_uid", "frame_index")
    frames = local_frame(spark, parsed.frames, "sop_instance_uid string, frame_index int")
    boxes = checked.join(
        target.select("annotation_id", F.lit(True).alias("_exists")), "annotation_id", "left"
    ).withColumns(
        {
            "_action": F.when(F.col("_reason").isNotNull(), "reject")
            .when(F.col("_exists"), "keep")
            .otherwise("insert"),
            "source_file": F.lit(source_file),
            "import_run_id": F.lit(run_id),
            "imported_at": F.lit(now),
        }
    )
    stale = (
        target.where(F.col("source_file") == source_file)
        .join(frames, ["sop_instance_uid", "frame_index"], "left_semi")
        .join(checked.where("_reason IS NULL").select("annotation_id"), "annotation_id", "left_anti")
        .select("annotation_id", F.lit("delete").alias("_action"))
    )
    return persist(boxes.unionByName(stale, allowMissingColumns=True))  # uncached where the session cannot


def _action_stats(actions: DataFrame):
    """One pass over the actions: how many of each, clipped, without spacing, per class, and the rejects."""
    ok = F.col("_action").isin("insert", "keep")
    return actions.agg(
        *(F.sum((F.col("_action") == a).cast("int")).alias(a) for a in ("insert", "keep", "delete")),
        F.sum((ok & F.col("clipped")).cast("int")).alias("clipped"),
        F.sum((ok & F.col("box_xyxy_mm").isNull()).cast("int")).alias("without_spacing"),
        *(F.sum((ok & (F.col("label_class") == c.value)).cast("int")).alias(c.value) for c in LabelClass),
        F.collect_list(
            F.when(
                F.col("_action") == "reject", F.struct("_seq", "_item", "sop_instance_uid", "frame_index", "_reason")
            )
        ).alias("rejects"),
    ).first()


def _write_actions(spark: SparkSession, ref, actions: DataFrame, counts: dict) -> None:
    """One MERGE of the inserts and deletes (insert-only when nothing is deleted: Delta's cheaper path)."""
    columns = ANNOTATIONS.fieldNames()
    if counts["delete"]:
        ref.merge(
            spark,
            actions.where("_action IN ('insert', 'delete')"),
            keys=["annotation_id"],
            delete_when="s._action = 'delete'",
            insert_when="s._action = 'insert'",
            insert_columns=columns,
        )
    elif counts["insert"]:  # insert-only MERGE: no files rewritten
        ref.merge(spark, actions.where("_action = 'insert'"), keys=["annotation_id"], insert_columns=columns)


# --------------------------------------------------------------------------- parsing


class _Malformed(ValueError):
    """An entry of the file that cannot become a box (becomes a RejectedLabel)."""


def _parse_synth(images: dict[str, Any]) -> ParsedLabels:
    boxes: list[LabelBox] = []
    rejected: list[RejectedLabel] = []
    frames: list[tuple[str, int]] = []
    for sop, entry in images.items():
        where = f"images[{sop}]"
        if not isinstance(entry, dict):
            rejected.append(RejectedLabel(where, sop, 0, "image entry is not an object"))
            continue
        frames.append((sop, 0))
        size = {"file_width": _opt_int(entry.get("columns")), "file_height": _opt_int(entry.get("rows"))}
        for kind, label_class in (("vertebrae", LabelClass.VERTEBRA), ("nodes", LabelClass.SCHMORL_NODE)):
            for i, item in enumerate(entry.get(kind) or []):
                here = f"{where}.{kind}[{i}]"
                try:
                    if not isinstance(item, dict):
                        raise _Malformed("box entry is not an object")
                    boxes.append(
                        _box(here, sop, 0, label_class, item, _xyxy(item.get("xyxy"), "xyxy", coco=False), **size)
                    )
                except _Malformed as exc:
                    rejected.append(RejectedLabel(here, sop, 0, str(exc)))
    return ParsedLabels(LabelsFormat.SYNTH, boxes, frames, rejected)


def _parse_coco(doc: dict[str, Any]) -> ParsedLabels:
    rejected: list[RejectedLabel] = []
    categories: dict[Any, str] = {}
    for cat in doc["categories"]:
        if isinstance(cat, dict) and "id" in cat:
            categories[cat["id"]] = str(cat.get("name"))
    images: dict[Any, tuple[str, int, int | None, int | None]] = {}
    frames: list[tuple[str, int]] = []
    for i, image in enumerate(doc["images"]):
        here = f"images[{i}]"
        sop = image.get("sop_instance_uid") if isinstance(image, dict) else None
        try:
            if not isinstance(sop, str) or not sop:
                raise _Malformed("image has no 'sop_instance_uid' string")
            frame = image.get("frame_index", 0)
            if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
                raise _Malformed(f"'frame_index' must be an integer >= 0, got {frame!r}")
            if "id" not in image:
                raise _Malformed("image has no 'id'")
            width, height = _opt_int(image.get("width")), _opt_int(image.get("height"))
        except _Malformed as exc:
            rejected.append(RejectedLabel(here, sop if isinstance(sop, str) else None, None, str(exc)))
            continue
        images[image["id"]] = (sop, frame, width, height)
        frames.append((sop, frame))
    boxes: list[LabelBox] = []
    for i, ann in enumerate(doc["annotations"]):
        here = f"annotations[{i}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        image = images.get(ann.get("image_id")) if isinstance(ann, dict) else None
        try:
            if not isinstance(ann, dict):
                raise _Malformed("annotation is not an object")
            if image is None:
                raise _Malformed(f"image_id {ann.get('image_id')!r} is not the id of a valid entry of 'images'")
            name = categories.get(ann.get("category_id"))
            if name is None:
                raise _Malformed(f"category_id {ann.get('category_id')!r} is not in 'categories'")
            try:
                label_class = LabelClass(name)
            except ValueError:
                known = ", ".join(c.value for c in LabelClass)
                raise _Malformed(f"category {name!r} is not one of {known}") from None
            sop, frame, width, height = image
            xyxy = _xyxy(ann.get("bbox"), "bbox", coco=True)
            boxes.append(_box(here, sop, frame, label_class, ann, xyxy, file_width=width, file_height=height))
        except _Malformed as exc:
            rejected.append(RejectedLabel(here, image[0] if image else None, image[1] if image else None, str(exc)))
    return ParsedLabels(LabelsFormat.COCO, boxes, frames, rejected)


def _box(
    item: str,
    sop: str,
    frame: int,
    label_class: LabelClass,
    entry: dict[str, Any],
    xyxy: tuple[float, float, float, float],
    *,
    file_width: int | None,
    file_height: int | None,
) -> LabelBox:
    """A LabelBox from an entry's names; raises _Malformed for an unknown level or endplate."""
    level = parent = endplate = None
    if label_class is LabelClass.VERTEBRA:
        level = _level(entry.get("level"), "level")
    else:
        parent = _level(entry.get("parent_level"), "parent_level")
        endplate = entry.get("endplate")
        if endplate is not None and endplate not in _ENDPLATES:
            raise _Malformed(f"'endplate' must be one of {', '.join(_ENDPLATES)}, got {endplate!r}")
    truncated = entry.get("truncated")
    return LabelBox(
        item=item,
        sop_instance_uid=sop,
        frame_index=frame,
        label_class=label_class,
        level=level,
        parent_level=parent,
        endplate=endplate,
        truncated=bool(truncated) if truncated is not None else None,
        xyxy=xyxy,
        file_width=file_width,
        file_height=file_height,
    )


def _level(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if value not in LEVELS:
        raise _Malformed(f"'{key}' {value!r} is not a vertebral level ({LEVELS[0]} ... {LEVELS[-1]})")
    return str(value)


def _xyxy(value: Any, key: str, *, coco: bool) -> tuple[float, float, float, float]:
    """Pixels xyxy from ``xyxy`` or COCO ``bbox`` ([x, y, w, h]), rounded to 1/1000 pixel."""
    if (
        not isinstance(value, list | tuple)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise _Malformed(f"'{key}' must be 4 finite numbers, got {value!r}")
    a, b, c, d = (float(v) for v in value)
    if coco:
        c, d = a + c, b + d
    return tuple(round(v, BOX_DECIMALS) + 0.0 for v in (a, b, c, d))  # type: ignore[return-value]


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- checks in Spark

_BOX_ROWS = StructType(
    [
        StructField("_seq", IntegerType()),
        StructField("_item", StringType()),
        StructField("sop_instance_uid", StringType()),
        StructField("frame_index", IntegerType()),
        StructField("label_class", StringType()),
        StructField("level", StringType()),
        StructField("parent_level", StringType()),
        StructField("endplate", StringType()),
        StructField("_truncated", BooleanType()),
        StructField("_x0", DoubleType()),
        StructField("_y0", DoubleType()),
        StructField("_x1", DoubleType()),
        StructField("_y1", DoubleType()),
        StructField("_file_width", IntegerType()),
        StructField("_file_height", IntegerType()),
    ]
)


def _check_boxes(spark: SparkSession, boxes: list[LabelBox], images: DataFrame) -> DataFrame:
    """Boxes joined to their frame: ``_reason`` (null when kept) and the annotation columns.

    Only metadata columns of ``images`` are read (never ``pixels``).
    """
    rows = [
        (
            i,
            b.item,
            b.sop_instance_uid,
            b.frame_index,
            b.label_class.value,
            b.level,
            b.parent_level,
            b.endplate,
            b.truncated,
            *b.xyxy,
            b.file_width,
            b.file_height,
        )
        for i, b in enumerate(boxes)
    ]
    meta = images.select(
        "sop_instance_uid",
        "frame_index",
        "study_instance_uid",
        "series_instance_uid",
        F.col("height").alias("image_height"),
        F.col("width").alias("image_width"),
        "pixel_spacing",
        F.lit(True).alias("_known"),
    )
    x0, y0, x1, y1 = (F.col(c) for c in ("_x0", "_y0", "_x1", "_y1"))
    cx0, cy0, cx1, cy1 = _clipped_box_columns()
    row_mm, col_mm = F.col("pixel_spacing")[0], F.col("pixel_spacing")[1]
    has_spacing = (F.size("pixel_spacing") == 2) & (row_mm > 0) & (col_mm > 0)
    clipped = (cx0 != x0) | (cy0 != y0) | (cx1 != x1) | (cy1 != y1)
    # Valid boxes sort first within an id, so a valid box ranked > 1 repeats an earlier valid box.
    first_seq = Window.partitionBy("annotation_id").orderBy(F.col("_reason").isNotNull(), "_seq")
    checked = (
        local_frame(spark, rows, _BOX_ROWS)
        .join(meta, ["sop_instance_uid", "frame_index"], "left")
        .withColumns(
            {
                "_reason": _reject_reason_column(),
                "box_xyxy_px": F.array(cx0, cy0, cx1, cy1),
                "box_xyxy_mm": F.when(
                    has_spacing, F.array(cx0 * col_mm, cy0 * row_mm, cx1 * col_mm, cy1 * row_mm)
                ).otherwise(F.lit(None).cast("array<double>")),
                "clipped": clipped,
            }
        )
        .withColumns(
            {
                "truncated": F.when(F.col("clipped"), F.lit(True)).otherwise(F.col("_truncated")),
                "annotation_id": _annotation_id_column(),
            }
        )
    )
    duplicate = F.format_string("duplicate of %s (same frame, class, levels and box)", F.col("_first_item"))
    return (
        checked.withColumns({"_rank": F.row_number().over(first_seq), "_first_item": F.first("_item").over(first_seq)})
        .withColumn("_reason", F.coalesce("_reason", F.when(F.col("_rank") > 1, duplicate)))
        .drop("_rank", "_first_item")
    )


def _clipped_box_columns() -> tuple[Column, Column, Column, Column]:
    """The box ``_x0, _y0, _x1, _y1`` (pixels xyxy) clipped to the ``image_width`` x ``image_height`` frame."""
    x0, y0, x1, y1 = (F.col(c) for c in ("_x0", "_y0", "_x1", "_y1"))
    w, h = F.col("image_width"), F.col("image_height")
    return (
        F.greatest(x0, F.lit(0.0)),
        F.greatest(y0, F.lit(0.0)),
        F.least(x1, w.cast("double")),
        F.least(y1, h.cast("double")),
    )


def _reject_reason_column() -> Column:
    """Why a box joined to its frame is rejected (null when it is kept), in words."""
    x0, y0, x1, y1 = (F.col(c) for c in ("_x0", "_y0", "_x1", "_y1"))
    w, h = F.col("image_width"), F.col("image_height")
    cx0, cy0, cx1, cy1 = _clipped_box_columns()
    tol = F.lit(CLIP_TOLERANCE_PX)
    box_text = F.format_string("[%s, %s, %s, %s]", x0, y0, x1, y1)
    return (
        F.when(
            F.col("_known").isNull(),
            F.format_string(
                "no frame %s of SOPInstanceUID %s in the images table", F.col("frame_index"), F.col("sop_instance_uid")
            ),
        )
        .when(
            (F.col("_file_width").isNotNull() & (F.col("_file_width") != w))
            | (F.col("_file_height").isNotNull() & (F.col("_file_height") != h)),
            F.format_string(
                "the file gives the frame as %sx%s (width x height) pixels but it is stored as %sx%s",
                F.coalesce(F.col("_file_width").cast("string"), F.lit("?")),
                F.coalesce(F.col("_file_height").cast("string"), F.lit("?")),
                w,
                h,
            ),
        )
        .when(
            (x1 <= x0) | (y1 <= y0),
            F.format_string("degenerate box %s (pixels xyxy): needs x1 > x0 and y1 > y0", box_text),
        )
        .when(
            (x0 < -tol) | (y0 < -tol) | (x1 > w + tol) | (y1 > h + tol),
            F.format_string(
                "box %s (pixels xyxy) extends more than %s pixel outside the %sx%s (width x height) image",
                box_text,
                tol,
                w,
                h,
            ),
        )
        .when(
            (cx1 <= cx0) | (cy1 <= cy0), F.format_string("box %s (pixels xyxy) has no area inside the image", box_text)
        )
    )


def _annotation_id_column() -> Column:
    """Spark twin of :func:`annotation_id` on the clipped ``box_xyxy_px`` (rounded to 1/1000 pixel)."""
    coords = [
        F.col("box_xyxy_px")[i].cast(f"decimal(24,{BOX_DECIMALS})").cast("string") for i in range(4)
    ]  # exact decimal text, no locale or exponent
    parts = [
        F.col("sop_instance_uid"),
        F.col("frame_index").cast("string"),
        F.col("label_class"),
        *(F.coalesce(F.col(c), F.lit("")) for c in ("level", "parent_level", "endplate")),
        *coords,
    ]
    return F.sha2(F.concat_ws("|", *parts), 256)
