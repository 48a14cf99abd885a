"""Every code of the twins' dictionaries through every code-handling function (issue 22).

The synthetic MIMIC-III twin writes D_ICD_DIAGNOSES / D_ICD_PROCEDURES from CMS's ICD-9-CM v32
(`synth.load_icd9_dictionaries`); the MIMIC-IV twin adds ICD-10-CM FY2024 and ICD-10-PCS FY2024
(`synth4.load_icd10cm_titles`, `pcs.load_pcs_titles`, as `synth4._dictionary_rows` does). A code
any of them holds can become a label, so each one must dot, group and read as its own version:
ICD-9's E000-E030 (activity codes, since October 2009) once read as ICD-10 and stopped step 05.
"""

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from icdlib.evaluation import analysis
from icdlib.data import icd10, mimic4, pcs
from icdlib.twin import synth, synth4
from icdlib.data.codes import DIAGNOSIS, PROCEDURE, category, dot, dot_diagnosis, dot_procedure, normalise
from icdlib.data.labels import kind_of


@lru_cache(maxsize=None)
def _icd9():
    """(raw diagnosis codes, raw procedure codes) of the MIMIC-III twin's dictionaries."""
    tables = synth.load_icd9_dictionaries()
    return tuple(tuple(c for c, _, _ in tables[t]) for t in ("D_ICD_DIAGNOSES", "D_ICD_PROCEDURES"))


@lru_cache(maxsize=None)
def _icd10():
    """(raw ICD-10-CM codes, ICD-10-PCS codes) the MIMIC-IV twin adds."""
    return tuple(synth4.load_icd10cm_titles()), tuple(pcs.load_pcs_titles())


def _icd9_category(raw: str, kind: str) -> str:
    """ICD-9's category written independently of `codes.category`: E + 3 digits, 3 characters, 2 digits."""
    if kind == PROCEDURE:
        return raw[:2]
    return raw[:4] if raw.startswith("E") else raw[:3]


def _label_table(codes, kinds):
    return pd.DataFrame({"code": codes, "kind": kinds, "short_title": "", "n_train": 1})


def test_the_dictionaries_are_the_whole_releases():
    dx, proc = _icd9()
    cm, pcs_codes = _icd10()
    assert (len(dx), len(proc), len(cm), len(pcs_codes)) == (14567, 3882, 74044, 78603)
    assert {"E0000", "E0010", "E0299", "E030", "E8497", "E8889"} <= set(dx)
    assert {"0014", "3893"} <= set(proc) and {"E030", "E039", "E1165", "E8889"} <= set(cm)


@pytest.mark.parametrize("kind", [DIAGNOSIS, PROCEDURE])
def test_every_icd9_code(kind):
    raws = _icd9()[kind == PROCEDURE]
    dot_kind = dot_diagnosis if kind == DIAGNOSIS else dot_procedure
    for raw in raws:
        dotted = dot(raw, kind)
        assert normalise(raw) == raw, raw
        assert dotted == dot_kind(raw) == mimic4.dot_version(raw, kind, 9) == dot(dotted, kind), raw
        assert normalise(dotted) == raw, raw
        assert category(dotted) == _icd9_category(raw, kind) and dotted.startswith(category(dotted)), raw
        assert kind_of(dotted) == kind, raw
        # only an undotted form that fits both (E030, E849, V08) is undecided; never ICD-10
        undecided = "." not in dotted and dotted[0] in "EV"
        assert icd10.icd_version(dotted) == (None if undecided else 9), raw
        assert icd10.icd_version(raw) != 10, raw


def test_icd9_label_spaces_read_as_icd9():
    dx, proc = _icd9()
    dotted = [dot(c, DIAGNOSIS) for c in dx] + [dot(c, PROCEDURE) for c in proc]
    assert not icd10.is_icd10(dotted)
    assert icd10.label_version(dotted) == icd10.label_version(dotted, "mimic3") == 9
    assert icd10.label_version(dotted, "mimic4_icd9") == 9


def test_icd9_e_categories_are_e000_to_e030_and_e800_to_e999():
    """Every E category of the dictionary fits ICD-9 undotted; outside E000-E030 and E800-E999
    there is none, and there an undotted E + 3 digits reads as ICD-10-CM (E119 is E11.9)."""
    dx = _icd9()[0]
    categories = {int(c[1:4]) for c in dx if c.startswith("E")}
    assert {0, 1, 19, 29, 30, 800, 849, 999} <= categories
    assert categories <= set(range(0, 31)) | set(range(800, 1000))
    for n in range(1000):
        expected = None if n <= 30 or n >= 800 else 10
        assert icd10.icd_version(f"E{n:03d}") == expected, n


def test_every_icd10_cm_code():
    for raw in _icd10()[0]:
        dotted = mimic4.dot10(raw, DIAGNOSIS)
        assert dotted == mimic4.dot_version(raw, DIAGNOSIS, 10) == mimic4.dot10(dotted, DIAGNOSIS), raw
        assert normalise(dotted) == raw and category(dotted) == raw[:3], raw
        assert kind_of(dotted) == DIAGNOSIS, raw
        assert icd10.icd_version(dotted) == 10 and icd10.icd_version(raw) != 9, raw
        assert icd10.chapter(dotted) != icd10.UNKNOWN_CHAPTER and icd10.block(dotted) != icd10.UNKNOWN_BLOCK, raw
        assert icd10.group(dotted, DIAGNOSIS, icd10.BLOCK) == icd10.block(dotted), raw


def test_every_icd10_pcs_code():
    for raw in _icd10()[1]:
        assert mimic4.dot10(raw, PROCEDURE) == mimic4.dot_version(raw, PROCEDURE, 10) == raw, raw
        assert normalise(raw) == raw and category(raw) == raw[:3] and kind_of(raw) == PROCEDURE, raw
        assert icd10.icd_version(raw) == 10, raw
        assert icd10.pcs_section(raw) != icd10.UNKNOWN_SECTION, raw
        assert icd10.group(raw, PROCEDURE, icd10.BLOCK).startswith(raw[:2] + " "), raw


def test_icd10_label_spaces_read_as_icd10():
    cm, pcs_codes = _icd10()
    dotted = [mimic4.dot10(c, DIAGNOSIS) for c in cm] + list(pcs_codes)
    assert icd10.is_icd10(dotted)
    assert icd10.label_version(dotted) == icd10.label_version(dotted, "mimic4_icd10") == 10


@pytest.mark.parametrize("raw,kind,version,dotted,cat,read", [
    ("E030", DIAGNOSIS, 9, "E030", "E030", None),  # ICD-9 activity NEC: its dataset says 9
    ("E0000", DIAGNOSIS, 9, "E000.0", "E000", 9),
    ("E8497", DIAGNOSIS, 9, "E849.7", "E849", 9),
    ("0014", PROCEDURE, 9, "00.14", "00", 9),
    ("E119", DIAGNOSIS, 10, "E11.9", "E11", 10),
    ("E030", DIAGNOSIS, 10, "E03.0", "E03", 10),  # the same string in MIMIC-IV's ICD-10 rows
    ("E8889", DIAGNOSIS, 9, "E888.9", "E888", 9),
    ("E8889", DIAGNOSIS, 10, "E88.89", "E88", 10),
])
def test_exact_cases(raw, kind, version, dotted, cat, read):
    assert mimic4.dot_version(raw, kind, version) == dotted
    assert category(dotted) == cat and kind_of(dotted) == kind
    assert icd10.icd_version(dotted) == read
    dataset = "mimic3" if version == 9 else "mimic4_icd10"
    assert icd10.label_version([dotted], dataset) == version


@pytest.mark.parametrize("version", [9, 10])
def test_05_levels_over_whole_dictionaries(version):
    """`analysis.category_level` and `category_confusions` (step 05) over every dictionary code of one
    version as a label space, with and without the run's dataset: no mix, every code in a group."""
    if version == 9:
        dx, proc = _icd9()
        codes = [dot(c, DIAGNOSIS) for c in dx] + [dot(c, PROCEDURE) for c in proc]
        kinds = [DIAGNOSIS] * len(dx) + [PROCEDURE] * len(proc)
        dataset, levels = "mimic3", ["full code", "3-digit category"]
    else:
        cm, pcs_codes = _icd10()
        codes = [mimic4.dot10(c, DIAGNOSIS) for c in cm] + list(pcs_codes)
        kinds = [DIAGNOSIS] * len(cm) + [PROCEDURE] * len(pcs_codes)
        dataset, levels = "mimic4_icd10", ["full code", "3-character category", "ICD-10 block", "ICD-10 chapter"]
    labels = _label_table(codes, kinds)
    y = np.zeros((2, len(codes)), dtype=np.float32)
    y[0, 0] = y[1, -1] = 1
    score = np.roll(y, 1, axis=1)  # the next code predicted: document 0 misses in its category, 1 does not
    for named in (dataset, None):
        table = analysis.category_level(y, score, labels, 0.5, dataset=named)
        assert list(table.index) == levels and table.loc["full code", "n_labels"] == len(codes)
    confusions = analysis.category_confusions(y, score, labels, 0.5)
    assert confusions[["true_code", "predicted_code"]].values.tolist() == [[codes[0], codes[1]]]
