"""One epoch of training and batched prediction (torchvision detection references' ``engine.py``).

Boxes in targets and raw outputs are network-input pixels; :func:`predict` maps
predictions and truth back to source pixels with each frame's ``geometry``
(:class:`radlake.models.preprocess.FrameGeometry`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
import torch

from radlake.models.detector import DetectorSpec, detections_as_arrays, postprocess
from radlake.train.metrics import ImageResult


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite (the run stops instead of logging garbage)."""


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    device: torch.device,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train over ``batches`` of ``(images, targets)``; returns the mean of each loss part, ``loss`` and ``steps``.

    ``should_stop`` is asked before every step (a wall-time budget; under DDP it must give
    the same answer on every rank). ``all_reduce`` averages the loss sums over ranks.
    """
    model.train()
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    started = time.perf_counter()
    for images, targets in batches:
        if should_stop():
            break
        images = [image.to(device) for image in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        parts = model(images, targets)
        loss = sum(parts.values())
        if not math.isfinite(float(loss.detach())):
            raise NonFiniteLossError(
                f"loss is {float(loss)} at step {steps}: { ({k: float(v) for k, v in parts.items()}) }"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        for key, value in parts.items():
            sums[key] += float(value.detach())
        sums["loss"] += float(loss.detach())
        steps += 1
    names = sorted(sums)
    totals = torch.tensor([sums[n] for n in names] + [float(steps)], dtype=torch.float64)
    if all_reduce is not None:
        totals = all_reduce(totals)
    n = max(1.0, float(totals[-1]))
    out = {name: float(totals[i]) / n for i, name in enumerate(names)}
    out["steps"] = float(steps)
    out["seconds"] = time.perf_counter() - started
    return out


@torch.inference_mode()
def predict(model: torch.nn.Module, spec: DetectorSpec, batches: Iterable, device: torch.device) -> list[ImageResult]:
    """Predictions and truth of every frame in ``batches`` (from an evaluation loader), in source pixels.

    A level detector's levels are decoded per series stack, as the scoring job does
    (:func:`radlake.models.levels.label_frames` over the frames sharing a ``series_key``;
    a frame without one alone): predicted classes are 1-based level indices, 0 where the
    level is uncertain, and bodies outside the labelled levels (a sacral segment below S1,
    a false detection) are not reported.
    """
    was_training = model.training
    model.eval()
    frames: list[tuple[dict, list[dict]]] = []
    for images, targets in batches:
        outputs = model([image.to(device) for image in images])
        for output, target in zip(outputs, targets, strict=True):
            found = postprocess(output, spec)
            geometry = target["geometry"]
            for d in found:
                d["box"] = geometry.boxes_to_source([d["box_xyxy"]])[0].tolist()
            frames.append((target, found))
    model.train(was_training)
    if spec.kind == "level":
        _label_stacks(frames, spec.level_min_probability)
    results = []
    for target, found in frames:
        kept = [d for d in found if d.get("level_status") != "outside"]
        _, scores, classes = detections_as_arrays(kept)
        results.append(
            ImageResult(
                study_uid=str(target.get("study_instance_uid", "")),
                sop_instance_uid=str(target.get("sop_instance_uid", "")),
                frame_index=int(target.get("frame_index", 0)),
                pred_boxes=np.array([d["box"] for d in kept], np.float32).reshape(-1, 4),
                pred_scores=scores,
                pred_classes=classes,
                true_boxes=target["geometry"].boxes_to_source(target["boxes"].numpy()).astype(np.float32),
                true_classes=target["labels"].numpy(),
            )
        )
    return results


def _label_stacks(frames: list[tuple[dict, list[dict]]], min_probability: float) -> None:
    """Relabel each frame's detections with its stack's decoding (in place)."""
    from radlake.models.levels import LEVELS, label_frames

    stacks: dict[object, list[int]] = defaultdict(list)
    for i, (target, _) in enumerate(frames):
        stacks[target.get("series_key") or ("frame", i)].append(i)
    for members in stacks.values():
        rows = [
            {
                "vertebrae": frames[i][1],
                "pixel_spacing": frames[i][0].get("pixel_spacing"),
                "slice_index": frames[i][0].get("slice_index"),
            }
            for i in members
        ]
        for i, decisions in zip(members, label_frames(rows, min_probability=min_probability), strict=True):
            for d, decision in zip(frames[i][1], decisions, strict=True):
                d["level_status"] = decision.status.value
                d["level_probability"] = decision.probability
                d["class_name"] = decision.level
                d["class_index"] = LEVELS.index(decision.level) + 1 if decision.level else 0
