"""Stack ordering and spacing flags (pure Python: the function each series group runs on an executor)."""

import pytest

from radlake.ingest.series import describe_stack

SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # normal = cross(row, column) = -x


def _stack(xs, instance_numbers=None, frames=None):
    numbers = instance_numbers or list(range(1, len(xs) + 1))
    return [
        {
            "series_key": "k",
            "sop_instance_uid": f"1.2.{i}",
            "image_orientation_patient": SAGITTAL,
            "image_position_patient": [x, -100.0, 50.0],
            "frame_positions": None,
            "number_of_frames": 1,
            "instance_number": n,
        }
        for i, (x, n) in enumerate(zip(xs, numbers, strict=True))
    ]


def test_slices_follow_position_not_instance_number():
    xs = [10.0, -10.0, 0.0, 5.0, -5.0]
    row = describe_stack(_stack(xs, instance_numbers=[1, 2, 3, 4, 5]))
    positions = [s["position_mm"] for s in row["slices"]]
    assert positions == sorted(positions)
    # the normal is -x: increasing position means decreasing x
    assert [s["sop_instance_uid"] for s in row["slices"]] == ["1.2.0", "1.2.3", "1.2.2", "1.2.4", "1.2.1"]
    assert row["slice_spacing_mm"] == pytest.approx(5.0)
    assert not (row["uneven_spacing"] or row["has_gaps"] or row["has_duplicate_positions"])


def test_gap_is_flagged():
    row = describe_stack(_stack([0.0, 4.0, 8.0, 16.0, 20.0]))
    assert row["has_gaps"] and row["uneven_spacing"] and row["slice_spacing_mm"] == pytest.approx(4.0)


def test_uneven_spacing_without_gap():
    row = describe_stack(_stack([0.0, 4.0, 8.0, 13.0, 17.0]))
    assert row["uneven_spacing"] and not row["has_gaps"]


def test_duplicate_positions():
    row = describe_stack(_stack([0.0, 4.0, 4.0, 8.0]))
    assert row["has_duplicate_positions"] and row["slice_count"] == 4


def test_multiframe_uses_per_frame_positions():
    inst = _stack([0.0])[0] | {"number_of_frames": 3, "frame_positions": [[6.0, 0, 0], [0.0, 0, 0], [3.0, 0, 0]]}
    row = describe_stack([inst])
    assert [s["frame_index"] for s in row["slices"]] == [0, 2, 1]  # x 6, 3, 0 along -x
    assert row["slice_spacing_mm"] == pytest.approx(3.0)


def test_missing_geometry_goes_last_by_instance_number():
    stack = _stack([0.0, 2.0], instance_numbers=[2, 1])
    stack.append(stack[0] | {"sop_instance_uid": "1.2.9", "image_position_patient": None, "instance_number": 0})
    row = describe_stack(stack)
    assert row["slices"][-1]["sop_instance_uid"] == "1.2.9" and row["slices"][-1]["position_mm"] is None


def test_a_stack_split_across_arrow_batches_stays_one_stack():
    import pyarrow as pa

    from radlake.ingest.series import STACK, _stack_batches

    def rows(key, xs):
        return [{**r, "series_key": key, "sop_instance_uid": f"{key}.{i}"} for i, r in enumerate(_stack(xs))]

    columns = ["series_key", "sop_instance_uid", "image_orientation_patient", "image_position_patient"]
    columns += ["frame_positions", "number_of_frames", "instance_number"]
    a, b = rows("a", [0.0, 4.0, 8.0]), rows("b", [0.0, 3.0])
    batches = [pa.RecordBatch.from_pylist(part) for part in (a[:2], a[2:] + b[:1], b[1:])]
    assert all(batch.schema.names == columns for batch in batches)
    out = pa.Table.from_batches(list(_stack_batches(iter(batches))))
    assert out.schema.names == [f.name for f in STACK.fields]
    assert out.column("series_key").to_pylist() == ["a", "b"]
    assert out.column("slice_count").to_pylist() == [3, 2]
    assert out.column("slice_spacing_mm").to_pylist() == [4.0, 3.0]
