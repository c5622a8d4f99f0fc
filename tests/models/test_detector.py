"""The FCOS detector, preprocessing, transforms and post-processing on real tensors."""

import numpy as np
import pytest
import torch

from radlake.config import AugmentConfig
from radlake.data.transforms import DetectionTransform
from radlake.dicom.pixels import encode_pixels
from radlake.models.backbones import build_backbone
from radlake.models.detector import DetectorSpec, build_detector, postprocess, vertebra_spec
from radlake.models.levels import LEVELS, level_to_class
from radlake.models.preprocess import letterbox, normalize_intensity


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


@pytest.mark.parametrize("augment", [None, AugmentConfig(noise_std=0, gamma_range=(1, 1))])
def test_transform_box_follows_the_bright_body(augment):
    torch.manual_seed(3)
    image, target = DetectionTransform(256, augment)(_row())
    assert image.shape == (1, 256, 256)
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    inside = image[0, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
    assert inside.min() > 0.5  # the box still sits on the bright block
    assert target["labels"].tolist() == [7]


def test_backbones_give_five_levels_at_the_fcos_strides():
    features = build_backbone("tiny")(torch.zeros(1, 1, 128, 128))
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match="unknown|Unknown"):
        build_backbone("vgg")


def test_detector_trains_and_weights_round_trip(tmp_path):
    spec = vertebra_spec(image_size=128)
    model = build_detector(spec)
    images = [torch.rand(1, 128, 128) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[20.0, 30, 60, 60]]), "labels": torch.tensor([level_to_class("L3")])}] * 2
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


def test_postprocess_merges_classes_of_one_body_and_orders_levels():
    spec = vertebra_spec(score_threshold=0.3)
    boxes = torch.tensor([[10.0, 10, 50, 40], [11, 11, 50, 41], [10, 60, 50, 90], [10, 110, 50, 140]])
    scores = torch.tensor([0.9, 0.6, 0.8, 0.7])
    labels = torch.tensor([level_to_class(x) for x in ("L1", "L2", "L1", "L3")])
    out = postprocess({"boxes": boxes, "scores": scores, "labels": labels}, spec)
    assert len(out) == 3  # the two candidates on the first body are one detection
    assert [d["class_name"] for d in sorted(out, key=lambda d: d["box_xyxy"][1])] == ["L1", "L2", "L3"]
    plain = DetectorSpec(name="x", label="x", kind="plain", classes=("a",), score_threshold=0.75)
    assert len(postprocess({"boxes": boxes, "scores": scores, "labels": torch.ones(4, dtype=torch.int64)}, plain)) == 2
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
