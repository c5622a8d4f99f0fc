"""Fake but realistic patient identity for one study (PHI to test de-identification against).

Every value is drawn from the study's generator, so archives are reproducible. The
names are invented from common given names and surnames; no real person is meant.
Folder and file names of the archive never contain these values.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

__all__ = ["Identity", "sample_identity"]

_FEMALE = ("Maria", "Anna", "Julia", "Sofia", "Emma", "Laura", "Helena", "Clara", "Ingrid", "Nadia", "Petra",
           "Rosalind", "Beatrix", "Yvonne", "Marta", "Elena", "Grace", "Fiona", "Olivia", "Hannah")  # fmt: skip
_MALE = ("Johan", "Peter", "Thomas", "Michael", "Andreas", "Lukas", "Henrik", "Mateo", "Oliver", "Stefan",
         "Dmitri", "Carlos", "Walter", "Frederik", "Tobias", "Marcus", "Gregor", "Anton", "Victor", "Samuel")  # fmt: skip
_SURNAMES = ("Lindqvist", "Okonkwo", "Bergmann", "Castellano", "Haraldsen", "Moreau", "Kowalczyk", "Tanaka",
             "Fitzgerald", "Vasquez", "Eriksson", "Novak", "Brennan", "Delacroix", "Hoffmann", "Nakamura",
             "Abernathy", "Sorensen", "Rinaldi", "Whitcombe", "Dragomir", "Achterberg", "Pemberton", "Quist")  # fmt: skip
_PLACES = ("Northvale", "Ashbury", "Kingsmere", "Larkfield", "Eastbrook", "Westmoor", "Oakhaven", "Riverton",
           "Silvermont", "Thornbury")  # fmt: skip
_KINDS = ("General Hospital", "Medical Centre", "Klinikum", "Infirmary", "Hospital")


@dataclass(frozen=True)
class Identity:
    """Patient, visit and institution values of one study (DICOM formatted strings)."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    weight_kg: float
    height_m: float
    accession: str
    institution: str
    referring: str
    operator: str
    study_date: str
    study_time: str
    study_id: str


#: PatientID styles of different sites: prefix and the range of the number after it.
_PATIENT_ID_STYLES = (("PID", 10**6, 10**7), ("MRN", 10**7, 10**8), ("", 10**8, 10**9))


def _pn(rng: np.random.Generator, given: tuple[str, ...]) -> tuple[str, str]:
    return str(rng.choice(_SURNAMES)), str(rng.choice(given))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one patient's identity, the study date and the institution."""
    sex = "F" if rng.random() < 0.5 else "M"
    family, given = _pn(rng, _FEMALE if sex == "F" else _MALE)
    style = int(rng.integers(3))
    if style == 0:
        name = f"{family.upper()}^{given.upper()}"
    elif style == 1:
        name = f"{family}^{given}^{'ABCDEFGHJKLMNPRSTW'[int(rng.integers(18))]}"
    else:
        name = f"{family}^{given}"
    study = dt.date(2012, 1, 1) + dt.timedelta(days=int(rng.integers(0, 13 * 365)))
    age_years = int(rng.integers(19, 88))
    birth = study - dt.timedelta(days=int(age_years * 365.25 + rng.integers(0, 365)))
    age = (study - birth).days // 365
    prefix, low, high = _PATIENT_ID_STYLES[int(rng.integers(len(_PATIENT_ID_STYLES)))]
    patient_id = f"{prefix}{int(rng.integers(low, high))}"
    ref_family, ref_given = _pn(rng, _FEMALE + _MALE)
    op_family, op_given = _pn(rng, _FEMALE + _MALE)
    hour, minute, second = int(rng.integers(7, 20)), int(rng.integers(60)), int(rng.integers(60))
    return Identity(
        patient_name=name,
        patient_id=patient_id,
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        age=f"{age:03d}Y",
        weight_kg=float(round(rng.uniform(48, 120), 1)),
        height_m=float(round(rng.uniform(1.50, 1.95), 2)),
        accession=f"A{int(rng.integers(10**7, 10**8))}"
        if rng.random() < 0.6
        else str(int(rng.integers(10**9, 10**10))),
        institution=f"{rng.choice(_PLACES)} {rng.choice(_KINDS)}",
        referring=f"{ref_family}^{ref_given}",
        operator=f"{op_family}^{op_given}",
        study_date=study.strftime("%Y%m%d"),
        study_time=f"{hour:02d}{minute:02d}{second:02d}",
        study_id=str(int(rng.integers(1000, 99999))),
    )
