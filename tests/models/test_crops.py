"""Vertebra crop geometry: regions, cutting, box mapping both ways, node membership, endplates."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from radlake.data.crops import CROP_RESULT, crop_id, cut_crops
from radlake.dicom.pixels import encode_pixels, frame_values
from radlake.models.crops import crop_region, cut_crop, cut_stored_frame, endplate_of, nodes_in_crop


def test_region_adds_the_margin_of_the_box_height_and_width():
    assert crop_region([10, 20, 50, 40], 0.25) == (0.0, 15.0, 60.0, 45.0)
    with pytest.raises(ValueError, match="degenerate"):
        crop_region([10, 20, 10, 40], 0.25)


def test_cut_keeps_pixels_and_maps_boxes_both_ways():
    frame = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)  # 100 rows, 80 columns
    crop, geometry = cut_crop(frame, (10, 20, 42, 36), size=64)  # 32 wide, 16 tall -> scale 2
    assert crop.shape == (64, 64) and geometry.scale == 2.0
    assert geometry.region_xyxy_px == (10.0, 20.0, 42.0, 36.0)
    # Upsampling by exactly 2: the crop's mean over the region is the source region's mean.
    assert crop[:32, :64].mean() == pytest.approx(frame[20:36, 10:42].mean(), rel=1e-3)
    assert (crop[32:, :] == 0).all()  # letterbox padding below the region
    node = np.array([[14.0, 22.0, 18.0, 26.0]])
    in_crop = geometry.boxes_to_crop(node)
    np.testing.assert_allclose(in_crop, [[8.0, 4.0, 16.0, 12.0]])
    np.testing.assert_allclose(geometry.boxes_to_source(in_crop), node)


def test_cut_pads_outside_the_frame_with_zeros():
    frame = np.full((50, 50), 7.0, dtype=np.float32)
    crop, geometry = cut_crop(frame, (-10, -10, 10, 10), size=20)  # a quarter inside
    assert geometry.scale == 1.0
    assert (crop[:10, :10] == 0).all() and (crop[10:, 10:] == 7.0).all()


def test_nodes_belong_to_a_crop_by_the_share_of_their_area_inside():
    region = (0, 0, 10, 10)
    nodes = np.array([[2, 2, 4, 4], [8, 8, 12, 12], [9, 0, 13, 2], [20, 20, 22, 22]], dtype=float)
    # inside; a quarter inside; a quarter inside; outside. Half inside counts:
    assert nodes_in_crop(nodes, region).tolist() == [0]
    assert nodes_in_crop(np.array([[8, 0, 12, 2]], dtype=float), region).tolist() == [0]
    assert nodes_in_crop(np.zeros((0, 4)), region).tolist() == []


def test_endplate_follows_the_patient_axis_not_the_row_order():
    body = [0, 10, 40, 30]
    top, bottom = [10, 10, 14, 14], [10, 26, 14, 30]
    assert endplate_of(top, body) == "superior" and endplate_of(bottom, body) == "inferior"
    assert endplate_of(top, body, row_direction_z=-1.0) == "superior"
    # Rows growing towards the head (an image stored feet up): the upper row is inferior.
    assert endplate_of(top, body, row_direction_z=1.0) == "inferior"


def _frame_batch(frame: np.ndarray, vertebrae, nodes) -> pa.RecordBatch:
    buf, dtype = encode_pixels(frame)
    return pa.RecordBatch.from_pylist(
        [
            {
                "sop_instance_uid": "1.2.3",
                "frame_index": 0,
                "study_instance_uid": "1.2",
                "series_instance_uid": "1.2.9",
                "pixels": buf,
                "dtype": dtype,
                "height": frame.shape[0],
                "width": frame.shape[1],
                "pixel_spacing": [0.5, 0.8],
                "vertebrae": vertebrae,
                "nodes": nodes,
            }
        ]
    )


def test_the_executor_cuts_every_vertebra_with_its_nodes_in_crop_pixels():
    frame = np.random.default_rng(0).integers(0, 1000, (120, 100)).astype(np.float32)
    vertebrae = [
        {"source": "predicted", "level": "L1", "score": 0.9, "box": [20.0, 20.0, 60.0, 40.0]},
        {"source": "predicted", "level": "L2", "score": 0.8, "box": [20.0, 60.0, 60.0, 80.0]},
    ]
    nodes = [{"box": [30.0, 20.0, 34.0, 24.0], "parent_level": "L1", "endplate": "superior"}]
    batches = list(
        cut_crops(iter([_frame_batch(frame, vertebrae, nodes)]), margin_fraction=0.25, size=64, model_uri="m")
    )
    rows = pa.Table.from_batches(batches).to_pylist()
    assert [r["level"] for r in rows] == ["L1", "L2"]
    l1, l2 = rows
    # Region of L1: [10, 15, 70, 45] -> 60 px wide, scale 64/60.
    assert l1["crop_box_xyxy_px"] == [10.0, 15.0, 70.0, 45.0]
    assert l1["crop_scale"] == pytest.approx(64 / 60)
    np.testing.assert_allclose(
        l1["boxes_xyxy_px"], [[(30 - 10) * 64 / 60, 5 * 64 / 60, 24 * 64 / 60, 9 * 64 / 60]], atol=1e-3
    )
    assert l1["labels"] == [1] and l1["node_parent_levels"] == ["L1"] and l1["node_endplates"] == ["superior"]
    assert l2["boxes_xyxy_px"] == [] and l2["labels"] == []
    assert l1["pixel_spacing"] == pytest.approx([0.5 * 60 / 64, 0.8 * 60 / 64])
    crop = frame_values(l1["pixels"], l1["dtype"], l1["height"], l1["width"])
    assert crop.shape == (64, 64) and crop[:32].std() > 0
    assert l1["crop_id"] == crop_id("m", "predicted", "1.2.3", 0, [20.0, 20.0, 60.0, 40.0]) != l2["crop_id"]
    assert set(rows[0]) == {f.name for f in CROP_RESULT.fields}


def test_a_frame_without_vertebrae_gives_no_crop():
    frame = np.zeros((32, 32), dtype=np.float32)
    assert list(cut_crops(iter([_frame_batch(frame, [], None)]), margin_fraction=0.25, size=16, model_uri="m")) == []


def test_a_frame_stored_with_a_rescale_and_inversion_is_cut_from_its_values():
    """An ``images`` row as stored (uint16 with slope, intercept and MONOCHROME1) crops like its float32 values."""
    stored = np.random.default_rng(1).integers(0, 4096, (120, 100)).astype(np.uint16)
    transform = {"rescale_slope": 0.75, "rescale_intercept": -10.0, "invert": True, "bits_stored": 12}
    values = frame_values(stored.astype("<u2").tobytes(), "uint16", 120, 100, **transform)
    boxes = [[20.0, 20.0, 60.0, 40.0]]
    as_values = cut_stored_frame(
        {"pixels": encode_pixels(values)[0], "dtype": "float32", "height": 120, "width": 100, "pixel_spacing": None},
        boxes,
        0.25,
        64,
    )
    as_stored = cut_stored_frame(
        {"pixels": stored.astype("<u2").tobytes(), "dtype": "uint16", "height": 120, "width": 100, **transform}
        | {"pixel_spacing": None},
        boxes,
        0.25,
        64,
    )
    assert as_stored[0].pixels == as_values[0].pixels and as_stored[0].dtype == as_values[0].dtype
