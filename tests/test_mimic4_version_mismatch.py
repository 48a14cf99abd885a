"""MIMIC-IV code tables without a row of the dataset's ICD version (issue 21, item 9): step 01 refuses
them in one line naming the file, its rows by icd_version and the dataset that reads them, instead
of an empty dataset blamed on note_categories, note_descriptions and split.

Mixed-version tables keep working: tests/test_mimic4.py::test_icd9_dataset_exact and
::test_icd10_dataset_exact read both datasets of the hand-made folder (both tables mixed), and
tests/test_mimic4_pipeline.py::test_edin_text_cleaning_and_a_separate_note_folder runs step 01 on it;
`test_one_table_of_the_other_version_only_still_reads` below covers a table of one version only.
"""

import pandas as pd
import pytest

from icdlib.run import config
from icdlib.data import mimic4, preprocess
from icdlib.run.errors import DataError

from mimic4_fixture import DIAGNOSES, PROCEDURES, write_mimic4

OLD_BLAME = "note_categories"


def only(version: int) -> dict:
    """The fixture's code tables reduced to the rows of one ICD version."""
    return {"diagnoses_icd": [r for r in DIAGNOSES if r[-1] == version],
            "procedures_icd": [r for r in PROCEDURES if r[-1] == version]}


def step01(tmp_path, mimic_dir, **over):
    """Step 01's build (what `python -m icdlib run` calls) on `mimic_dir`."""
    cfg = config.resolve("tiny", {"output_root": str(tmp_path / "out"), "mimic_dir": str(mimic_dir), **over})
    return preprocess.build(cfg, progress=False)


def refusal(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and OLD_BLAME not in text
    return text


@pytest.mark.parametrize("gz", [True, False])
def test_icd9_only_data_read_as_mimic4_icd10(tmp_path, gz):
    m4 = write_mimic4(tmp_path / "icd9_only", gz=gz, rows=only(9))
    suffix = ".csv.gz" if gz else ".csv"
    with pytest.raises(DataError) as e:
        step01(tmp_path, m4, dataset="mimic4_icd10")
    # 10 ICD-9 diagnosis rows with a code (the fixture's empty icd_code row is not counted), 2 procedure rows
    assert refusal(e) == (
        f"{m4 / 'hosp' / ('diagnoses_icd' + suffix)} has no ICD-10 codes (10 rows, all icd_version 9), "
        f"nor has procedures_icd{suffix} (2 rows, all icd_version 9): dataset=mimic4_icd10 reads icd_version 10 "
        f"rows only; for these ICD-9 codes use dataset=mimic4_icd9")
    fixed = step01(tmp_path, m4, dataset="mimic4_icd9", split="seed", min_count=1)  # the suggested dataset
    assert len(fixed.notes) == 4


def test_icd10_only_data_read_as_mimic4_icd9(tmp_path):
    m4 = write_mimic4(tmp_path / "icd10_only", rows=only(10))
    with pytest.raises(DataError) as e:
        step01(tmp_path, m4, dataset="mimic4_icd9")
    assert refusal(e) == (
        f"{m4 / 'hosp' / 'diagnoses_icd.csv.gz'} has no ICD-9 codes (9 rows, all icd_version 10), "
        f"nor has procedures_icd.csv.gz (4 rows, all icd_version 10): dataset=mimic4_icd9 reads icd_version 9 "
        f"rows only; for these ICD-10 codes use dataset=mimic4_icd10")
    assert len(step01(tmp_path, m4, dataset="mimic4_icd10", split="seed", min_count=1).notes) == 3


def test_refused_before_the_split_files_are_read(tmp_path):
    """Edin's ICD-10 preset with its split file: the version is named, not the split or its filters."""
    m4 = write_mimic4(tmp_path / "icd9_only", rows=only(9))
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    pd.DataFrame({"_id": [200001, 200003], "split": ["train", "test"]}).to_feather(
        split_dir / "mimiciv_icd10_split.feather")
    with pytest.raises(DataError, match=r"has no ICD-10 codes \(10 rows, all icd_version 9\).* "
                                        r"use dataset=mimic4_icd9$") as e:
        step01(tmp_path, m4, benchmark="edin_mimic4_icd10", split_dir=str(split_dir))
    refusal(e)


def test_counts_with_thousands_separators(tmp_path):
    diagnoses = [(1 + i // 4, 210000 + i // 4, 1 + i % 4, "4019", 9) for i in range(12345)]
    m4 = write_mimic4(tmp_path / "big", rows={"diagnoses_icd": diagnoses, "procedures_icd": only(9)["procedures_icd"]})
    with pytest.raises(DataError) as e:
        mimic4.prepare(m4, dataset="mimic4_icd10")
    assert "diagnoses_icd.csv.gz has no ICD-10 codes (12,345 rows, all icd_version 9), nor has " \
           "procedures_icd.csv.gz (2 rows, all icd_version 9)" in refusal(e)


def test_empty_code_tables_point_at_the_folder(tmp_path):
    m4 = write_mimic4(tmp_path / "empty", rows={"diagnoses_icd": [], "procedures_icd": []})
    with pytest.raises(DataError) as e:
        mimic4.prepare(m4, dataset="mimic4_icd9")
    assert refusal(e) == (
        f"{m4 / 'hosp' / 'diagnoses_icd.csv.gz'} has no ICD-9 codes (no rows), nor has procedures_icd.csv.gz "
        f"(no rows): dataset=mimic4_icd9 reads icd_version 9 rows only; check that mimic_dir holds MIMIC-IV "
        f"v2.2's hosp/ tables")


def test_one_table_of_the_other_version_only_still_reads(tmp_path):
    """Procedures all ICD-10, diagnoses mixed: the ICD-9 dataset is the diagnoses' ICD-9 codes, as before."""
    m4 = write_mimic4(tmp_path / "px10", rows={"procedures_icd": only(10)["procedures_icd"]})
    notes, _, stats = mimic4.prepare(m4, dataset="mimic4_icd9")
    assert dict(zip(notes["hadm_id"], notes["codes"])) == {
        200001: ["038.9", "401.9", "V58.61"], 200003: ["401.9", "E888.9", "V10.52"], 200005: ["V10.52"],
        200006: ["427.31"]}
    assert stats["procedures_icd rows of ICD-10 (the other dataset)"] == 4
