"""Write a whole synthetic archive: studies (folders or .zip files), then ``labels.json``.

Layout of ``out_dir``::

    labels.json                      ground truth, see radlake.synth.labels
    study0000/SE02/IM0001.dcm        a study in folders: <study>/<series>/<file>
    study0001.zip                    a packed study; members <study>/<series>/<file> or <series>/<file>

Folder and file names carry no patient information. Some series' files have no ``.dcm``
suffix. Each study is generated from its own random stream, seeded by
``(config.seed, study index)``, so the archive does not depend on the number of worker
processes, and the same configuration writes the same bytes.

Examples
--------
>>> from radlake.synth.archive import generate_archive
>>> from radlake.synth.params import SynthConfig
>>> summary = generate_archive("/tmp/radlake-synth-doc", SynthConfig(studies=2, image_size=128))  # doctest: +SKIP
>>> summary.n_files  # doctest: +SKIP
44

"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from radlake import __version__
from radlake.console import Progress
from radlake.errors import RadlakeError
from radlake.summary import Summary
from radlake.synth.acquisition import BiasField, acquire, rose_visible, sample_bias, to_stored
from radlake.synth.anatomy import Fracture, Spine, sample_spine
from radlake.synth.codecs import CODEC_UIDS
from radlake.synth.labels import image_entry, write_labels
from radlake.synth.params import SynthConfig
from radlake.synth.phi import sample_identity
from radlake.synth.protocol import SeriesKind, SeriesPlan, plan_study
from radlake.synth.render import RenderedSlice, SliceGeometry, half_grid, render_slice, upsample_half
from radlake.synth.writer import InstanceContext, encode_instance, file_name, make_uid

__all__ = ["ArchiveExistsError", "SynthSummary", "generate_archive", "study_spine"]

#: Timestamp of every zip member (the earliest a zip file can hold), for byte-identical archives.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


class ArchiveExistsError(RadlakeError, FileExistsError):
    """The output folder of a synthetic archive exists and is not empty."""


@dataclass(frozen=True)
class SynthSummary(Summary):
    """What :func:`generate_archive` wrote.

    Attributes
    ----------
    out_dir: Path
        The archive folder.
    n_studies, n_series, n_files: int
        Studies, series and DICOM instances written (files inside zips included).
    n_zip_files: int
        Studies packed into ``.zip`` files.
    n_sagittal_images: int
        Images with an entry in ``labels.json``.
    n_vertebra_boxes, n_node_boxes: int
        Boxes in ``labels.json``.
    labels_path: Path
        ``out_dir / "labels.json"``.
    transfer_syntax_counts: Mapping[str, int]
        Instances per transfer syntax UID (e.g. ``"1.2.840.10008.1.2.4.80"``).
    seconds: float
        Wall-clock time of the call.
    """

    out_dir: Path
    n_studies: int
    n_series: int
    n_files: int
    n_zip_files: int
    n_sagittal_images: int
    n_vertebra_boxes: int
    n_node_boxes: int
    labels_path: Path
    transfer_syntax_counts: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def files_per_second(self) -> float:
        """DICOM instances written per second of wall-clock time."""
        return self.n_files / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings), with the time rounded and the rate of writing."""
        return {
            **super().as_dict(),
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.files_per_second, 2),
        }


@dataclass(frozen=True)
class _StudyResult:
    index: int
    study_uid: str
    study: dict[str, Any]
    images: dict[str, Any]
    n_series: int
    n_files: int
    zipped: bool
    codecs: dict[str, int]


def _content_key(config: SynthConfig) -> str:
    """Hash of the settings that change a study's content (not ``studies`` or ``zip_fraction``)."""
    relevant = config.model_dump(mode="json", exclude={"studies", "zip_fraction"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _zipped_studies(config: SynthConfig) -> set[int]:
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x5A1F]))
    count = int(round(config.zip_fraction * config.studies))
    return {int(i) for i in rng.permutation(config.studies)[:count]}


def _series_folder(plan: SeriesPlan, style: int) -> str:
    if style == 0:
        return f"SE{plan.number:02d}"
    if style == 1:
        return f"{plan.number:03d}_{plan.description.replace(' ', '_')}"
    return f"series{plan.number}"


def _study_summary(spine: Spine) -> dict[str, Any]:
    fractures = {v.level: v.fracture.value for v in spine.vertebrae.values() if v.fracture is not Fracture.NONE}
    nodes = {v.level: [e.value for e in v.nodes] for v in spine.vertebrae.values() if v.nodes}
    lesions = {
        v.level: sorted(set(v.lesions) - {"basivertebral"})
        for v in spine.vertebrae.values()
        if set(v.lesions) - {"basivertebral"}
    }
    return {
        "fractures": fractures,
        "degenerate_discs": [f"{d.upper}-{d.lower}" for d in spine.discs if d.degenerate],
        "nodes": nodes,
        "lesions": lesions,
    }


def _streams(config: SynthConfig, index: int) -> list[np.random.SeedSequence]:
    """The study's five independent random streams: anatomy, protocol, identity, noise, site.

    Children of one seed sequence by position, so adding a stream changes none of the others.
    """
    return np.random.SeedSequence([config.seed, index]).spawn(5)


@dataclass(frozen=True)
class Site:
    """What one study's site draws: matrix size (pixels), point-spread std (pixels), contrast power."""

    size: int
    blur_px: float
    contrast_gamma: float


def _sample_site(rng: np.random.Generator, config: SynthConfig) -> Site:
    sizes = config.matrix_sizes
    size = sizes[0] if len(sizes) == 1 else int(rng.choice(sizes))
    return Site(size, float(rng.uniform(*config.blur_px)), float(rng.uniform(*config.contrast_gamma)))


def study_spine(config: SynthConfig, index: int) -> Spine:
    """The anatomy of study ``index`` of the archive ``config`` describes (patient coordinates, LPS, mm).

    The same model the archive's images were drawn from: use it to check labels against
    the anatomy or to render extra views.

    Parameters
    ----------
    config: SynthConfig
        The archive's configuration (``labels.json`` holds it under ``config``).
    index: int
        Study index, 0 <= index < config.studies.

    Raises
    ------
    ValueError
        If ``index`` is out of range.
    """
    if not 0 <= index < config.studies:
        raise ValueError(f"Argument 'index' must be in [0, {config.studies}), got {index}.")
    return sample_spine(np.random.default_rng(_streams(config, index)[0]), config)


def _write_study(config: SynthConfig, index: int, zipped: bool, out_dir: str) -> _StudyResult:
    """Generate, write and (if ``zipped``) pack one study; returns its labels."""
    anatomy_ss, protocol_ss, identity_ss, noise_ss, site_ss = _streams(config, index)
    spine = sample_spine(np.random.default_rng(anatomy_ss), config)
    site = _sample_site(np.random.default_rng(site_ss), config)
    protocol_rng = np.random.default_rng(protocol_ss)
    scanner, plans = plan_study(protocol_rng, spine, config, codec_offset=3 * index + config.seed, size=site.size)
    identity = sample_identity(np.random.default_rng(identity_ss))
    noise_rng = np.random.default_rng(noise_ss)

    key = _content_key(config)
    study_uid = make_uid(key, config.seed, index, "study")
    frame_uid = make_uid(key, config.seed, index, "frame-of-reference")
    folder = f"study{index:04d}"
    series_style = int(protocol_rng.integers(3))
    nested = bool(protocol_rng.random() < 0.5)  # zip members under <study>/ or at the top
    snr = float(protocol_rng.uniform(*config.snr))
    peak = float(protocol_rng.uniform(0.45, 0.92)) * ((1 << scanner.bits_stored) - 1)
    if scanner.bits_stored == 16 and protocol_rng.random() < 0.6:  # many 16-bit scanners use a narrow range
        peak = float(protocol_rng.uniform(900.0, 6000.0))
    bias = sample_bias(noise_rng, spine.vertebrae["L3"].frame.origin, config.bias_strength)
    sigma = spine.tissue.marrow / snr

    files: list[tuple[str, bytes]] = []
    images: dict[str, Any] = {}
    codecs: Counter[str] = Counter()
    series_meta: dict[str, Any] = {}
    series_time = identity.study_time
    for plan in plans:
        series_uid = make_uid(key, config.seed, index, "series", plan.number)
        series_time = _later(series_time, 60 + int(protocol_rng.integers(60, 400)))
        ctx = InstanceContext(
            identity=identity,
            scanner=scanner,
            plan=plan,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=frame_uid,
            study_description="MRI LUMBAR SPINE",
            series_time=series_time,
        )
        series_dir = _series_folder(plan, series_style)
        sagittal = plan.kind is SeriesKind.SAGITTAL_T2
        transfer_syntax = str(CODEC_UIDS[plan.codec])
        for slice_index, geom in enumerate(plan.slices):
            instance_number = plan.instance_numbers[slice_index]
            sop_uid = make_uid(key, config.seed, index, "instance", plan.number, instance_number)
            rendered = render_slice(spine, geom, with_boxes=sagittal)
            gain = _gain(bias, geom)
            stored = _acquired(rendered, gain, site, plan, sigma=sigma, peak=peak, noise_rng=noise_rng)
            location = float(np.dot(geom.normal, np.asarray(geom.position)))
            data = encode_instance(
                ctx,
                geometry=geom,
                stored=stored,
                instance_number=instance_number,
                slice_location=location,
                sop_uid=sop_uid,
            )
            relative = f"{series_dir}/{file_name(plan, instance_number, sop_uid)}"
            files.append((relative, data))
            codecs[transfer_syntax] += 1
            if sagittal:
                member = f"{folder}/{relative}" if nested else relative
                rendered = _visible_nodes(rendered, gain, sigma=sigma, contrast_gamma=site.contrast_gamma)
                images[sop_uid] = image_entry(
                    rendered,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    path=f"{folder}.zip" if zipped else f"{folder}/{relative}",
                    member=member if zipped else None,
                    pixel_spacing=geom.pixel_spacing,
                    photometric="MONOCHROME1" if plan.monochrome1 else "MONOCHROME2",
                    instance_number=instance_number,
                    slice_index=slice_index,
                )
        series_meta[series_uid] = {
            "kind": plan.kind.value,
            "description": plan.description,
            "n_images": len(plan.slices),
            "transfer_syntax": transfer_syntax,
            "ghosting": round(plan.ghosting, 4),
        }

    _write_files(Path(out_dir), folder, files, zipped=zipped, nested=nested)

    study = {
        "index": index,
        "path": f"{folder}.zip" if zipped else folder,
        "series": series_meta,
        "manufacturer": scanner.manufacturer,
        **_study_summary(spine),
    }
    return _StudyResult(index, study_uid, study, images, len(plans), len(files), zipped, dict(codecs))


def _acquired(
    rendered: RenderedSlice,
    gain: np.ndarray,
    site,
    plan,
    *,
    sigma: float,
    peak: float,
    noise_rng: np.random.Generator,
):
    """The rendered tissue signal as the site's scanner stores it: contrast, bias, noise, ghosts, blur, bits."""
    # The site's contrast power acts on signal, which is never negative (the renderer's
    # soft edges can undershoot zero by a hair; a fractional power of that is nan).
    tissue_signal = np.maximum(rendered.image, 0.0) ** site.contrast_gamma
    magnitude = acquire(
        tissue_signal,
        gain,
        sigma=sigma,
        rng=noise_rng,
        ghosting=plan.ghosting,
        ghost_period=plan.ghost_period,
        phase_axis=0 if plan.phase_direction == "COL" else 1,
        blur_px=site.blur_px,
    )
    return to_stored(
        magnitude, bits_stored=plan.bits_stored, peak=peak, rescale=plan.rescale, monochrome1=plan.monochrome1
    )


def _write_files(root: Path, folder: str, files: list[tuple[str, bytes]], *, zipped: bool, nested: bool) -> None:
    """A study's files under ``root/folder``, or packed into ``root/folder.zip`` (members under ``folder/`` if nested)."""
    if zipped:
        with zipfile.ZipFile(root / f"{folder}.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for relative, data in sorted(files):
                info = zipfile.ZipInfo(f"{folder}/{relative}" if nested else relative, date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    else:
        for relative, data in files:
            target = root / folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def _visible_nodes(rendered: RenderedSlice, gain: np.ndarray, *, sigma: float, contrast_gamma: float) -> RenderedSlice:
    """``rendered`` with only the nodes a reader can see on the acquired image (:func:`rose_visible`).

    A node drawn in a slice but lost in its noise is not labelled there, as a reader would
    not mark it; the study summary still lists every node of the anatomy.
    """
    kept = []
    for node in rendered.nodes:
        x0, y0, x1, y1 = node.xyxy
        row = min(max(int((y0 + y1) / 2), 0), gain.shape[0] - 1)
        col = min(max(int((x0 + x1) / 2), 0), gain.shape[1] - 1)
        if rose_visible(
            node.signal, node.background, node.pixels, gain=float(gain[row, col]), sigma=sigma,
            contrast_gamma=contrast_gamma,
        ):  # fmt: skip
            kept.append(node)
    return replace(rendered, nodes=tuple(kept))


def _gain(bias: BiasField, geom: SliceGeometry) -> np.ndarray:
    """The bias field over one slice, evaluated on the half-resolution grid and interpolated (it is smooth)."""
    coarse = bias(geom.points(half_grid(geom.rows), half_grid(geom.columns)))
    return upsample_half(coarse, (geom.rows, geom.columns))


def _later(hhmmss: str, seconds: int) -> str:
    total = min(int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:6]) + seconds, 86399)
    return f"{total // 3600:02d}{(total % 3600) // 60:02d}{total % 60:02d}"


def _process_context() -> multiprocessing.context.BaseContext:
    """``fork`` when this process runs a single thread (fast, works from any script), else ``spawn``.

    Forking a process that holds other threads (a Spark driver's py4j threads, an MLflow
    client) can deadlock the child, so then workers are spawned; spawned workers re-import
    the caller's main module, which must guard its top level with ``if __name__ == "__main__":``.
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _run_one(args: tuple[SynthConfig, int, bool, str]) -> _StudyResult:
    return _write_study(*args)


def generate_archive(out_dir: str | os.PathLike[str], config: SynthConfig, *, workers: int = 1) -> SynthSummary:
    """Write a synthetic sagittal spine-MRI DICOM archive with ground truth.

    Parameters
    ----------
    out_dir: str | os.PathLike
        Folder to create; it must be absent or empty.
    config: SynthConfig
        What to generate (studies, seed, image size, lesion frequencies ...).
    workers: int
        Processes generating studies in parallel (>= 1); the result does not depend on it.
        Workers are forked when the caller runs a single thread and spawned otherwise
        (then a calling script needs an ``if __name__ == "__main__":`` guard).

    Returns
    -------
    SynthSummary
        Counts, paths and the wall-clock time.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`SynthConfig`.
    ValueError
        If ``workers`` is not a positive integer.
    ArchiveExistsError
        If ``out_dir`` exists and is not an empty folder.

    Examples
    --------
    >>> summary = generate_archive("/tmp/synth", SynthConfig(studies=4, seed=1), workers=2)  # doctest: +SKIP
    >>> summary.labels_path  # doctest: +SKIP
    PosixPath('/tmp/synth/labels.json')

    """
    if not isinstance(config, SynthConfig):
        raise TypeError(f"Argument 'config' must be a SynthConfig, got {type(config).__name__}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"Argument 'workers' must be an integer >= 1, got {workers!r}.")
    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArchiveExistsError(f"Argument 'out_dir' must be an absent or empty folder, got '{out}'.")
    out.mkdir(parents=True, exist_ok=True)

    zipped = _zipped_studies(config)
    tasks = [(config, i, i in zipped, str(out)) for i in range(config.studies)]
    progress = Progress(f"synth: writing {out}", total=config.studies, unit="studies")
    results = []
    if workers == 1 or config.studies == 1:
        for task in tasks:
            results.append(_run_one(task))
            progress.update(len(results))
    else:
        context = _process_context()
        with ProcessPoolExecutor(max_workers=min(workers, config.studies), mp_context=context) as pool:
            for result in pool.map(_run_one, tasks, chunksize=1):
                results.append(result)
                progress.update(len(results))

    images: dict[str, Any] = {}
    studies: dict[str, Any] = {}
    codecs: Counter[str] = Counter()
    for result in sorted(results, key=lambda r: r.index):
        images.update(result.images)
        studies[result.study_uid] = result.study
        codecs.update(result.codecs)
    labels_path = out / "labels.json"
    write_labels(
        labels_path,
        config=config.model_dump(mode="json"),
        studies=studies,
        images=images,
        generator=f"radlake {__version__}",
    )
    return SynthSummary(
        out_dir=out,
        n_studies=len(results),
        n_series=sum(r.n_series for r in results),
        n_files=sum(r.n_files for r in results),
        n_zip_files=sum(1 for r in results if r.zipped),
        n_sagittal_images=len(images),
        n_vertebra_boxes=sum(len(e["vertebrae"]) for e in images.values()),
        n_node_boxes=sum(len(e["nodes"]) for e in images.values()),
        labels_path=labels_path,
        transfer_syntax_counts=dict(sorted(codecs.items())),
        seconds=time.perf_counter() - started,
    )
