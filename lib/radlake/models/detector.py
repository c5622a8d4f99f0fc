"""The detector: torchvision's FCOS over a grey-image backbone, and its post-processing.

:class:`DetectorSpec` is everything needed to rebuild a trained network and read its
output; it is saved beside the weights in the MLflow model. Two kinds of detector:

- ``level`` (the vertebra detector): one class per vertebral level
  (:data:`radlake.models.levels.LEVELS`). Post-processing merges the per-class
  candidates of one body with class-agnostic NMS and labels the bodies of an image
  as consecutive levels (:func:`radlake.models.levels.assign_levels`).
- ``plain`` (e.g. Schmorl's nodes): its classes as they are, class-aware NMS.

Boxes are ``xyxy`` pixels of the network input inside this module; callers map them to
source pixels with the frame's :class:`radlake.models.preprocess.Letterbox`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou, nms

from radlake.models.backbones import STRIDES, build_backbone
from radlake.models.levels import LEVELS, assign_levels

#: Initial box-distance output of plain detectors, in anchor sizes (see :func:`build_detector`).
REGRESSION_BIAS = 1.0
#: Candidate score floor inside FCOS; the spec's ``score_threshold`` filters the final output.
_CANDIDATE_SCORE = 0.05


@dataclass(frozen=True)
class DetectorSpec:
    """A detector's architecture and output vocabulary.

    Attributes
    ----------
    name
        Detector name, e.g. ``"vertebra"``.
    label
        ``label`` of every output detection, e.g. ``"vertebra"``.
    kind
        ``"level"`` (classes are vertebral levels) or ``"plain"``.
    classes
        Class names; class index ``i + 1`` is ``classes[i]`` (0 is background).
    backbone
        A name from :data:`radlake.models.backbones.BACKBONES`.
    image_size
        Side of the square network input, pixels.
    score_threshold, nms_iou, detections_per_image
        Post-processing: lowest score kept, NMS IoU, most detections per image.
    """

    name: str
    label: str
    kind: Literal["level", "plain"]
    classes: tuple[str, ...]
    backbone: str = "tiny"
    image_size: int = 256
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    detections_per_image: int = 30
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """FCOS ``num_classes``: the classes plus background."""
        return len(self.classes) + 1

    def as_dict(self) -> dict:
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict) -> DetectorSpec:
        return cls(**{**data, "classes": tuple(data["classes"])})


def vertebra_spec(**settings) -> DetectorSpec:
    """The vertebra detector: one class per level of :data:`LEVELS`."""
    return DetectorSpec(name="vertebra", label="vertebra", kind="level", classes=LEVELS, **settings)


def schmorl_spec(**settings) -> DetectorSpec:
    """The Schmorl's-node detector: one class, run on vertebra crops (:mod:`radlake.models.crops`)."""
    return DetectorSpec(name="schmorl", label="schmorl_node", kind="plain", classes=("schmorl_node",), **settings)


def build_detector(spec: DetectorSpec, weights: str | Path | None = None) -> FCOS:
    """A torchvision FCOS for ``spec``, randomly initialised unless ``weights`` names a local file.

    ``weights`` may hold a whole detector's ``state_dict`` or a backbone's (keys that do
    not fit are reported in the raised error, never silently dropped). Nothing is downloaded.

    Raises
    ------
    FileNotFoundError
        If ``weights`` does not exist.
    ValueError
        If the weights fit neither the detector nor its backbone.
    """
    backbone = build_backbone(spec.backbone)
    model = FCOS(
        backbone,
        num_classes=spec.num_classes,
        min_size=spec.image_size,
        max_size=spec.image_size,
        image_mean=[0.5],
        image_std=[0.25],
        anchor_generator=AnchorGenerator(sizes=tuple((s,) for s in STRIDES), aspect_ratios=((1.0,),) * len(STRIDES)),
        score_thresh=_CANDIDATE_SCORE,
        nms_thresh=0.6,
        detections_per_img=max(100, 4 * spec.detections_per_image),
        topk_candidates=1000,
    )
    if spec.kind == "plain":
        # torchvision's FCOS passes box distances through a ReLU from a conv initialised at
        # zero: small objects (few positive locations) let it die at 0 and every box comes out
        # empty (seen on Schmorl's nodes: right centres, zero width). Start at one anchor size.
        torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
    if weights is not None:
        _load_weights(model, Path(weights))
    return model


def _load_weights(model: FCOS, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    for target in (model, model.backbone, getattr(model.backbone, "body", None)):
        if target is None:
            continue
        result = target.load_state_dict(state, strict=False)
        if not result.unexpected_keys and len(result.missing_keys) < len(target.state_dict()):
            return
    raise ValueError(f"Weights in {path} fit neither the detector nor its backbone")


def postprocess(output: dict[str, torch.Tensor], spec: DetectorSpec) -> list[dict]:
    """One image's FCOS output → detections ``{class_index, class_name, score, box_xyxy}`` (network pixels).

    For ``level`` detectors the candidates of all classes are merged per body
    (class-agnostic NMS) and levels assigned as a consecutive run.
    """
    boxes, scores, labels = output["boxes"].detach().cpu(), output["scores"].detach().cpu(), output["labels"].cpu()
    if spec.kind == "plain":
        keep = (scores >= spec.score_threshold).nonzero().flatten()[: spec.detections_per_image]
        return [
            {
                "class_index": int(labels[i]),
                "class_name": spec.classes[int(labels[i]) - 1],
                "score": float(scores[i]),
                "box_xyxy": boxes[i].tolist(),
            }
            for i in keep
        ]
    if boxes.numel() == 0:
        return []
    kept = nms(boxes, scores, spec.nms_iou)
    kept = kept[scores[kept] >= spec.score_threshold][: spec.detections_per_image]
    if kept.numel() == 0:
        return []
    # Level scores of each kept body: the best candidate score per class among the candidates on it.
    overlap = box_iou(boxes[kept], boxes) >= 0.5  # (K, N)
    per_class = torch.zeros((len(kept), spec.num_classes))
    weighted = torch.where(overlap, scores[None, :], torch.zeros(()))
    per_class.scatter_reduce_(1, labels[None, :].expand(len(kept), -1), weighted, reduce="amax")
    kept_boxes = boxes[kept]
    centers = ((kept_boxes[:, 1] + kept_boxes[:, 3]) / 2).numpy()
    levels = assign_levels(centers, per_class[:, 1:].numpy())
    return [
        {
            "class_index": int(level) + 1,
            "class_name": spec.classes[int(level)],
            "score": float(scores[k]),
            "box_xyxy": kept_boxes[j].tolist(),
        }
        for j, (k, level) in enumerate(zip(kept, levels, strict=True))
    ]


def detections_as_arrays(detections: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes ``(N, 4)``, scores ``(N,)``, class indices ``(N,)``) of a detection list."""
    if not detections:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return (
        np.array([d["box_xyxy"] for d in detections], np.float32),
        np.array([d["score"] for d in detections], np.float32),
        np.array([d["class_index"] for d in detections], np.int64),
    )
