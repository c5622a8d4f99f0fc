"""``radlake export-sr``: the findings in ``predictions`` as DICOM Comprehensive 3D SR (TID 1500).

One SR document is written per study (and model pair): a TID 1500 *Imaging Measurement
Report* (:class:`highdicom.sr.MeasurementReport`) in a Comprehensive 3D SR instance
(:class:`highdicom.sr.Comprehensive3DSR`), in the study of the images it describes.

Document structure
------------------
* **Observation context** (TID 1002): a device observer named ``radlake``, whose model
  name states both detectors (registered name and version) and whose UID is derived
  from the two pinned model URIs.
* **Procedure reported**: LOINC *MRI unspecified body region* (``25056-3``, CID 100)
  for MR, *CT unspecified body region* for CT, else SNOMED *Imaging procedure*.
* **One measurement group** (TID 1410, :class:`~highdicom.sr.PlanarROIMeasurementsAndQualitativeEvaluations`)
  **per vertebra found**: finding category *Anatomical structure*, finding type
  *Vertebra*, finding site the vertebra's level (e.g. SNOMED *L3 vertebra*), the box as
  a closed ``POLYLINE`` image region on the source instance, the detector's score as a
  measurement (:data:`DETECTOR_SCORE`, unit ``1``), and the vertebra model as the group's
  algorithm (name, version, and the pinned URI, MLflow run and score threshold as
  parameters; the score's own measurement does not repeat it).
* **One measurement group per Schmorl's node**, built the same way: finding category
  *Morphologically abnormal structure*, finding type *Schmorl's node* (private code,
  below), finding site the level of the vertebra it was found in, with the endplate
  (``superior`` / ``inferior``) as topographical modifier, and the Schmorl's-node model
  as the algorithm.
* **A level that is not identified is not named.** When the stack's decoding left a
  vertebra's level uncertain (nothing in view anchors the count), its group has no
  finding site and carries the qualitative evaluation :data:`LEVEL_IDENTIFICATION` =
  :data:`LEVEL_UNCERTAIN`; so do the groups of the nodes found in it.

Why a group of its own for each node: a TID 1410 group holds **exactly one** image region
(highdicom's ``referenced_region`` is a single :class:`~highdicom.sr.ImageRegion`), and a
TID 1500 measurement group cannot nest another group, so a node's box cannot sit inside its
vertebra's group. Two sibling groups that share the finding site keep every box addressable
(``MeasurementReport.get_planar_roi_measurement_groups(finding_type=..., finding_site=...)``).

Coordinates
-----------
Each image region is a 2D ``SCOORD`` (not an ``ImageRegion3D``) because it references the
source image itself: SOP Class and SOP Instance UID and, for an instance of more than one
frame, the frame number (``frame_index + 1``; DICOM frame numbers are 1-based). Its graphic data are
(column, row) pairs in pixels of that frame with the origin at the top-left **corner** of
the top-left pixel (PS3.3 C.18.6.1.1), which is the convention of ``box_xyxy_px``, so the
five points are ``(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)`` with no half-pixel
shift. DICOM stores them as 32-bit floats (VR FL). Patient coordinates (LPS, mm) of the
same box are in ``predictions.corners_patient_mm``.

Codes
-----
Standard concepts come from pydicom's offline dictionary :data:`pydicom.sr.codedict.codes`:
vertebral levels C2 to L5 (``codes.SCT.<level>Vertebra``), *Vertebra*, *Anatomical
structure*, *Morphologically abnormal structure*, *Superior* / *Inferior* (SCT), *Device*
(DCM), *no units* (UCUM) and the CID 100 procedure codes. Concepts that dictionary lacks
are not given made-up SNOMED numbers; they use the private coding scheme
:data:`PRIVATE_SCHEME` (``99RADLAKE``, declared in the SR's Coding Scheme Identification
Sequence): :data:`SCHMORL_NODE`, :data:`S1_VERTEBRA` (the dictionary has *Sacrum*, not the
first sacral vertebra) and :data:`DETECTOR_SCORE` (the detector's confidence in [0, 1]; it
is not a calibrated probability, so DCM *Probability* would overstate it).

Data flow
---------
Spark picks the model pair (per study the pair with the latest ``scored_at``, unless
``model_pair`` is given), keeps the frames with at least one box and joins each frame's
instance row (SOP class, frame count, de-identified ``header_json``): one row per study
(boxes, UIDs and header JSON; never pixels). The executors build and write the documents
(:func:`_export_studies`, the studies spread round-robin over twice as many tasks as task
slots): highdicom's SR construction is pure Python, about 4 s for a study of 15 frames and
130 groups on one core here, so a driver that built every study in turn would take hours
over an archive. The output folder must therefore be one the executors write to (a Volume
on Databricks, a local path on one machine); the driver collects one small row per study.
The evidence datasets that give the SR its patient and study attributes are rebuilt from
``header_json``: the archive is never read again, so the SR carries exactly the
de-identified values of the ingested instances.

UIDs are derived (``pydicom.uid.generate_uid(entropy_srcs=...)``): the SR series from the
study and model pair, the SR instance from those and its content, so exporting the same
predictions again writes the same UIDs into the same file, and new content gets a new UID.

Example
-------
>>> summary = export_sr(spark, config, study_uid="1.2.3")  # doctest: +SKIP
>>> summary.files  # doctest: +SKIP
['/…/.radlake/sr/1.2.3/SR_3f2a9c1e.dcm']
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from radlake.config import RadlakeConfig
from radlake.errors import RadlakeError
from radlake.models.levels import LEVELS
from radlake.summary import Summary
from radlake.tables import Table, table_ref
from radlake.vocabulary import Endplate

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "DETECTOR_SCORE",
    "LEVEL_IDENTIFICATION",
    "LEVEL_UNCERTAIN",
    "PRIVATE_SCHEME",
    "S1_VERTEBRA",
    "SCHMORL_NODE",
    "NoPredictionsError",
    "SrExportSummary",
    "StudyNotFoundError",
    "build_sr",
    "export_sr",
    "level_code",
    "select_model_pairs",
]


class NoPredictionsError(RadlakeError):
    """The ``predictions`` table does not exist yet (``radlake score`` has not run)."""


class StudyNotFoundError(RadlakeError):
    """The study asked for has no rows to export or review (for the model pair asked for)."""


#: Coding scheme designator of radlake's private codes ("99" prefix: PS3.16 8.2, local schemes).
PRIVATE_SCHEME = "99RADLAKE"
#: Finding type of a Schmorl's node (intravertebral disc herniation through an endplate).
SCHMORL_NODE = Code("SCHMORL_NODE", PRIVATE_SCHEME, "Schmorl's node")
#: The first sacral vertebra (pydicom's dictionary has *Sacrum* only).
S1_VERTEBRA = Code("S1_VERTEBRA", PRIVATE_SCHEME, "S1 vertebra")
#: A detector's confidence score in [0, 1] for one box (unit: UCUM ``1``, no units).
DETECTOR_SCORE = Code("DETECTOR_SCORE", PRIVATE_SCHEME, "Detector score")
#: Qualitative evaluation of how a vertebra's level was identified ...
LEVEL_IDENTIFICATION = Code("LEVEL_IDENTIFICATION", PRIVATE_SCHEME, "Vertebral level identification")
#: ... its value when the level is uncertain: not named, never guessed.
LEVEL_UNCERTAIN = Code("LEVEL_UNCERTAIN", PRIVATE_SCHEME, "Level uncertain: no anchor vertebra in view")

#: Finding-site code of each level of :data:`radlake.models.levels.LEVELS`.
LEVEL_CODES: dict[str, Code] = {
    **{level: getattr(codes.SCT, f"{level}Vertebra") for level in LEVELS if level != "S1"},
    "S1": S1_VERTEBRA,
}
#: Topographical modifier of a node's finding site, by ``endplate``.
ENDPLATE_CODES: dict[str, Code] = {
    Endplate.SUPERIOR.value: codes.SCT.Superior,
    Endplate.INFERIOR.value: codes.SCT.Inferior,
}

#: Series number given to the SR series (high, so that viewers list it after the images).
SR_SERIES_NUMBER = 9901
_PAIR_KEYS = ("vertebra_model_uri", "schmorl_model_uri")
#: Patient and study attributes highdicom reads from the first evidence dataset (type 2: may be empty).
_TYPE2_EVIDENCE = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class SrExportSummary(Summary):
    """What one ``radlake export-sr`` run wrote.

    Attributes
    ----------
    out_dir
        Folder of the SR files (one sub-folder per study).
    files
        Paths of the SR files written, one per study.
    studies
        Studies with an SR written.
    studies_without_findings
        Studies whose chosen model pair found no vertebra and no node (no SR: TID 1500
        needs at least one measurement group).
    measurement_groups
        Measurement groups written in all files (``vertebra_groups + schmorl_groups``).
    vertebra_groups, schmorl_groups
        Of which vertebrae and Schmorl's nodes.
    frames_skipped
        Frames with boxes whose instance is missing from ``instances`` (not exported).
    seconds
        Wall-clock time of the export.
    """

    out_dir: str
    files: list[str]
    studies: int
    studies_without_findings: int
    measurement_groups: int
    vertebra_groups: int
    schmorl_groups: int
    frames_skipped: int
    seconds: float


def level_code(level: str | None) -> Code | None:
    """Finding-site code of a vertebral level (``"L3"`` → SCT 36470004 *L3 vertebra*).

    Parameters
    ----------
    level
        A name of :data:`radlake.models.levels.LEVELS` (``C2`` … ``S1``).

    Returns
    -------
    pydicom.sr.coding.Code | None
        The SNOMED CT code from :data:`pydicom.sr.codedict.codes`, :data:`S1_VERTEBRA` for
        ``S1``, or ``None`` for a missing or unknown level.

    Examples
    --------
    >>> level_code("L3").value, level_code("S1").scheme_designator, level_code("X9")
    ('36470004', '99RADLAKE', None)
    """
    return LEVEL_CODES.get(level) if level else None


def _check_pair(model_pair: Sequence[str] | None) -> tuple[str, str] | None:
    if model_pair is None:
        return None
    pair = tuple(model_pair)
    if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
        raise ValueError(
            "Argument 'model_pair' must be (vertebra_model_uri, schmorl_model_uri), two non-empty strings, "
            f"got {model_pair!r}."
        )
    return pair[0], pair[1]


def select_model_pairs(predictions: DataFrame, model_pair: Sequence[str] | None = None) -> DataFrame:
    """Keep the rows of one model pair per study.

    Parameters
    ----------
    predictions
        Rows with the :data:`radlake.score.schema.PREDICTIONS` columns (or at least the
        study UID, the two model URIs and ``scored_at``).
    model_pair
        ``(vertebra_model_uri, schmorl_model_uri)`` to keep; ``None``: per study the pair
        whose latest ``scored_at`` is the most recent (ties broken by the URIs, largest
        first, so the choice is deterministic).

    Returns
    -------
    pyspark.sql.DataFrame
        The rows of the chosen pair of every study (lazy).

    Raises
    ------
    ValueError
        If ``model_pair`` is not two non-empty strings.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    pair = _check_pair(model_pair)
    if pair is not None:
        return predictions.where((F.col(_PAIR_KEYS[0]) == pair[0]) & (F.col(_PAIR_KEYS[1]) == pair[1]))
    keys = ["study_instance_uid", *_PAIR_KEYS]
    last = predictions.groupBy(*keys).agg(F.max("scored_at").alias("_last"))
    order = Window.partitionBy("study_instance_uid").orderBy(
        F.col("_last").desc_nulls_last(), *(F.col(k).desc() for k in _PAIR_KEYS)
    )
    latest = last.withColumn("_rank", F.row_number().over(order)).where("_rank = 1").select(*keys)
    return predictions.join(latest, keys, "left_semi")


def _predictions(spark: SparkSession, config: RadlakeConfig) -> DataFrame:
    ref = table_ref(config, Table.PREDICTIONS)
    if not ref.exists(spark):
        raise NoPredictionsError(
            f"Table 'predictions' does not exist yet at {ref.location}: run `radlake score` first."
        )
    return ref.read(spark)


def _study_missing_message(predictions: DataFrame, study_uid: str, pair: tuple[str, str] | None) -> str:
    """Why ``study_uid`` has nothing to export: absent, or scored only by other model pairs."""
    from pyspark.sql import functions as F

    rows = predictions.where(F.col("study_instance_uid") == study_uid).select(*_PAIR_KEYS).distinct().collect()
    if not rows:
        return f"Study '{study_uid}' has no rows in 'predictions': check the UID, or run `radlake score` first."
    pairs = "; ".join(f"({r[0]}, {r[1]})" for r in rows)
    if pair is not None:
        return f"Study '{study_uid}' was not scored by model pair ({pair[0]}, {pair[1]}); it was scored by: {pairs}."
    return f"Study '{study_uid}' has no frames to export."


#: Columns of ``instances`` an SR needs besides the SOP instance UID (no pixels).
_INSTANCE_COLUMNS = ("sop_class_uid", "number_of_frames", "modality", "series_number", "patient_id", "header_json")


def _study_documents(spark: SparkSession, config: RadlakeConfig, chosen: DataFrame) -> DataFrame:
    """One row per study and model pair: the frames with boxes, each with its instance's header (no pixels)."""
    from pyspark.sql import functions as F

    from radlake.score.schema import MODEL_PAIR_FIELDS

    instances = (
        table_ref(config, Table.INSTANCES)
        .read(spark)
        .select("sop_instance_uid", *_INSTANCE_COLUMNS)
        .dropDuplicates(["sop_instance_uid"])
    )
    with_boxes = (F.size("vertebrae") > 0) | (F.size("schmorl_nodes") > 0)
    frame_columns = [
        "sop_instance_uid",
        "frame_index",
        "series_instance_uid",
        "series_key",
        "slice_index",
        "vertebrae",
        "schmorl_nodes",
        *_INSTANCE_COLUMNS,
    ]
    keys = ["study_instance_uid", *_PAIR_KEYS]
    others = [f.name for f in MODEL_PAIR_FIELDS if f.name not in _PAIR_KEYS]
    return (
        chosen.withColumn("_has_boxes", F.coalesce(with_boxes, F.lit(False)))
        .join(instances, "sop_instance_uid", "left")
        .groupBy(*keys)
        .agg(
            *(F.first(c, ignorenulls=True).alias(c) for c in others),
            F.first("vertebra_threshold", ignorenulls=True).alias("vertebra_threshold"),
            F.first("schmorl_threshold", ignorenulls=True).alias("schmorl_threshold"),
            F.max("scored_at").alias("scored_at"),
            F.collect_list(F.when(F.col("_has_boxes"), F.struct(*frame_columns))).alias("frames"),
        )
    )


def export_sr(
    spark: SparkSession,
    config: RadlakeConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    study_uid: str | None = None,
    model_pair: Sequence[str] | None = None,
) -> SrExportSummary:
    """Write one DICOM Comprehensive 3D SR (TID 1500) per study from ``predictions``.

    See the module docstring for the document's structure, codes and coordinates.

    Parameters
    ----------
    spark
        The Spark session.
    config
        Locates ``predictions`` and ``instances``; ``storage.work_dir`` gives the default
        output folder.
    out_dir
        Output folder; default ``<storage.work_dir>/sr``. Files are
        ``<out_dir>/<StudyInstanceUID>/SR_<8 hex digits of the model pair>.dcm`` (an export
        again of the same study and pair replaces its file).
    study_uid
        Export this study only; default every study in ``predictions``.
    model_pair
        ``(vertebra_model_uri, schmorl_model_uri)``, the pinned URIs as written in
        ``predictions``; default per study the pair scored last (latest ``scored_at``).

    Returns
    -------
    SrExportSummary
        Files written and counts.

    Raises
    ------
    ValueError
        If ``model_pair`` is not two non-empty strings.
    NoPredictionsError
        If the ``predictions`` table does not exist (run ``radlake score``).
    StudyNotFoundError
        If ``study_uid`` is given but has no rows in ``predictions`` (for ``model_pair``,
        when given).

    Examples
    --------
    >>> export_sr(spark, config)                                   # doctest: +SKIP
    >>> export_sr(spark, config, study_uid="1.2.3", out_dir="/tmp/sr",
    ...           model_pair=("models:/vertebra/3", "models:/schmorl/2"))  # doctest: +SKIP
    """
    from pyspark.sql import functions as F

    started = time.perf_counter()
    pair = _check_pair(model_pair)
    if study_uid is not None and (not isinstance(study_uid, str) or not study_uid):
        raise ValueError(f"Argument 'study_uid' must be a non-empty string, got {study_uid!r}.")
    predictions = _predictions(spark, config)
    rows = predictions
    if study_uid is not None:
        rows = rows.where(F.col("study_instance_uid") == study_uid)
    documents = _study_documents(spark, config, select_model_pairs(rows, pair))
    target = Path(out_dir) if out_dir is not None else config.storage.work_dir / "sr"

    exported = _export_studies(spark, documents, target).collect()
    if study_uid is not None and not exported:
        raise StudyNotFoundError(_study_missing_message(predictions, study_uid, pair))
    files = sorted(r["path"] for r in exported if r["path"] is not None)
    vertebra_groups = sum(r["vertebra_groups"] for r in exported)
    schmorl_groups = sum(r["schmorl_groups"] for r in exported)
    return SrExportSummary(
        out_dir=str(target),
        files=files,
        studies=len(files),
        studies_without_findings=sum(r["frames"] == 0 for r in exported),
        measurement_groups=vertebra_groups + schmorl_groups,
        vertebra_groups=vertebra_groups,
        schmorl_groups=schmorl_groups,
        frames_skipped=sum(r["frames"] - r["usable_frames"] for r in exported),
        seconds=round(time.perf_counter() - started, 2),
    )


def _export_studies(spark: SparkSession, documents: DataFrame, target: Path) -> DataFrame:
    """The study documents built and written as SR files on the executors; one row of ``SR_EXPORTED`` each.

    Round-robin over ``2 x`` the task slots, so that a few large studies do not all land in
    the one partition a small aggregation ends up in.
    """
    from functools import partial

    from radlake.score.schema import SR_EXPORTED
    from radlake.spark import default_parallelism

    tasks = 2 * default_parallelism(spark)
    return documents.repartition(tasks).mapInArrow(partial(_export_batches, target=str(target)), SR_EXPORTED)


def _export_batches(batches: Iterable[Any], *, target: str) -> Iterable[Any]:
    """Executor side of :func:`_export_studies`: each study document of each Arrow batch, exported."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    from radlake.score.schema import SR_EXPORTED

    schema, folder = to_arrow_schema(SR_EXPORTED), Path(target)
    for batch in batches:
        rows = [_export_document(document, folder) for document in batch.to_pylist()]
        yield pa.RecordBatch.from_pylist(rows, schema=schema)


def _export_document(document: dict[str, Any], target: Path) -> dict[str, Any]:
    """Build and write one study's SR (if a frame has boxes and a known SOP class); its row of ``SR_EXPORTED``."""
    frames = [f for f in document.pop("frames") or [] if f is not None]
    usable = [f for f in frames if f.get("sop_class_uid")]
    path = None
    if usable:
        path = target / document["study_instance_uid"] / f"SR_{_pair_digest(document)[:8]}.dcm"
        _write_dataset(build_sr(document, usable), path)
    return {
        "study_instance_uid": document["study_instance_uid"],
        "path": str(path) if path is not None else None,
        "frames": len(frames),
        "usable_frames": len(usable),
        "vertebra_groups": sum(len(f.get("vertebrae") or []) for f in usable),
        "schmorl_groups": sum(len(f.get("schmorl_nodes") or []) for f in usable),
    }


def _write_dataset(dataset: Dataset, path: Path) -> None:
    """Write a DICOM file (preamble and file meta) via a temporary name, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    dataset.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


def _pair_digest(document: Mapping[str, Any]) -> str:
    text = "|".join(str(document.get(k) or "") for k in _PAIR_KEYS)
    return hashlib.sha256(text.encode()).hexdigest()


def _content_digest(frames: Iterable[Mapping[str, Any]]) -> str:
    """sha256 of every frame's key, boxes and scores (order-independent): new findings give a new SR UID."""
    items = sorted(
        repr((f["sop_instance_uid"], f["frame_index"], f.get("vertebrae") or [], f.get("schmorl_nodes") or []))
        for f in frames
    )
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def _uid(*parts: Any) -> str:
    """A UID under pydicom's root derived from ``parts`` (the same parts give the same UID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["radlake", *(str(p) for p in parts)]))


def _evidence_dataset(frame: Mapping[str, Any], study_uid: str) -> tuple[Dataset, bool]:
    """The de-identified header of ``frame``'s instance as a Dataset, and whether it came from ``header_json``.

    The UIDs are set from the instance's columns (they match the header's; a header cut to
    its size cap may have lost them). Patient and study attributes missing from the header
    are added empty (type 2), as highdicom reads them from the first evidence dataset.
    """
    from pydicom.dataset import Dataset

    parsed = False
    ds = Dataset()
    text = frame.get("header_json")
    if text:
        try:
            ds = Dataset.from_json(text)
            parsed = True
        except Exception:  # noqa: BLE001 - an unreadable header: fall back to the columns
            ds = Dataset()
    ds.SOPClassUID = frame["sop_class_uid"]
    ds.SOPInstanceUID = frame["sop_instance_uid"]
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = frame["series_instance_uid"]
    if "PatientID" not in ds and frame.get("patient_id"):
        ds.PatientID = frame["patient_id"]
    for keyword in _TYPE2_EVIDENCE:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds, parsed


def _procedure(modality: str | None) -> Code:
    if modality == "MR":
        return codes.cid100.MRIUnspecifiedBodyRegion
    if modality == "CT":
        return codes.cid100.CTUnspecifiedBodyRegion
    return codes.cid100.ImagingProcedure


def _model_label(name: str | None, version: str | None, uri: str | None) -> str:
    return f"{name} {version}" if name and version else str(uri or "unknown model")


def _algorithm(document: Mapping[str, Any], stage: str) -> hd.sr.AlgorithmIdentification:
    import highdicom as hd

    uri = document.get(f"{stage}_model_uri")
    threshold = document.get(f"{stage}_threshold")
    parameters = [f"model_uri={uri}"]
    if document.get(f"{stage}_model_run_id"):
        parameters.append(f"mlflow_run_id={document[f'{stage}_model_run_id']}")
    if threshold is not None:
        parameters.append(f"score_threshold={threshold}")
    return hd.sr.AlgorithmIdentification(
        name=str(document.get(f"{stage}_model_name") or uri or stage),
        version=str(document.get(f"{stage}_model_version") or document.get(f"{stage}_model_run_id") or "unknown"),
        parameters=parameters,
        manufacturer="radlake",
    )


def _region(frame: Mapping[str, Any], box: Sequence[float]) -> hd.sr.ImageRegion:
    """Closed POLYLINE around ``box`` (xyxy px, corner origin) on ``frame``'s source image."""
    import highdicom as hd

    x0, y0, x1, y1 = (float(v) for v in box)
    data = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)
    n_frames = frame.get("number_of_frames")
    numbers = [int(frame["frame_index"]) + 1] if n_frames is not None and n_frames > 1 else None
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=frame["sop_class_uid"],
        referenced_sop_instance_uid=frame["sop_instance_uid"],
        referenced_frame_numbers=numbers,
    )
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=data, source_image=source)


def _frame_label(frame: Mapping[str, Any]) -> str:
    series = frame.get("series_number")
    where = f"series {series}" if series is not None else f"series {str(frame.get('series_key') or '')[:8]}"
    text = f"{where}, slice {frame.get('slice_index')}"
    multi = (frame.get("number_of_frames") or 1) > 1
    return text + (f", frame {int(frame['frame_index']) + 1}" if multi else "")


def _uncertain(status: str | None) -> list[hd.sr.QualitativeEvaluation]:
    """The qualitative evaluation that says a level is uncertain, or nothing for an identified one."""
    import highdicom as hd

    return [hd.sr.QualitativeEvaluation(LEVEL_IDENTIFICATION, LEVEL_UNCERTAIN)] if status == "uncertain" else []


def _level_text(level: str | None, uncertain: list) -> str:
    return "level uncertain" if uncertain else (level or "?")


def _groups(
    document: Mapping[str, Any], frames: Iterable[Mapping[str, Any]]
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The measurement groups: per frame (series, slice order) its vertebrae head to feet, then its nodes."""
    import highdicom as hd

    unit = codes.UCUM.NoUnits
    pair = [document.get(k) for k in _PAIR_KEYS]
    vertebra_algorithm = _algorithm(document, "vertebra")
    schmorl_algorithm = _algorithm(document, "schmorl")
    rank = {level: i for i, level in enumerate(LEVELS)}
    ordered = sorted(
        frames, key=lambda f: (str(f.get("series_key") or ""), f.get("slice_index") or 0, f["frame_index"])
    )
    groups = []
    for frame in ordered:
        where = _frame_label(frame)
        vertebrae = sorted(frame.get("vertebrae") or [], key=lambda v: (rank.get(v.get("level"), -1), v["box_xyxy_px"]))
        for v in vertebrae:
            site = level_code(v.get("level"))
            unsure = _uncertain(v.get("level_status"))
            key = (frame["sop_instance_uid"], frame["frame_index"], "vertebra", v.get("level"), v["box_xyxy_px"])
            measurements = []
            if v.get("score") is not None:
                measurements.append(hd.sr.Measurement(name=DETECTOR_SCORE, value=float(v["score"]), unit=unit))
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=_uid(*pair, *key), identifier=f"Vertebra {_level_text(v.get('level'), unsure)} ({where})"
                    ),
                    referenced_region=_region(frame, v["box_xyxy_px"]),
                    finding_category=codes.SCT.AnatomicalStructure,
                    finding_type=codes.SCT.Vertebra,
                    finding_sites=[hd.sr.FindingSite(site)] if site is not None else None,
                    algorithm_id=vertebra_algorithm,
                    measurements=measurements or None,
                    qualitative_evaluations=unsure or None,
                )
            )
        nodes = sorted(
            frame.get("schmorl_nodes") or [], key=lambda n: (rank.get(n.get("parent_level"), -1), n["box_xyxy_px"])
        )
        for n in nodes:
            site = level_code(n.get("parent_level"))
            unsure = _uncertain(n.get("parent_level_status"))
            modifier = ENDPLATE_CODES.get(str(n.get("endplate") or "").lower())
            key = (frame["sop_instance_uid"], frame["frame_index"], "schmorl", n.get("parent_level"), n["box_xyxy_px"])
            measurements = []
            if n.get("score") is not None:
                measurements.append(hd.sr.Measurement(name=DETECTOR_SCORE, value=float(n["score"]), unit=unit))
            endplate = f" {n['endplate']} endplate" if n.get("endplate") else ""
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=_uid(*pair, *key),
                        identifier=f"Schmorl's node {_level_text(n.get('parent_level'), unsure)}{endplate} ({where})",
                    ),
                    referenced_region=_region(frame, n["box_xyxy_px"]),
                    finding_category=codes.SCT.MorphologicallyAbnormalStructure,
                    finding_type=SCHMORL_NODE,
                    finding_sites=[hd.sr.FindingSite(site, topographical_modifier=modifier)]
                    if site is not None
                    else None,
                    algorithm_id=schmorl_algorithm,
                    measurements=measurements or None,
                    qualitative_evaluations=unsure or None,
                )
            )
    return groups


def build_sr(document: Mapping[str, Any], frames: Sequence[Mapping[str, Any]]) -> hd.sr.Comprehensive3DSR:
    """Build the SR of one study and model pair (driver side; no Spark, no pixels).

    Parameters
    ----------
    document
        The study and model pair: ``study_instance_uid``, the
        :data:`radlake.score.schema.MODEL_PAIR_FIELDS`, ``vertebra_threshold`` and
        ``schmorl_threshold``.
    frames
        The frames with boxes, each a mapping with the ``predictions`` columns
        ``sop_instance_uid``, ``frame_index`` (0-based), ``series_instance_uid``,
        ``series_key``, ``slice_index``, ``vertebrae``, ``schmorl_nodes`` (boxes as in
        :mod:`radlake.score.schema`: ``box_xyxy_px`` in pixels, corner origin) and the
        ``instances`` columns ``sop_class_uid``, ``number_of_frames`` (``None`` for a
        single-frame IOD; above 1, regions name the frame), ``modality``, ``series_number``, ``patient_id`` and
        ``header_json``.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The document (see the module docstring).

    Raises
    ------
    ValueError
        If ``frames`` holds no vertebra and no Schmorl's node, or a frame lacks
        ``sop_class_uid``.
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    import radlake

    study_uid = str(document["study_instance_uid"])
    missing = [f["sop_instance_uid"] for f in frames if not f.get("sop_class_uid")]
    if missing:
        raise ValueError(f"Argument 'frames' has frames without 'sop_class_uid' (instance unknown): {missing[:3]}.")
    groups = _groups(document, frames)
    if not groups:
        raise ValueError("Argument 'frames' holds no vertebra and no Schmorl's node: TID 1500 needs one group.")

    evidence: dict[str, tuple[Dataset, bool]] = {}
    for frame in frames:
        if frame["sop_instance_uid"] not in evidence:
            evidence[frame["sop_instance_uid"]] = _evidence_dataset(frame, study_uid)
    # A parsed header first: highdicom takes the patient and study attributes from evidence[0].
    datasets = [ds for ds, parsed in sorted(evidence.values(), key=lambda e: (not e[1], str(e[0].SOPInstanceUID)))]

    pair = [document.get(k) for k in _PAIR_KEYS]
    models = (
        f"vertebra: {_model_label(document.get('vertebra_model_name'), document.get('vertebra_model_version'), pair[0])}; "
        f"schmorl: {_model_label(document.get('schmorl_model_name'), document.get('schmorl_model_version'), pair[1])}"
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("device", *pair),
            name="radlake",
            manufacturer_name="radlake",
            model_name=models,
            serial_number=radlake.__version__,
        ),
    )
    modality = next((f.get("modality") for f in frames if f.get("modality")), None)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure(modality),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    content_digest = _content_digest(frames)
    return hd.sr.Comprehensive3DSR(
        evidence=datasets,
        content=report,
        series_instance_uid=_uid("sr-series", study_uid, *pair),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid("sr", study_uid, *pair, content_digest),
        instance_number=1,
        manufacturer="radlake",
        manufacturer_model_name="radlake export-sr",
        software_versions=radlake.__version__,
        series_description="radlake: vertebrae and Schmorl's nodes",
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="radlake private codes",
                responsible_organization="radlake",
            )
        ],
        is_complete=True,
    )
