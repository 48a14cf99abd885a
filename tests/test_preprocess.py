import pandas as pd
import pytest

from icdlib.run import config
from icdlib.data import admissions, preprocess, splits
from icdlib.run.errors import DataError, MimicSchemaError

from mimic_fixture import write_mimic


def make_cfg(tmp_path, mimic, **over):
    base = {"mimic_dir": str(mimic), "output_root": str(tmp_path / "out"), "split": "seed", "min_count": 1}
    return config.resolve("tiny", {**base, **over})


@pytest.fixture
def mimic(tmp_path):
    return write_mimic(tmp_path / "mimic")


def test_exact_rows_on_the_fixture(tmp_path, mimic):
    result = preprocess.build(make_cfg(tmp_path, mimic), progress=False)
    notes = result.notes.set_index("hadm_id")
    assert list(notes.index) == [100001, 100002, 100009]
    assert notes.loc[100001, "codes"] == ["038.9", "38.93", "401.9"]
    assert notes.loc[100002, "codes"] == ["389", "401.9", "E888.9", "V58.61"]
    assert notes.loc[100009, "codes"] == ["401.9", "96.04"]
    assert notes.loc[100001, "text"] == 'REPORT A\nline two, with comma\n\nADDENDUM early, "quoted"\n\nADDENDUM late'
    assert notes.loc[100002, "text"] == "REPORT B café"
    assert list(notes["split"]) == ["train", "train", "val"]
    assert notes["subject_id"].tolist() == [1, 1, 4]
    s = result.stats
    assert s["notes with ISERROR=1 (dropped)"] == 1
    assert s["notes without HADM_ID (dropped)"] == 1
    assert s["DIAGNOSES_ICD rows with empty ICD9_CODE (dropped)"] == 1
    assert s["duplicated codes within an admission (counted once)"] == 1
    assert s["distinct codes absent from the dictionaries (kept, no title)"] == 1
    assert s["admissions with notes but no codes (dropped)"] == 1
    assert s["coded admissions without a selected note (dropped)"] == 1
    assert (s["train admissions"], s["val admissions"], s["test admissions"]) == (2, 1, 0)


def test_observed_labels_sorted_with_titles_and_counts(tmp_path, mimic):
    labels = preprocess.build(make_cfg(tmp_path, mimic), progress=False).labels
    assert labels["code"].tolist() == ["038.9", "38.93", "389", "401.9", "E888.9", "V58.61"]
    assert labels["kind"].tolist() == ["diagnosis", "procedure", "diagnosis", "diagnosis", "diagnosis", "diagnosis"]
    assert labels.set_index("code").loc["401.9", "n_train"] == 2
    assert labels.set_index("code").loc["389", "short_title"] == ""
    assert labels.set_index("code").loc["38.93", "short_title"] == "Venous cath NEC"


def test_label_rules_all_and_min_count(tmp_path, mimic):
    all_codes = preprocess.build(make_cfg(tmp_path, mimic, labels="all"), progress=False).labels["code"].tolist()
    assert all_codes == sorted(["401.9", "038.9", "E888.9", "V58.61", "427.31", "38.93", "96.04", "389"])
    frequent = preprocess.build(make_cfg(tmp_path, mimic, min_count=2), progress=False).labels
    assert frequent["code"].tolist() == ["401.9"]


def test_top50_label_file(tmp_path, mimic):
    top = tmp_path / "top.txt"
    top.write_text("401.9\n96.04\n")
    labels = preprocess.build(make_cfg(tmp_path, mimic, labels="top50", top50_file=str(top)), progress=False).labels
    assert labels["code"].tolist() == ["401.9", "96.04"] and labels["n_train"].tolist() == [2, 0]


def test_report_only_and_caml_cleaning(tmp_path, mimic):
    notes = preprocess.build(make_cfg(tmp_path, mimic, note_descriptions=["Report"], text_cleaning="caml"),
                             progress=False).notes.set_index("hadm_id")
    assert notes.loc[100001, "text"] == "report a line two with comma"


def test_gzip_and_plain_give_identical_output(tmp_path, mimic):
    gz = write_mimic(tmp_path / "gz", gz=True)
    a = preprocess.build(make_cfg(tmp_path, mimic), progress=False)
    b = preprocess.build(make_cfg(tmp_path, gz), progress=False)
    pd.testing.assert_frame_equal(a.notes, b.notes)
    pd.testing.assert_frame_equal(a.labels, b.labels)


def test_patient_split_keeps_patients_together():
    subjects = list(range(1, 2001)) * 2
    assigned = splits.patient_rule(subjects)
    assert (assigned[:2000] == assigned[2000:]).all()
    share = pd.Series(assigned[:2000]).value_counts(normalize=True)
    assert abs(share["train"] - 0.75) < 0.04 and abs(share["val"] - 0.10) < 0.03 and abs(share["test"] - 0.15) < 0.03


def test_caml_split_files_count_missing_ids(tmp_path, mimic):
    d = tmp_path / "splits"
    d.mkdir()
    (d / "train_full_hadm_ids.csv").write_text("100001\n100002\n")
    (d / "dev_full_hadm_ids.csv").write_text("100009\n123456\n")
    (d / "test_full_hadm_ids.csv").write_text("")
    result = preprocess.build(make_cfg(tmp_path, mimic, split="caml_full", split_dir=str(d)), progress=False)
    assert result.notes["split"].tolist() == ["train", "train", "val"]
    assert result.stats["val ids in split files but not in the data"] == 1
    (d / "dev_full_hadm_ids.csv").write_text("100009\nabc\n")
    with pytest.raises(DataError, match=r"dev_full_hadm_ids.csv line 2: expected an integer HADM_ID, got 'abc'"):
        preprocess.build(make_cfg(tmp_path, mimic, split="caml_full", split_dir=str(d)), progress=False)


def test_edin_feather_split(tmp_path, mimic):
    d = tmp_path / "edin"
    d.mkdir()
    pd.DataFrame({"_id": [100001, 100002, 100009], "split": ["train", "test", "val"]}).to_feather(
        d / "mimiciii_clean_splits.feather")
    notes = preprocess.build(make_cfg(tmp_path, mimic, split="clean", split_dir=str(d)), progress=False).notes
    assert notes["split"].tolist() == ["train", "test", "val"]


def test_missing_table_and_column_are_named(tmp_path):
    partial = write_mimic(tmp_path / "partial", skip=("PROCEDURES_ICD",))
    with pytest.raises(MimicSchemaError, match=r"lacks PROCEDURES_ICD.csv.gz \(or PROCEDURES_ICD.csv\)"):
        preprocess.build(make_cfg(tmp_path, partial), progress=False)
    nocol = write_mimic(tmp_path / "nocol", drop_column=("DIAGNOSES_ICD", "ICD9_CODE"))
    with pytest.raises(MimicSchemaError, match=r"DIAGNOSES_ICD.csv lacks column ICD9_CODE \(has: ROW_ID, SUBJECT_ID, HADM_ID, SEQ_NUM"):
        preprocess.build(make_cfg(tmp_path, nocol), progress=False)
    with pytest.raises(MimicSchemaError, match=r"is not a folder"):
        preprocess.build(make_cfg(tmp_path, tmp_path / "nowhere"), progress=False)


def test_unreadable_gzip_is_named(tmp_path, mimic):
    (mimic / "NOTEEVENTS.csv").unlink()
    (mimic / "NOTEEVENTS.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MimicSchemaError, match=r"NOTEEVENTS.csv.gz: cannot read the header"):
        preprocess.build(make_cfg(tmp_path, mimic), progress=False)


def test_empty_result_is_an_error(tmp_path, mimic):
    with pytest.raises(DataError, match="no admission is left"):
        preprocess.build(make_cfg(tmp_path, mimic, note_categories=["Echo"]), progress=False)


def test_run_writes_atomically_and_caches(tmp_path, mimic):
    cfg = make_cfg(tmp_path, mimic)
    first = preprocess.run(cfg, progress=False)
    assert first.stats["reused from cache"] is False
    out = cfg.run_dir / "01_preprocess"
    assert sorted(p.name for p in out.iterdir()) == ["cache_key.txt", "labels.parquet", "manifest.json", "notes.parquet",
                                                     "stats.json"]
    assert preprocess.run(cfg, progress=False).stats["reused from cache"] is True
    changed = make_cfg(tmp_path, mimic, min_count=2)
    assert preprocess.run(changed, progress=False).labels["code"].tolist() == ["401.9"]
    assert [p.name for p in cfg.run_dir.iterdir() if p.name.startswith(".")] == [".lock"]  # no leftovers
    stored = pd.read_parquet(out / "notes.parquet")
    assert stored["hadm_id"].dtype == "int64" and list(stored["codes"].iloc[0]) == ["038.9", "38.93", "401.9"]


def test_invalid_utf8_in_a_note_is_repaired_and_counted(tmp_path, mimic):
    path = mimic / "NOTEEVENTS.csv"
    path.write_bytes(path.read_bytes().replace("REPORT B café".encode(), b"REPORT B caf\xe9"))
    result = preprocess.build(make_cfg(tmp_path, mimic), progress=False)
    assert result.stats["notes with invalid UTF-8 (bytes replaced)"] == 1
    assert result.notes.set_index("hadm_id").loc[100002, "text"] == "REPORT B caf\ufffd"


def test_synth_command_writes_the_five_tables(tmp_path):
    from icdlib.cli import main

    assert main(["synth", "--out", str(tmp_path / "twin"), "--admissions", "20", "--short", "--gzip", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "twin").iterdir()) == [
        "DIAGNOSES_ICD.csv.gz", "D_ICD_DIAGNOSES.csv.gz", "D_ICD_PROCEDURES.csv.gz", "EVIDENCE.csv.gz",
        "NOTEEVENTS.csv.gz", "PROCEDURES_ICD.csv.gz"]
    cfg = make_cfg(tmp_path, tmp_path / "twin", split="patient")
    assert len(preprocess.build(cfg, progress=False).notes) > 0


def test_join_texts_across_chunks_in_any_order():
    import numpy as np
    import pyarrow as pa

    chunks = [pa.array(["a", "bb"], pa.large_string()), pa.array(["ccc", "", "é!"], pa.large_string()).slice(0, 3),
              pa.array(["zz"], pa.large_string())]
    rows = np.array([4, 0, 2, 1, 3, 5])  # notes in admission order, spread over the chunks
    first, n_notes = np.array([2, 0, 5, 3]), np.array([1, 2, 1, 2])  # admissions listed out of order
    joined = admissions.join_texts(list(chunks), rows, first, n_notes)
    assert joined.tolist() == ["ccc", "é!\n\na", "zz", "bb\n\n"]
    assert all(c is not None for c in chunks)  # the caller's own references are untouched
    assert admissions.join_texts([], np.zeros(0, np.int64), np.zeros(0), np.zeros(0)).tolist() == []


def test_group_codes_sorts_and_deduplicates():
    rows = pd.DataFrame({"hadm_id": [7, 3, 7, 7, 3], "code": ["401.9", "V58.61", "038.9", "401.9", "E888.9"]})
    grouped = admissions.group_codes(rows)
    assert grouped["hadm_id"].tolist() == [3, 7]
    assert grouped["codes"].tolist() == [["E888.9", "V58.61"], ["038.9", "401.9"]]


def test_notes_read_in_parallel_byte_ranges_equal_one_piece(tmp_path):
    from icdlib.data import mimic
    from icdlib.twin import synth

    paths = synth.generate(tmp_path / "twin", admissions=120, seed=3, progress=False)
    whole, whole_stats = mimic.read_notes(paths["NOTEEVENTS"], ["Discharge summary", "Radiology"], progress=False, parts=1)
    ranges = mimic._record_ranges(paths["NOTEEVENTS"], 3)
    assert len(ranges) == 3 and ranges[-1][1] == paths["NOTEEVENTS"].stat().st_size
    split, split_stats = mimic.read_notes(paths["NOTEEVENTS"], ["Discharge summary", "Radiology"], progress=False, parts=3)
    assert split.equals(whole) and split_stats == whole_stats
    assert whole.num_rows > 100 and whole_stats["NOTEEVENTS rows"] > whole.num_rows


def test_a_cut_inside_a_note_falls_back_to_one_piece(tmp_path):
    from icdlib.data import mimic

    import mimic_fixture

    trap = "x" * 5000 + "\n12,34,56,2150-01-01,looks like a record start\n" + "y" * 5000
    notes = mimic_fixture.NOTES + [(20, 6, 100010, "2150-08-01", "", "", "Discharge summary", "Report", "", "", trap)]
    folder = tmp_path / "mimic"
    mimic_fixture.write_mimic(folder)
    with open(folder / "NOTEEVENTS.csv", "w", newline="", encoding="utf-8") as f:
        import csv

        w = csv.writer(f)
        w.writerow(mimic.TABLES["NOTEEVENTS"])
        w.writerows(notes)
    path = folder / "NOTEEVENTS.csv"
    cut = mimic._record_ranges(path, 2)[1][0]
    raw = path.read_bytes()
    assert raw.index(b"xxxxx") < cut < raw.index(b"yyyyy")  # the cut is inside the trap note
    from tqdm import tqdm

    import pyarrow as pa

    with pytest.raises(pa.ArrowInvalid), tqdm(total=len(raw), disable=True) as bar:  # the cut ranges do not parse
        mimic._read_ranges(path, mimic.read_header(path), ["Discharge summary"], mimic._record_ranges(path, 2), 1 << 20, bar)
    whole, _ = mimic.read_notes(path, ["Discharge summary"], progress=False, parts=1)
    split, stats = mimic.read_notes(path, ["Discharge summary"], progress=False, parts=2)
    assert split.equals(whole) and stats["NOTEEVENTS rows"] == len(notes)
    assert trap in split.column("text").to_pylist()


def test_run_starts_marks_where_any_key_changes():
    import numpy as np

    assert admissions.run_starts(np.array([], np.int64)).tolist() == []
    assert admissions.run_starts(np.array([1, 1, 2, 2, 2, 5])).tolist() == [0, 2, 5]
    assert admissions.run_starts(np.array([1, 1, 1, 2]), np.array([3, 4, 4, 4])).tolist() == [0, 1, 3]


MIMIC3_NOTE = ("Admission Date:  [**2102-6-14**]              Discharge Date:   [**2102-6-20**]\n\n"
               "Date of Birth:  [**2040-1-2**]             Sex:   M\n\nService: MEDICINE\n\nAllergies:\nPenicillins\n\n"
               "Attending:[**Doctor Last Name **]\n\nChief Complaint:\nDyspnea on exertion\n\n"
               "History of Present Illness:\n59 y/o woman with heart failure")


def test_sample_shows_each_note_from_its_chief_complaint_not_its_header():
    notes = pd.DataFrame({"hadm_id": [1, 2], "subject_id": [10, 20], "split": ["train", "test"],
                          "codes": [["428.0", "427.31"], ["401.9"]],
                          "text": [MIMIC3_NOTE, "Name:  ___   Unit No:   ___\n\nAdmission Date:  ___\n\nSex:   F\n\n"
                                                "Service: SURGERY\n\nMajor Surgical Procedure:\nLaparoscopic cholecystectomy"]})
    shown = preprocess.sample(notes, share_safe=False, words=6)
    assert shown.columns.tolist() == ["hadm_id", "subject_id", "split", "codes",
                                      "text (first 6 words from the Chief Complaint)"]
    assert shown.iloc[:, -1].tolist() == ["Chief Complaint: Dyspnea on exertion History",  # MIMIC-III's header skipped
                                          "Major Surgical Procedure: Laparoscopic cholecystectomy"]  # no Chief Complaint
    assert shown["codes"].tolist() == ["428.0, 427.31", "401.9"]
    assert preprocess.sample(notes, share_safe=True).columns.tolist() == ["hadm_id", "subject_id", "split", "codes"]


def test_cleaned_origins_lead_each_cleaned_character_back_to_the_text():
    from icdlib.data.preprocess import CLEANERS, cleaned_origins

    text = "Pt ADMITTED w/ Sepsis, 2 days.\n12 Atrial-Fib 3"
    caml = cleaned_origins(text, "caml")
    assert CLEANERS["caml"]([text])[0] == "pt admitted w sepsis days atrial fib"
    assert caml[:4].tolist() == [0, 1, -1, 3] and caml[-3:].tolist() == [41, 42, 43]
    edin = cleaned_origins(text, "edin")
    # Edin's cleaning keeps the digits-only token at the text's end (no separator after it)
    assert CLEANERS["edin"]([text])[0] == "pt admitted w sepsis days atrial fib 3"
    assert edin[-5:].tolist() == [41, 42, 43, -1, 45]
    for how, origins in (("caml", caml), ("edin", edin)):
        cleaned = CLEANERS[how]([text])[0]
        assert "".join(" " if o < 0 else text[o].lower() for o in origins) == cleaned
    # lower case turns "İ" into "i" and a combining dot, which is not a word character: the "i" leads
    # back to the "İ", the rest of the word to its letters
    assert CLEANERS["caml"](["İstanbul 3"])[0] == "i stanbul"
    assert cleaned_origins("İstanbul 3", "caml").tolist() == [0, -1, 1, 2, 3, 4, 5, 6, 7]
