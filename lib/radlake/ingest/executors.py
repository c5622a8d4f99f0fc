"""The work that runs on the executors, one Arrow batch at a time (``mapInArrow``).

Two passes, each a plain function of Arrow record batches that Spark ships to the
Python workers. The job packs task lists on the driver (balanced by expected cost) and
ships them with :func:`radlake.spark.map_task_lists`, so each Spark task gets exactly its
list: through a broadcast indexed by ``spark.range`` ids on a classic session, as rows
of its input over Spark Connect (:func:`radlake.spark.task_lists_of` reads either way):

- :func:`header_task`: stored file → (archive members →) de-identified header,
  promoted columns and DICOM JSON, or a quarantine record. Reads with
  ``stop_before_pixels``; nothing is decoded.
- :func:`pixel_task`: selected instances → one decoded frame per row, as stored
  (pydicom's ``pixel_array`` with its rescale and inversion, or float32 values:
  :func:`radlake.dicom.pixels.encoded_frames`), or a quarantine record. Frames are decoded one at a time and a file
  whose decoded size would exceed the limit is refused before decoding. Compressed
  pixel data (native decoders) is decoded in the worker's sandbox child
  (:mod:`radlake.dicom.sandbox`), so that a decoder crash, hang or memory blow-up is
  that file's ``DecoderCrashed`` / ``DecoderTimeout`` / ``MemoryError`` failure.

- :func:`copies_task`: copies of one SOP instance with different bytes → each copy's
  header and pixel digests (:mod:`radlake.dicom.identity`), so the job can tell another
  encoding of the same instance from a conflict. Runs only when such copies are found.

None raises on bad input: every failure becomes a row with its stage, error
class and message, so one bad file never fails the job.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from radlake.ingest import schema as S
from radlake.spark import task_lists_of

if TYPE_CHECKING:
    from pyspark import Accumulator, Broadcast

    #: Where each task finds its list: the broadcast of all lists (classic session), or None when its
    #: input rows carry them (Spark Connect). See :func:`radlake.spark.map_task_lists`.
    TaskLists = Broadcast | None

#: Rows buffered before an Arrow batch is yielded (header pass) and bytes (pixel pass).
HEADER_BATCH_ROWS = 512
PIXEL_BATCH_BYTES = 32 << 20


@dataclass(frozen=True)
class HeaderSettings:
    """What the header pass needs, shipped to every executor with the function."""

    deid_key: bytes | None
    max_member_bytes: int
    max_header_json_bytes: int
    oblique_tolerance_deg: float
    max_decoded_bytes: int = 1 << 30


def _quiet_pydicom() -> None:
    """Executors read real-world files: report bad values as NULL columns, not as log warnings."""
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def _arrow_schema(struct) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(struct)


def _record_batch(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    """``rows`` as one record batch of ``schema``, built column by column (missing keys are null).

    Same result as ``pa.RecordBatch.from_pylist`` at less than half its cost per row here.
    """
    return pa.RecordBatch.from_pydict({name: [row.get(name) for row in rows] for name in schema.names}, schema=schema)


def _failure_fields(failure) -> dict[str, Any]:
    stage = getattr(failure.stage, "value", failure.stage)
    return {"stage": str(stage), "error_class": failure.error_class, "error_message": failure.message}


def header_task(
    batches: Iterator[pa.RecordBatch], tasks: TaskLists, settings: HeaderSettings
) -> Iterator[pa.RecordBatch]:
    """Parse the stored files of each task list of the input (:func:`radlake.spark.task_lists_of`).

    Yields record batches of :data:`radlake.ingest.schema.HEADER_RESULT`, one row per
    archive member or file: ``kind`` is ``instance``, ``failure`` or ``skipped``
    (a DICOMDIR, which indexes files but is not an instance).

    A task list holds ``(path, file_size, modification_time)`` tuples, packed on the driver.
    """
    records = (
        {"path": path, "file_size": size, "modification_time": modified}
        for files in task_lists_of(batches, tasks)
        for path, size, modified in files
    )
    yield from _header_batches(records, settings)


def _header_batches(records: Iterable[dict[str, Any]], settings: HeaderSettings) -> Iterator[pa.RecordBatch]:
    from radlake.dicom.deid import Deidentifier

    _quiet_pydicom()
    out_schema = _arrow_schema(S.HEADER_RESULT)
    deid = Deidentifier(settings.deid_key) if settings.deid_key is not None else None
    rows: list[dict[str, Any]] = []
    for record in records:
        rows.extend(_header_rows(record, deid, settings))
        if len(rows) >= HEADER_BATCH_ROWS:
            yield _record_batch(rows, out_schema)
            rows = []
    if rows:
        yield _record_batch(rows, out_schema)


def _header_rows(record: dict[str, Any], deid, settings: HeaderSettings) -> Iterator[dict[str, Any]]:
    from radlake.dicom.header import parse_header
    from radlake.dicom.sources import Failure, iter_members, read_bytes
    from radlake.vocabulary import QuarantineStage

    source = {k: record[k] for k in ("path", "file_size", "modification_time")}
    try:
        data = read_bytes(record["path"])
    except Exception as exc:  # noqa: BLE001 - any read error is this file's failure, not the job's
        yield {
            "kind": "failure",
            **source,
            "member": None,
            **_failure_fields(Failure.from_exception(QuarantineStage.SOURCE, exc)),
        }
        return
    for item in iter_members(record["path"], data, max_member_bytes=settings.max_member_bytes):
        base = {**source, "member": item.member}
        if item.error is not None:
            yield {"kind": "failure", **base, **_failure_fields(item.error)}
            continue
        digest = hashlib.sha256(item.data).hexdigest()
        result = parse_header(
            item.data,
            deid=deid,
            max_json_bytes=settings.max_header_json_bytes,
            oblique_tolerance_deg=settings.oblique_tolerance_deg,
            max_decoded_bytes=settings.max_decoded_bytes,
        )
        base.update(content_sha256=digest, instance_size=len(item.data))
        if result.error is not None:  # a damaged instance still names its SOPInstanceUID
            uid = result.sop_instance_uid
            yield {"kind": "failure", **base, "sop_instance_uid": uid, **_failure_fields(result.error)}
        elif result.is_dicomdir:
            yield {"kind": "skipped", **base}
        else:
            yield {
                "kind": "instance",
                **base,
                **result.columns,
                "frame_positions": result.frame_positions,
                "header_json": result.header_json,
                "header_json_truncated": result.header_json_truncated,
            }


@dataclass(frozen=True)
class PixelSettings:
    """What the pixel pass needs, shipped to every executor with the function."""

    max_member_bytes: int
    max_decoded_bytes: int
    isolate_decoders: bool = True
    decode_timeout_s: float = 300.0


def pixel_task(
    batches: Iterator[pa.RecordBatch],
    tasks: TaskLists,
    settings: PixelSettings,
    counts: tuple[Accumulator, Accumulator] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Decode the instances of each task list of the input (:func:`radlake.spark.task_lists_of`) into frames.

    A task list holds records (``path``, ``member``,
    ``content_sha256``, ``sop_instance_uid``, ``series_key``, ``study_instance_uid``,
    ``series_instance_uid``, ``plane``, ``pixel_spacing``, ``slice_indices``,
    ``expected_frames``), packed on the driver by expected decoding cost, the members of
    one stored file adjacent so a zip/tar file is opened once. Yields record batches of
    :data:`radlake.ingest.schema.PIXEL_RESULT`. ``counts``, if given, are two accumulators
    that receive the image rows yielded and the instances that yielded fewer image rows
    than ``expected_frames`` (a failure, or frames missing).
    """
    yield from _pixel_batches(task_lists_of(batches, tasks), settings, counts)


def _pixel_batches(
    groups: Iterable[list[dict[str, Any]]],
    settings: PixelSettings,
    counts: tuple[Accumulator, Accumulator] | None = None,
) -> Iterator[pa.RecordBatch]:
    _quiet_pydicom()
    out_schema = _arrow_schema(S.PIXEL_RESULT)
    rows: list[dict[str, Any]] = []
    size = 0
    for records in groups:
        images: Counter[str] = Counter()
        for row in _pixel_rows(records, settings):
            rows.append(row)
            if row["kind"] == "image":
                images[row["sop_instance_uid"]] += 1
            size += len(row.get("pixels") or b"")
            if size >= PIXEL_BATCH_BYTES:
                yield _record_batch(rows, out_schema)
                rows, size = [], 0
        if counts is not None:
            image_rows, short = counts
            image_rows.add(images.total())
            short.add(sum(images[r["sop_instance_uid"]] < r["expected_frames"] for r in records))
    if rows:
        yield _record_batch(rows, out_schema)


def _pixel_rows(records: list[dict[str, Any]], settings: PixelSettings) -> Iterator[dict[str, Any]]:
    from radlake.dicom.sources import Failure
    from radlake.vocabulary import QuarantineStage

    by_path: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_path.setdefault(record["path"], []).append(record)
    for path, wanted in by_path.items():
        try:
            members = _stored_members(path, {r["member"] for r in wanted}, settings)
        except Exception as exc:  # noqa: BLE001
            failure = Failure.from_exception(QuarantineStage.SOURCE, exc)
            for record in wanted:
                yield _pixel_failure(record, failure)
            continue
        for record in wanted:
            content = members.get(record["member"])
            if not _holds(content, record["content_sha256"]):
                failure = Failure(
                    QuarantineStage.PIXELS, "SourceChanged", "the stored file no longer holds this instance"
                )
                yield _pixel_failure(record, failure)
                continue
            yield from _decode_instance(record, content, settings)


def _stored_members(path: str, members: set[str | None], settings: PixelSettings) -> dict[str | None, bytes]:
    """The bytes of these members of the stored file ``path`` (``None``: the file itself), read once.

    A member that is missing or cannot be read is left out. Raises what reading the file raises.
    """
    from radlake.dicom.sources import iter_members, read_bytes

    data = read_bytes(path)
    if members == {None}:
        return {None: data}
    return {
        item.member: item.data
        for item in iter_members(path, data, max_member_bytes=settings.max_member_bytes)
        if item.member in members and item.error is None
    }


def _holds(content: bytes | None, content_sha256: str) -> bool:
    """True if ``content`` is still the instance that was ingested (its SHA-256 is the recorded one)."""
    return content is not None and hashlib.sha256(content).hexdigest() == content_sha256


def _decode_instance(record: dict[str, Any], content: bytes, settings: PixelSettings) -> Iterator[dict[str, Any]]:
    slice_indices = record.get("slice_indices") or []
    for frame in _encoded_frames(content, record.get("transfer_syntax_uid"), settings):
        if frame.error is not None:
            yield _pixel_failure(record, frame.error, frame_index=frame.frame_index)
            continue
        index = frame.frame_index
        yield {
            "kind": "image",
            **{k: record[k] for k in ("sop_instance_uid", "series_key", "study_instance_uid", "series_instance_uid")},
            **{k: record[k] for k in ("plane", "pixel_spacing", "path", "member", "content_sha256")},
            "frame_index": index,
            "slice_index": slice_indices[index] if index < len(slice_indices) else None,
            "height": frame.height,
            "width": frame.width,
            "dtype": frame.dtype,
            "pixels": frame.pixels,
            **frame.transform,
        }


def _encoded_frames(content: bytes, transfer_syntax_uid: str | None, settings: PixelSettings):
    """The instance's :class:`~radlake.dicom.pixels.EncodedFrame` s, decoded in this worker or in its sandbox.

    A sandbox that crashed, timed out or ran out of memory ends the instance with a
    failure at the frame it was decoding; the next instance gets a fresh child.
    """
    from radlake.dicom.pixels import EncodedFrame, decoder_memory_headroom, encoded_frames, needs_isolation
    from radlake.dicom.sandbox import SandboxError, shared_sandbox
    from radlake.dicom.sources import Failure
    from radlake.vocabulary import QuarantineStage

    if not (settings.isolate_decoders and needs_isolation(transfer_syntax_uid)):
        yield from encoded_frames(content, max_decoded_bytes=settings.max_decoded_bytes)
        return
    box = shared_sandbox(
        "radlake.dicom.pixels:encoded_frames",
        timeout_s=settings.decode_timeout_s,
        memory_headroom_bytes=decoder_memory_headroom(settings.max_decoded_bytes),
    )
    index = 0
    try:
        for frame in box.call(content, max_decoded_bytes=settings.max_decoded_bytes):
            yield frame
            index = frame.frame_index + 1
    except SandboxError as exc:
        yield EncodedFrame(index, error=Failure(QuarantineStage.PIXELS, exc.error_class, f"{exc} (frame {index})"))


def _pixel_failure(record: dict[str, Any], failure, frame_index: int | None = None) -> dict[str, Any]:
    keep = ("sop_instance_uid", "path", "member", "content_sha256")
    return {"kind": "failure", **{k: record[k] for k in keep}, "frame_index": frame_index, **_failure_fields(failure)}


def copies_task(
    batches: Iterator[pa.RecordBatch], tasks: TaskLists, settings: PixelSettings
) -> Iterator[pa.RecordBatch]:
    """Digest the copies of each task list of the input (:func:`radlake.spark.task_lists_of`).

    A task list holds copies (``sop_instance_uid``, ``path``, ``member``,
    ``content_sha256``, ``transfer_syntax_uid``), all copies of an instance in one task.
    Yields record batches of :data:`radlake.ingest.schema.COPY_DIGESTS`: the header and
    pixel digests of each copy, or ``error_message`` when it cannot be read, parsed or
    decoded (compressed data is decoded in the worker's sandbox, as in the pixel pass).
    """
    _quiet_pydicom()
    out_schema = _arrow_schema(S.COPY_DIGESTS)
    rows = [_copy_digests(copy, settings) for copies in task_lists_of(batches, tasks) for copy in copies]
    if rows:
        yield _record_batch(rows, out_schema)


def _copy_digests(copy: dict[str, Any], settings: PixelSettings) -> dict[str, Any]:
    from radlake.dicom.identity import header_digest, pixels_digest

    row = {k: copy[k] for k in ("sop_instance_uid", "path", "member", "content_sha256")}
    try:
        data = _stored_members(copy["path"], {copy["member"]}, settings).get(copy["member"])
        if not _holds(data, copy["content_sha256"]):
            raise ValueError("the stored file no longer holds this copy")
        row["header_sha256"] = header_digest(data)
        row["pixels_sha256"] = pixels_digest(_encoded_frames(data, copy["transfer_syntax_uid"], settings))
    except Exception as exc:  # noqa: BLE001 - this copy cannot be compared: the job keeps it apart
        row["error_message"] = f"{type(exc).__name__}: {exc}"
    return row
