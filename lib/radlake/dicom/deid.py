"""De-identification: DICOM PS3.15 Basic Application Level Confidentiality Profile, UIDs retained.

The attribute rules come from dicognito (a maintained implementation of the Basic
Profile), seeded from the secret key so that every executor and every run makes the
same replacements — names, addresses, institutions and other identifying text are
replaced by fakes, dates and times are shifted by a key-derived offset per patient.
On top of it radlake:

- restores every UID (the *Retain UIDs* option, PS3.15 E.3.1): SOPInstanceUID is the
  table key and labels refer to it;
- replaces PatientID and AccessionNumber with keyed pseudonyms, HMAC-SHA256(key, value)
  as 16 hex digits, so studies of one patient stay linkable without revealing the ID;
- removes all private tags (vendor blocks may hold identifiers);
- sets PatientIdentityRemoved = YES, DeidentificationMethod and
  DeidentificationMethodCodeSequence (113100 Basic Profile, 113110 Retain UIDs,
  113107 Retain Longitudinal Temporal Information with Modified Dates).

Example
-------
>>> import pydicom
>>> from pydicom.data import get_testdata_file
>>> ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
>>> uid = ds.SOPInstanceUID
>>> out = Deidentifier(b"secret").deidentify(ds)
>>> out.SOPInstanceUID == uid, out.PatientIdentityRemoved
(True, 'YES')

"""

from __future__ import annotations

import hashlib
import hmac

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

#: 64-bit pseudonyms fit AccessionNumber (SH, 16 characters) and PatientID (LO).
PSEUDONYM_HEX_DIGITS = 16
METHOD = (
    "radlake: PS3.15 Basic Profile (dicognito, key-seeded); UIDs retained; dates shifted; "
    "PatientID/AccessionNumber HMAC-SHA256 pseudonyms; private tags removed"
)
_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113110", "Retain UIDs Option"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)


class Deidentifier:
    """Applies radlake's de-identification with one secret key.

    Parameters
    ----------
    key
        The secret: the same key gives the same pseudonyms, fakes and date shifts on
        every machine; another key gives others.
    """

    def __init__(self, key: bytes | str) -> None:
        if isinstance(key, str):
            key = key.encode()
        if not key:
            raise ValueError("Argument 'key' must not be empty.")
        self._key = key
        self._seed = hmac.new(key, b"radlake-dicognito-seed", hashlib.sha256).hexdigest()
        self._anonymizer = None

    def pseudonym(self, value: str) -> str:
        """Keyed pseudonym of an identifier: HMAC-SHA256(key, value), first 16 hex digits."""
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_DIGITS]

    def deidentify(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place and return it."""
        if self._anonymizer is None:
            from dicognito.anonymizer import Anonymizer  # heavy import, once per process

            self._anonymizer = Anonymizer(seed=self._seed)
        patient_id = str(ds.get("PatientID", "") or "")
        accession = str(ds.get("AccessionNumber", "") or "")
        uids = _collect_uids(ds)
        ds.remove_private_tags()
        self._anonymizer.anonymize(ds)
        for dataset, keyword_values in uids:
            for tag, value in keyword_values.items():
                if tag in dataset:
                    dataset[tag].value = value
        ds.PatientID = self.pseudonym(patient_id) if patient_id else ""
        ds.AccessionNumber = self.pseudonym(accession) if accession else ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = []
        for value, meaning in _CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        return ds


def _collect_uids(ds: Dataset) -> list[tuple[Dataset, dict]]:
    """Every UID value in ``ds`` and its sequences, by the dataset object that holds it."""
    found: list[tuple[Dataset, dict]] = []

    def visit(dataset: Dataset) -> None:
        values = {}
        for element in dataset:
            if element.VR == "UI" and element.value:
                values[element.tag] = element.value
            elif element.VR == "SQ":
                for item in element.value:
                    visit(item)
        if values:
            found.append((dataset, values))

    visit(ds)
    return found
