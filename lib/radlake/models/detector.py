"""The detector: torchvision's FCOS over a grey-image backbone, and its post-processing.

:class:`DetectorSpec` is everything needed to rebuild a trained network and read its
output; it is saved beside the weights in the MLflow model. Two kinds of detector:

- ``level`` (the vertebra detector): classes :data:`radlake.models.levels.VERTEBRA_CLASSES`
  (any vertebral body, and the anchors L5 and S1). Post-processing merges the
  per-class candidates of one body with class-agnostic NMS, keeps each body's score
  per class, and decodes the levels of the frame's bodies jointly
  (:func:`radlake.models.levels.decode_levels`); a stack of frames is decoded again
  as a whole by the scoring job (:func:`radlake.models.levels.label_stack`).
- ``plain`` (e.g. Schmorl's nodes): its classes as they are, class-aware NMS.

With ``input_spacing_mm`` the network sees frames resampled to that pixel size
(:func:`radlake.models.preprocess.resample_to_spacing`) at whatever size the field of
view gives: the FCOS transform normalises and pads but never resizes them. Without it
(detectors logged before, crops) inputs are ``image_size`` squares.

Boxes are ``xyxy`` pixels of the network input inside this module; callers map them to
source pixels with the frame's :class:`radlake.models.preprocess.FrameGeometry`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou, nms

from radlake.models.backbones import STRIDES, build_backbone
from radlake.models.levels import LEVELS, MIN_LEVEL_PROBABILITY, VERTEBRA_CLASSES, decode_levels, level_scores
from radlake.vocabulary import LevelStatus

#: Initial box-distance output, in anchor sizes (see :func:`build_detector`).
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
        ``"level"`` (bodies whose levels are decoded) or ``"plain"``.
    classes
        Class names; class index ``i + 1`` is ``classes[i]`` (0 is background). For a
        ``level`` detector: ``vertebra`` and anchor levels (or every level, for detectors
        logged before the anchor classes).
    backbone
        A name from :data:`radlake.models.backbones.BACKBONES`.
    image_size
        Side of the square training input, pixels (with ``input_spacing_mm``: of the
        random field-of-view crop; otherwise of every input, letterboxed).
    score_threshold, nms_iou, detections_per_image
        Post-processing: lowest score kept, NMS IoU, most detections per image.
    input_spacing_mm
        Pixel size (mm) frames are resampled to before the network; ``None`` letterboxes
        them to ``image_size`` instead.
    level_min_probability
        ``level`` detectors: posterior under which a body's level is reported uncertain.
    head_convs
        Conv layers of each FCOS head branch (torchvision's default: 4).
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
    input_spacing_mm: float | None = None
    level_min_probability: float = MIN_LEVEL_PROBABILITY
    head_convs: int = 4
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

    def class_of_label(self) -> list[int]:
        """Detector class (1-based) of each training label (index ``label - 1``).

        Labels of ``level`` detectors are 1-based indices into :data:`LEVELS`; of
        ``plain`` detectors, their own classes.
        """
        if self.kind != "level":
            return list(range(1, self.num_classes))
        from radlake.models.levels import class_of_level

        return [int(c) + 1 for c in class_of_level(self.classes)]


class _KeepSize(GeneralizedRCNNTransform):
    """FCOS's input transform without its resize: frames arrive at their physical pixel size."""

    def resize(self, image, target=None):
        return image, target


def vertebra_spec(**settings) -> DetectorSpec:
    """The vertebra detector: classes :data:`radlake.models.levels.VERTEBRA_CLASSES`, levels decoded."""
    return DetectorSpec(name="vertebra", label="vertebra", kind="level", classes=VERTEBRA_CLASSES, **settings)


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
        head=FCOSHead(backbone.out_channels, 1, spec.num_classes, num_convs=spec.head_convs),
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
    if spec.input_spacing_mm:
        model.transform = _KeepSize(
            min_size=spec.image_size, max_size=spec.image_size, image_mean=[0.5], image_std=[0.25]
        )
    # torchvision's FCOS passes box distances through a ReLU from a conv initialised at zero:
    # objects of a few strides (few positive locations) let it die at 0 (seen on Schmorl's
    # nodes: right centres, zero width). Start every distance at one anchor size.
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
    """One image's FCOS output → detections (network pixels).

    Every detection has ``class_index``, ``class_name``, ``score`` and ``box_xyxy``.
    For ``level`` detectors the candidates of all classes are merged per body
    (class-agnostic NMS), each body keeps its best candidate score per class, and the
    frame's bodies are decoded jointly: ``class_index`` is the 1-based index of the
    decoded level in :data:`LEVELS` (0 when uncertain or not a labelled vertebra),
    ``class_name`` that level (``None`` likewise), and the detection also carries
    ``level_status`` (:class:`radlake.models.levels.LevelStatus`), ``level_probability``
    (posterior of the decoded level) and ``level_scores`` (evidence per level, the input
    of a stack's decoding).
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
    # Scores of each kept body per class: the best candidate of that class on it.
    overlap = box_iou(boxes[kept], boxes) >= 0.5  # (K, N)
    per_class = torch.zeros((len(kept), spec.num_classes))
    weighted = torch.where(overlap, scores[None, :], torch.zeros(()))
    per_class.scatter_reduce_(1, labels[None, :].expand(len(kept), -1), weighted, reduce="amax")
    kept_boxes = boxes[kept].numpy().astype(np.float64)
    evidence = level_scores(per_class[:, 1:].numpy(), spec.classes)
    decoded = decode_levels(
        (kept_boxes[:, 1] + kept_boxes[:, 3]) / 2,
        kept_boxes[:, 3] - kept_boxes[:, 1],
        evidence,
        scores[kept].numpy(),
        min_probability=spec.level_min_probability,
    )
    out = []
    for j, k in enumerate(kept.tolist()):
        status = LevelStatus.of(int(decoded.levels[j]), bool(decoded.uncertain[j]))
        named = status is LevelStatus.IDENTIFIED
        out.append(
            {
                "class_index": int(decoded.levels[j]) + 1 if named else 0,
                "class_name": LEVELS[int(decoded.levels[j])] if named else None,
                "score": float(scores[k]),
                "box_xyxy": kept_boxes[j].tolist(),
                "level_status": status.value,
                "level_probability": float(decoded.probability[j]),
                "level_scores": [round(float(v), 6) for v in evidence[j]],
            }
        )
    return out


def detections_as_arrays(detections: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes ``(N, 4)``, scores ``(N,)``, class indices ``(N,)``) of a detection list."""
    if not detections:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return (
        np.array([d["box_xyxy"] for d in detections], np.float32),
        np.array([d["score"] for d in detections], np.float32),
        np.array([d["class_index"] for d in detections], np.int64),
    )
