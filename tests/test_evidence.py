"""Evidence spans: the twins' files, MDACE's JSON (written here in its real format, never copied),
and the offsets carried through step 01's join and each text cleaning."""

import gzip
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import mimic_fixture
from icdlib.run import config, record
from icdlib.data import admissions, evidence, mimic4, preprocess
from icdlib.run.errors import ConfigError, DataError
from icdlib.run.runfolder import Run
from mimic4_fixture import TEXT_200001, write_mimic4
from mimic_fixture import write_mimic
from test_preprocess import make_cfg

# NOTEEVENTS TEXT by ROW_ID, in place of the fixture's: words that the spans below point at
TEXTS = {
    12: "Dx: HTN, sepsis 2/2 line.\nPlan: R IJ central line placed 2150.",  # 100001's report
    11: "Addendum: BP 150/90, HTN poorly controlled.",  # its early addendum
    10: "Late addendum: no falls.",  # its late addendum
    13: "WRONG NOTE: HTN",  # ISERROR=1: not selected
    14: "CXR: line tip in SVC.",  # Radiology: not selected
    15: "Fell at home. On coumadin for AF. Café 389.",  # 100002
    16: "REPORT C no codes: HTN",  # 100003 has no codes: outside the run
    18: "Intubated (ETT) for airway protection.",  # 100009
}
NOTES = [(row, *rest[:-1], TEXTS.get(row, rest[-1])) for row, *rest in mimic_fixture.NOTES]
# (hadm_id, ROW_ID, the mention as the annotation covers it, code, code_system, MDACE's type)
MENTIONS = [
    (100001, 12, "HTN", "401.9", "ICD-9-CM", "Human"),
    (100001, 12, "sepsis ", "038.9", "ICD-9-CM", "MapType.APPROX"),  # a trailing space: trimmed
    (100001, 12, "central line", "38.93", "ICD-9-PCS", "Human"),
    (100001, 12, "2150", "38.93", "ICD-9-PCS", "Human"),  # digits only: CAML's and Edin's cleaning drop it
    (100001, 12, ", ", "401.9", "ICD-9-CM", "Human"),  # punctuation only: nothing left once trimmed
    (100001, 11, "HTN poorly controlled", "401.9", "ICD-9-CM", "MapType.EXACT"),
    (100001, 13, "HTN", "401.9", "ICD-9-CM", "Human"),
    (100001, 14, "line", "38.93", "ICD-9-PCS", "Human"),
    (100002, 15, "Fell", "E888.9", "ICD-9-CM", "Human"),
    (100002, 15, "coumadin", "V58.61", "ICD-9-CM", "Human"),
    (100002, 15, "Café", "389", "ICD-9-CM", "Human"),
    (100003, 16, "HTN", "401.9", "ICD-9-CM", "Human"),
    (100009, 18, "Intubated", "96.04", "ICD-9-PCS", "Human"),
    (100009, 18, "(ETT)", "96.04", "ICD-9-PCS", "Human"),  # parentheses: trimmed
]
CATEGORY = {row[0]: (row[6], row[7]) for row in NOTES}


def annotation(text: str, mention: str, code: str, system: str, kind: str) -> dict:
    begin = text.index(mention)
    return {"begin": begin, "end": begin + len(mention), "code": code, "code_system": system,
            "description": f"title of {code}", "type": kind}


def write_mdace(root, mentions=MENTIONS, version=9, splits=None):
    """MDACE's layout and JSON format (as Inpatient/ICD-9/1.0/100197-ICD-9.json has it), offsets
    into the TEXTS above."""
    folder = root / "Inpatient" / f"ICD-{version}" / "1.0"
    folder.mkdir(parents=True, exist_ok=True)
    for hadm in sorted({m[0] for m in mentions}):
        notes = {}
        for _, row, mention, code, system, kind in (m for m in mentions if m[0] == hadm):
            category, description = CATEGORY[row]
            note = notes.setdefault(row, {"note_id": row, "category": category, "description": description,
                                          "annotations": []})
            note["annotations"].append(annotation(TEXTS[row], mention, code, system, kind))
        chart = {"hadm_id": hadm, "comment": "", "notes": list(notes.values())}
        (folder / f"{hadm}-ICD-{version}.json").write_text(json.dumps(chart, indent=4))
    (root / "splits").mkdir(exist_ok=True)
    for split, ids in (splits or {"train": [100001, 100002], "val": [100003], "test": [100009]}).items():
        (root / "splits" / f"MDace-ev-{split}.csv").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture
def mdace(tmp_path):
    return write_mdace(tmp_path / "mdace")


@pytest.fixture
def mimic(tmp_path):
    return write_mimic(tmp_path / "mimic", notes=NOTES)


def covered(notes: pd.DataFrame, found: pd.DataFrame) -> list[tuple]:
    """(hadm_id, code, the text at the span) of each row of evidence.parquet."""
    text = notes.set_index("hadm_id")["text"]
    return [(h, c, text[h][b:e]) for h, c, b, e in found[["hadm_id", "code", "begin", "end"]].itertuples(index=False)]


# ---------------------------------------------------------------- MDACE's files

def test_read_mdace_gives_the_annotations_as_written(mdace):
    raw = evidence.read_mdace(mdace)
    assert list(raw.columns) == evidence.RAW_COLUMNS
    assert raw.dtypes.astype(str).tolist() == ["int64", "str", "str", "int64", "int64", "str"]
    assert len(raw) == 14 and set(raw["kind"]) == {"evidence"}
    first = raw.iloc[0]
    assert (first["hadm_id"], first["note_id"], first["code"], first["begin"], first["end"]) == (100001, "12", "401.9",
                                                                                                    4, 7)
    for r in raw.itertuples():  # every span covers its mention in NOTEEVENTS TEXT: [begin, end), end exclusive
        text = TEXTS[int(r.note_id)]
        assert text[r.begin:r.end] in {m[2] for m in MENTIONS if m[1] == int(r.note_id)}
    assert evidence.mdace_splits(mdace) == {"train": [100001, 100002], "val": [100003], "test": [100009]}


def test_read_mdace_icd10_keeps_its_own_code_systems(tmp_path):
    mentions = [(100001, 12, "HTN", "I10", "ICD-10-CM", "Human"),
                (100001, 12, "central line", "02HV33Z", "ICD-10-PCS", "Human"),
                (100001, 12, "sepsis", "0389", "ICD-9-CM", "Human")]  # MDACE's ICD-10 files hold two such
    root = write_mdace(tmp_path / "m", mentions, version=10)
    raw = evidence.read_mdace(root, icd_version=10)
    assert raw[["code", "begin", "end"]].values.tolist() == [["I10", 4, 7], ["02HV33Z", 37, 49]]
    with pytest.raises(DataError, match=r"no MDACE annotation files Inpatient/ICD-9/<version>/\*\.json"):
        evidence.read_mdace(root, icd_version=9)


def test_mdace_refusals_are_one_line_naming_the_file(tmp_path, mdace):
    with pytest.raises(DataError, match=r"evidence_dir .*missing is not a folder"):
        evidence.read_mdace(tmp_path / "missing")
    path = mdace / "Inpatient" / "ICD-9" / "1.0" / "100002-ICD-9.json"
    good = path.read_text()
    path.write_text(good[:-20])
    with pytest.raises(DataError, match=r"^100002-ICD-9\.json: not valid JSON \(line \d+"):
        evidence.read_mdace(mdace)
    chart = json.loads(good)
    del chart["notes"][0]["annotations"][1]["begin"]
    path.write_text(json.dumps(chart))
    with pytest.raises(DataError, match=r"^100002-ICD-9\.json: notes\[0\]\.annotations\[1\] lacks 'begin'"):
        evidence.read_mdace(mdace)
    chart = json.loads(good)
    chart["notes"][0]["annotations"][0]["end"] = "12"
    path.write_text(json.dumps(chart))
    with pytest.raises(DataError, match=r"notes\[0\]\.annotations\[0\]\.end must be int, got '12'"):
        evidence.read_mdace(mdace)
    chart = json.loads(good)
    chart["notes"][0]["annotations"][0]["end"] = 0
    path.write_text(json.dumps(chart))
    with pytest.raises(DataError, match=r"annotations\[0\] spans 0-0; expected 0 <= begin < end"):
        evidence.read_mdace(mdace)
    path.write_text(json.dumps({"comment": ""}))
    with pytest.raises(DataError, match=r"^100002-ICD-9\.json: the top level lacks 'hadm_id'"):
        evidence.read_mdace(mdace)
    (mdace / "splits" / "MDace-ev-val.csv").unlink()
    with pytest.raises(DataError, match=r"has no splits/MDace-ev-val\.csv"):
        evidence.mdace_splits(mdace)


# ---------------------------------------------------------------- the twins' files

def test_read_twin_reads_both_twins_layouts(tmp_path):
    three = tmp_path / "m3"
    three.mkdir()
    with gzip.open(three / "EVIDENCE.csv.gz", "wt") as f:
        f.write("HADM_ID,ROW_ID,CODE,BEGIN,END,KIND\n100001,12,401.9,4,7,evidence\n100001,12,428.0,9,15,negated\n")
    raw = evidence.read_twin(three)
    assert raw.values.tolist() == [[100001, "12", "401.9", 4, 7, "evidence"], [100001, "12", "428.0", 9, 15, "negated"]]
    four = tmp_path / "m4"
    (four / "note").mkdir(parents=True)
    with gzip.open(four / "note" / "evidence.csv.gz", "wt") as f:
        f.write("hadm_id,note_id,code,begin,end,kind\n200001,1-DS-1,I10,0,4,family\n")
    assert evidence.read_twin(four).values.tolist() == [[200001, "1-DS-1", "I10", 0, 4, "family"]]


def test_read_twin_refusals(tmp_path):
    with pytest.raises(DataError, match="has no twin evidence file"):
        evidence.read_twin(tmp_path)
    path = tmp_path / "EVIDENCE.csv.gz"
    for body, message in (("HADM_ID,ROW_ID,CODE,BEGIN,END\n1,2,3,4,5\n", "lacks column KIND"),
                          ("HADM_ID,ROW_ID,CODE,BEGIN,END,KIND\n1,2,401.9,4,5,maybe\n", "kind must be one of evidence, "
                                                                                        "negated, family; got 'maybe'"),
                          ("HADM_ID,ROW_ID,CODE,BEGIN,END,KIND\n1,2,401.9,5,5,evidence\n", r"span 5-5 of note 2 "
                                                                                           r"\(hadm_id 1\) is not"),
                          ("HADM_ID,ROW_ID,CODE,BEGIN,END,KIND\n1,2,401.9,x,5,evidence\n", "BEGIN must be an integer")):
        with gzip.open(path, "wt") as f:
            f.write(body)
        with pytest.raises(DataError, match=message):
            evidence.read_twin(tmp_path)


# ---------------------------------------------------------------- offsets through the join and the cleaning

def test_note_layout_counts_characters_not_bytes():
    chunks = [pa.array(["café au lait", "x"], pa.large_string()), pa.array(["second chunk"], pa.large_string())]
    rows, ids = np.array([2, 0, 1]), pa.chunked_array([pa.array([7, 8, 9])])
    kept = pd.DataFrame({"hadm_id": [5, 6], "first": [1, 0], "n_notes": [2, 1]})
    layout = admissions.note_layout(chunks, rows, ids, kept)
    assert layout.values.tolist() == [[5, "7", 0, 12], [5, "8", 14, 1], [6, "9", 0, 12]]  # "é": 2 bytes, 1 character
    joined = admissions.join_texts(list(chunks), rows, kept["first"].to_numpy(), kept["n_notes"].to_numpy())
    assert joined[0][14:15] == "x" and joined[1][0:12] == "second chunk"


def test_cleaned_spans_follow_each_cleaner():
    text = "Seen: HTN, 2/2 CHF; seen 2150"
    for how, cleaned in (("caml", "seen htn chf seen"), ("edin", "seen htn chf seen 2150")):
        assert preprocess.CLEANERS[how]([text]) == [cleaned]
        codes, starts, ends, index = evidence.kept_tokens(text, how)
        assert index is None and evidence.joins_to(codes, starts, ends, cleaned)
        assert not evidence.joins_to(codes, starts, ends, cleaned + " x")
        raw = [(6, 9), (6, 18), (11, 14), (25, 29), (16, 18)]  # HTN; HTN, 2/2 CHF; 2/2; 2150; HF (inside a word)
        begin, end, kept = evidence.cleaned_spans(*np.array(raw).T, starts, ends)
        got = [cleaned[b:e] for b, e in zip(begin, end)]
        assert got == (["htn", "htn chf", "hf"] if how == "caml" else ["htn", "htn chf", "2150", "hf"])
        assert kept.tolist() == [True, True, False, how == "edin", True]


def test_the_token_finder_agrees_with_both_cleaners_on_odd_characters():
    """Letters that grow ("İ", "ﬁ" stay), change in context (final "Σ"), or lower-case to ASCII
    (Kelvin "K"), digits that are not 0-9 ("²"), underscores and accents, in random texts."""
    rng = np.random.default_rng(0)
    alphabet = list("aZ07 ._é²\n-ßKΣİǅﬁ")
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 50))) for _ in range(2000)]
    for how in ("caml", "edin"):
        for text, cleaned in zip(texts, preprocess.CLEANERS[how](list(texts))):
            assert evidence.joins_to(*evidence.kept_tokens(text, how)[:3], cleaned), (how, text)


def test_a_letter_that_grows_when_lower_cased_moves_the_offsets():
    text = "İx HTN"  # "İ".lower() is two characters in Python
    codes, starts, ends, index = evidence.kept_tokens(text, "caml")
    assert preprocess.clean_caml(text) == "i x htn" and index.tolist() == [0, 2, 3, 4, 5, 6, 7]
    placed = pd.DataFrame({"row": [0], "hadm_id": [7], "code": ["401.9"], "begin": [3], "end": [6],
                           "kind": ["evidence"]})
    out, lost = evidence.carry(placed, 0, [text], ["i x htn"], "caml")
    assert out[["begin", "end"]].values.tolist() == [[4, 7]] and lost == 0


def test_carry_refuses_a_text_it_cannot_trace():
    placed = pd.DataFrame({"row": [0, 1], "hadm_id": [7, 8], "code": ["401.9"] * 2, "begin": [0, 0], "end": [3, 3],
                           "kind": ["evidence"] * 2})
    with pytest.raises(DataError, match=r"^text_cleaning=edin cannot carry evidence offsets for admission 8: "):
        evidence.carry(placed, 0, ["HTN", "HTN x"], ["htn", "htn y"], "edin")


# ---------------------------------------------------------------- step 01

EXPECTED = {  # (hadm_id, code, text at the span in notes.parquet) per text_cleaning
    "none": [(100001, "401.9", "HTN"), (100001, "038.9", "sepsis"), (100001, "38.93", "central line"),
             (100001, "38.93", "2150"), (100001, "401.9", "HTN poorly controlled"), (100002, "E888.9", "Fell"),
             (100002, "V58.61", "coumadin"), (100002, "389", "Café"), (100009, "96.04", "Intubated"),
             (100009, "96.04", "ETT")],
    "caml": [(100001, "401.9", "htn"), (100001, "038.9", "sepsis"), (100001, "38.93", "central line"),
             (100001, "401.9", "htn poorly controlled"), (100002, "E888.9", "fell"), (100002, "V58.61", "coumadin"),
             (100002, "389", "café"), (100009, "96.04", "intubated"), (100009, "96.04", "ett")],
}
EXPECTED["edin"] = [(h, c, "caf" if t == "café" else t) for h, c, t in EXPECTED["caml"]]


@pytest.mark.parametrize("how", ["none", "caml", "edin"])
def test_step01_carries_mdace_spans_into_the_run_text(tmp_path, mimic, mdace, how):
    result = preprocess.build(make_cfg(tmp_path, mimic, evidence="mdace", evidence_dir=str(mdace), text_cleaning=how),
                              progress=False)
    found = result.evidence
    assert list(found.columns) == evidence.COLUMNS and set(found["kind"]) == {"evidence"}
    assert covered(result.notes, found) == EXPECTED[how]
    hand = {"none": [(4, 7), (85, 106)], "caml": [(3, 6), (61, 82)], "edin": [(3, 6), (61, 82)]}[how]
    mine = found[found["code"] == "401.9"]
    assert mine[["begin", "end"]].values.tolist() == [list(p) for p in hand]
    st = result.stats
    assert st["evidence spans read (MDACE ICD-9)"] == 14
    assert st["evidence spans of admissions outside the run (dropped)"] == 1  # 100003 has no codes
    assert st["evidence spans in notes the run did not select (dropped)"] == 2  # ISERROR, Radiology
    assert st[f"evidence spans that text_cleaning={how} leaves empty (dropped)"] == (1 if how == "none" else 2)
    assert st["evidence spans repeating another (counted once)"] == 0
    assert st[evidence.KEPT] == len(EXPECTED[how])


def test_step01_run_writes_evidence_parquet_and_records_it(tmp_path, mimic, mdace):
    cfg = make_cfg(tmp_path, mimic, evidence="mdace", evidence_dir=str(mdace), text_cleaning="caml")
    preprocess.run(cfg, progress=False)
    run = Run.of(cfg)
    found = pd.read_parquet(run.evidence)
    notes = pd.read_parquet(run.notes)
    assert covered(notes, found) == EXPECTED["caml"]
    assert found.dtypes.astype(str).tolist() == ["int64", "str", "int64", "int64", "str"]
    manifest = record.read_manifest(run, preprocess.STEP)
    assert manifest["params"]["evidence"] == "mdace" and manifest["params"]["evidence_dir"] == str(mdace)
    assert "01_preprocess/evidence.parquet" in manifest["outputs"]
    assert manifest["evidence"][evidence.KEPT] == 9 and manifest["source"]["evidence"]["files"] == 4
    again = preprocess.run(cfg, progress=False)
    assert again.stats["reused from cache"] is True and again.evidence.equals(found)
    line = preprocess.evidence_note(cfg, again).data
    assert line.startswith("Evidence spans (MDACE ICD-9): 9 of 14 kept in `evidence.parquet`") and \
        "1 of admissions outside the run; 2 in notes the run did not select" in line
    plain = preprocess.run(make_cfg(tmp_path, mimic, run="plain"), progress=False)
    assert plain.evidence is None and not Run.of(make_cfg(tmp_path, mimic, run="plain")).evidence.exists()
    assert preprocess.evidence_note(make_cfg(tmp_path, mimic), plain).data.startswith(
        "No evidence spans in this run (evidence=auto carries the synthetic twin's own spans only)")


def test_mdace_notes_of_another_mimic_are_refused(tmp_path, mimic):
    root = write_mdace(tmp_path / "long", [(100002, 15, "Café 389.", "389", "ICD-9-CM", "Human")])
    chart = root / "Inpatient" / "ICD-9" / "1.0" / "100002-ICD-9.json"
    data = json.loads(chart.read_text())
    data["notes"][0]["annotations"][0]["end"] = 400
    chart.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"reaches past the note's 43 characters .*not those the spans were made on"):
        preprocess.build(make_cfg(tmp_path, mimic, evidence="mdace", evidence_dir=str(root)), progress=False)


def test_twin_spans_are_carried_on_a_synthetic_run(tmp_path, monkeypatch):
    twin = write_mimic(tmp_path / "twin", notes=NOTES)
    rows = [(100001, 12, "HTN", "401.9", "evidence"), (100001, 11, "poorly", "401.9", "evidence"),
            (100002, 15, "AF", "427.31", "negated"), (100009, 18, "airway", "V17.3", "family")]
    with gzip.open(twin / "EVIDENCE.csv.gz", "wt") as f:
        f.write("HADM_ID,ROW_ID,CODE,BEGIN,END,KIND\n")
        for hadm, row, mention, code, kind in rows:
            begin = TEXTS[row].index(mention)
            f.write(f"{hadm},{row},{code},{begin},{begin + len(mention)},{kind}\n")
    monkeypatch.setattr(preprocess, "source_dir", lambda cfg: twin)
    cfg = config.resolve("tiny", {"output_root": str(tmp_path / "out"), "split": "seed", "min_count": 1,
                                  "text_cleaning": "edin"})
    result = preprocess.build(cfg, progress=False)
    assert covered(result.notes, result.evidence) == [(100001, "401.9", "htn"), (100001, "401.9", "poorly"),
                                                      (100002, "427.31", "af"), (100009, "V17.3", "airway")]
    assert result.evidence["kind"].tolist() == ["evidence", "evidence", "negated", "family"]
    assert result.stats["evidence spans read (the synthetic twin's)"] == 4
    off = preprocess.build(config.resolve("tiny", {"output_root": str(tmp_path / "out"), "split": "seed",
                                                   "min_count": 1, "evidence": "none"}), progress=False)
    assert off.evidence is None and not any(k.startswith("evidence") for k in off.stats)


def test_mimic4_layout_and_twin_spans(tmp_path, monkeypatch):
    m4 = write_mimic4(tmp_path / "m4")
    notes, _, _, layout = mimic4.prepare(m4, dataset="mimic4_icd9", layout=True)
    mine = layout[layout["hadm_id"] == 200001]
    second = len(TEXT_200001) + 2
    assert mine[["note_id", "start", "length"]].astype(object).values.tolist() == [
        ["1-DS-1", 0, len(TEXT_200001)], ["1-DS-2", second, 18], ["1-DS-3", second, 18]]  # 1-DS-3 repeats 1-DS-2
    assert notes.set_index("hadm_id").loc[200001, "text"][second:second + 18] == "SECOND NOTE, later"
    with gzip.open(m4 / "note" / "evidence.csv.gz", "wt") as f:
        f.write("hadm_id,note_id,code,begin,end,kind\n")
        quoted = TEXT_200001.index("quoted")
        f.write(f"200001,1-DS-1,401.9,{quoted},{quoted + 6},evidence\n200001,1-DS-2,038.9,0,6,evidence\n"
                "200001,1-DS-3,038.9,0,6,evidence\n200003,2-DS-1,V10.52,0,4,family\n")
    monkeypatch.setattr(preprocess, "source_dir", lambda cfg: m4)
    cfg = config.resolve("tiny", {"output_root": str(tmp_path / "out"), "dataset": "mimic4_icd9", "split": "seed",
                                  "min_count": 1, "text_cleaning": "edin"})
    result = preprocess.build(cfg, progress=False)
    assert covered(result.notes, result.evidence) == [(200001, "401.9", "quoted"), (200001, "038.9", "second"),
                                                      (200003, "V10.52", "note")]
    assert result.stats["evidence spans repeating another (counted once)"] == 1


# ---------------------------------------------------------------- parameters

def test_evidence_parameters_are_checked(tmp_path, mimic, mdace):
    with pytest.raises(ConfigError, match=r"^evidence=mdace reads MDACE's annotations from evidence_dir: set"):
        make_cfg(tmp_path, mimic, evidence="mdace")
    with pytest.raises(ConfigError, match=r"^evidence=mdace annotates MIMIC-III notes, not dataset=mimic4_icd9's"):
        make_cfg(tmp_path, mimic, evidence="mdace", evidence_dir=str(mdace), dataset="mimic4_icd9", split="patient")
    with pytest.raises(ConfigError, match=r"synthetic twin does not have: set mimic_dir"):
        config.resolve("tiny", {"evidence": "mdace", "evidence_dir": str(mdace)})
    with pytest.raises(ConfigError, match=r"^evidence_dir is read only with evidence=mdace, not evidence=auto"):
        make_cfg(tmp_path, mimic, evidence_dir=str(mdace))
    with pytest.raises(ConfigError, match=r"evidence must be one of auto, mdace, none; got 'yes'"):
        make_cfg(tmp_path, mimic, evidence="yes")
    relative = config.resolve("tiny", {"mimic_dir": str(mimic), "evidence": "mdace", "evidence_dir": "mdace"},
                              cwd=mdace.parent)
    assert relative.evidence_dir == str(mdace)  # made absolute like the other folders
    assert {"evidence", "evidence_dir"} <= set(preprocess.data_params(relative))
