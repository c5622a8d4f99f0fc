"""Ground truth of a synthetic archive: the schema of ``labels.json`` and its writer.

Schema (format ``radlake-synth-labels``, version 1)
--------------------------------------------------
``labels.json`` is one JSON object with sorted keys::

    {
      "format": "radlake-synth-labels",
      "version": 1,
      "generator": "radlake <version>",
      "config": {...},                 # SynthConfig.model_dump(mode="json")
      "boxes": "xyxy pixels; x = column, y = row; origin at the top-left corner of the image",
      "levels": ["T5", ..., "L5", "S1"],   # every level a box can name, cranial to caudal
      "studies": {
        "<StudyInstanceUID>": {
          "index": 0,                  # study index in the archive (0-based)
          "path": "study0000" | "study0000.zip",
          "manufacturer": "SIEMENS",
          "series": {"<SeriesInstanceUID>": {"kind": "sagittal_t2" | "axial_t2" | "coronal_t2",
                                             "description": "...", "n_images": 15,
                                             "transfer_syntax": "1.2.840.10008.1.2.4.80",
                                             "ghosting": 0.0}},   # motion-ghost amplitude
          "fractures": {"L1": "wedge"}, "degenerate_discs": ["L4-L5"],
          "nodes": {"L3": ["superior"]}, "lesions": {"L2": ["hemangioma"]}
        }
      },
      "images": {
        "<SOPInstanceUID>": {          # every sagittal image, also those without boxes
          "study_instance_uid": "...", "series_instance_uid": "...",
          "path": "study0000/SE02/IM0003.dcm",   # relative to the archive folder
          "member": null | "study0003/SE02/IM0003",  # the zip member when path is a .zip
          "rows": 384, "columns": 384,
          "pixel_spacing": [0.78, 0.78],         # [row, column] mm, as in PixelSpacing
          "photometric_interpretation": "MONOCHROME2",
          "instance_number": 3, "slice_index": 7,  # slice_index: 0-based spatial order along the normal
          "vertebrae": [{"level": "L3", "xyxy": [x0, y0, x1, y1], "truncated": false,
                         "visible_fraction": 1.0}],
          "nodes": [{"parent_level": "L3", "endplate": "superior", "xyxy": [x0, y0, x1, y1]}]
        }
      }
    }

Boxes are in pixels of the stored image, ``xyxy`` with x = column and y = row, origin at
the top-left **corner** of the image (torchvision's convention): a box around pixel
(row 0, column 0) alone is ``[0, 0, 1, 1]``. A vertebra box is the extent of the pixels
that the body fills at least half of (partial volume across the slice thickness
included), clipped to the image; ``truncated`` marks a body cut by the image edge and
``visible_fraction`` the share of its cross-section inside the image. A body is listed
in a slice only when its cross-section there is at least 30% of its mid-sagittal area and
at least 40% of it lies inside the image. Vertebrae are listed cranial to caudal. A node
box covers the node's part inside its body, so it lies within the parent's box, at the
top (superior endplate) or bottom (inferior endplate) of it; a node is listed when its
cross-section is at least 35% of its largest one and 4 pixels, and only where its parent
body is listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from radlake.synth.anatomy import LABELLED_LEVELS
from radlake.synth.render import RenderedSlice

__all__ = ["FORMAT", "VERSION", "image_entry", "write_labels"]

FORMAT = "radlake-synth-labels"
VERSION = 1
BOX_CONVENTION = "xyxy pixels; x = column, y = row; origin at the top-left corner of the image"


def _box(xyxy: tuple[float, float, float, float]) -> list[float]:
    return [round(float(v), 3) for v in xyxy]


def image_entry(
    rendered: RenderedSlice,
    *,
    study_uid: str,
    series_uid: str,
    path: str,
    member: str | None,
    pixel_spacing: tuple[float, float],
    photometric: str,
    instance_number: int,
    slice_index: int,
) -> dict[str, Any]:
    """The ``images[<SOPInstanceUID>]`` entry of one sagittal image (see the module docstring)."""
    rows, cols = rendered.image.shape
    order = {level: i for i, level in enumerate(LABELLED_LEVELS)}
    vertebrae = sorted(rendered.vertebrae, key=lambda b: order[b.level])
    return {
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "path": path,
        "member": member,
        "rows": int(rows),
        "columns": int(cols),
        "pixel_spacing": [float(v) for v in pixel_spacing],
        "photometric_interpretation": photometric,
        "instance_number": int(instance_number),
        "slice_index": int(slice_index),
        "vertebrae": [
            {
                "level": b.level,
                "xyxy": _box(b.xyxy),
                "truncated": bool(b.truncated),
                "visible_fraction": float(b.visible_fraction),
            }
            for b in vertebrae
        ],
        "nodes": [
            {"parent_level": n.parent_level, "endplate": n.endplate.value, "xyxy": _box(n.xyxy)}
            for n in sorted(rendered.nodes, key=lambda n: (order[n.parent_level], n.endplate.value, n.xyxy))
        ],
    }


def write_labels(
    path: Path,
    *,
    config: dict[str, Any],
    studies: dict[str, Any],
    images: dict[str, Any],
    generator: str,
) -> None:
    """Write ``labels.json`` with sorted keys (byte-identical for identical inputs)."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "generator": generator,
        "config": config,
        "boxes": BOX_CONVENTION,
        "levels": list(LABELLED_LEVELS),
        "studies": studies,
        "images": images,
    }
    path.write_text(json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
