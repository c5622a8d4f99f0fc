"""What the scoring job runs on the executors beside the model UDFs: each frame's vertebrae cut into crops.

Pixels stay here: a frame's stored pixels are decoded, each vertebra the first detector
found is cut (:func:`radlake.models.crops.cut_stored_frame`, the cutter the training crops
use) and stored again, for the Schmorl's-node detector's UDF.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql.types import ArrayType, BinaryType, DoubleType, IntegerType, StringType, StructType

from radlake.score.stacks import LEVEL_EVIDENCE
from radlake.tables import struct_fields

_DOUBLES = ArrayType(DoubleType())


#: A crop of one found vertebra, cut on the executors (stage 2's input); ``vertebra_index`` is
#: the vertebra's place in its frame's detections, ``level_*`` its evidence for the stack's decoding.
SCORE_CROP = StructType(
    struct_fields(("sop_instance_uid", StringType()), ("frame_index", IntegerType()), ("vertebra_index", IntegerType()))
    + LEVEL_EVIDENCE
    + struct_fields(
        ("score", DoubleType()),
        ("box", _DOUBLES),
        ("crop_box_xyxy_px", _DOUBLES),
        ("crop_scale", DoubleType()),
        ("pixels", BinaryType()),
        ("dtype", StringType()),
        ("height", IntegerType()),
        ("width", IntegerType()),
        ("pixel_spacing", _DOUBLES),
    )
)


#: Frames per Arrow batch yielded by the crop cutter (each frame gives ~15 crops of 64 KB).
_CROP_FRAMES_PER_BATCH = 16


def cut_scoring_crops(batches: Iterator[pa.RecordBatch], *, margin_fraction: float, size: int):
    """Executor side: frames with their found ``vertebrae`` → one :data:`SCORE_CROP` row per vertebra.

    Input columns: ``sop_instance_uid``, ``frame_index``, the pixel columns and
    ``vertebrae`` (the vertebra UDF's detections, source pixels).
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    from radlake.models.crops import cut_stored_frame

    schema = to_arrow_schema(SCORE_CROP)
    for batch in batches:
        frames = batch.to_pylist()
        for start in range(0, len(frames), _CROP_FRAMES_PER_BATCH):
            rows = []
            for row in frames[start : start + _CROP_FRAMES_PER_BATCH]:
                found = row["vertebrae"] or []
                if not found:
                    continue
                boxes = [[v["x0"], v["y0"], v["x1"], v["y1"]] for v in found]
                crops = cut_stored_frame(row, boxes, margin_fraction, size)
                for index, (v, box, crop) in enumerate(zip(found, boxes, crops, strict=True)):
                    rows.append(
                        {
                            "sop_instance_uid": row["sop_instance_uid"],
                            "frame_index": row["frame_index"],
                            "vertebra_index": index,
                            "level": v["level"],
                            "level_status": v.get("level_status"),
                            "level_probability": v.get("level_probability"),
                            "level_scores": v.get("level_scores"),
                            "score": v["score"],
                            "box": box,
                            "crop_box_xyxy_px": list(crop.geometry.region_xyxy_px),
                            "crop_scale": crop.geometry.scale,
                            "pixels": crop.pixels,
                            "dtype": crop.dtype,
                            "height": size,
                            "width": size,
                            "pixel_spacing": crop.pixel_spacing,
                        }
                    )
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)
