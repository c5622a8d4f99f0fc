"""radlake.synth: the synthetic spine-MRI archive, its DICOM files and its ground truth."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom import config as pydicom_config

from radlake.dicom.geometry import Plane, classify_plane, order_slices, slice_positions_mm
from radlake.errors import RadlakeError
from radlake.synth.acquisition import rose_visible, to_stored
from radlake.synth.archive import ArchiveExistsError, generate_archive, study_spine
from radlake.synth.codecs import CODEC_UIDS, codec_available
from radlake.synth.params import Codec, SynthConfig

CONFIG = SynthConfig(
    studies=3,
    seed=11,
    image_size=192,
    zip_fraction=0.34,
    monochrome1_fraction=0.4,
    shuffle_fraction=0.5,
    node_fraction=0.5,
    fracture_fraction=0.15,
)
PHI_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
)
EXPECTED_PLANE = {"sagittal_t2": Plane.SAGITTAL, "axial_t2": Plane.AXIAL, "coronal_t2": Plane.CORONAL}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("synth") / "archive"
    return out, generate_archive(out, CONFIG)


@pytest.fixture(scope="module")
def labels(archive) -> dict:
    return json.loads((archive[0] / "labels.json").read_text())


def _instances(root: Path):
    """(relative path, zip member or None, bytes) of every DICOM file, folders and zips."""
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == "labels.json":
            continue
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for name in sorted(zf.namelist()):
                    yield str(path.relative_to(root)), name, zf.read(name)
        else:
            yield str(path.relative_to(root)), None, path.read_bytes()


@pytest.fixture(scope="module")
def datasets(archive) -> list[tuple[str, str | None, pydicom.Dataset]]:
    return [(p, m, pydicom.dcmread(io.BytesIO(data))) for p, m, data in _instances(archive[0])]


def _read_entry(root: Path, entry: dict) -> pydicom.Dataset:
    if entry["member"]:
        with zipfile.ZipFile(root / entry["path"]) as zf:
            return pydicom.dcmread(io.BytesIO(zf.read(entry["member"])))
    return pydicom.dcmread(root / entry["path"])


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Pixels as a reader shows them: MONOCHROME1 inverted back."""
    pixels = ds.pixel_array.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = (2**ds.BitsStored - 1) - pixels
    return pixels


def test_summary_counts_match_the_files(archive, datasets):
    out, summary = archive
    per_study = CONFIG.sagittal_slices + CONFIG.axial_slices + CONFIG.coronal_slices
    assert summary.n_studies == 3 and summary.n_series == 9
    assert summary.n_files == 3 * per_study == len(datasets)
    assert summary.n_zip_files == 1 == len(list(out.glob("*.zip")))
    assert summary.labels_path == out / "labels.json"
    assert summary.n_sagittal_images == 3 * CONFIG.sagittal_slices
    assert sum(summary.transfer_syntax_counts.values()) == summary.n_files
    found = Counter(str(ds.file_meta.TransferSyntaxUID) for _, _, ds in datasets)
    assert found == Counter(summary.transfer_syntax_counts)
    assert summary.as_dict()["n_files"] == summary.n_files
    # Some files have no .dcm suffix; no path holds patient data.
    names = [Path(m or p).name for p, m, _ in datasets]
    assert any(not n.endswith(".dcm") for n in names) and any(n.endswith(".dcm") for n in names)


def test_every_file_reads_without_warnings_and_decodes(archive):
    available = {str(CODEC_UIDS[c]) for c in Codec if codec_available(c)}
    seen: set[str] = set()
    photometric: set[str] = set()
    old = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _, _, data in _instances(archive[0]):
                ds = pydicom.dcmread(io.BytesIO(data))
                ds.ensure_file_meta()
                pixels = ds.pixel_array
                assert pixels.shape == (CONFIG.image_size, CONFIG.image_size)
                assert pixels.dtype == np.uint16 and int(pixels.max()) < 2**ds.BitsStored
                assert pixels.std() > 0
                image = hd.imread(io.BytesIO(data))
                assert image.SOPInstanceUID == ds.SOPInstanceUID
                seen.add(str(ds.file_meta.TransferSyntaxUID))
                photometric.add(ds.PhotometricInterpretation)
    finally:
        pydicom_config.settings.reading_validation_mode = old
    assert seen == available  # every installed codec is used
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_dicom_tags_are_complete_and_consistent(datasets):
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for _, _, ds in datasets:
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR"
        assert ds.BodyPartExamined == "LSPINE"
        assert 12 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1 and ds.BitsAllocated == 16
        for tag in ("EchoTime", "RepetitionTime", "SeriesDescription", "Manufacturer", "StudyDate",
                    "SliceThickness", "SpacingBetweenSlices", *PHI_TAGS):  # fmt: skip
            assert str(ds.get(tag, "")).strip(), tag
        by_study.setdefault(ds.StudyInstanceUID, []).append(ds)
    assert len(by_study) == 3
    for study in by_study.values():
        assert len({ds.FrameOfReferenceUID for ds in study}) == 1
        assert len({ds.SeriesInstanceUID for ds in study}) == 3
        assert len({str(ds.PatientName) for ds in study}) == 1
    assert any("RescaleSlope" in ds for _, _, ds in datasets) or any(ds.BitsStored == 16 for _, _, ds in datasets)


def test_series_geometry(datasets, labels):
    kinds = {uid: s["kind"] for st in labels["studies"].values() for uid, s in st["series"].items()}
    series: dict[str, list[pydicom.Dataset]] = {}
    for _, _, ds in datasets:
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    shuffled = 0
    for uid, items in series.items():
        orientation = [float(v) for v in items[0].ImageOrientationPatient]
        assert all([float(v) for v in ds.ImageOrientationPatient] == orientation for ds in items)
        assert classify_plane(orientation) is EXPECTED_PLANE[kinds[uid]]
        positions = [[float(v) for v in ds.ImagePositionPatient] for ds in items]
        order = order_slices(positions, orientation)
        steps = np.diff(np.sort(slice_positions_mm(positions, orientation)))
        spacing = float(items[0].SpacingBetweenSlices)
        np.testing.assert_allclose(steps, spacing, atol=2e-3)
        assert float(items[0].SliceThickness) <= spacing + 1e-6
        numbers = [int(items[i].InstanceNumber) for i in order]
        assert sorted(numbers) == list(range(1, len(items) + 1))
        if numbers not in (sorted(numbers), sorted(numbers, reverse=True)):
            shuffled += 1
        spacing_px = [float(v) for v in items[0].PixelSpacing]
        assert all(0.3 < v < 3.0 for v in spacing_px)
        if kinds[uid] == "sagittal_t2":
            # Row direction ~ posterior, column direction ~ inferior; within a few degrees.
            assert orientation[1] > 0.99 and orientation[5] < -0.99
    assert shuffled >= 1


def test_labels_document(labels, archive):
    out, summary = archive
    assert labels["format"] == "radlake-synth-labels" and labels["version"] == 1
    assert labels["config"] == CONFIG.model_dump(mode="json")
    assert len(labels["images"]) == summary.n_sagittal_images
    assert sum(len(e["vertebrae"]) for e in labels["images"].values()) == summary.n_vertebra_boxes > 100
    assert summary.n_node_boxes >= 1
    zipped = [e for e in labels["images"].values() if e["member"]]
    assert zipped and all(e["path"].endswith(".zip") for e in zipped)
    for entry in zipped[:3]:
        ds = _read_entry(out, entry)
        assert ds.SeriesInstanceUID == entry["series_instance_uid"]


def test_boxes_are_inside_the_image_ordered_and_nested(labels):
    levels = labels["levels"]
    n_truncated = 0
    for entry in labels["images"].values():
        h, w = entry["rows"], entry["columns"]
        boxes = entry["vertebrae"]
        for box in boxes:
            x0, y0, x1, y1 = box["xyxy"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            n_truncated += box["truncated"]
        ranks = [levels.index(b["level"]) for b in boxes]
        assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
        centres = [(b["xyxy"][1] + b["xyxy"][3]) / 2 for b in boxes]
        assert centres == sorted(centres)  # cranial (top) to caudal (bottom)
        parents = {b["level"]: b["xyxy"] for b in boxes}
        for node in entry["nodes"]:
            px0, py0, px1, py1 = parents[node["parent_level"]]
            x0, y0, x1, y1 = node["xyxy"]
            assert px0 - 1 <= x0 < x1 <= px1 + 1 and py0 - 1 <= y0 < y1 <= py1 + 1
            relative = ((y0 + y1) / 2 - py0) / (py1 - py0)
            assert relative < 0.4 if node["endplate"] == "superior" else relative > 0.6
    assert n_truncated >= 1  # the field of view cuts bodies at its edges


def test_boxes_lie_on_the_anatomy_they_name(labels, archive):
    """Box centres, mapped to patient space with the file's own geometry, fall in the named body."""
    from radlake.dicom.geometry import pixel_to_patient

    out, _ = archive
    config = SynthConfig(**labels["config"])
    spines = {st["index"]: study_spine(config, st["index"]) for st in labels["studies"].values()}
    index_of = {uid: st["index"] for uid, st in labels["studies"].items()}
    checked = 0
    for entry in list(labels["images"].values())[::2]:
        if not entry["vertebrae"]:
            continue
        ds = _read_entry(out, entry)
        geometry = dict(
            position=[float(v) for v in ds.ImagePositionPatient],
            orientation=[float(v) for v in ds.ImageOrientationPatient],
            pixel_spacing=[float(v) for v in ds.PixelSpacing],
        )
        spine = spines[index_of[entry["study_instance_uid"]]]
        for box in entry["vertebrae"]:
            if box["truncated"]:
                continue
            x0, y0, x1, y1 = box["xyxy"]
            centre = pixel_to_patient([(x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5], **geometry)
            vertebra = spine.vertebrae[box["level"]]
            local = vertebra.frame.to_local(centre[None, :].astype(np.float32))
            local[0, 2] = 0.0  # the slab is thick: compare in the image plane
            assert vertebra.shape.sd(local)[0] < 0, box
            checked += 1
    assert checked > 50


def test_midline_boxes_show_darker_bone_than_the_csf_behind_it(labels, archive):
    """After MONOCHROME1 inversion, the canal (CSF) behind a midline body is brighter than the body."""
    out, _ = archive
    brighter, total = 0, 0
    for entry in labels["images"].values():
        if entry["slice_index"] != CONFIG.sagittal_slices // 2:
            continue
        pixels = _display(_read_entry(out, entry))
        for box in entry["vertebrae"]:
            if box["truncated"]:
                continue
            x0, y0, x1, y1 = (int(round(v)) for v in box["xyxy"])
            body = pixels[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].mean()
            cy, h = (y0 + y1) // 2, max((y1 - y0) // 5, 1)
            canal = pixels[cy - h : cy + h, x1 : x1 + (x1 - x0) // 2].max()
            brighter += canal > 1.2 * body
            total += 1
    assert total >= 10 and brighter >= 0.8 * total


def test_nodes_are_brighter_than_their_vertebra(labels, archive):
    out, _ = archive
    ratios = []
    for entry in labels["images"].values():
        if not entry["nodes"]:
            continue
        pixels = _display(_read_entry(out, entry))
        parents = {b["level"]: b["xyxy"] for b in entry["vertebrae"]}
        for node in entry["nodes"]:
            x0, y0, x1, y1 = (int(round(v)) for v in node["xyxy"])
            px0, py0, px1, py1 = (int(round(v)) for v in parents[node["parent_level"]])
            inner = pixels[py0 + (py1 - py0) // 3 : py1 - (py1 - py0) // 3, px0 + 2 : px1 - 2]
            ratios.append(pixels[y0:y1, x0:x1].max() / np.median(inner))
    assert ratios and np.median(ratios) > 1.1


def test_phi_is_present_and_kept_out_of_paths(datasets):
    values = set()
    for path, member, ds in datasets:
        for tag in ("PatientName", "PatientID", "AccessionNumber"):
            value = str(ds.get(tag))
            assert value and value not in (path + str(member))
            values.add(value)
    assert len(values) >= 9  # three patients, three values each


def test_same_seed_same_bytes_other_seed_differs(tmp_path, archive):
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
        }

    small = CONFIG.model_copy(update={"studies": 2, "image_size": 128})
    first = digest(_generate(tmp_path / "a", small, workers=1))
    again = digest(_generate(tmp_path / "b", small, workers=2))
    assert first == again and "labels.json" in first
    other = digest(_generate(tmp_path / "c", small.model_copy(update={"seed": 12}), workers=1))
    assert first["labels.json"] != other["labels.json"]
    assert not set(first.values()) & set(other.values())


def _generate(out: Path, config: SynthConfig, *, workers: int) -> Path:
    generate_archive(out, config, workers=workers)
    return out


def test_monochrome1_stores_the_inverse():
    magnitude = np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32)
    plain = to_stored(magnitude, bits_stored=12, peak=3000, rescale=None, monochrome1=False)
    inverted = to_stored(magnitude, bits_stored=12, peak=3000, rescale=None, monochrome1=True)
    np.testing.assert_array_equal(inverted.pixels.astype(int), 4095 - plain.pixels.astype(int))


def test_config_validation_names_the_field():
    for bad, field in [
        ({"studies": 0}, "studies"),
        ({"image_size": 64}, "image_size"),
        ({"zip_fraction": 1.5}, "zip_fraction"),
        ({"node_size_mm": (8.0, 4.0)}, "node_size_mm"),
        ({"transfer_syntaxes": ["explicit", "explicit"]}, "transfer_syntaxes"),
        ({"image_sizes": [256, 2048]}, "image_sizes"),
        ({"image_sizes": []}, "image_sizes"),
        ({"fov_mm": (380.0, 220.0)}, "fov_mm"),
        ({"contrast_gamma": (0.1, 1.0)}, "contrast_gamma"),
        ({"unknown_knob": 1}, "unknown_knob"),
    ]:
        with pytest.raises(ValidationError) as info:
            SynthConfig(**bad)
        assert info.value.errors()[0]["loc"][0] == field
    assert SynthConfig.model_validate_json(CONFIG.model_dump_json()) == CONFIG


def test_generate_archive_checks_its_arguments(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(ArchiveExistsError, match="out_dir") as info:
        generate_archive(tmp_path / "busy", CONFIG)
    assert isinstance(info.value, RadlakeError)
    with pytest.raises(ValueError, match="workers"):
        generate_archive(tmp_path / "new", CONFIG, workers=0)
    with pytest.raises(TypeError, match="config"):
        generate_archive(tmp_path / "new", {"studies": 1})  # type: ignore[arg-type]


def test_sites_differ_per_study_in_matrix_field_of_view_and_contrast(tmp_path):
    """The site knobs: each study draws its own matrix, pixel size and look; defaults leave studies alike."""
    varied = SynthConfig(
        studies=4,
        seed=5,
        image_sizes=(128, 160),
        fov_mm=(200.0, 400.0),
        sagittal_slices=3,
        axial_slices=1,
        coronal_slices=1,
        contrast_gamma=(0.6, 1.6),
        blur_px=(0.3, 1.5),
    )
    labels = json.loads(generate_archive(tmp_path / "varied", varied, workers=2).labels_path.read_text())
    by_study: dict[str, set] = {}
    for image in labels["images"].values():
        by_study.setdefault(image["study_instance_uid"], set()).add((image["rows"], tuple(image["pixel_spacing"])))
    assert all(len(sizes) == 1 for sizes in by_study.values())  # one matrix and spacing per study
    assert {rows for sizes in by_study.values() for rows, _ in sizes} == {128, 160}
    columns = [spacing[1] * rows for sizes in by_study.values() for rows, spacing in sizes]
    assert all(200 <= fov <= 400 for fov in columns) and max(columns) - min(columns) > 20
    # image_size fixes one matrix for every study.
    plain = json.loads(
        generate_archive(tmp_path / "plain", varied.model_copy(update={"image_size": 128})).labels_path.read_text()
    )
    assert {image["rows"] for image in plain["images"].values()} == {128}


def test_rose_criterion_weighs_contrast_noise_and_size():
    # contrast 1 over noise 1 on 25 pixels: 1 * 5 = 5, just visible; on 16 pixels, not.
    assert rose_visible(2.0, 1.0, 25, gain=1.0, sigma=1.0)
    assert not rose_visible(2.0, 1.0, 16, gain=1.0, sigma=1.0)
    assert not rose_visible(2.0, 1.0, 25, gain=1.0, sigma=1.1)  # more noise
    assert rose_visible(2.0, 1.0, 16, gain=1.5, sigma=1.0)  # a brighter coil region
    assert rose_visible(1.0, 2.0, 25, gain=1.0, sigma=1.0)  # darker than its background counts too
    assert rose_visible(2.0, 1.0, 1, gain=1.0, sigma=0.0)  # noiseless: everything drawn is seen


def _node_boxes(config: SynthConfig, out: Path) -> dict[tuple, set]:
    """Node boxes per sagittal image, keyed by study, series and slice in the order written (UIDs hash the config)."""
    labels = json.loads(generate_archive(out, config, workers=1).labels_path.read_text())
    studies: dict[str, int] = {}
    series: dict[str, int] = {}
    boxes = {}
    for image in labels["images"].values():
        study = studies.setdefault(image["study_instance_uid"], len(studies))
        number = series.setdefault(image["series_instance_uid"], len(series))
        boxes[(study, number, image["slice_index"])] = {tuple(n["xyxy"]) for n in image["nodes"]}
    return boxes


def test_nodes_lost_in_the_noise_are_not_labelled(tmp_path):
    """The same anatomy at a low SNR labels a subset of the nodes labelled at a high one (a reader cannot mark what the noise hides)."""
    base = SynthConfig(
        studies=2, seed=11, image_size=256, node_fraction=1.0, node_size_mm=(3.0, 6.0), sagittal_slices=3,
        axial_slices=1, coronal_slices=1, zip_fraction=0.0,
    )  # fmt: skip
    clear = _node_boxes(base.model_copy(update={"snr": (400.0, 400.0)}), tmp_path / "clear")
    noisy = _node_boxes(base.model_copy(update={"snr": (2.0, 2.0)}), tmp_path / "noisy")
    n_clear, n_noisy = sum(map(len, clear.values())), sum(map(len, noisy.values()))
    assert noisy.keys() == clear.keys()
    assert all(noisy[key] <= clear[key] for key in clear)
    assert n_clear > 0 and n_noisy < n_clear
