import pytest

from icdlib.data.codes import caml_procedure, category, dot, dot_diagnosis, dot_procedure, normalise


@pytest.mark.parametrize("raw,dotted", [
    ("4019", "401.9"), ("42731", "427.31"), ("E8889", "E888.9"), ("E849", "E849"), ("V5861", "V58.61"),
    ("042", "042"), ("0389", "038.9"), ("389", "389"), (" 25000 ", "250.00"), ("V10", "V10"),
])
def test_diagnosis_dots(raw, dotted):
    assert dot_diagnosis(raw) == dotted


@pytest.mark.parametrize("raw,dotted", [("3893", "38.93"), ("9604", "96.04"), ("966", "96.6"), ("00", "00")])
def test_procedure_dots(raw, dotted):
    assert dot_procedure(raw) == dotted


def test_leading_zeros_stay_distinct_and_kinds_never_collide():
    assert dot("0389", "diagnosis") != dot("389", "diagnosis")
    assert dot("3893", "procedure") != dot("3893", "diagnosis")
    with pytest.raises(ValueError):
        dot("4019", "other")


def test_category():
    assert [category(c) for c in ("428.30", "E888.9", "38.93", "042")] == ["428", "E888", "38", "042"]


@pytest.mark.parametrize("raw,kind,dotted", [
    ("v824", "diagnosis", "V82.4"), ("e8889", "diagnosis", "E888.9"), (" 4019 ", "diagnosis", "401.9"),
    ("V82.4", "diagnosis", "V82.4"), ("e 849", "diagnosis", "E849"), ("0389\t", "diagnosis", "038.9"),
    (" 3893", "procedure", "38.93"), ("38.93", "procedure", "38.93"),
])
def test_codes_are_normalised_before_dotting(raw, kind, dotted):
    assert dot(raw, kind) == dotted
    assert normalise(raw) == dotted.replace(".", "")


def test_lowercase_codes_get_the_label_of_their_uppercase_twin(tmp_path):
    """DIAGNOSES_ICD with `e8889`/`v5861` instead of `E8889`/`V5861` (and a lowercase duplicate of
    an uppercase code) preprocesses exactly like the untouched fixture."""
    import csv

    import pandas as pd

    from icdlib.run import config
    from icdlib.data import preprocess
    from icdlib.data.mimic import TABLES
    from mimic_fixture import DIAGNOSES, write_mimic

    upper = write_mimic(tmp_path / "upper")
    lower = write_mimic(tmp_path / "lower")
    rows = [(r, s, h, n, {"E8889": "e8889", "V5861": " v5861"}.get(c, c)) for r, s, h, n, c in DIAGNOSES]
    rows.append((11, 1, 100002, 5, "e8889"))  # the same code twice in one admission, once in each case
    with open(lower / "DIAGNOSES_ICD.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(TABLES["DIAGNOSES_ICD"])
        w.writerows(rows)

    def build(mimic):
        cfg = config.resolve("tiny", {"mimic_dir": str(mimic), "output_root": str(tmp_path / "out"),
                                      "split": "seed", "min_count": 1})
        return preprocess.build(cfg, progress=False)

    a, b = build(upper), build(lower)
    assert b.notes.set_index("hadm_id").loc[100002, "codes"] == ["389", "401.9", "E888.9", "V58.61"]
    assert b.labels["code"].tolist() == ["038.9", "38.93", "389", "401.9", "E888.9", "V58.61"]
    assert b.labels.set_index("code").loc["E888.9", "short_title"] == "Fall NOS"
    pd.testing.assert_frame_equal(a.notes, b.notes)
    pd.testing.assert_frame_equal(a.labels, b.labels)
    assert b.stats["duplicated codes within an admission (counted once)"] == a.stats[
        "duplicated codes within an admission (counted once)"] + 1


def test_caml_procedure_is_what_pandas_default_reading_made_of_the_code(tmp_path):
    """CAML read PROCEDURES_ICD.csv with `pd.read_csv` and no dtype, then put the dot after 2
    characters of `str(code)`: quoted all-digit codes come back as integers without their zeros."""
    import csv

    import pandas as pd

    raw = ["0110", "110", "0066", "066", "3893", "016", "0016"]
    path = tmp_path / "PROCEDURES_ICD.csv"
    with path.open("w", newline="") as f:  # MIMIC-III's quoting: text columns quoted
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"])
        w.writerows((i + 1, 7, 100001, i + 1, code) for i, code in enumerate(raw))
    read = pd.read_csv(path)["ICD9_CODE"]
    assert read.dtype.kind == "i" and read.tolist() == [110, 110, 66, 66, 3893, 16, 16]
    camls = [str(code)[:2] + "." + str(code)[2:] for code in read]
    assert [caml_procedure(dot_procedure(code)) for code in raw] == camls == [
        "11.0", "11.0", "66.", "66.", "38.93", "16.", "16."]
    assert [dot_procedure(code) for code in raw] == ["01.10", "11.0", "00.66", "06.6", "38.93", "01.6", "00.16"]
    assert caml_procedure("3893") == "38.93"  # raw or dotted alike
