"""icdlib.data.mimic4 on a hand-made MIMIC-IV folder: exact admissions, codes and label spaces of both
datasets, Edin et al.'s steps (checked against a pandas port of their script), and one-line errors."""

import gzip
import re
import shutil

import pandas as pd
import pytest

from icdlib.data import mimic, mimic4, preprocess
from icdlib.data.codes import DIAGNOSIS, PROCEDURE
from icdlib.run.errors import ConfigError, DataError, MimicSchemaError

from mimic4_fixture import TEXT_200001, TEXT_200002, write_mimic4

TRUNCATED = "the file looks truncated (an unfinished copy?); copy it again"
ICD9 = {200001: ["038.9", "38.93", "401.9", "V58.61"], 200003: ["38.93", "401.9", "E888.9", "V10.52"],
        200005: ["V10.52"], 200006: ["427.31"]}
ICD10 = {200002: ["02HV33Z", "0DTJ4ZZ", "A41.9", "E11.9", "E88.89", "I10"], 200005: ["I10"],
         200010: ["0DTJ4ZZ", "A41.9", "I10"]}


@pytest.fixture(params=["gz", "csv"])
def m4(request, tmp_path):
    return write_mimic4(tmp_path / "mimic4", gz=request.param == "gz")


@pytest.fixture
def gz(tmp_path):
    return write_mimic4(tmp_path / "gz", gz=True)


@pytest.fixture
def plain(tmp_path):
    return write_mimic4(tmp_path / "plain", gz=False)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def copy_with(src, dst, rel, data: bytes):
    shutil.copytree(src, dst)
    (dst / rel).write_bytes(data)
    return dst


def test_dot10():
    assert mimic4.dot10("I509", DIAGNOSIS) == "I50.9"
    assert mimic4.dot10(" e119 ", DIAGNOSIS) == "E11.9"
    assert mimic4.dot10("S72001A", DIAGNOSIS) == "S72.001A"
    assert mimic4.dot10("I10", DIAGNOSIS) == "I10"
    assert mimic4.dot10("0dtj4zz", PROCEDURE) == "0DTJ4ZZ"
    assert mimic4.dot10("E11.9", DIAGNOSIS) == "E11.9"
    assert [mimic4.dot_version("E8889", DIAGNOSIS, v) for v in (9, 10)] == ["E888.9", "E88.89"]
    assert [mimic4.dot_version("3893", PROCEDURE, v) for v in (9, 10)] == ["38.93", "3893"]
    with pytest.raises(ValueError):
        mimic4.dot10("I10", "other")


def test_icd9_dataset_exact(m4):
    notes, dictionary, stats = mimic4.prepare(m4, dataset="mimic4_icd9")
    assert list(notes.columns) == ["hadm_id", "subject_id", "text", "codes"]
    assert dict(zip(notes["hadm_id"], notes["codes"])) == ICD9
    assert notes["subject_id"].tolist() == [1, 2, 2, 3]
    text = dict(zip(notes["hadm_id"], notes["text"]))
    # two distinct notes joined in note_seq order (the file has seq 2 first); the repeat of seq 2 dropped;
    # the ___ marks, spaces, quotes and line breaks as written
    assert text[200001] == TEXT_200001 + "\n\nSECOND NOTE, later"
    assert text[200003] == "note of 200003"
    assert stats["diagnoses_icd rows"] == 20
    assert stats["diagnoses_icd rows with empty icd_code (dropped)"] == 1
    assert stats["diagnoses_icd rows of ICD-10 (the other dataset)"] == 9
    assert stats["diagnoses_icd ICD-9 codes repeated within an admission (dropped)"] == 1
    assert stats["diagnoses_icd ICD-9 codes an earlier ICD-10 row of the admission has (dropped, as Edin)"] == 0
    assert stats["admissions with ICD-9 codes"] == 5
    assert stats["discharge notes"] == 11
    assert stats["discharge notes without hadm_id (dropped)"] == 1
    assert stats["discharge notes of admissions without ICD-9 codes (dropped)"] == 3  # 200002, 200007, 200010
    assert stats["discharge notes with empty text (dropped)"] == 1  # 200008
    assert stats["discharge notes repeating another of the admission word for word (dropped, as Edin)"] == 1
    assert stats["admissions with several distinct discharge notes (joined in note_seq order)"] == 1
    assert stats["admissions with ICD-9 codes but no discharge note (dropped)"] == 1  # 200008
    assert stats["admissions"] == 4
    assert stats["distinct codes absent from the dictionaries (kept, no title)"] == 1
    d = dictionary.set_index("code")
    assert sorted(d.index) == ["038.9", "38.93", "401.9", "427.31", "E888.9", "V10.52", "V58.61"]
    assert d.loc["E888.9", "long_title"] == d.loc["E888.9", "short_title"] == "Unspecified fall"
    assert d.loc["38.93", "kind"] == PROCEDURE and d.loc["V10.52", "kind"] == DIAGNOSIS
    assert d.loc["V10.52", "short_title"] == d.loc["V10.52", "long_title"] == ""


def test_icd10_dataset_exact(m4):
    notes, dictionary, stats = mimic4.prepare(m4, m4, dataset="mimic4_icd10")
    assert dict(zip(notes["hadm_id"], notes["codes"])) == ICD10
    assert notes["subject_id"].tolist() == [1, 2, 6]
    assert notes.set_index("hadm_id").loc[200002, "text"] == TEXT_200002  # café and ___ kept
    # V1052 of 200005 in ICD-10 dots as its earlier ICD-9 row: Edin's drop_duplicates keeps the ICD-9 one
    assert stats["diagnoses_icd ICD-10 codes an earlier ICD-9 row of the admission has (dropped, as Edin)"] == 1
    assert stats["procedures_icd ICD-10 codes repeated within an admission (dropped)"] == 1
    assert stats["discharge notes of admissions without ICD-10 codes (dropped)"] == 7
    assert stats["admissions with ICD-10 codes but no discharge note (dropped)"] == 1  # 200009
    assert stats["distinct codes absent from the dictionaries (kept, no title)"] == 0
    d = dictionary.set_index("code")
    assert sorted(d.index) == ["02HV33Z", "0DTJ4ZZ", "A41.9", "E11.9", "E88.89", "I10"]
    assert d.loc["E88.89", "long_title"] == "Other specified metabolic disorders"
    assert d.loc["0DTJ4ZZ", "kind"] == PROCEDURE and d.loc["I10", "kind"] == DIAGNOSIS


def test_gz_and_csv_read_the_same(gz, plain):
    for dataset in mimic4.DATASETS:
        a, b = mimic4.prepare(gz, dataset=dataset), mimic4.prepare(plain, dataset=dataset)
        pd.testing.assert_frame_equal(a[0], b[0])
        pd.testing.assert_frame_equal(a[1], b[1])
        assert a[2] == b[2]


def edin_targets(notes, min_count):
    """Step 01's rare-code rule as the targets it leaves: each kept admission's codes in the label space."""
    kept, whole, stats = preprocess.rare_codes(notes, min_count, "edin")
    return kept.assign(codes=kept["codes"].map(lambda cs: [c for c in cs if whole[c] >= min_count])), stats


def test_edin_filter_of_no_admission_keeps_the_columns(gz):
    """An empty dataset lost every column here (a map over no rows is not boolean), and split
    assignment then crashed on `KeyError: 'hadm_id'` instead of step 01's one line."""
    nine, _, _ = mimic4.prepare(gz, dataset="mimic4_icd9")
    kept, whole, stats = preprocess.rare_codes(nine.iloc[:0], 2, "edin")
    assert list(kept.columns) == list(nine.columns) and len(kept) == 0 and len(whole) == 0
    assert stats["admissions without codes left (dropped, edin)"] == 0


def test_edin_filter_label_spaces(gz):
    nine, _, _ = mimic4.prepare(gz, dataset="mimic4_icd9")
    kept, stats = edin_targets(nine, min_count=2)
    assert dict(zip(kept["hadm_id"], kept["codes"])) == {200001: ["38.93", "401.9"],
                                                         200003: ["38.93", "401.9", "V10.52"], 200005: ["V10.52"]}
    assert stats == {"codes in < 2 admissions of the whole dataset (dropped, edin)": 4,
                     "admissions without codes left (dropped, edin)": 1}
    assert kept["text"].tolist() == nine.set_index("hadm_id").loc[[200001, 200003, 200005], "text"].tolist()
    ten, _, _ = mimic4.prepare(gz, dataset="mimic4_icd10")
    assert sorted(set(edin_targets(ten, 2)[0]["codes"].explode())) == ["0DTJ4ZZ", "A41.9", "I10"]
    assert edin_targets(ten, 3)[0]["codes"].tolist() == [["I10"]] * 3
    assert edin_targets(ten, 10)[0].empty  # Edin's 10: nothing in 3 admissions reaches it
    assert len(nine) == 4  # the input is left as it was


def test_edin_filter_counts_at_ten():
    notes = pd.DataFrame({"hadm_id": range(12), "subject_id": range(12), "text": "t",
                          "codes": [["A"] + (["B"] if i < 9 else []) + (["C"] if i == 11 else []) for i in range(10)]
                          + [["B"], ["C"]]})
    kept, stats = edin_targets(notes, 10)  # A: 10, B: 10, C: 2
    assert stats["codes in < 10 admissions of the whole dataset (dropped, edin)"] == 1
    assert kept["hadm_id"].tolist() == list(range(11))
    assert kept["codes"].tolist()[9:] == [["A"], ["B"]]


def test_notes_of_every_admission_and_separate_note_dir(tmp_path):
    m4 = write_mimic4(tmp_path / "hosp_only", note_dir=tmp_path / "notes")
    with pytest.raises(MimicSchemaError) as e:
        mimic4.check_schema(m4)
    assert one_line(e) == f"{m4} has no note/ folder (expected MIMIC-IV-Note v2.2's note/)"
    paths = mimic4.check_schema(m4, tmp_path / "notes")
    assert paths["discharge"] == tmp_path / "notes" / "note" / "discharge.csv.gz"
    notes, stats = mimic4.read_notes(paths)
    assert notes["hadm_id"].tolist() == [200001, 200002, 200003, 200005, 200006, 200007, 200010]
    assert notes.set_index("hadm_id").loc[200007, "text"] == "note of an admission without codes"
    assert stats["admissions with a discharge note"] == 7
    assert "discharge notes of other admissions (dropped)" not in stats
    streamed, small = mimic4.read_notes(paths, block_size=300)  # many batches: the same admissions and counts
    pd.testing.assert_frame_equal(streamed, notes)
    assert small == stats
    rows, code_stats = mimic4.read_codes(paths, 10)
    assert list(rows.columns) == ["hadm_id", "subject_id", "code", "kind"]
    assert rows[rows["kind"] == PROCEDURE]["code"].tolist() == ["0DTJ4ZZ", "02HV33Z", "0DTJ4ZZ"]
    assert code_stats["ICD-10 code rows kept"] == 11


def test_against_a_port_of_edins_script(gz):
    """Edin's prepare_mimiciv.py steps as icdlib.bench.edin4 ports them (reformat_icd, parse_codes_dataframe,
    parse_notes_dataframe, the merges, filter_codes, the empty-target drop), on codes stripped and
    upper-cased first (mimic4's one deliberate change) and `I10.` read as `I10`."""
    from icdlib.bench import edin4

    proc = edin4.read_codes(gz / "hosp" / "procedures_icd.csv.gz", is_diag=False, tidy_codes=True)
    diag = edin4.read_codes(gz / "hosp" / "diagnoses_icd.csv.gz", is_diag=True, tidy_codes=True)
    notes = edin4.read_notes(gz / "note" / "discharge.csv.gz")
    for version, dataset in ((9, "mimic4_icd9"), (10, "mimic4_icd10")):
        df = edin4.merge(notes, proc, diag, version)
        p, d = f"icd{version}_proc", f"icd{version}_diag"
        texts = df.groupby(edin4.ID)["text"].agg(list)
        # the one difference: Edin keeps each distinct note of an admission as a row (so its codes count
        # once per note); mimic4 joins them. Edin's MIMIC-IV split files hold each admission once.
        df = df.drop_duplicates(edin4.ID)
        for min_count in (1, 2, 3):
            ref = edin4.filter_codes(df.copy(), [p, d], min_count)
            ref["target"] = ref[p] + ref[d]
            ref = ref[ref["target"].map(len) > 0]
            expected = {}  # Edin keeps one row per distinct note: the same codes on each
            for hadm, target in zip(ref[edin4.ID].astype(int), ref["target"]):
                expected[hadm] = sorted(c.rstrip(".") for c in target)
            ours, _ = edin_targets(mimic4.prepare(gz, dataset=dataset)[0], min_count)
            assert dict(zip(ours["hadm_id"], ours["codes"])) == expected
            for hadm, text in zip(ours["hadm_id"], ours["text"]):
                assert text == "\n\n".join(sorted(texts[hadm], key=lambda t: t != TEXT_200001))


def test_clean_edin():
    assert mimic4.clean_edin(TEXT_200001) == "name unit no admission date quoted and a comma"
    assert mimic4.clean_edin("Dose 12 mg, 34 56 times B12 x9 ... 2010") == "dose mg times b12 x9 2010"
    assert mimic4.clean_edin("café 3") == "caf 3"  # accented letters go; a final digit token stays (Edin's regex)


def test_unknown_dataset_and_version(gz):
    with pytest.raises(ConfigError, match="dataset must be one of mimic4_icd9, mimic4_icd10; got 'mimic4'"):
        mimic4.prepare(gz, dataset="mimic4")
    with pytest.raises(ConfigError):
        mimic4.read_codes(mimic4.check_schema(gz), 11)


def test_bad_icd_version(plain, tmp_path):
    raw = (plain / "hosp" / "diagnoses_icd.csv").read_bytes().replace(b"42731,9", b"42731,11")
    bad = copy_with(plain, tmp_path / "bad", "hosp/diagnoses_icd.csv", raw)
    with pytest.raises(DataError) as e:
        mimic4.prepare(bad)
    assert one_line(e) == "hosp/diagnoses_icd.csv: icd_version must be 9 or 10, found 11 in 1 rows"


@pytest.mark.parametrize("table,rel", [("d_icd_procedures", "hosp"), ("discharge", "note")])
def test_missing_file_one_line(tmp_path, table, rel):
    m4 = write_mimic4(tmp_path / "m", skip=(table,))
    (m4 / rel).mkdir(exist_ok=True)
    with pytest.raises(MimicSchemaError) as e:
        mimic4.prepare(m4)
    assert one_line(e) == f"{m4 / rel} lacks {table}.csv.gz (or {table}.csv)"


def test_missing_folder_and_column_one_line(tmp_path):
    with pytest.raises(MimicSchemaError, match="is not a folder"):
        mimic4.check_schema(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MimicSchemaError) as e:
        mimic4.check_schema(tmp_path / "empty")
    assert one_line(e) == f"{tmp_path / 'empty'} has no hosp/ folder (expected MIMIC-IV v2.2's hosp/)"
    m4 = write_mimic4(tmp_path / "m", gz=False, drop_column=("diagnoses_icd", "icd_version"))
    with pytest.raises(MimicSchemaError) as e:
        mimic4.check_schema(m4)
    assert one_line(e) == ("hosp/diagnoses_icd.csv lacks column icd_version (has: subject_id, hadm_id, seq_num, "
                           "icd_code; expected: subject_id, hadm_id, seq_num, icd_code, icd_version)")
    m4 = write_mimic4(tmp_path / "n", drop_column=("discharge", "text"))
    with pytest.raises(MimicSchemaError, match=r"^note/discharge.csv.gz lacks column text \(has: note_id,"):
        mimic4.check_schema(m4)


def test_truncated_gz_refused(gz, tmp_path):
    data = (gz / "note" / "discharge.csv.gz").read_bytes()
    bad = copy_with(gz, tmp_path / "cut", "note/discharge.csv.gz", data[:len(data) // 2])
    with pytest.raises(DataError) as e:
        mimic4.prepare(bad)
    assert one_line(e) == f"{bad / 'note' / 'discharge.csv.gz'} ends before the end of its gzip stream: {TRUNCATED}"
    data = (gz / "hosp" / "diagnoses_icd.csv.gz").read_bytes()
    bad = copy_with(gz, tmp_path / "cut2", "hosp/diagnoses_icd.csv.gz", data[:-6])
    with pytest.raises(DataError, match="ends before the end of its gzip stream"):
        mimic4.prepare(bad)


def test_gzip_of_a_cut_discharge_refused(gz, plain, tmp_path):
    raw = (plain / "note" / "discharge.csv").read_bytes()
    cut = raw[:raw.index(b"Admission Date")]  # inside 200001's quoted, multi-line text
    bad = copy_with(gz, tmp_path / "cut", "note/discharge.csv.gz", gzip.compress(cut))
    with pytest.raises(DataError) as e:
        mimic4.prepare(bad)
    assert one_line(e) == f"{bad / 'note' / 'discharge.csv.gz'} ends inside a quoted field: {TRUNCATED}"


def test_plain_discharge_cut_refused_from_its_tail(plain, tmp_path, monkeypatch):
    """Larger than the checked tail: the check starts at the last note_id-shaped record start; a note
    line shaped like a code-table row (`2, a line ...`) does not mislead it."""
    raw = (plain / "note" / "discharge.csv").read_bytes()
    monkeypatch.setattr(mimic, "TAIL_BYTES", 300)
    assert len(raw) > 2 * mimic.TAIL_BYTES
    decoy = raw.replace(b'"note of 200010, 12 mg 34"', b'"note of 200010\n2,"" 12 mg 34\n"')
    assert decoy != raw
    ok = copy_with(plain, tmp_path / "ok", "note/discharge.csv", decoy)
    notes, _ = mimic4.read_notes(mimic4.check_schema(ok))
    assert notes.set_index("hadm_id").loc[200010, "text"] == 'note of 200010\n2," 12 mg 34\n'
    with pytest.raises(DataError):  # mimic's generic record start takes the note line for a record
        mimic.check_complete(ok / "note" / "discharge.csv")
    cut = copy_with(plain, tmp_path / "cut", "note/discharge.csv", raw + b'8-DS-1,8,200011,DS,1,,,"half a\nnote')
    with pytest.raises(DataError) as e:
        mimic4.check_schema(cut)
    assert one_line(e) == f"{cut / 'note' / 'discharge.csv'} ends inside a quoted field: {TRUNCATED}"
    fields = copy_with(plain, tmp_path / "fields", "note/discharge.csv", raw + b"8-DS-1,8,200011,DS\n")
    with pytest.raises(DataError, match=re.escape("its last record has 4 of 8 fields")):
        mimic4.check_schema(fields)
