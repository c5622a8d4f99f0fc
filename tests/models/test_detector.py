"""The FCOS detector, preprocessing, transforms and post-processing on real tensors."""

import numpy as np
import pytest
import torch

from radlake.config import AugmentConfig
from radlake.data.transforms import DetectionTransform
from radlake.dicom.pixels import encode_pixels
from radlake.models.backbones import build_backbone
from radlake.models.detector import DetectorSpec, build_detector, postprocess, vertebra_spec
from radlake.models.levels import LEVELS, VERTEBRA_CLASSES, level_to_class
from radlake.models.preprocess import letterbox, normalize_intensity, prepare_frame


def _row(height=300, width=200, box=(50, 60, 120, 110)):
    image = np.random.default_rng(0).normal(100, 5, (height, width)).astype(np.float32)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 900
    buf, dtype = encode_pixels(image)
    return {
        "pixels": buf,
        "dtype": dtype,
        "height": height,
        "width": width,
        "boxes_xyxy_px": [list(box)],
        "labels": [7],
    }


def test_letterbox_keeps_aspect_and_maps_boxes():
    image = np.zeros((300, 200), np.float32)
    out, box = letterbox(image, 256)
    assert out.shape == (1, 256, 256)
    assert box.scale == pytest.approx(256 / 300)
    back = box.boxes_to_source(box.boxes_to_input(torch.tensor([[10.0, 20, 30, 40]])))
    assert back[0].tolist() == pytest.approx([10, 20, 30, 40])


def test_normalize_intensity_is_robust_and_handles_flat_frames():
    frame = np.full((64, 64), 100, np.float32)
    assert (normalize_intensity(frame) == 0).all()
    frame[0, 0] = 1e6  # one hot pixel does not squash the rest
    frame[10:20] = 200
    out = normalize_intensity(frame)
    assert out.max() == 1 and out[15, 15] == 1 and out[40, 40] == 0


def test_frames_of_other_matrix_sizes_meet_at_one_physical_scale():
    # The same 240 mm field of view as 256 px of 0.9375 mm and 512 px of 0.46875 mm, a 60 mm block in it.
    inputs = []
    for size in (256, 512):
        spacing = 240.0 / size
        image = np.zeros((size, size), np.float32)
        lo, hi = round(90 / spacing), round(150 / spacing)
        image[lo:hi, lo:hi] = 1000
        buf, dtype = encode_pixels(image)
        out, geometry = prepare_frame(
            buf, dtype, size, size, 256, pixel_spacing=[spacing, spacing], input_spacing_mm=1.25
        )
        box = geometry.boxes_to_input(np.array([[lo, lo, hi, hi]], np.float64))[0]
        inputs.append((out, box))
    (a, box_a), (b, box_b) = inputs
    assert a.shape == b.shape == (1, 192, 192)  # 240 mm at 1.25 mm per pixel
    assert box_a.tolist() == pytest.approx(box_b.tolist())
    assert box_a.tolist() == pytest.approx([72, 72, 120, 120])
    assert float((a - b).abs().mean()) < 0.02


def test_anisotropic_pixels_are_resampled_per_axis():
    image = np.zeros((200, 100), np.float32)
    buf, dtype = encode_pixels(image)
    out, geometry = prepare_frame(buf, dtype, 200, 100, 256, pixel_spacing=[0.5, 1.0], input_spacing_mm=1.0)
    assert out.shape == (1, 100, 100)
    assert (geometry.scale_x, geometry.scale_y) == (1.0, 0.5)
    # No usable spacing: the frame is letterboxed instead.
    _, fallback = prepare_frame(buf, dtype, 200, 100, 256, pixel_spacing=None, input_spacing_mm=1.0)
    assert fallback.scale == pytest.approx(256 / 200)


@pytest.mark.parametrize(
    "augment",
    [
        None,
        AugmentConfig(noise_std=0, gamma_range=(1, 1)),
        AugmentConfig(noise_std=0, gamma_range=(1, 1), flip_vertical=1.0, flip_horizontal=1.0),
    ],
)
def test_transform_box_follows_the_bright_body(augment):
    torch.manual_seed(3)
    image, target = DetectionTransform(256, augment)(_row())
    assert image.shape == (1, 256, 256)
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    inside = image[0, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
    assert inside.min() > 0.5  # the box still sits on the bright block
    assert target["labels"].tolist() == [7]
    if augment is not None and augment.flip_vertical:  # the block sat in the frame's upper half
        assert y0 > 128


@pytest.mark.parametrize("seed", range(4))
def test_physical_window_and_appearance_keep_boxes_on_the_body(seed):
    torch.manual_seed(seed)
    row = {**_row(height=400, width=300, box=(100, 150, 180, 210)), "pixel_spacing": [0.8, 0.8]}
    row["labels"] = [level_to_class("S1")]
    augment = AugmentConfig(contrast_range=(1, 1), gamma_range=(1, 1), noise_std=0, bias_strength=0, min_bits=8)
    spec = vertebra_spec(image_size=128, input_spacing_mm=1.25)
    transform = DetectionTransform(128, augment, input_spacing_mm=1.25, class_of_label=spec.class_of_label())
    image, target = transform(row)
    assert image.shape == (1, 128, 128)
    for (x0, y0, x1, y1), label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
        assert label == VERTEBRA_CLASSES.index("S1") + 1  # the level's detector class
        inside = image[0, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
        assert inside.numel() == 0 or inside.mean() > 0.5
    # Back to source pixels through the target's geometry: the labelled box (clipped by the window).
    if len(target["boxes"]):
        back = target["geometry"].boxes_to_source(target["boxes"].numpy())[0]
        assert back[0] >= 100 - 1 and back[2] <= 180 + 1


def test_appearance_augmentation_changes_intensities_not_geometry():
    torch.manual_seed(0)
    row = {**_row(), "pixel_spacing": [1.25, 1.25]}
    plain, target_plain = DetectionTransform(256, None, input_spacing_mm=1.25)(row)
    augment = AugmentConfig(scale_range=(1, 1), translate_fraction=0.0)
    torch.manual_seed(0)
    shown, target = DetectionTransform(300, augment, input_spacing_mm=1.25)(row)
    assert shown.shape == (1, 300, 300) and float(shown.min()) >= 0 and float(shown.max()) <= 1
    assert target_plain["boxes"][0].tolist() == pytest.approx([50, 60, 120, 110])
    # The frame sits somewhere in the window; mapped back, the box is the labelled one.
    back = target["geometry"].boxes_to_source(target["boxes"].numpy())[0]
    assert back.tolist() == pytest.approx([50, 60, 120, 110], abs=1e-4)
    x0, y0 = round(-target["geometry"].offset_x), round(-target["geometry"].offset_y)
    assert x0 <= 0 and y0 <= 0
    placed = shown[0, -y0 : -y0 + 300, -x0 : -x0 + 200]
    assert not torch.allclose(placed, plain[0])  # bias, blur, noise, contrast: other intensities


def test_backbones_give_five_levels_at_the_fcos_strides():
    features = build_backbone("tiny")(torch.zeros(1, 1, 128, 128))
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match="unknown|Unknown"):
        build_backbone("vgg")


def test_detector_trains_and_weights_round_trip(tmp_path):
    spec = vertebra_spec(image_size=128, input_spacing_mm=1.25)
    model = build_detector(spec)
    images = [torch.rand(1, 128, 128), torch.rand(1, 96, 160)]  # physical inputs differ in size
    l3 = spec.class_of_label()[level_to_class("L3") - 1]
    targets = [{"boxes": torch.tensor([[20.0, 30, 60, 60]]), "labels": torch.tensor([l3])}] * 2
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    again = build_detector(spec, weights=path)
    assert torch.equal(
        again.state_dict()["head.classification_head.cls_logits.weight"],
        model.state_dict()["head.classification_head.cls_logits.weight"],
    )
    with pytest.raises(FileNotFoundError):
        build_detector(spec, weights=tmp_path / "missing.pt")


def test_postprocess_merges_classes_of_one_body_and_decodes_levels_from_the_anchors():
    spec = vertebra_spec(score_threshold=0.3)
    cls = {name: i + 1 for i, name in enumerate(VERTEBRA_CLASSES)}
    boxes = torch.tensor([[10.0, 10, 50, 40], [11, 11, 50, 41], [10, 52, 50, 82], [10, 94, 50, 124], [12, 95, 50, 125]])
    scores = torch.tensor([0.9, 0.2, 0.85, 0.9, 0.1])
    labels = torch.tensor([cls["vertebra"], cls["L5"], cls["L5"], cls["S1"], cls["vertebra"]])
    out = postprocess({"boxes": boxes, "scores": scores, "labels": labels}, spec)
    assert len(out) == 3  # the candidates on one body are one detection
    ordered = sorted(out, key=lambda d: d["box_xyxy"][1])
    assert [d["class_name"] for d in ordered] == ["L4", "L5", "S1"]
    assert [d["level_status"] for d in ordered] == ["identified"] * 3
    assert all(len(d["level_scores"]) == len(LEVELS) for d in out)
    assert ordered[2]["level_scores"][LEVELS.index("S1")] == pytest.approx(0.9)
    # Without an anchor the frame's levels are uncertain, and not named.
    plain_bodies = postprocess(
        {"boxes": boxes[:3], "scores": scores[:3], "labels": torch.ones(3, dtype=torch.int64)}, spec
    )
    assert {d["level_status"] for d in plain_bodies} == {"uncertain"} and {d["class_index"] for d in plain_bodies} == {
        0
    }
    plain = DetectorSpec(name="x", label="x", kind="plain", classes=("a",), score_threshold=0.75)
    assert len(postprocess({"boxes": boxes, "scores": scores, "labels": torch.ones(5, dtype=torch.int64)}, plain)) == 3
    assert LEVELS[0] == "C2"


def test_an_untrained_lesion_detector_gives_boxes_with_area():
    from radlake.models.detector import schmorl_spec

    torch.manual_seed(0)
    model = build_detector(schmorl_spec(image_size=64, score_threshold=0.0)).eval()
    with torch.inference_mode():
        [output] = model([torch.rand(1, 64, 64)])
    boxes = output["boxes"]
    assert len(boxes) > 0
    # Every box has width and height: the distance ReLU does not start at its dead zone.
    assert bool(((boxes[:, 2] - boxes[:, 0]) > 1).all() and ((boxes[:, 3] - boxes[:, 1]) > 1).all())
