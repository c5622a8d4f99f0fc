"""De-identification on real files: nothing identifying survives, pseudonyms and date shifts are keyed and stable."""

import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_files import DATA_STORE, MR_SMALL, TEST_FILES
from radlake.dicom import deid as deid_module
from radlake.dicom.deid import (
    ACCESSION_HEX_DIGITS,
    DEVELOPMENT_KEY,
    MAX_OFFSET_DAYS,
    MIN_OFFSET_DAYS,
    PATIENT_ID_HEX_DIGITS,
    Deidentifier,
    DeidKeyError,
)
from radlake.dicom.header import parse_header
from radlake.errors import RadlakeError

KEY = b"test-key"

#: Attributes whose values identify a patient, a person or a place.
PHI_KEYWORDS = {
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
}


def _values(ds: Dataset, keywords: set[str] | None, exclude: set[str] = frozenset()) -> set[str]:
    """String values (and their name parts) of the given keywords (or of all others), sequences included."""
    out: set[str] = set()
    try:
        elements = list(ds.iterall())
    except Exception:  # noqa: BLE001 - a file with an unreadable sequence: top level only
        elements = list(ds)
    for element in elements:
        if element.VR == "SQ" or element.tag.is_private:
            continue
        if keywords is not None and element.keyword not in keywords:
            continue
        if keywords is None and element.keyword in exclude:
            continue
        try:
            values = (
                element.value
                if isinstance(element.value, list | tuple | pydicom.multival.MultiValue)
                else [element.value]
            )
        except Exception:  # noqa: BLE001
            continue
        for value in values:
            if isinstance(value, bytes) or value is None:
                continue
            text = str(value).strip()
            out.add(text)
            if element.VR == "PN":  # family and given names on their own
                out.update(part for part in text.replace("^", " ").split() if len(part) >= 5)
    return out


def _real_dicom_files() -> list[Path]:
    files = sorted([p for p in TEST_FILES.rglob("*") if p.is_file()] + [p for p in DATA_STORE.iterdir() if p.is_file()])
    return [p for p in files if p.suffix not in {".txt", ".json", ".icc", ".dump", ".gz"} and p.name != "README"]


def test_no_identifying_value_of_any_real_file_survives():
    deid = Deidentifier(KEY)
    checked = 0
    for path in _real_dicom_files():
        data = path.read_bytes()
        result = parse_header(data, deid=deid)
        if result.error is not None or result.is_dicomdir:
            continue
        source = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        # A value that the source also holds in a kept attribute is not a leak: Manufacturer
        # "TOSHIBA" as InstitutionName, or a Siemens DeviceSerialNumber inside its UIDs (kept
        # by the Retain UIDs option). Nor are short or placeholder values.
        kept = _values(source, None, exclude=PHI_KEYWORDS)
        phi = {
            v
            for v in _values(source, PHI_KEYWORDS)
            if len(v) >= 5 and set(v) - set("-0^ ") and not any(v in k for k in kept)
        }
        output = result.header_json + json.dumps(result.columns, default=str)
        leaked = sorted(v for v in phi if v in output)
        assert not leaked, f"{path.name}: {leaked}"
        header = json.loads(result.header_json)
        assert header["00120062"]["Value"] == ["YES"]  # PatientIdentityRemoved
        assert not any(int(k[:4], 16) % 2 for k in header)  # no private tags
        checked += 1
    assert checked > 160  # damaged instances (radlake.dicom.integrity) are refused before de-identification


def _mr_with_phi() -> tuple[bytes, dict[str, str]]:
    """MR_small with identifying values added at the top level, in sequences and in a private tag."""
    ds = pydicom.dcmread(MR_SMALL)
    phi = {
        "PatientName": "Hollowell^Agatha^Q",
        "PatientID": "MRN-55501234",
        "PatientBirthDate": "19610417",
        "PatientAddress": "17 Quarry Lane, Ashbourne",
        "PatientTelephoneNumbers": "+44 1335 555 0101",
        "OtherPatientIDs": "ALT-99881",
        "AccessionNumber": "ACC7720031",
        "InstitutionName": "Ashbourne Spinal Centre",
        "InstitutionAddress": "1 Infirmary Road, Ashbourne",
        "ReferringPhysicianName": "Pemberton^Hugh",
        "PerformingPhysicianName": "Quarrie^Lena",
        "OperatorsName": "Tech^Rosalind",
        "StationName": "ASHMR01",
        "DeviceSerialNumber": "SN-448812",
        "StudyDescription": "MRI lumbar spine for Agatha Hollowell",
        "ImageComments": "patient Hollowell moved",
        "StudyID": "STUDY-8812",
    }
    for keyword, value in phi.items():
        setattr(ds, keyword, value)
    ds.SeriesDescription = "Sag T2 TSE"  # a retained descriptor
    other = Dataset()
    other.PatientID = "OTHER-ID-12345"
    other.IssuerOfPatientID = "Ashbourne Hospital Trust"
    ds.OtherPatientIDsSequence = Sequence([other])
    request = Dataset()
    request.RequestedProcedureID = "REQ-66120"
    request.ScheduledProcedureStepDescription = "Spine for Hollowell"
    ds.RequestAttributesSequence = Sequence([request])
    referenced = Dataset()  # a kept sequence with identifying values inside
    referenced.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    referenced.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    referenced.PatientName = "Hollowell^Nested"
    referenced.AccessionNumber = "ACC-NESTED-1"
    referenced.ContentDate = "20040826"
    ds.ReferencedImageSequence = Sequence([referenced])
    ds.ContentSequence = Sequence([Dataset()])
    ds.ContentSequence[0].TextValue = "Hollowell reported pain"
    block = ds.private_block(0x0029, "RADLAKE TEST", create=True)
    block.add_new(0x10, "LO", "Hollowell private copy")
    phi.update(
        OtherID="OTHER-ID-12345",
        Issuer="Ashbourne Hospital Trust",
        Requested="REQ-66120",
        Nested="Hollowell^Nested",
        NestedAccession="ACC-NESTED-1",
        Private="Hollowell private copy",
    )
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue(), phi


def test_injected_identifiers_are_gone_everywhere_and_uids_are_kept():
    data, phi = _mr_with_phi()
    deid = Deidentifier(KEY)
    result = parse_header(data, deid=deid)
    assert result.error is None
    output = result.header_json + json.dumps(result.columns, default=str)
    for value in phi.values():
        assert value not in output
    for fragment in ("Hollowell", "Agatha", "Ashbourne", "Pemberton", "Quarrie", "Rosalind", "19610417"):
        assert fragment not in output
    source = pydicom.dcmread(io.BytesIO(data))
    header = json.loads(result.header_json)
    c = result.columns
    assert c["sop_instance_uid"] == source.SOPInstanceUID and c["study_instance_uid"] == source.StudyInstanceUID
    assert c["series_instance_uid"] == source.SeriesInstanceUID
    assert header["00081140"]["Value"][0]["00081155"]["Value"] == ["1.2.3.4.5.6.7"]  # Retain UIDs
    assert c["patient_id"] == deid.pseudonym("MRN-55501234") and len(c["patient_id"]) == PATIENT_ID_HEX_DIGITS
    assert c["accession_number"] == deid.pseudonym("ACC7720031", digits=ACCESSION_HEX_DIGITS)
    assert header["00081140"]["Value"][0]["00080050"]["Value"] == [deid.pseudonym("ACC-NESTED-1", digits=16)]
    assert "Value" not in header["00100010"] and "Value" not in header["00100030"]  # emptied, still present
    assert "00081030" not in header and "00204000" not in header and "00101000" not in header  # removed
    assert header["0040A730"] == {"vr": "SQ", "Value": []}  # ContentSequence emptied
    codes = [item["00080100"]["Value"][0] for item in header["00120064"]["Value"]]
    assert codes == ["113100", "113110", "113107", "113108"]
    assert header["00280303"]["Value"] == ["MODIFIED"]
    assert c["series_description"] == "Sag T2 TSE"  # a retained descriptor


def test_dates_shift_per_patient_keeping_intervals_and_times():
    data, _ = _mr_with_phi()
    deid = Deidentifier(KEY)
    source = pydicom.dcmread(io.BytesIO(data))
    header = json.loads(parse_header(data, deid=deid).header_json)
    offset = deid.date_offset_days("MRN-55501234")
    assert -MAX_OFFSET_DAYS <= offset <= -MIN_OFFSET_DAYS
    for tag, keyword in (("00080020", "StudyDate"), ("00080021", "SeriesDate"), ("00080023", "ContentDate")):
        if keyword in source and source.data_element(keyword).value:
            original = dt.datetime.strptime(source.data_element(keyword).value, "%Y%m%d").date()
            assert header[tag]["Value"] == [(original + dt.timedelta(days=offset)).strftime("%Y%m%d")]
    assert header["00080030"]["Value"] == [source.StudyTime]  # times of day are kept
    nested = header["00081140"]["Value"][0]["00080023"]["Value"]
    assert nested == [(dt.date(2004, 8, 26) + dt.timedelta(days=offset)).strftime("%Y%m%d")]
    # the same patient in another file: the same shift; another patient: another shift (for this key)
    assert deid.date_offset_days(" MRN-55501234 ") == offset != deid.date_offset_days("MRN-55501235")
    kept = json.loads(parse_header(data, deid=Deidentifier(KEY, shift_dates=False)).header_json)
    assert kept["00080020"]["Value"] == [source.StudyDate] and kept["00280303"]["Value"] == ["UNMODIFIED"]


def test_dates_of_one_series_shift_together():
    folder = TEST_FILES / "dicomdirtests" / "98892003" / "MR2"
    deid = Deidentifier(KEY)
    shifts = set()
    for path in sorted(folder.iterdir()):
        source = pydicom.dcmread(path, stop_before_pixels=True)
        shifted = parse_header(path.read_bytes(), deid=deid).columns["study_date"]
        shifts.add((shifted - dt.datetime.strptime(source.StudyDate, "%Y%m%d").date()).days)
    assert len(shifts) == 1 and shifts.pop() == deid.date_offset_days(source.PatientID)


_CHILD = """
import json, sys
from radlake.dicom.deid import Deidentifier
from radlake.dicom.header import parse_header
result = parse_header(open(sys.argv[1], "rb").read(), deid=Deidentifier(sys.argv[2].encode()))
print(json.dumps({"json": result.header_json, "columns": result.columns}, default=str))
"""


def _in_a_new_process(path: Path, key: str) -> dict:
    run = subprocess.run([sys.executable, "-c", _CHILD, str(path), key], check=True, capture_output=True, text=True)
    return json.loads(run.stdout)


def test_same_key_same_output_in_separate_processes(tmp_path):
    data, _ = _mr_with_phi()
    path = tmp_path / "phi.dcm"
    path.write_bytes(data)
    first, second = _in_a_new_process(path, "key-1"), _in_a_new_process(path, "key-1")
    assert first == second  # pseudonyms, shifted dates, the whole header
    other = _in_a_new_process(path, "key-2")
    assert other["columns"]["patient_id"] != first["columns"]["patient_id"]
    assert other["columns"]["accession_number"] != first["columns"]["accession_number"]
    assert other["columns"]["study_date"] != first["columns"]["study_date"]
    assert other["columns"]["sop_instance_uid"] == first["columns"]["sop_instance_uid"]
    here = parse_header(data, deid=Deidentifier(b"key-1"))
    assert here.header_json == first["json"]


def test_private_tags_are_removed_and_descriptors_optional():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert any(e.tag.is_private for e in ds)
    Deidentifier(KEY).deidentify(ds)
    assert not any(e.tag.is_private for e in ds)
    ds = pydicom.dcmread(MR_SMALL)
    ds.SeriesDescription, ds.ProtocolName = "Sag T2", "spine"
    out = Deidentifier(KEY, retain_descriptors=False).deidentify(ds)
    assert "SeriesDescription" not in out and "ProtocolName" not in out
    assert "SeriesDescription" not in Deidentifier(KEY, retain_descriptors=False).method
    # DeidentificationMethod is LO (64 characters at most per value), VM 1-n
    values = Deidentifier(KEY, retain_descriptors=True).method_values
    assert len(values) > 1 and all(0 < len(v) <= 64 for v in values)
    assert list(out.DeidentificationMethod) == Deidentifier(KEY, retain_descriptors=False).method_values


def test_keys_and_environment(monkeypatch):
    assert Deidentifier("k").pseudonym("x") == Deidentifier(b"k").pseudonym("x")
    assert Deidentifier(b"k") == Deidentifier(b"k") and "k'" not in repr(Deidentifier(b"k"))
    with pytest.raises(ValueError, match="key"):
        Deidentifier(b"")
    with pytest.raises(TypeError, match="key"):
        Deidentifier(123)  # type: ignore[arg-type]
    monkeypatch.setenv("RADLAKE_TEST_KEY", "from-env")
    assert Deidentifier.from_env("RADLAKE_TEST_KEY") == Deidentifier(b"from-env")
    monkeypatch.delenv("RADLAKE_TEST_KEY")
    with pytest.raises(DeidKeyError, match="RADLAKE_TEST_KEY") as raised:
        Deidentifier.from_env("RADLAKE_TEST_KEY")
    assert isinstance(raised.value, RadlakeError)
    with pytest.warns(UserWarning, match="PUBLIC development key"):
        dev = Deidentifier.from_env("RADLAKE_TEST_KEY", allow_development_key=True, shift_dates=False)
    assert dev == Deidentifier(DEVELOPMENT_KEY, shift_dates=False)


def test_profile_tables_are_consistent():
    tables = {
        "remove": deid_module._REMOVE_KEYWORDS,
        "empty": deid_module._EMPTY_KEYWORDS,
        "dates": deid_module._MODIFIED_DATES_TIMES_KEYWORDS,
    }
    for name, keywords in tables.items():
        assert all(tag_for_keyword(k) is not None for k in keywords), name
        assert len(set(keywords)) == len(keywords), name
    assert not set(tables["remove"]) & set(tables["empty"])
    assert not set(tables["dates"]) & (set(tables["remove"]) | set(tables["empty"]))
    assert {dictionary_VR(tag_for_keyword(k)) for k in tables["dates"]} <= {"DA", "DT", "TM"}
    assert {"PatientName", "PatientBirthDate", "ReferringPhysicianName"} <= set(tables["empty"])
    assert {"InstitutionName", "OtherPatientIDsSequence", "StudyDescription", "DeviceSerialNumber"} <= set(
        tables["remove"]
    )
    table = Path(deid_module.__file__).with_name(deid_module.PROFILE_TABLE).read_text(encoding="utf-8")
    keywords = [line.split("\t")[0] for line in table.splitlines() if line and not line.startswith("#")][1:]
    assert keywords == sorted(keywords) and len(keywords) == sum(len(k) for k in tables.values())


def test_profile_table_refuses_an_unknown_action(monkeypatch, tmp_path):
    (tmp_path / "table.tsv").write_text("# header\nkeyword\taction\nPatientName\tblank\n", encoding="utf-8")
    monkeypatch.setattr(deid_module, "PROFILE_TABLE", "table.tsv")
    monkeypatch.setattr(deid_module.resources, "files", lambda _package: tmp_path)
    with pytest.raises(RuntimeError, match="PatientName has the unknown action 'blank'"):
        deid_module._read_profile()
