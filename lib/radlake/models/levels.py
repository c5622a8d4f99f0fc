"""Vertebral levels: the vocabulary, and labelling the detected bodies of a frame or a stack as one sequence.

A level is not something one box shows: L3 and L4 look alike. It follows from the
position of a body in the column, counted from a body that *is* recognisable. The
vertebra detector therefore reports, per body, evidence for a few classes (a plain
``vertebra`` and the anchors ``L5`` and ``S1``: the lumbosacral junction is what a
radiologist counts from in a lumbar study), and this module decodes the levels of all
bodies jointly, as SpineNet (Windsor et al. 2020) does with its beam search over a
self-consistent sequence:

1. **Bodies in order.** The bodies are ordered along the spine, head to feet
   (positions in mm along the cranio-caudal direction of the image plane).
2. **One sequence.** Each body is a level or *none* (a sacral segment below S1, a
   false detection). Labelled bodies get strictly increasing levels going caudally; a
   step of one level is expected, a step of two or three means bodies were missed in
   between, and how likely each is follows from the distance between the two bodies in
   units of their box height (adjacent box centres are about 1.1 box heights apart).
   The exact posterior of every body's level is computed by forward-backward over this
   semi-Markov chain (:func:`decode_levels`); the labels are the most probable joint
   sequence (Viterbi), each with its posterior probability.
3. **Uncertain when nothing anchors the count.** Without an anchor in view (a series
   cut above L5) every offset of the sequence is equally likely, the posterior of each
   level is low, and the body is marked *uncertain* instead of named
   (:attr:`LevelDecoding.uncertain`).
4. **Stacks.** A vertebra on neighbouring sagittal slices is the same vertebra:
   :func:`link_tracks` joins the bodies of a stack's frames by their place along the
   spine in the image plane (patient coordinates, mm), the evidence of each track is
   pooled, and the stack is decoded once (:func:`label_stack`, :func:`label_frames`), so
   the mid-sagittal slices, where S1 is clear, label the lateral ones.

The constants below were set on the synthetic ground truth and on the demo archive's own
validation and test series (never on an evaluation archive); each says what it was set on.

Coordinates: ``positions_mm`` are along the cranio-caudal axis of the image plane,
increasing towards the feet; in-plane centres ``(u, v)`` are mm along the rows' and the
columns' direction cosines (ImageOrientationPatient) from a point of the plane.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from radlake.vocabulary import LevelStatus

#: Every level the vertebra detector knows, cranial to caudal (C2 … S1).
LEVELS: tuple[str, ...] = (
    *(f"C{i}" for i in range(2, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)),
    "S1",
)
#: Bodies that identify their own level: the lowest lumbar body and the first sacral one.
ANCHOR_LEVELS: tuple[str, ...] = ("L5", "S1")
#: Classes of the vertebra detector: any other labelled body, then one class per anchor.
VERTEBRA_CLASSES: tuple[str, ...] = ("vertebra", *ANCHOR_LEVELS)
#: Distance along the spine between the box centres of two adjacent bodies, in units of the taller
#: box's height, and its relative spread: on the synthetic ground truth the median is 1.10
#: (5th-95th percentile 0.83-1.26; the tilted S1 under L5 is the low end); off the midline the
#: boxes shrink while the centres keep their distance, hence the wider spread.
STEP_RATIO, STEP_SD = 1.1, 0.2
#: A box shorter than this share of the sequence's median height (cut by the image edge) does not set the step.
MIN_HEIGHT_SHARE = 0.6
#: Prior of a step of 1, 2 or 3 levels between two consecutive labelled bodies (2, 3: bodies missed).
SKIP_PRIOR = (0.94, 0.05, 0.01)
#: Evidence that a body of confidence c is no labelled vertebra: ``NONE_WEIGHT * (1 - c) ** 2``, against
#: ``c / SHARED_CLASS_DIVISOR`` for each level of a plain body. A weak detection (a sacral segment
#: at 0.4) may well be none; a confident one (0.8) hardly: otherwise calling the one anchor in
#: view "none" leaves every count of the bodies above it open.
NONE_WEIGHT = 1.0 / 3.0
#: Most views of one vertebra (frames of a stack) whose evidence counts as independent.
MAX_VIEWS = 3.0
#: The score of ``vertebra`` (one of 22 levels) is divided by this to give each of its levels'
#: evidence. In theory by 22; but an anchor class's score on a plain body is not calibrated to be
#: that small (0.1-0.2 where the body scores 0.8 as ``vertebra``), and a divisor above 4 let it
#: name plain bodies L5. On the demo archive's own validation and test series (8 stacks, 713
#: bodies; no evaluation archive was used) divisors 2-4 named every level right, 1 left a
#: stack uncertain, 8 and 22 shifted stacks.
SHARED_CLASS_DIVISOR = 3.0
#: Pooled over a track, each view's evidence weighs (score × box area) ** VIEW_WEIGHT_POWER.
VIEW_WEIGHT_POWER = 3.0
#: Default posterior below which a body's level is reported as uncertain.
MIN_LEVEL_PROBABILITY = 0.8
_EPS = 1e-4


def level_to_class(level: str) -> int:
    """1-based index of ``level`` in :data:`LEVELS` (0 is background).

    Raises
    ------
    ValueError
        For a name that is not in :data:`LEVELS`.
    """
    try:
        return LEVELS.index(level) + 1
    except ValueError:
        raise ValueError(f"Unknown vertebral level {level!r}; known levels are {', '.join(LEVELS)}") from None


def class_to_level(index: int) -> str:
    """Inverse of :func:`level_to_class`."""
    return LEVELS[int(index) - 1]


def class_of_level(classes: Sequence[str]) -> np.ndarray:
    """``(len(LEVELS),)`` int: the 0-based detector class that stands for each level.

    A class named like a level stands for that level; ``vertebra`` stands for every
    level without a class of its own. With ``classes == LEVELS`` (detectors logged
    before the anchor classes) every level is its own class.

    Raises
    ------
    ValueError
        If a level has no class (no ``vertebra`` class and no class of that name).
    """
    out = np.full(len(LEVELS), -1, dtype=np.int64)
    for i, name in enumerate(classes):
        if name in LEVELS:
            out[LEVELS.index(name)] = i
    if "vertebra" in classes:
        out[out < 0] = list(classes).index("vertebra")
    if (out < 0).any():
        missing = [LEVELS[i] for i in np.flatnonzero(out < 0)]
        raise ValueError(f"Argument 'classes' {list(classes)} has no class for levels {missing}")
    return out


def level_scores(class_scores: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """``(N, len(classes))`` detector class scores → ``(N, len(LEVELS))`` evidence per level.

    The score of a class that stands for several levels (``vertebra``) is shared among
    them, divided by :data:`SHARED_CLASS_DIVISOR`; an anchor class names one level.
    Without the split every count of a chain of plain bodies would weigh as much as the
    anchored one, and the one anchor in view would be outvoted by the number of other
    counts.
    """
    scores = np.asarray(class_scores, dtype=np.float64).reshape(-1, len(classes))
    owner = class_of_level(classes)
    shared = np.bincount(owner, minlength=len(classes))[owner] > 1
    return scores[:, owner] / np.where(shared, SHARED_CLASS_DIVISOR, 1.0)


@dataclass(frozen=True)
class LevelDecoding:
    """The labels of a sequence of bodies, in the input order.

    Attributes
    ----------
    levels
        ``(N,)`` int: 0-based index into :data:`LEVELS`, or -1 for a body that is no
        labelled vertebra (a sacral segment below S1, a false detection).
    probability
        ``(N,)`` float: posterior probability of the level in ``levels`` given that the
        body is a vertebra; for a body labelled -1, the probability that it is none.
    uncertain
        ``(N,)`` bool: a labelled body whose level has a posterior under the threshold.
    """

    levels: np.ndarray
    probability: np.ndarray
    uncertain: np.ndarray

    def names(self) -> list[str | None]:
        """Level names; ``None`` for uncertain bodies and for bodies that are not labelled."""
        return [
            LEVELS[int(level)] if level >= 0 and not unsure else None
            for level, unsure in zip(self.levels, self.uncertain, strict=True)
        ]


def _step_log_likelihood(distance: float, height: float) -> np.ndarray:
    """``(3,)`` log P(distance | a step of 1, 2, 3 levels) + log prior, for two bodies whose taller box is ``height``."""
    ratio = distance / max(height * STEP_RATIO, _EPS)
    k = np.arange(1, len(SKIP_PRIOR) + 1, dtype=np.float64)
    var = STEP_SD**2 * k
    return np.log(SKIP_PRIOR) - 0.5 * (ratio - k) ** 2 / var - 0.5 * np.log(2 * np.pi * var)


def _logsumexp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def decode_levels(
    positions_mm: np.ndarray,
    heights_mm: np.ndarray,
    scores: np.ndarray,
    confidence: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    none_weight: float | None = None,
    min_probability: float = MIN_LEVEL_PROBABILITY,
) -> LevelDecoding:
    """Label a sequence of bodies jointly (see the module docstring).

    Parameters
    ----------
    positions_mm
        ``(N,)`` position of each body's centre along the spine, increasing towards the
        feet (any unit, as long as ``heights_mm`` has the same).
    heights_mm
        ``(N,)`` height of each body along the spine (same unit as the positions).
    scores
        ``(N, len(LEVELS))`` evidence in [0, 1] for each level (:func:`level_scores`).
    confidence
        ``(N,)`` detection confidence of each body (its score).
    weights
        ``(N,)`` how many independent views each body's evidence stands for (its log
        evidence is multiplied by it); default 1 (one frame).
    none_weight
        Weight of the *none* label against a level (its evidence is ``none_weight *
        (1 - confidence) ** 2``); default :data:`NONE_WEIGHT`.
    min_probability
        Posterior under which a labelled body is marked uncertain.

    Returns
    -------
    LevelDecoding
        Labels in the input order.

    Raises
    ------
    ValueError
        If the shapes do not agree.
    """
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1)
    heights = np.asarray(heights_mm, dtype=np.float64).reshape(-1)
    evidence = np.asarray(scores, dtype=np.float64)
    n = len(positions)
    if heights.shape != (n,) or evidence.shape != (n, len(LEVELS)) or np.shape(confidence) != (n,):
        raise ValueError(
            f"Arguments must have shapes (N,), (N,), (N, {len(LEVELS)}), (N,), got "
            f"{positions.shape}, {heights.shape}, {evidence.shape}, {np.shape(confidence)}"
        )
    if n == 0:
        empty = np.zeros(0)
        return LevelDecoding(empty.astype(np.int64), empty, empty.astype(bool))
    order = np.argsort(positions, kind="stable")
    pos, hgt, ev = positions[order], heights[order], np.clip(evidence[order], 0.0, 1.0)
    n_levels = len(LEVELS)
    views = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)[order]
    sure = np.clip(np.asarray(confidence, dtype=np.float64).reshape(-1), 0.0, 1.0)[order]
    emit = views[:, None] * np.log(ev + _EPS)  # (N, L)
    weight = NONE_WEIGHT if none_weight is None else none_weight
    none = views * np.log(weight * (1.0 - sure) ** 2 + _EPS)  # (N,)
    cum_none = np.concatenate([[0.0], np.cumsum(none)])  # cum_none[t] = sum of none[:t]
    step = _transitions(pos, hgt, cum_none)
    start = np.log(1.0 / n_levels) + cum_none[:n]  # (N,): bodies before the first labelled one are none
    end = cum_none[n] - cum_none[1:]  # (N,): bodies after the last labelled one are none
    alpha, best, back = _forward(emit, step, start)
    beta = _backward(emit, step, end)
    all_none = np.log(1.0 / n_levels) + cum_none[n]
    log_z = _logsumexp(np.concatenate([(alpha + end[:, None]).ravel(), [all_none]]))
    marginal = np.exp(alpha + beta - log_z)  # (N, L): P(body labelled ℓ)
    levels_sorted = _best_path(best, back, end, all_none)
    labelled = marginal.sum(axis=1)
    # A labelled body's probability is that of its level given that it is a vertebra (whether it
    # is one at all is the detector's score); a body left out has the probability of that.
    prob_sorted = np.where(
        levels_sorted >= 0,
        marginal[np.arange(n), np.maximum(levels_sorted, 0)] / np.maximum(labelled, _EPS),
        1.0 - labelled,
    )
    prob_sorted = np.clip(prob_sorted, 0.0, 1.0)
    out_levels = np.empty(n, dtype=np.int64)
    out_prob = np.empty(n)
    out_levels[order], out_prob[order] = levels_sorted, prob_sorted
    return LevelDecoding(out_levels, out_prob, (out_levels >= 0) & (out_prob < min_probability))


def _transitions(pos: np.ndarray, hgt: np.ndarray, cum_none: np.ndarray) -> np.ndarray:
    """``step[i, j, k-1]``: log P(body j is k levels below body i, both labelled, none between).

    ``pos`` and ``hgt`` are sorted head to feet; ``cum_none[t]`` is the log evidence of
    *none* summed over the first ``t`` bodies.
    """
    n, k_max = len(pos), len(SKIP_PRIOR)
    step = np.full((n, n, k_max), -np.inf)
    floor = MIN_HEIGHT_SHARE * float(np.median(hgt))
    for i in range(n):
        for j in range(i + 1, n):
            scale = max(hgt[i], hgt[j], floor)
            step[i, j] = _step_log_likelihood(pos[j] - pos[i], scale) + (cum_none[j] - cum_none[i + 1])
    return step


def _shifted(values: np.ndarray, k: int) -> np.ndarray:
    """values[ℓ - k] at ℓ (−inf where ℓ - k < 0)."""
    out = np.full(len(values), -np.inf)
    out[k:] = values[: len(values) - k]
    return out


def _forward(emit: np.ndarray, step: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward sums and maxima over "body j is labelled ℓ and is the latest labelled body so far".

    Returns ``alpha`` (log sums), ``best`` (log maxima) and ``back`` (the previous body and
    level on the best path to each state; -1 where it starts).
    """
    n, n_levels = emit.shape
    k_max = step.shape[2]
    alpha = np.full((n, n_levels), -np.inf)
    best = np.full((n, n_levels), -np.inf)
    back = np.full((n, n_levels, 2), -1, dtype=np.int64)  # (previous body, previous level) of the best path
    for j in range(n):
        terms = [np.full(n_levels, start[j])]
        best_j = np.full(n_levels, start[j])
        for i in range(j):
            for k in range(1, k_max + 1):
                if not np.isfinite(step[i, j, k - 1]):
                    continue
                terms.append(_shifted(alpha[i], k) + step[i, j, k - 1])
                cand = _shifted(best[i], k) + step[i, j, k - 1]
                better = cand > best_j
                best_j = np.where(better, cand, best_j)
                back[j, better] = np.stack([np.full(better.sum(), i), np.flatnonzero(better) - k], axis=1)
        alpha[j] = emit[j] + _logsumexp(np.stack(terms), axis=0)
        best[j] = emit[j] + best_j
    return alpha, best, back


def _backward(emit: np.ndarray, step: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``beta[i, ℓ]``: log evidence of everything after body i given that i is labelled ℓ."""
    n, n_levels = emit.shape
    k_max = step.shape[2]
    beta = np.full((n, n_levels), -np.inf)
    for i in range(n - 1, -1, -1):
        terms = [np.full(n_levels, end[i])]
        for j in range(i + 1, n):
            for k in range(1, k_max + 1):
                nxt = np.full(n_levels, -np.inf)
                nxt[: n_levels - k] = (emit[j] + beta[j])[k:]
                terms.append(nxt + step[i, j, k - 1])
        beta[i] = _logsumexp(np.stack(terms), axis=0)
    return beta


def _best_path(best: np.ndarray, back: np.ndarray, end: np.ndarray, all_none: float) -> np.ndarray:
    """The most probable joint labelling (level index per body, -1 for none), traced back from its end."""
    levels = np.full(len(best), -1, dtype=np.int64)
    finals = best + end[:, None]
    if finals.max() > all_none:
        j, level = np.unravel_index(int(np.argmax(finals)), finals.shape)
        while j >= 0:
            levels[j] = level
            j, level = back[j, level]
    return levels


@dataclass(frozen=True)
class Body:
    """One detected vertebral body on one frame of a stack.

    Attributes
    ----------
    slice_position_mm
        Position of the frame along the stack's normal, mm (orders the frames).
    center_uv_mm
        ``(u, v)``: the box centre in the image plane, mm along the row and the column
        direction cosines from a point shared by the stack.
    size_uv_mm
        ``(width, height)`` of the box, mm along the same directions.
    caudal_uv
        ``(2,)`` unit vector in the image plane pointing to the feet.
    score
        Detection confidence.
    level_scores
        ``(len(LEVELS),)`` evidence per level (:func:`level_scores`).
    """

    slice_position_mm: float
    center_uv_mm: tuple[float, float]
    size_uv_mm: tuple[float, float]
    caudal_uv: tuple[float, float]
    score: float
    level_scores: np.ndarray


def _along_and_across(body: Body) -> tuple[float, float, float, float]:
    """(start, end) of a body along the spine's caudal direction, its centre across it and its width across, mm."""
    cu, cv = body.caudal_uv
    u, v = body.center_uv_mm
    w, h = body.size_uv_mm
    along, across = u * cu + v * cv, u * cv - v * cu
    half = 0.5 * (abs(w * cu) + abs(h * cv))
    return along - half, along + half, across, abs(w * cv) + abs(h * cu)


def link_tracks(bodies: Sequence[Body], *, min_overlap: float = 0.5) -> np.ndarray:
    """``(N,)`` track id of every body: the same vertebra on different frames of a stack.

    Bodies are taken by descending score; each joins the track it overlaps most along
    the spine (at least ``min_overlap`` of the shorter extent, and its centre within a
    body width across the spine), among the tracks with no body on its frame yet;
    otherwise it starts a track. Along the spine, not by box IoU: off the midline a body's
    box shrinks and shifts across the spine (scoliosis, an oblique stack) while its place
    along the spine stays.
    """
    extents = [_along_and_across(b) for b in bodies]
    track = np.full(len(bodies), -1, dtype=np.int64)
    members: list[list[int]] = []
    for index in sorted(range(len(bodies)), key=lambda i: -bodies[i].score):
        start, end, across, width = extents[index]
        here = bodies[index].slice_position_mm
        best, best_overlap = -1, min_overlap
        for t, rows in enumerate(members):
            if any(abs(bodies[r].slice_position_mm - here) < 1e-3 for r in rows):
                continue
            ref = extents[rows[0]]  # the track's clearest view
            overlap = min(end, ref[1]) - max(start, ref[0])
            shorter = max(min(end - start, ref[1] - ref[0]), _EPS)
            if abs(across - ref[2]) > max(width, ref[3]) or overlap / shorter < best_overlap:
                continue
            best, best_overlap = t, overlap / shorter
        if best < 0:
            members.append([index])
            track[index] = len(members) - 1
        else:
            members[best].append(index)
            track[index] = best
    return track


def label_stack(
    bodies: Sequence[Body], *, min_probability: float = MIN_LEVEL_PROBABILITY, none_weight: float | None = None
) -> LevelDecoding:
    """Levels of every body of one stack (or one frame), decoded once over the stack's vertebrae.

    Bodies are linked into tracks (:func:`link_tracks`); each track's evidence is the
    mean of its bodies' level scores weighted by (score × box area) ** 3, so that the
    clearest, mid-sagittal views of a body dominate (a lateral view of S1 may look like
    any body), its confidence the highest score of its bodies, its
    position the weighted mean centre projected on the caudal direction and its height
    the weighted mean box height. A track seen on several frames counts as that many
    independent views of its vertebra, up to :data:`MAX_VIEWS` (neighbouring slices
    share partial volume). Tracks are decoded with :func:`decode_levels` and every body
    takes its track's label.
    """
    if not bodies:
        return decode_levels(np.zeros(0), np.zeros(0), np.zeros((0, len(LEVELS))), np.zeros(0))
    track = link_tracks(bodies)
    n_tracks = int(track.max()) + 1
    # The clearest views of a vertebra (mid-sagittal: largest cross-section, highest score) dominate.
    weights = (
        np.array([max(b.score, _EPS) * max(b.size_uv_mm[0] * b.size_uv_mm[1], 1.0) for b in bodies])
        ** VIEW_WEIGHT_POWER
    )
    centres = np.array([b.center_uv_mm for b in bodies], dtype=np.float64)
    heights = np.array([b.size_uv_mm[1] for b in bodies], dtype=np.float64)
    evidence = np.stack([np.asarray(b.level_scores, dtype=np.float64) for b in bodies])
    caudal = np.mean([b.caudal_uv for b in bodies], axis=0)
    caudal = caudal / max(np.linalg.norm(caudal), _EPS)
    t_pos = np.zeros(n_tracks)
    t_height = np.zeros(n_tracks)
    t_scores = np.zeros((n_tracks, len(LEVELS)))
    t_confidence = np.zeros(n_tracks)
    scores = np.array([b.score for b in bodies], dtype=np.float64)
    for t in range(n_tracks):
        rows = track == t
        w = weights[rows] / weights[rows].sum()
        t_pos[t] = float(w @ centres[rows] @ caudal)
        t_height[t] = float(w @ heights[rows])
        t_scores[t] = w @ evidence[rows]
        t_confidence[t] = float(scores[rows].max())
    views = np.minimum(np.bincount(track, minlength=n_tracks), MAX_VIEWS).astype(np.float64)
    decoded = decode_levels(
        t_pos,
        t_height,
        t_scores,
        t_confidence,
        weights=views,
        none_weight=none_weight,
        min_probability=min_probability,
    )
    return LevelDecoding(decoded.levels[track], decoded.probability[track], decoded.uncertain[track])


@dataclass(frozen=True)
class LevelDecision:
    """What the decoding says of one body: its level (named only when identified), status and posterior."""

    level: str | None
    status: LevelStatus
    probability: float


def _evidence(vertebra: Mapping) -> np.ndarray:
    """A body's evidence per level; a detector without ``level_scores`` gives the level it named alone."""
    scores = vertebra.get("level_scores")
    if scores is not None and len(scores) == len(LEVELS):
        return np.asarray(scores, dtype=np.float64)
    out = np.full(len(LEVELS), 0.02 / len(LEVELS))
    if vertebra.get("level") in LEVELS:
        out[LEVELS.index(vertebra["level"])] = float(vertebra.get("score") or 0.5)
    return out


def label_frames(
    frames: Sequence[Mapping], *, min_probability: float = MIN_LEVEL_PROBABILITY
) -> list[list[LevelDecision]]:
    """Levels of the bodies of the frames of one stack, decoded once over the stack (:func:`label_stack`).

    Parameters
    ----------
    frames
        The stack's frames, each a mapping with ``vertebrae`` (each with ``box``, ``xyxy``
        pixels of the frame, ``score`` and ``level_scores``; or ``level`` alone, from
        detectors logged before the evidence) and, where known, ``position`` and
        ``orientation`` (ImagePositionPatient and ImageOrientationPatient),
        ``pixel_spacing`` (``[row, column]`` mm) and ``slice_index``. Without patient
        geometry the frames of a stack are taken as aligned pixel grids, rows running head to
        feet and frames ordered by ``slice_index``.
    min_probability
        Posterior under which a body's level is uncertain.

    Returns
    -------
    list of list of LevelDecision
        Per frame, one decision per vertebra, in the input order.
    """
    from radlake.dicom.geometry import in_plane_frame, slice_normal

    origin = next((f["position"] for f in frames if f.get("position") is not None), None)
    bodies: list[Body] = []
    where: list[tuple[int, int]] = []
    for i, frame in enumerate(frames):
        (u0, v0), (du, dv), caudal = in_plane_frame(
            position=frame.get("position"),
            orientation=frame.get("orientation"),
            pixel_spacing=frame.get("pixel_spacing"),
            origin=origin,
        )
        try:
            along = float(np.dot(slice_normal(frame["orientation"]), frame["position"]))
        except (KeyError, TypeError, ValueError):
            along = float(frame["slice_index"] if frame.get("slice_index") is not None else i)
        for k, v in enumerate(frame.get("vertebrae") or []):
            x0, y0, x1, y1 = (float(c) for c in v["box"])
            bodies.append(
                Body(
                    slice_position_mm=along,
                    center_uv_mm=(u0 + 0.5 * (x0 + x1) * du, v0 + 0.5 * (y0 + y1) * dv),
                    size_uv_mm=((x1 - x0) * du, (y1 - y0) * dv),
                    caudal_uv=caudal,
                    score=float(v["score"]),
                    level_scores=_evidence(v),
                )
            )
            where.append((i, k))
    decoded = label_stack(bodies, min_probability=min_probability)
    out: list[list[LevelDecision]] = [[None] * len(f.get("vertebrae") or []) for f in frames]  # type: ignore[list-item]
    for (i, k), level, probability, unsure in zip(
        where, decoded.levels, decoded.probability, decoded.uncertain, strict=True
    ):
        status = LevelStatus.of(int(level), bool(unsure))
        named = LEVELS[int(level)] if status is LevelStatus.IDENTIFIED else None
        out[i][k] = LevelDecision(named, status, round(float(probability), 4))
    return out
