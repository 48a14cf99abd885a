"""Step 01 on MIMIC-IV: the `dataset` and `note_dir` parameters, Edin et al.'s MIMIC-IV presets with
their split files, and the refusals of a split or folder that does not fit the dataset.

The preset fixture: 30 ICD-10 admissions (HADM_ID 300000 + i; patients three by three for 0-23, one
each for 24-29). Codes, per admission: I10 in all but 29; A41.9 in 0-11 (12); 0DTJ4ZZ in 0-9 (10,
a PCS code: kept at exactly 10); E11.9 in the even admissions 0-16 (9, with a repeated row in 0:
dropped by the whole-dataset count of 10); Z79.01 only in 29, its only code (the admission goes).
Three ICD-9 admissions (300100-300102) of patient 1 come before, and are in neither the ICD-10
dataset nor its split file.
"""

import pandas as pd
import pytest

from icdlib.run import config
from icdlib.data import preprocess
from icdlib.run.errors import ConfigError, DataError, MimicSchemaError

from mimic4_fixture import write_mimic4

N = 30
SUBJECT = [1 + i // 3 if i < 24 else 100 + i for i in range(N)]
CODES = {i: (["I10"] if i != 29 else ["Z7901"]) for i in range(N)}
for i in range(12):
    CODES[i].append("A419")
for i in range(0, 17, 2):
    CODES[i].append("E119")
CODES[0].append("E119")  # a repeated row: counted once
PROCEDURES = {i: ["0DTJ4ZZ"] for i in range(10)}
EDIN = {"train": range(0, 18), "val": range(18, 23), "test": range(23, 30)}  # 29: dropped by the filter


def hadm(i):
    return 300000 + i


def write_preset_fixture(root):
    diagnoses = [(SUBJECT[i], hadm(i), k + 1, c, 10) for i, cs in CODES.items() for k, c in enumerate(cs)]
    diagnoses += [(1, 300100 + k, 1, "4019", 9) for k in range(3)]
    procedures = [(SUBJECT[i], hadm(i), 1, "2180-01-01", c, 10) for i, cs in PROCEDURES.items() for c in cs]
    notes = [(f"{SUBJECT[i]}-DS-{i}", SUBJECT[i], hadm(i), "DS", 1, "2180-01-05 00:00:00", "",
              f"Name: ___ note {i}, 12 mg") for i in range(N)]
    notes += [(f"1-DS-9{k}", 1, 300100 + k, "DS", 1, "2140-01-05 00:00:00", "", "an ICD-9 stay") for k in range(3)]
    titles = [("I10", 10, "Essential (primary) hypertension"), ("A419", 10, "Sepsis, unspecified organism"),
              ("E119", 10, "Type 2 diabetes mellitus without complications"), ("4019", 9, "Hypertension NOS")]
    mimic = write_mimic4(root / "mimiciv", rows={"diagnoses_icd": diagnoses, "procedures_icd": procedures,
                                                 "discharge": notes, "d_icd_diagnoses": titles})
    split_dir = root / "splits"
    split_dir.mkdir()
    ids = [(hadm(i), s) for s, r in EDIN.items() for i in r] + [(300999, "test")]  # 300999: not in the data
    pd.DataFrame(ids, columns=["_id", "split"]).to_feather(split_dir / "mimiciv_icd10_split.feather")
    return mimic, split_dir


@pytest.fixture
def preset(tmp_path):
    return write_preset_fixture(tmp_path)


def resolve(tmp_path, **over):
    return config.resolve("tiny", {"output_root": str(tmp_path / "out"), **over})


def test_edin_mimic4_preset_sets_the_dataset_split_and_whole_dataset_filter(tmp_path, preset):
    mimic, split_dir = preset
    cfg = resolve(tmp_path, mimic_dir=str(mimic), split_dir=str(split_dir), benchmark="edin_mimic4_icd10")
    assert (cfg.dataset, cfg.split, cfg.labels, cfg.min_count) == ("mimic4_icd10", "mimic4_icd10", "observed", 10)
    result = preprocess.build(cfg, progress=False)
    notes = result.notes.set_index("hadm_id")
    assert {s: sorted(notes.index[notes["split"] == s] - 300000) for s in ("train", "val", "test")} == {
        "train": list(range(18)), "val": list(range(18, 23)), "test": list(range(23, 29))}
    assert result.labels["code"].tolist() == ["0DTJ4ZZ", "A41.9", "I10"]  # E11.9 (9) and Z79.01 (1) are out
    assert result.labels.set_index("code")["long_title"].to_dict() == {
        "0DTJ4ZZ": "Resection of Appendix, Percutaneous Endoscopic Approach", "A41.9": "Sepsis, unspecified organism",
        "I10": "Essential (primary) hypertension"}
    assert result.labels.set_index("code")["kind"].to_dict() == {"0DTJ4ZZ": "procedure", "A41.9": "diagnosis",
                                                                 "I10": "diagnosis"}
    s = result.stats
    assert s["codes in < 10 admissions of the whole dataset (dropped, edin_mimic4_icd10)"] == 2
    assert s["admissions without codes left (dropped, edin_mimic4_icd10)"] == 1
    assert s["test ids in split files but not in the data"] == 2  # 29 (filtered) and 300999
    assert s["diagnoses_icd rows of ICD-9 (the other dataset)"] == 3
    assert s["train code assignments outside the label space"] == 9  # E11.9 stays in the code lists
    assert notes.loc[hadm(0), "codes"] == ["0DTJ4ZZ", "A41.9", "E11.9", "I10"]
    assert notes.loc[hadm(0), "text"] == "name note mg"  # the preset's text_cleaning edin (was: "Name: ___ note 0, 12 mg")
    text = preprocess.benchmark_check(cfg, result).data
    assert "| this run (dataset=mimic4_icd10, benchmark=edin_mimic4_icd10, split=mimic4_icd10, labels=observed) " \
           "| 18 | 5 | 6 | 3 |" in text
    assert "| MIMIC-IV ICD-10 (Edin et al.): expected | 89,099 | 13,378 | 19,802 |" in text
    assert "MIMIC-III" not in text and "MIMIC-IV ICD-9" not in text
    assert "differs from MIMIC-IV ICD-10 (Edin et al.): train 18 (expected 89,099)" in text
    assert "Check that the data is MIMIC-IV v2.2, and the split files in split_dir." in text
    assert "| MIMIC-IV ICD-10 (Edin et al.): labels Edin et al.'s code gave on MIMIC-IV v3.0 (their issue #17), not " \
           "expected here | – | – | – | 7,940 |" in text
    # split counts equal by construction (the split files choose the admissions): no "matches" without labels
    assert preprocess.EXPECTED["edin_mimic4_icd10"][4] is None
    matching = preprocess.Preprocessed(notes=result.notes, labels=result.labels, stats={
        "train admissions": 89099, "val admissions": 13378, "test admissions": 19802, "labels": 7940})
    verdict = preprocess.benchmark_check(cfg, matching).data.split("\n\n")[-1]
    assert verdict == (
        "The admissions per split match MIMIC-IV ICD-10 (Edin et al.): its split files choose them, so this says only "
        "that none of theirs is missing, not that the filters are the paper's; the label count would test them, but "
        "none was published for MIMIC-IV v2.2 in a source at hand, so this run's 7,940 labels are not compared "
        "(Edin et al.'s code gave 7,940 on MIMIC-IV v3.0, a later release: their issue #17).")


def test_edin_text_cleaning_and_a_separate_note_folder(tmp_path):
    mimic = write_mimic4(tmp_path / "mimiciv", note_dir=tmp_path / "mimiciv-note")
    cfg = resolve(tmp_path, mimic_dir=str(mimic), note_dir=str(tmp_path / "mimiciv-note"), dataset="mimic4_icd9",
                  text_cleaning="edin", min_count=1, split="seed")
    result = preprocess.build(cfg, progress=False)
    notes = result.notes.set_index("hadm_id")
    assert sorted(notes.index) == [200001, 200003, 200005, 200006]
    assert notes.loc[200001, "text"] == "name unit no admission date quoted and a comma second note later"
    assert notes.loc[200001, "codes"] == ["038.9", "38.93", "401.9", "V58.61"]
    assert notes.loc[200003, "split"] == "train" and notes.loc[200006, "split"] == "train"
    assert result.labels.set_index("code").loc["V58.61", "long_title"] == "Long-term (current) use of anticoagulants"
    assert result.labels.set_index("code").loc["V10.52", "long_title"] == ""  # in no dictionary: kept, untitled
    without = resolve(tmp_path, mimic_dir=str(mimic), dataset="mimic4_icd9", min_count=1)
    with pytest.raises(MimicSchemaError, match="has no note/ folder"):
        preprocess.build(without, progress=False)


def test_step01_records_and_reuses_a_mimic4_run(tmp_path, preset):
    mimic, split_dir = preset
    cfg = config.load("tiny", params={"output_root": str(tmp_path / "out"), "mimic_dir": str(mimic),
                                      "split_dir": str(split_dir), "benchmark": "edin_mimic4_icd10"})
    first = preprocess.run(cfg, progress=False)
    assert first.stats["reused from cache"] is False
    again = preprocess.run(cfg, progress=False)
    assert again.stats["reused from cache"] is True and len(again.notes) == len(first.notes) == 29
    manifest = (cfg.run_dir / "01_preprocess" / "manifest.json").read_text()
    assert '"dataset": "mimic4_icd10"' in manifest and '"note_dir": ""' in manifest
    assert "hosp/diagnoses_icd.csv.gz" in manifest and "note/discharge.csv.gz" in manifest


@pytest.mark.parametrize("over, message", [
    ({"dataset": "mimic4_icd9", "split": "caml_full"},
     "split=caml_full lists MIMIC-III admissions, not dataset=mimic4_icd9's: use split=mimic4_icd9"),
    ({"dataset": "mimic4_icd10", "split": "mimic4_icd9"},
     "split=mimic4_icd9 lists the admissions of dataset=mimic4_icd9, not dataset=mimic4_icd10's"),
    ({"split": "mimic4_icd10"}, "split=mimic4_icd10 lists the admissions of dataset=mimic4_icd10, not dataset=mimic3"),
    ({"note_dir": "/somewhere"}, "note_dir names MIMIC-IV-Note's folder, but dataset=mimic3"),
    ({"dataset": "mimic4_icd10", "split": "mimic4_icd10", "min_count": 10},
     "counts train admissions only, not Edin et al.'s whole dataset: use benchmark=edin_mimic4_icd10"),
    ({"benchmark": "edin_mimic4_icd10", "dataset": "mimic4_icd9"},
     "benchmark=edin_mimic4_icd10 sets dataset=mimic4_icd10, but dataset=mimic4_icd9 is given"),
    ({"benchmark": "edin_clean", "dataset": "mimic4_icd9"},
     "benchmark=edin_clean sets dataset=mimic3, but dataset=mimic4_icd9 is given"),
    ({"dataset": "mimic5"}, "dataset"),
])
def test_a_split_or_folder_of_another_dataset_is_refused(tmp_path, over, message):
    with pytest.raises(ConfigError) as e:
        resolve(tmp_path, **over)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_mimic4_split_file_names_it(tmp_path, preset):
    mimic, _ = preset
    cfg = resolve(tmp_path, mimic_dir=str(mimic), split_dir=str(tmp_path), benchmark="edin_mimic4_icd9")
    with pytest.raises(DataError) as e:
        preprocess.build(cfg, progress=False)
    assert str(e.value) == f"split_dir {tmp_path} lacks the files of split 'mimic4_icd9': mimiciv_icd9_split.feather"


def test_relative_note_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve(tmp_path, dataset="mimic4_icd10", mimic_dir="mimiciv", note_dir="../notes")
    assert cfg.mimic_dir == str(tmp_path / "mimiciv") and cfg.note_dir == str(tmp_path.parent / "notes")
