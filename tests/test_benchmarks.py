"""Benchmark presets (config.BENCHMARKS) and the seed split's own account, on a hand-made fixture.

The fixture: 30 admissions (HADM_ID 200000 + i). Patients: admissions 0-23 three by three
(subjects 1-8), 24-29 one each (subjects 124-129). Codes, counted per admission:
401.9 in all but 29 (29); 38.93 in 0-11 (12); 428.0 in 0-6 and 20-22 (10: kept by Edin's
whole-dataset count, but only 7 in Edin's train part); 250.00 in the even admissions 0-16 (9,
plus a duplicated row in 0, so a count of rows would be 10); 584.9 only in 25 (a CAML test
admission); V15.82 only in 29, its only code (Edin drops the admission).
"""

import csv

import numpy as np
import pandas as pd
import pytest

from icdlib.run import config
from icdlib.data import labels, preprocess, splits
from icdlib.run.errors import ConfigError
from icdlib.data.mimic import TABLES

N = 30
SUBJECT = [1 + i // 3 if i < 24 else 100 + i for i in range(N)]
CODES = {i: (["4019"] if i != 29 else ["V1582"]) for i in range(N)}
for i in range(12):
    CODES[i].append("3893")
for i in [*range(7), 20, 21, 22]:
    CODES[i].append("4280")
for i in range(0, 17, 2):
    CODES[i].append("25000")
CODES[0].append("25000")  # a duplicated row: counted once
CODES[25].append("5849")
PROCEDURE = {"3893"}
CAML_FULL = {"train": range(0, 20), "dev": range(20, 24), "test": range(24, 30)}
CAML_50 = {"train": range(0, 10), "dev": range(10, 14), "test": range(14, 17)}
EDIN = {"train": range(0, 18), "val": range(18, 23), "test": range(23, 29)}  # 29: dropped by Edin


def hadm(i):
    return 200000 + i


def write_fixture(root):
    mimic, split_dir = root / "mimic", root / "splits"
    mimic.mkdir()
    split_dir.mkdir()
    diag, proc = [], []
    for i, codes in CODES.items():
        for code in codes:
            rows = proc if code in PROCEDURE else diag
            rows.append((len(rows) + 1, SUBJECT[i], hadm(i), len(rows) + 1, code))
    tables = {
        "NOTEEVENTS": [(i + 1, SUBJECT[i], hadm(i), "2150-01-01", "", "", "Discharge summary", "Report", "", "",
                        f"Note {i}: BP 120/80, Pt_name [**Hospital1 18**] SOB.") for i in range(N)],
        "DIAGNOSES_ICD": diag, "PROCEDURES_ICD": proc,
        "D_ICD_DIAGNOSES": [(1, "4019", "Hypertension NOS", "Unspecified essential hypertension"),
                            (2, "4280", "CHF NOS", "Congestive heart failure, unspecified"),
                            (3, "25000", "DMII wo cmp nt st uncntr", "Diabetes mellitus"),
                            (4, "42731", "Atrial fibrillation", "Atrial fibrillation")],
        "D_ICD_PROCEDURES": [(1, "3893", "Venous cath NEC", "Venous catheterization")],
    }
    for table, rows in tables.items():
        with open(mimic / f"{table}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
            w.writerow(list(TABLES[table]))
            w.writerows(rows)
    for suffix, parts in (("full", CAML_FULL), ("50", CAML_50)):
        for part, ids in parts.items():
            extra = ["299999"] if (suffix, part) == ("full", "test") else []  # listed, not in the data
            (split_dir / f"{part}_{suffix}_hadm_ids.csv").write_text("\n".join([str(hadm(i)) for i in ids] + extra) + "\n")
    (split_dir / "top50_codes.txt").write_text("401.9\n428.0\n")
    pd.DataFrame([(hadm(i), part) for part, ids in EDIN.items() for i in ids], columns=["_id", "split"]).to_feather(
        split_dir / "mimiciii_clean_splits.feather")
    return mimic, split_dir


@pytest.fixture
def fixture(tmp_path):
    return write_fixture(tmp_path)


def cfg_for(tmp_path, fixture, **over):
    mimic, split_dir = fixture
    return config.resolve("tiny", {"mimic_dir": str(mimic), "split_dir": str(split_dir),
                                   "output_root": str(tmp_path / "out"), "seed": 7, **over})


def build(tmp_path, fixture, **over):
    return preprocess.build(cfg_for(tmp_path, fixture, **over), progress=False)


def per_split(notes):
    return tuple(int((notes["split"] == s).sum()) for s in splits.SPLITS)


def hadms(notes, split):
    return sorted(int(h) - 200000 for h in notes.loc[notes["split"] == split, "hadm_id"])


def test_caml_full_labels_every_code_of_every_split_and_keeps_unseen_test_codes(tmp_path, fixture):
    cfg = cfg_for(tmp_path, fixture, benchmark="caml_full")
    assert (cfg.split, cfg.labels, cfg.min_count) == ("caml_full", "observed", 1)  # tiny.yaml's min_count 5 replaced
    result = preprocess.build(cfg, progress=False)
    assert per_split(result.notes) == (20, 4, 6)
    assert result.labels["code"].tolist() == ["250.00", "38.93", "401.9", "428.0", "584.9", "V15.82"]
    assert result.labels.set_index("code")["n_train"].to_dict() == {
        "250.00": 9, "38.93": 12, "401.9": 20, "428.0": 7, "584.9": 0, "V15.82": 0}
    assert result.stats["labels never seen in train"] == 2
    assert result.stats["test code assignments outside the label space"] == 0
    assert result.stats["test ids in split files but not in the data"] == 1
    notes = result.notes.set_index("hadm_id")
    y = labels.multi_hot([notes.loc[hadm(25), "codes"], notes.loc[hadm(29), "codes"]], result.labels["code"].tolist())
    assert y.tolist() == [[0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 1]]  # the unseen codes are positives to miss
    # the same split by hand with train-only labels loses them from the ground truth
    plain = build(tmp_path, fixture, split="caml_full", min_count=1)
    assert plain.labels["code"].tolist() == ["250.00", "38.93", "401.9", "428.0"]
    assert plain.stats["test code assignments outside the label space"] == 2


def test_caml_50_takes_camls_ids_and_the_top50_file_from_split_dir(tmp_path, fixture):
    cfg = cfg_for(tmp_path, fixture, benchmark="caml_50")
    assert (cfg.split, cfg.labels, cfg.top50_file) == ("caml_50", "top50", str(fixture[1] / "top50_codes.txt"))
    result = preprocess.build(cfg, progress=False)
    assert per_split(result.notes) == (10, 4, 3)
    assert hadms(result.notes, "test") == [14, 15, 16]
    assert result.labels["code"].tolist() == ["401.9", "428.0"]
    assert result.stats["labels"] == 2


def test_edin_clean_counts_the_whole_dataset_then_drops_empty_admissions(tmp_path, fixture):
    cfg = cfg_for(tmp_path, fixture, benchmark="edin_clean")
    assert (cfg.split, cfg.labels, cfg.min_count) == ("clean", "observed", 10)
    result = preprocess.build(cfg, progress=False)
    assert per_split(result.notes) == (18, 5, 6)
    assert 29 not in hadms(result.notes, "test") and hadms(result.notes, "val") == [18, 19, 20, 21, 22]
    # 428.0: 10 admissions in all, 7 in train (a train-only min_count of 10 would drop it);
    # 250.00: 9 admissions (10 rows, one duplicated) -> dropped
    assert result.labels["code"].tolist() == ["38.93", "401.9", "428.0"]
    assert result.labels.set_index("code").loc["428.0", "n_train"] == 7
    s = result.stats
    assert s["codes in < 10 admissions of the whole dataset (dropped, edin_clean)"] == 3  # 250.00, 584.9, V15.82
    assert s["admissions without codes left (dropped, edin_clean)"] == 1
    assert s["admissions in no split file (dropped)"] == 0
    # the train-only count differs: min_count counts train admissions for benchmark none
    train_only = labels.build(result.notes, pd.DataFrame(columns=["code", "kind", "short_title", "long_title"]),
                              {}, "observed", 10)
    assert train_only["code"].tolist() == ["38.93", "401.9"]


@pytest.mark.parametrize("preset, text", [
    ("caml_full", "note bp pt_name hospital1 sob"),  # CAML: lower case, \w+ tokens, number-only ones dropped
    ("caml_50", "note bp pt_name hospital1 sob"),
    ("edin_clean", "note bp pt name hospital1 sob"),  # Edin et al.: only letters and digits
    ("seed", "Note 0: BP 120/80, Pt_name [**Hospital1 18**] SOB."),  # the original project: as written
])
def test_a_preset_cleans_the_text_as_its_paper_did(tmp_path, fixture, preset, text):
    """Presets read raw text although the published rows beside them were scored on cleaned text."""
    cfg = cfg_for(tmp_path, fixture, benchmark=preset)
    notes = preprocess.build(cfg, progress=False).notes.set_index("hadm_id")
    assert notes.loc[hadm(0), "text"] == text
    if preset != "seed":  # the original project's text as written; another cleaning may be asked with it
        with pytest.raises(ConfigError, match=rf"^benchmark={preset} sets text_cleaning="):
            cfg_for(tmp_path, fixture, benchmark=preset, text_cleaning="none")


def test_seed_preset_has_no_test_set_and_says_so(tmp_path, fixture):
    cfg = cfg_for(tmp_path, fixture, benchmark="seed")
    assert (cfg.split, cfg.labels, cfg.min_count, cfg.seed_test_share) == ("seed", "all", 1, 0.0)
    result = preprocess.build(cfg, progress=False)
    assert per_split(result.notes) == (24, 6, 0)
    assert hadms(result.notes, "val") == [8, 9, 18, 19, 28, 29]
    assert result.labels["code"].tolist() == ["250.00", "38.93", "401.9", "427.31", "428.0", "584.9", "V15.82"]
    s = result.stats
    assert s["val admissions whose patient is in train"] == 4  # 8 (subject 3), 9 (4), 18 and 19 (7)
    assert s[preprocess.SEED_SHARE] == pytest.approx(0.6667)
    text = preprocess.split_notes(cfg, result).data
    assert "There is no test set" in text and "threshold and the model" in text
    assert "66.7% of val admissions (4 of 6) belong to a patient who also has train admissions" in text


def test_seed_test_share_holds_out_whole_train_patients(tmp_path, fixture):
    # 12 train patients: subjects 1-8 and 124-127; 25% -> 3 of them
    held = build(tmp_path, fixture, split="seed", labels="all", min_count=1, seed_test_share=0.25)
    a = held.notes
    b = build(tmp_path, fixture, split="seed", labels="all", min_count=1, seed_test_share=0.25).notes
    pd.testing.assert_frame_equal(a, b)  # deterministic with seed
    assert hadms(a, "val") == [8, 9, 18, 19, 28, 29]  # val keeps the HADM_ID rule
    test_patients = set(a.loc[a["split"] == "test", "subject_id"])
    assert len(test_patients) == 3 and not test_patients & set(a.loc[a["split"] == "train", "subject_id"])
    moved = sum(SUBJECT[i] in test_patients and hadm(i) % 10 not in (8, 9) for i in range(N))
    assert per_split(a) == (24 - moved, 6, moved)
    # exact draw for seed 7 (numpy's Generator stream): subjects 5 (3 admissions), 7 (1 train, 2 val), 126
    assert sorted(test_patients) == [5, 7, 126] and per_split(a) == (19, 6, 5)
    assert held.stats["seed train patients held out as test (seed_test_share)"] == 3
    assert held.stats["test admissions whose patient is in train"] == 0
    assert held.stats["val admissions whose patient is in train"] == 2  # 18 and 19 now belong to a test patient
    assert held.stats[preprocess.SEED_SHARE] == pytest.approx(0.3333)
    cfg = cfg_for(tmp_path, fixture, benchmark="seed", seed_test_share=0.25)
    text = preprocess.split_notes(cfg, held).data
    assert "patient-disjoint test set holds out 25% of the seed's train patients (3 patients, 5 admissions" in text
    assert "33.3% of val admissions (2 of 6)" in text
    other = build(tmp_path, fixture, split="seed", labels="all", min_count=1, seed_test_share=0.25, seed=8).notes
    assert len(set(other.loc[other["split"] == "test", "subject_id"])) == 3


def test_hold_out_patients_is_exact_on_a_small_case():
    assigned = np.array(["train", "train", "val", "train", "train", "train"], dtype=object)
    subjects = np.array([1, 1, 1, 2, 3, 4])
    out, moved = splits.hold_out_patients(assigned, subjects, 0.5, seed=0)
    assert moved == 2 and out[2] == "val"
    test = set(subjects[out == "test"])
    assert len(test) == 2 and not test & set(subjects[out == "train"])
    assert (assigned == np.array(["train", "train", "val", "train", "train", "train"], dtype=object)).all()  # a copy


def test_hand_made_benchmark_look_alikes_are_refused(tmp_path, fixture):
    with pytest.raises(ConfigError, match=r"^split=caml_50 with labels=observed is not CAML's top-50 task: "
                                          r"use benchmark=caml_50 \(or labels=top50\)$"):
        cfg_for(tmp_path, fixture, split="caml_50")
    with pytest.raises(ConfigError, match=r"^split=clean with min_count=10 .*use benchmark=edin_clean"):
        cfg_for(tmp_path, fixture, split="clean", min_count=10)
    with pytest.raises(ConfigError, match=r"^seed_test_share=0.2 .*not split=patient: use benchmark=seed"):
        cfg_for(tmp_path, fixture, split="patient", seed_test_share=0.2)
    assert cfg_for(tmp_path, fixture, split="caml_50", labels="top50").labels == "top50"  # consistent by hand


def test_a_preset_refuses_values_that_contradict_it(tmp_path, fixture):
    with pytest.raises(ConfigError, match=r"^benchmark=caml_50 sets labels=top50, but labels=observed is given: "
                                          r"drop labels \(or use benchmark=none\)$"):
        cfg_for(tmp_path, fixture, benchmark="caml_50", labels="observed")
    with pytest.raises(ConfigError, match=r"^benchmark=edin_clean sets min_count=10, but min_count=5 is given"):
        cfg_for(tmp_path, fixture, benchmark="edin_clean", min_count=5)
    with pytest.raises(ConfigError, match=r"^benchmark=caml_full sets seed_test_share=0.0, but seed_test_share=0.1"):
        cfg_for(tmp_path, fixture, benchmark="caml_full", seed_test_share=0.1)
    assert cfg_for(tmp_path, fixture, benchmark="seed", seed_test_share=0.1).seed_test_share == 0.1
    # a params file naming a preset: its own conflicting values are refused; an override's too
    params = tmp_path / "params"
    params.mkdir()
    (params / "mine.yaml").write_text("benchmark: edin_clean\nsplit: patient\n")
    with pytest.raises(ConfigError, match=r"^benchmark=edin_clean sets split=clean, but split=patient is given"):
        config.resolve("mine", {"output_root": str(tmp_path)}, params_dir=params)
    (params / "mine.yaml").write_text("benchmark: edin_clean\nmin_count: 10\n")
    assert config.resolve("mine", {"output_root": str(tmp_path)}, params_dir=params).split == "clean"
    with pytest.raises(ConfigError, match=r"sets split=clean, but split=seed is given"):
        config.resolve("mine", {"output_root": str(tmp_path), "split": "seed"}, params_dir=params)


def test_the_preset_and_share_are_data_parameters(tmp_path, fixture):
    cfg = cfg_for(tmp_path, fixture, benchmark="seed", seed_test_share=0.25)
    assert {"benchmark", "seed_test_share"} <= set(preprocess.data_params(cfg))
    assert preprocess.cache_key(cfg) != preprocess.cache_key(cfg_for(tmp_path, fixture, benchmark="seed"))


def test_benchmark_check_sets_expected_beside_observed(tmp_path, fixture):
    cfg = cfg_for(tmp_path, fixture, benchmark="caml_full")
    result = preprocess.build(cfg, progress=False)
    text = preprocess.benchmark_check(cfg, result).data
    assert "| this run (dataset=mimic3, benchmark=caml_full, split=caml_full, labels=observed) | 20 | 4 | 6 | 6 |" in text
    assert "MIMIC-IV" not in text  # only the run's dataset's presets
    assert "| CAML full (Mullenbach et al.): expected | 47,723 | 1,631 | 3,372 | 8,922 |" in text
    assert "| CAML top-50 (Mullenbach et al.): expected | 8,066 | 1,573 | 1,729 | 50 |" in text
    assert "| MIMIC-III clean (Edin et al.): expected | 38,401 | 5,577 | 8,734 | 3,681 |" in text
    assert "differs from CAML full (Mullenbach et al.): train 20 (expected 47,723)" in text
    matching = preprocess.Preprocessed(notes=result.notes, labels=result.labels, stats={
        "train admissions": 47723, "val admissions": 1631, "test admissions": 3372, "labels": 8922})
    assert "The preparation matches CAML full" in preprocess.benchmark_check(cfg, matching).data
    twin = config.resolve("tiny", {"output_root": str(tmp_path / "out"), "benchmark": "seed"})
    assert "do not apply to the synthetic twin" in preprocess.benchmark_check(twin, matching).data
    seed = cfg_for(tmp_path, fixture, benchmark="seed")
    assert "the original project's rule (benchmark=seed), which published no counts" in \
        preprocess.benchmark_check(seed, matching).data


# CAML's integer reading: 01.10 and 11.0 become 11.0, 00.66 and 06.6 become 66.; 038.9 (a diagnosis) keeps its zero
FOLDING = pd.DataFrame({"code": ["01.10", "11.0", "00.66", "06.6", "038.9", "38.93", "401.9"],
                        "kind": ["procedure"] * 4 + ["diagnosis", "procedure", "diagnosis"]})


def test_caml_folded_counts_the_codes_caml_merged():
    assert preprocess.caml_folded(FOLDING) == 2
    assert preprocess.caml_folded(FOLDING.iloc[[0, 2, 4, 5, 6]]) == 0
    assert preprocess.caml_folded(FOLDING.iloc[[1, 3]]) == 0  # 11.0 and 06.6 alone: 11.0 and 66., distinct


def test_caml_full_label_mismatch_is_explained_in_the_line(tmp_path, fixture):
    cfg = cfg_for(tmp_path, fixture, benchmark="caml_full")
    splits_as_published = {"train admissions": 47723, "val admissions": 1631, "test admissions": 3372}

    def verdict(n_labels):
        result = preprocess.Preprocessed(notes=pd.DataFrame(), labels=FOLDING,
                                         stats={**splits_as_published, "labels": n_labels})
        return preprocess.benchmark_check(cfg, result).data.split("\n\n")[-1]

    admissions = ("The admissions per split match CAML full (Mullenbach et al.): its split files choose them, so this "
                  "says only that none of theirs is missing, not that the filters are the paper's; labels ")
    why = ("icdlib keeps ICD9_CODE as text, while CAML's notebook read PROCEDURES_ICD with pandas' default types, so "
           "procedure codes became integers and lost their leading zeros (01.10 was written 11.0, another procedure's "
           "code; 00.66 became 66.), which folds 2 of this run's codes into others: ")
    assert verdict(8924) == admissions + "8,924 against CAML's 8,922: " + why + "8,922 labels, as published."
    assert verdict(8930) == admissions + "8,930 against CAML's 8,922: " + why + (
        "8,928 labels. CAML then re-read its code file with pandas, which parsed part of it as floats (66.0 for 66., "
        "13.9 for 13.90): that moves its count further, by an amount that depends on the file's row order and "
        "cannot be replayed from the labels.")
    assert verdict(8922) == ("The preparation matches CAML full (Mullenbach et al.): every admission of its split "
                             "files was found, and the 8,922 labels are as published.")
    short = preprocess.Preprocessed(notes=pd.DataFrame(), labels=FOLDING, stats={
        **splits_as_published, "test admissions": 3370, "labels": 8930})
    assert preprocess.benchmark_check(cfg, short).data.endswith(
        "The preparation differs from CAML full (Mullenbach et al.): test 3,370 (expected 3,372), labels 8,930 "
        "(expected 8,922). Check that the data is MIMIC-III v1.4, and the split files in split_dir and the top-50 file.")
