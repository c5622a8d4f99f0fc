import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from radlake.dicom.deid import Deidentifier
from radlake.dicom.header import parse_header
from radlake.synth import SynthConfig, generate_archive

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PHI = ("PatientName", "PatientBirthDate", "PatientID", "AccessionNumber", "InstitutionName", "ReferringPhysicianName")


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deid")
    generate_archive(out / "a", SynthConfig(studies=1, seed=3, image_size=128, zip_fraction=0.0))
    return next(p for p in sorted((out / "a").rglob("*")) if p.is_file() and p.name != "labels.json")


def test_no_identifying_value_survives(synthetic_file):
    source = pydicom.dcmread(synthetic_file)
    values = [str(source.get(k)) for k in PHI if source.get(k)]
    assert len(values) >= 4
    result = parse_header(synthetic_file.read_bytes(), deid=Deidentifier(b"k"))
    for value in values:
        assert value not in result.header_json
        assert value not in json.dumps(result.columns, default=str)
    header = json.loads(result.header_json)
    assert header["00120062"]["Value"] == ["YES"]
    assert result.columns["sop_instance_uid"] == source.SOPInstanceUID  # UIDs retained
    assert result.columns["patient_id"] == Deidentifier(b"k").pseudonym(str(source.PatientID))


def _pseudonymise_in_a_new_process(path: Path, key: str) -> str:
    code = (
        "import sys; from radlake.dicom.header import parse_header; from radlake.dicom.deid import Deidentifier;"
        "r = parse_header(open(sys.argv[1], 'rb').read(), deid=Deidentifier(sys.argv[2].encode()));"
        "print(r.header_json)"
    )
    return subprocess.run([sys.executable, "-c", code, str(path), key], check=True, capture_output=True, text=True).stdout


def test_same_key_same_output_in_separate_processes(synthetic_file):
    first = _pseudonymise_in_a_new_process(synthetic_file, "key-1")
    assert first == _pseudonymise_in_a_new_process(synthetic_file, "key-1")  # names, dates, pseudonyms
    assert first != _pseudonymise_in_a_new_process(synthetic_file, "key-2")


def test_private_tags_are_removed():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert any(e.tag.is_private for e in ds)
    Deidentifier(b"k").deidentify(ds)
    assert not any(e.tag.is_private for e in ds)
