"""De-identification: the DICOM PS3.15 Basic Application Level Confidentiality Profile.

:class:`Deidentifier` applies the attribute rules of PS3.15 Table E.1-1 (2024b), kept as
data in ``basic_profile.tsv`` beside this module (keyword and action), to a dataset and
to every item of every sequence in it, with these options and choices:

- **Retain UIDs Option** (113110): every UID is kept unchanged. SOPInstanceUID is the
  table key that labels and images refer to, and Study/Series UIDs group instances.
- **Retain Longitudinal Temporal Information with Modified Dates Option** (113107):
  every date (DA) and the date part of every date-time (DT) that the profile would
  replace is shifted back by a whole number of days, the same for all files of one
  patient and one key (``offset = HMAC-SHA256(key, "date-offset:" + PatientID)``,
  between :data:`MIN_OFFSET_DAYS` and :data:`MAX_OFFSET_DAYS` days back). Intervals
  between a patient's studies are preserved; calendar dates are not. Times of day (TM)
  are kept; a time-zone suffix of a DT is removed. A value that is not a full date is
  emptied. With ``shift_dates=False`` dates are kept instead (113106, Full Dates).
  PatientBirthDate is always emptied (PatientAge is kept).
- **Retain Patient Characteristics Option** (113108): PatientAge, PatientSex,
  PatientSize and PatientWeight are kept.
- **Descriptors**: SeriesDescription and ProtocolName are kept *as they are* (they
  name the sequence, which the training stages need). They are not cleaned, so this
  is not the Clean Descriptors Option; every other description, comment and free text
  of Table E.1-1 is removed. ``retain_descriptors=False`` removes them as well.
- **Pseudonyms**: PatientID and AccessionNumber (wherever they occur) become keyed
  pseudonyms, ``HMAC-SHA256(key, value)`` as hex: 32 digits for PatientID (LO), 16 for
  AccessionNumber (SH holds 16 characters). The same value and key give the same
  pseudonym on every executor and in every run; without the key they cannot be
  reversed or recomputed. An empty value stays empty.
- **Private attributes are removed** (all of them, with their creators), as are
  curves (50xx), overlay data and comments (60xx,3000/4000), group lengths, digital
  signatures and trailing padding. Any other attribute of VR PN not in the table is
  emptied, and any other DA/DT is shifted, as a safety net.
- Other attributes of Table E.1-1 are removed (action X, X/Z, X/D, X/Z/D) or emptied
  (Z, D, Z/D: names, IDs, labels; sequences become empty), keeping type 2 attributes
  present. Attributes not in the table (geometry, acquisition parameters, Manufacturer,
  ManufacturerModelName, BodyPartExamined, ...) are kept.
- PatientIdentityRemoved is set to YES, DeidentificationMethod to :attr:`Deidentifier.method`,
  DeidentificationMethodCodeSequence to the profile and option codes, and
  LongitudinalTemporalInformationModified to MODIFIED (or UNMODIFIED). The source and
  sending AE titles are removed from the file meta information.

Not covered: identifying text burned into the pixels (see BurnedInAnnotation), and
identifiers typed into the kept descriptors.

Why not dicognito: dicognito 0.19 is deterministic with ``Anonymizer(seed=...)`` (values
are MD5(seed + value)), but it replaces a fixed list of attributes with realistic fakes
rather than applying Table E.1-1 (free text such as ImageComments, AdditionalPatientHistory,
DeviceSerialNumber and RequestAttributesSequence survive), remaps every UID, shifts all
dates of all patients by one seed-wide offset, and costs about 4 ms per MR_small file
against about 0.4 ms here.

Example
-------
>>> import pydicom
>>> from pydicom.data import get_testdata_file
>>> ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
>>> uid = ds.SOPInstanceUID
>>> out = Deidentifier(b"secret").deidentify(ds)
>>> out.SOPInstanceUID == uid, out.PatientIdentityRemoved, str(out.PatientName)
(True, 'YES', '')

"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import os
import re
import warnings
from importlib import resources

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from radlake.console import RadlakeWarning
from radlake.errors import RadlakeError

#: Hex digits of the PatientID pseudonym (128 bits; PatientID is LO, up to 64 characters).
PATIENT_ID_HEX_DIGITS = 32
#: Hex digits of the AccessionNumber pseudonym (64 bits; AccessionNumber is SH, up to 16 characters).
ACCESSION_HEX_DIGITS = 16
#: Dates are shifted back by at least this many days ...
MIN_OFFSET_DAYS = 365
#: ... and at most this many (about ten years).
MAX_OFFSET_DAYS = 3652
#: The environment variable that :meth:`Deidentifier.from_env` reads by default.
KEY_ENV = "RADLAKE_DEID_KEY"
#: A fixed, public key for local development only: pseudonyms made with it can be
#: recomputed by anyone. :meth:`Deidentifier.from_env` uses it only when told to.
DEVELOPMENT_KEY = b"radlake-development-key-not-for-patient-data"


class DeidKeyError(RadlakeError):
    """No de-identification key is configured (the environment variable is unset or empty)."""


#: PS3.15 Table E.1-1 as radlake applies it: one keyword a line with its action (remove, empty or
#: shift); the file's header says which of the table's action codes each stands for.
PROFILE_TABLE = "basic_profile.tsv"
_PROFILE_ACTIONS = ("remove", "empty", "shift")


def _read_profile() -> dict[str, tuple[str, ...]]:
    """Action -> keywords of :data:`PROFILE_TABLE` (``#`` lines and the column header skipped)."""
    text = (resources.files(__package__) / PROFILE_TABLE).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    by_action: dict[str, list[str]] = {a: [] for a in _PROFILE_ACTIONS}
    for keyword, action in rows[1:]:
        if action not in by_action:
            raise RuntimeError(f"{PROFILE_TABLE}: {keyword} has the unknown action {action!r}")
        by_action[action].append(keyword)
    return {a: tuple(k) for a, k in by_action.items()}


_PROFILE = _read_profile()
# Removed: actions X, X/Z, X/D, X/Z/D (dates and times with a Z or D action are shifted instead).
_REMOVE_KEYWORDS = _PROFILE["remove"]
# Emptied: actions Z, D, Z/D (a sequence becomes empty), and PatientBirthDate.
_EMPTY_KEYWORDS = _PROFILE["empty"]
# Dates, date-times and times whose action is Z or D (possibly with X): with the Modified
# Dates option DA and DT are shifted, TM is kept.
_MODIFIED_DATES_TIMES_KEYWORDS = _PROFILE["shift"]
# Removed (X) or emptied (Z) by the table, but kept by the options of the module docstring.
_PATIENT_CHARACTERISTICS_KEYWORDS = ("PatientAge", "PatientSex", "PatientSize", "PatientWeight")
_DESCRIPTOR_KEYWORDS = ("SeriesDescription", "ProtocolName")


def _tags(keywords: tuple[str, ...]) -> frozenset[int]:
    tags = {tag_for_keyword(k) for k in keywords}
    if None in tags:  # a keyword pydicom does not know: a typo in PROFILE_TABLE
        raise RuntimeError(f"unknown keywords: {[k for k in keywords if tag_for_keyword(k) is None]}")
    return frozenset(int(t) for t in tags)  # type: ignore[arg-type]


_REMOVE = _tags(_REMOVE_KEYWORDS)
_EMPTY = _tags(_EMPTY_KEYWORDS)
_PATIENT_CHARACTERISTICS = _tags(_PATIENT_CHARACTERISTICS_KEYWORDS)
_DESCRIPTORS = _tags(_DESCRIPTOR_KEYWORDS)
_PATIENT_ID = 0x00100020
_ACCESSION_NUMBER = 0x00080050
_FILE_META_REMOVE = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)  # AE titles, private info
_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_DT = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d*(?:\.\d*)?)(?:[+-]\d{4})?$")
_CODES = {
    "profile": ("113100", "Basic Application Confidentiality Profile"),
    "uids": ("113110", "Retain UIDs Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "characteristics": ("113108", "Retain Patient Characteristics Option"),
}


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _removed_by_group(tag: int) -> bool:
    """Private, group length, curve, overlay data/comment, signature or padding tags."""
    group, element = tag >> 16, tag & 0xFFFF
    return (
        group & 1 == 1
        or element == 0
        or 0x5000 <= group <= 0x50FF
        or (0x6000 <= group <= 0x60FF and element in (0x3000, 0x4000))
        or group in (0xFFFA, 0xFFFC)
    )


class Deidentifier:
    """Applies radlake's de-identification (see the module docstring) with one secret key.

    Parameters
    ----------
    key: bytes | str
        The secret. The same key gives the same pseudonyms and date shifts on every
        machine and in every run; another key gives others. A str is UTF-8 encoded.
    shift_dates: bool
        Shift dates per patient (default) or keep them unchanged.
    retain_descriptors: bool
        Keep SeriesDescription and ProtocolName (default) or remove them.

    Raises
    ------
    ValueError
        If ``key`` is empty.
    TypeError
        If ``key`` is neither bytes nor str.

    Examples
    --------
    >>> d = Deidentifier(b"k")
    >>> d.pseudonym("PAT-1") == Deidentifier(b"k").pseudonym("PAT-1") != Deidentifier(b"j").pseudonym("PAT-1")
    True
    >>> len(d.pseudonym("PAT-1")), len(d.pseudonym("A123", digits=16))
    (32, 16)
    """

    def __init__(self, key: bytes | str, *, shift_dates: bool = True, retain_descriptors: bool = True) -> None:
        if isinstance(key, str):
            key = key.encode("utf-8")
        if not isinstance(key, bytes | bytearray):
            raise TypeError(f"Argument 'key' must be bytes or str, got {type(key).__name__}.")
        if not key:
            raise ValueError("Argument 'key' must not be empty.")
        self._key = bytes(key)
        self.shift_dates = bool(shift_dates)
        self.retain_descriptors = bool(retain_descriptors)
        self._keep = _PATIENT_CHARACTERISTICS | (_DESCRIPTORS if self.retain_descriptors else frozenset())
        self._remove = _REMOVE | (frozenset() if self.retain_descriptors else _DESCRIPTORS)

    def __repr__(self) -> str:  # never show the key
        return f"Deidentifier(shift_dates={self.shift_dates}, retain_descriptors={self.retain_descriptors})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Deidentifier) and (self._key, self.shift_dates, self.retain_descriptors) == (
            other._key,
            other.shift_dates,
            other.retain_descriptors,
        )

    def __hash__(self) -> int:
        return hash((self._key, self.shift_dates, self.retain_descriptors))

    @classmethod
    def from_env(cls, var: str = KEY_ENV, *, allow_development_key: bool = False, **options: bool) -> Deidentifier:
        """A de-identifier keyed by the environment variable ``var``.

        Parameters
        ----------
        var: str
            Name of the environment variable holding the key (UTF-8 text).
        allow_development_key: bool
            If the variable is unset or empty: use :data:`DEVELOPMENT_KEY` with a
            warning (True, for local experiments on non-patient data) or raise
            (False, the default).
        **options
            ``shift_dates`` and ``retain_descriptors``, passed to the constructor.

        Raises
        ------
        DeidKeyError
            If the variable is unset or empty and ``allow_development_key`` is False.
        """
        value = os.environ.get(var, "")
        if value:
            return cls(value, **options)
        if not allow_development_key:
            raise DeidKeyError(
                f"De-identification needs a secret key: set the environment variable {var} "
                "(or pass allow_development_key=True to use the public development key on test data)."
            )
        warnings.warn(
            f"{var} is not set: de-identifying with radlake's PUBLIC development key. Anyone can recompute "
            "these pseudonyms and date shifts; never use it for patient data.",
            RadlakeWarning,
            stacklevel=2,
        )
        return cls(DEVELOPMENT_KEY, **options)

    @property
    def method(self) -> str:
        """The DeidentificationMethod text written into each de-identified dataset."""
        dates = "dates shifted per patient" if self.shift_dates else "dates kept"
        descriptors = "; SeriesDescription/ProtocolName kept uncleaned" if self.retain_descriptors else ""
        return (
            f"radlake: PS3.15 E.1-1 Basic Profile; UIDs retained; {dates}; patient characteristics kept"
            f"{descriptors}; PatientID/AccessionNumber HMAC-SHA256 pseudonyms; private tags removed"
        )

    @property
    def method_values(self) -> list[str]:
        """:attr:`method` as DeidentificationMethod's values: one per clause, each within LO's 64 characters."""
        return [part.strip() for part in self.method.split(";")]

    def pseudonym(self, value: str, *, digits: int = PATIENT_ID_HEX_DIGITS) -> str:
        """Keyed pseudonym of an identifier: HMAC-SHA256(key, value), first ``digits`` hex digits.

        Leading and trailing spaces of ``value`` are ignored (DICOM pads values with them).
        """
        if not 1 <= digits <= 64:
            raise ValueError(f"Argument 'digits' must be between 1 and 64, got {digits}.")
        return hmac.new(self._key, value.strip().encode("utf-8"), hashlib.sha256).hexdigest()[:digits]

    def date_offset_days(self, patient_id: str) -> int:
        """Days (negative) that the dates of the patient ``patient_id`` are shifted by."""
        digest = hmac.new(self._key, b"date-offset:" + patient_id.strip().encode("utf-8"), hashlib.sha256).digest()
        span = MAX_OFFSET_DAYS - MIN_OFFSET_DAYS + 1
        return -(MIN_OFFSET_DAYS + int.from_bytes(digest[:8], "big") % span)

    def deidentify(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place, sequences included, and return it.

        Parameters
        ----------
        ds: pydicom.dataset.Dataset
            A dataset as read by :func:`pydicom.dcmread` (with or without pixel data).

        Returns
        -------
        pydicom.dataset.Dataset
            ``ds`` itself.
        """
        if not isinstance(ds, Dataset):
            raise TypeError(f"Argument 'ds' must be a pydicom Dataset, got {type(ds).__name__}.")
        try:
            patient_id = str(ds.get("PatientID") or "")
        except Exception:  # noqa: BLE001 - an unreadable PatientID is emptied below like any value
            patient_id = ""
        offset = self.date_offset_days(patient_id) if self.shift_dates else 0
        self._clean(ds, offset)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self.method_values
        ds.DeidentificationMethodCodeSequence = Sequence(list(_code_items(self.shift_dates)))
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if self.shift_dates else "UNMODIFIED"
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for tag in _FILE_META_REMOVE:
                if tag in meta:
                    del meta[tag]
        return ds

    def _clean(self, ds: Dataset, offset: int) -> None:
        for tag in list(ds.keys()):
            t = int(tag)
            if t in self._keep:
                continue
            if t in self._remove or _removed_by_group(t):
                del ds[tag]
                continue
            vr = _dictionary_vr(t) or getattr(ds.get_item(tag), "VR", None) or "UN"
            if t == _PATIENT_ID or t == _ACCESSION_NUMBER:
                value = _text(ds, tag)
                digits = PATIENT_ID_HEX_DIGITS if t == _PATIENT_ID else ACCESSION_HEX_DIGITS
                ds[tag] = DataElement(tag, vr, self.pseudonym(value, digits=digits) if value.strip() else "")
            elif t in _EMPTY or vr == "PN":
                ds[tag] = _empty_element(tag, vr)
            elif vr == "DA" or vr == "DT":  # in _MODIFIED_DATES_TIMES, or not in the table at all
                if offset:
                    _shift(ds, tag, vr, offset)
            elif vr == "SQ":
                try:
                    items = ds[tag].value
                except Exception:  # noqa: BLE001 - an unparseable sequence cannot be checked: drop it
                    del ds[tag]
                    continue
                for item in items:
                    self._clean(item, offset)


@functools.lru_cache(maxsize=2)
def _code_items(shift_dates: bool) -> tuple[Dataset, ...]:
    """The DeidentificationMethodCodeSequence items, built once and shared by every dataset (never modified)."""
    dates = _CODES["modified_dates"] if shift_dates else _CODES["full_dates"]
    return tuple(_code(*c) for c in (_CODES["profile"], _CODES["uids"], dates, _CODES["characteristics"]))


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.add_new(0x00080100, "SH", value)  # CodeValue
    item.add_new(0x00080102, "SH", "DCM")  # CodingSchemeDesignator
    item.add_new(0x00080104, "LO", meaning)  # CodeMeaning
    return item


def _empty_element(tag, vr: str) -> DataElement:
    if vr == "SQ":
        return DataElement(tag, "SQ", Sequence())
    vr = "UN" if " " in vr else vr  # "US or SS" and the like
    return DataElement(tag, vr, empty_value_for_VR(vr))  # "" for text, None for numbers, b"" for bytes


def _text(ds: Dataset, tag) -> str:
    try:
        value = ds[tag].value
    except Exception:  # noqa: BLE001
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None:
        return ""
    return (
        "\\".join(str(v) for v in value) if isinstance(value, list | tuple) or hasattr(value, "append") else str(value)
    )


def _shift_one(value: str, vr: str, offset: int) -> str:
    """One DA or DT value shifted by ``offset`` days; "" if it is not a full date."""
    return _shift_text(str(value).strip(), vr, offset)


@functools.lru_cache(maxsize=4096)  # the files of a study share their dates
def _shift_text(text: str, vr: str, offset: int) -> str:
    match = (_DA if vr == "DA" else _DT).match(text)
    if match is None:
        return ""
    try:
        day = dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3))) + dt.timedelta(days=offset)
    except (ValueError, OverflowError):
        return ""
    rest = match.group(4) if vr == "DT" else ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}{rest}"


def _shift(ds: Dataset, tag, vr: str, offset: int) -> None:
    try:
        value = ds[tag].value
    except Exception:  # noqa: BLE001 - unreadable: empty it rather than keep it
        value = None
    if value is None or value == "":
        ds[tag] = DataElement(tag, vr, "")
        return
    if isinstance(value, str):
        shifted: str | list[str] = _shift_one(value, vr, offset)
    else:
        shifted = [_shift_one(v, vr, offset) for v in value]
    ds[tag] = DataElement(tag, vr, shifted)
