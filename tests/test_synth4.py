"""The synthetic MIMIC-IV twin: PhysioNet's layout, determinism, what icdlib.data.mimic4 reads from it, its quirks."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pandas as pd
import pytest

from icdlib.data import mimic4, pcs
from icdlib.twin import synth, synth4
from icdlib.data.codes import DIAGNOSIS, PROCEDURE

ICD9, ICD10 = 400, 100
SECTIONS = ("Allergies:", "Attending:", "Chief Complaint:", "Major Surgical or Invasive Procedure:",
            "History of Present Illness:", "Past Medical History:", "Social History:", "Family History:",
            "Physical Exam:", "Pertinent Results:", "Brief Hospital Course:", "Medications on Admission:",
            "Discharge Medications:", "Discharge Disposition:", "Discharge Diagnosis:", "Discharge Condition:",
            "Discharge Instructions:", "Followup Instructions:")
CANARIES = ["CANARY-ALPHA", "CANARY-BETA"]


def read(path: Path) -> pd.DataFrame:
    """A table with every column as text and empty fields as ''."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory) -> Path:
    """400 ICD-9 + 100 ICD-10 admissions, short notes, gzip (the default)."""
    out = tmp_path_factory.mktemp("twin4")
    synth4.generate(out, ICD9, ICD10, seed=3, short=True, progress=False)
    return out


@pytest.fixture(scope="module")
def twin(twin_dir) -> dict[str, pd.DataFrame]:
    return {name: read(twin_dir / folder / f"{name}.csv.gz") for name, (folder, _) in synth4.TABLES.items()
            if not name.startswith("d_")}


@pytest.fixture(scope="module")
def prepared(twin_dir) -> dict[str, tuple]:
    return {dataset: mimic4.prepare(twin_dir, dataset=dataset) for dataset in mimic4.DATASETS}


@pytest.fixture(scope="module")
def world():
    return synth4._build_world()


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[str, Path]:
    """40 + 10 admissions, plain CSV, canaries."""
    return synth4.generate(tmp_path_factory.mktemp("plain4"), 40, 10, seed=5, short=True, gzip=False,
                           progress=False, canaries=CANARIES)


def both_versions(dx: pd.DataFrame) -> set[str]:
    """hadm_ids with diagnosis rows of both versions (the mixed-version quirk)."""
    versions = dx.groupby("hadm_id")["icd_version"].nunique()
    return set(versions.index[versions > 1])


def test_physionet_layout_headers_and_dictionaries(plain):
    assert set(plain) == set(mimic4.TABLES)
    root = plain["discharge"].parent.parent
    for name, (folder, columns) in synth4.TABLES.items():
        path = plain[name]
        assert path == root / folder / f"{name}.csv" and path.is_file()
        assert path.open(encoding="utf-8").readline() == ",".join(columns) + "\n"
    assert not [p for p in root.rglob(".*")]  # no temp files left
    assert mimic4.check_schema(root).keys() == plain.keys()
    for name in ("diagnoses_icd", "procedures_icd"):
        codes = read(plain[name])
        assert set(codes["icd_version"]) == {"9", "10"}
        assert not codes["icd_code"].str.contains(".", regex=False).any()  # undotted, as MIMIC-IV stores them
    dx, proc = read(plain["d_icd_diagnoses"]), read(plain["d_icd_procedures"])
    assert dx.groupby("icd_version").size().to_dict() == {"10": 74_044, "9": 14_567}
    assert proc.groupby("icd_version").size().to_dict() == {"10": 78_603, "9": 3_882}
    titles = dict(zip(dx["icd_code"] + "/" + dx["icd_version"], dx["long_title"]))
    assert titles["I10/10"] == "Essential (primary) hypertension"
    assert titles["4019/9"] == "Unspecified essential hypertension"
    assert titles["E8889/9"] == "Unspecified fall" and titles["E8889/10"] == "Other specified metabolic disorders"
    pcs_titles = dict(zip(proc["icd_code"], proc["long_title"]))
    assert pcs_titles["5A1955Z"] == "Respiratory Ventilation, Greater than 96 Consecutive Hours"
    assert list(dx["icd_code"].head(2)) == ["0010", "0011"]  # leading zeros kept


def test_gzip_is_deterministic_and_the_seed_matters(plain, tmp_path):
    args = dict(short=True, progress=False)
    a = synth4.generate(tmp_path / "a", 40, 10, seed=5, canaries=CANARIES, **args)
    b = synth4.generate(tmp_path / "b", 40, 10, seed=5, canaries=CANARIES, **args)
    c = synth4.generate(tmp_path / "c", 40, 10, seed=6, **args)
    for name in a:
        assert a[name].name == f"{name}.csv.gz"
        data = a[name].read_bytes()
        assert data[4:8] == b"\0\0\0\0"  # no time stamp in the gzip header
        assert data == b[name].read_bytes()
        assert gzip.decompress(data) == plain[name].read_bytes()  # the same content as gzip=False
    assert a["discharge"].read_bytes() != c["discharge"].read_bytes()
    assert a["diagnoses_icd"].read_bytes() != c["diagnoses_icd"].read_bytes()


def test_ids_and_note_fields_look_like_mimic4(twin):
    notes, dx = twin["discharge"], twin["diagnoses_icd"]
    subjects, hadms = notes["subject_id"].astype(int), notes["hadm_id"].astype(int)
    assert subjects.between(10_000_000, 19_999_999).all() and hadms.between(20_000_000, 29_999_999).all()
    assert dx["hadm_id"].astype(int).between(20_000_000, 29_999_999).all()
    assert (notes["note_id"] == notes["subject_id"] + "-DS-" + notes["note_seq"]).all()
    assert set(notes["note_type"]) == {"DS"}
    assert not notes["hadm_id"].duplicated().any()  # one discharge note per admission
    assert notes["charttime"].str.fullmatch(r"2[12]\d\d-\d\d-\d\d 00:00:00").all()
    stored = notes["storetime"][notes["storetime"] != ""]
    assert len(stored) > 0.9 * len(notes) and stored.str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    assert (stored > notes.loc[stored.index, "charttime"]).all()
    patients = notes["subject_id"].nunique()
    assert 1.6 < len(notes) / patients < 3.0  # ~2.3 admissions per patient, as MIMIC-IV
    assert list(dx["subject_id"]) == sorted(dx["subject_id"])  # sorted by subject, as PhysioNet ships it


def test_notes_have_mimic4_layout_and_masks(twin):
    texts = twin["discharge"]["text"]
    assert texts.str.startswith(synth4.NAME_LINE + "Admission Date:  ___              Discharge Date:   ___\n \n"
                                "Date of Birth:  ___             Sex:   ").all()
    for text in texts.head(50):
        positions = [text.index(f"\n{s}") for s in SECTIONS]
        assert positions == sorted(positions)
        assert "\nSocial History:\n___\n" in text and "\nAttending: ___.\n" in text
    assert not texts.str.contains("[**", regex=False).any()
    assert not texts.str.contains("Addendum|Completed by|Hospital1", regex=True).any()
    assert texts.str.count("___").min() >= 6
    words = texts.str.split().str.len()
    assert 250 <= words.median() <= 400


def test_mimic4_prepare_reads_both_datasets(prepared, twin):
    dx = twin["diagnoses_icd"]
    mixed = both_versions(dx)
    assert len(mixed) == 1  # max(1, 0.3% of 100)
    notes9, dictionary9, stats9 = prepared["mimic4_icd9"]
    notes10, dictionary10, stats10 = prepared["mimic4_icd10"]
    assert len(notes9) == ICD9 + len(mixed) and len(notes10) == ICD10  # as generate's docstring says
    assert set(notes9["hadm_id"].astype(str)) & set(notes10["hadm_id"].astype(str)) == mixed
    for notes, dictionary, stats in prepared.values():
        titled = set(dictionary.loc[dictionary["long_title"] != "", "code"])
        used = set(notes["codes"].explode())
        assert used <= titled  # every code read for a note has its version's title
        assert stats["distinct codes absent from the dictionaries (kept, no title)"] == 0
        assert notes["text"].str.len().gt(0).all()


def test_icd10_codes_dot_after_three_characters_and_pcs_has_seven(prepared):
    notes, dictionary, _ = prepared["mimic4_icd10"]
    kind = dict(zip(dictionary["code"], dictionary["kind"]))
    codes = pd.Series(sorted(set(notes["codes"].explode())))
    dx, proc = codes[codes.map(kind) == DIAGNOSIS], codes[codes.map(kind) == PROCEDURE]
    assert len(dx) > 300 and len(proc) > 30
    assert dx.str.fullmatch(r"[A-Z]\d[0-9A-Z](\.[0-9A-Z]{1,4})?").all()
    assert dx.str.contains(".", regex=False).mean() > 0.9
    assert proc.str.fullmatch(r"[0-9A-HJ-NP-Z]{7}").all()
    notes9, dictionary9, _ = prepared["mimic4_icd9"]
    kind9 = dict(zip(dictionary9["code"], dictionary9["kind"]))
    codes9 = pd.Series(sorted(set(notes9["codes"].explode())))
    assert codes9[codes9.map(kind9) == DIAGNOSIS].str.fullmatch(r"(\d{3}|V\d\d|E\d{3})(\.\d{1,2})?").all()
    assert codes9[codes9.map(kind9) == PROCEDURE].str.fullmatch(r"\d\d(\.\d{1,2})?").all()


def test_icd10_admissions_have_more_codes_and_mimic4_common_codes(prepared):
    notes9, notes10 = prepared["mimic4_icd9"][0], prepared["mimic4_icd10"][0]
    assert notes10["codes"].str.len().mean() > notes9["codes"].str.len().mean() + 1.5
    common10 = notes10["codes"].explode().value_counts()
    assert {"I10", "E78.5", "I25.10", "K21.9"} & set(common10.index[:15])
    common9 = notes9["codes"].explode().value_counts()
    assert {"401.9", "428.0", "427.31"} <= set(common9.index[:15])


def test_one_patient_switches_from_icd9_to_icd10_in_time_order(twin):
    dx, notes = twin["diagnoses_icd"], twin["discharge"]
    mixed = both_versions(dx)
    version = dx[~dx["hadm_id"].isin(mixed)].groupby("hadm_id")["icd_version"].first()
    day = notes.set_index("hadm_id")["charttime"]
    stays = pd.DataFrame({"version": version, "day": day}).dropna()
    stays["subject_id"] = notes.set_index("hadm_id").loc[stays.index, "subject_id"]
    switched = 0
    for _, s in stays.groupby("subject_id"):
        if s["version"].nunique() == 2:
            switched += 1
            assert s.loc[s["version"] == "9", "day"].max() < s.loc[s["version"] == "10", "day"].min()
    assert 1 <= switched <= 0.1 * stays["subject_id"].nunique()


def test_a_code_string_in_both_versions_and_the_cross_version_rule(twin, prepared):
    dx = twin["diagnoses_icd"]
    strings = dx.assign(code=dx["icd_code"].str.strip().str.upper())
    by_version = strings.groupby("icd_version")["code"].agg(set)
    assert by_version["9"] & by_version["10"]
    (hadm,) = both_versions(dx)
    rows = strings[strings["hadm_id"] == hadm]
    repeated = rows.groupby("code")["icd_version"].agg(list)
    assert ["9", "10"] in repeated.tolist()  # the same string as ICD-9, then as ICD-10
    stats = prepared["mimic4_icd10"][2]
    (key,) = [k for k in stats if k.startswith("diagnoses_icd") and "an earlier ICD-9 row" in k]
    assert stats[key] == 1


def test_duplicate_code_rows_within_an_admission(twin, prepared):
    for name in ("diagnoses_icd", "procedures_icd"):
        rows = twin[name]
        clean = rows.assign(code=rows["icd_code"].str.strip().str.upper())
        repeats = clean.duplicated(["hadm_id", "code", "icd_version"]).sum()
        assert 2 <= repeats <= 0.06 * rows["hadm_id"].nunique(), name
    stats = prepared["mimic4_icd9"][2]
    assert stats["diagnoses_icd ICD-9 codes repeated within an admission (dropped)"] >= 1
    for notes, _, _ in prepared.values():
        assert not notes["codes"].map(lambda cs: len(cs) != len(set(cs))).any()


def test_admissions_with_codes_but_no_note(twin, prepared):
    coded = set(twin["diagnoses_icd"]["hadm_id"]) | set(twin["procedures_icd"]["hadm_id"])
    without_note = coded - set(twin["discharge"]["hadm_id"])
    assert len(without_note) == round(synth4.P_NO_NOTE * (ICD9 + ICD10))
    dropped = sum(stats[f"admissions with ICD-{v} codes but no discharge note (dropped)"]
                  for v, (_, _, stats) in zip((9, 10), prepared.values()))
    assert dropped == len(without_note)


def test_notes_of_admissions_without_codes(twin, prepared):
    coded = set(twin["diagnoses_icd"]["hadm_id"]) | set(twin["procedures_icd"]["hadm_id"])
    notes = twin["discharge"]
    uncoded = set(notes["hadm_id"]) - coded
    assert len(uncoded) == 1  # max(1, 0.2% of 500): in neither code table
    ten_only = set(notes["hadm_id"]) & (coded - set(twin["diagnoses_icd"].query("icd_version == '9'")["hadm_id"])
                                        - set(twin["procedures_icd"].query("icd_version == '9'")["hadm_id"]))
    stats = prepared["mimic4_icd9"][2]
    assert stats["discharge notes of admissions without ICD-9 codes (dropped)"] == len(uncoded) + len(ten_only)
    assert len(ten_only) == ICD10 - 1  # the ICD-10 admissions, less the one with an ICD-9 row too


def test_some_codes_are_lower_case_or_space_padded(twin):
    codes = pd.concat([twin["diagnoses_icd"]["icd_code"], twin["procedures_icd"]["icd_code"]])
    messy = codes[codes != codes.str.strip().str.upper()]
    assert 3 <= len(messy) <= 0.01 * len(codes)
    assert messy.str.contains(" ").any()


def test_canaries_one_per_note_in_order(plain):
    texts = read(plain["discharge"])["text"].tolist()
    assert len(texts) > 40
    for i, text in enumerate(texts):
        assert text.count(CANARIES[i % 2]) == 1 and CANARIES[(i + 1) % 2] not in text


def test_counts_for():
    assert synth4.counts_for("mimic4_icd9", 1000) == (1000, 250)
    assert synth4.counts_for("mimic4_icd10", 1000) == (250, 1000)
    assert synth4.counts_for("mimic4_icd9", 10) == (10, 3)
    assert synth4.counts_for("mimic4_icd10", 0) == (0, 0)
    with pytest.raises(ValueError, match="mimic4_icd9"):
        synth4.counts_for("mimic3", 10)
    assert synth4.FULL == (209_326, 122_279)


def test_full_notes_are_mimic4_long(tmp_path):
    synth4.generate(tmp_path, 30, 30, seed=1, progress=False)
    stats = synth4.describe(tmp_path)
    assert stats["mimic4_icd9"]["admissions"] == 31 and stats["mimic4_icd10"]["admissions"] == 30
    for dataset in mimic4.DATASETS:
        assert 1_100 <= stats[dataset]["median words per note"] <= 2_200
        assert stats[dataset]["notes per admission"] == 1.0


def test_icd10_conditions_are_written_from_icd10_titles(world):
    (choice,), = world.gem["4280"]  # one scenario of one choice list: the GEM's I509, then its sibling I501
    assert choice.codes == ("I509", "I501") and choice.n_gem == 1
    assert choice.cum_weights == pytest.approx((1 - synth4.P_SIBLING, 1.0))
    assert world.gem["82000"][0][0].codes == ("S72019A", "S72011A", "S72012A")  # sides, not later encounters
    assert world.default_cm("4280") == ("I509",)
    hf = world.cm_forms(("I509",))
    assert hf.full == "heart failure, unspecified" and hf.plain == "heart failure" and "CHF" in hf.synonyms
    assert world.cm_forms(("I10",)).plain == "essential hypertension"
    assert "afib" in world.cm_synonyms["I4891"]
    # GEM alternatives spread the labels; E784, which FY2024 split, is read as its sub-codes
    hyperlipidemia = world.gem["2724"][0][0]
    assert hyperlipidemia.codes[:hyperlipidemia.n_gem] == ("E7841", "E7849", "E785")
    combination = [s for s in world.gem["0730"]]
    assert len(combination[0]) == 2  # A70 with J17: one code per choice list
    pool = [c for c, _ in world.icd9.dx_pool.head] + world.icd9.dx_pool.tail
    targets = {c for code in pool for s in world.gem.get(code, ()) for choice in s for c in choice.codes}
    assert len(targets) > 1.5 * len(pool)
    assert "CHF" in world.cm_synonyms["I509"] and "I501" not in world.cm_synonyms  # GEM targets only
    assert world.pcs_map["9672"] == ("5A1955Z",) and world.pcs_map["3893"] == ("02HV33Z",)
    assert "central line placement" in world.pcs_forms("02HV33Z").synonyms
    view = synth4._Coded10(world, {"4280": ("I509",)}, {"3893": "02HV33Z"})
    assert view.dx_forms("4280") is hf and view.proc_forms("3893").full.startswith("insertion of Infusion Device")


def test_bad_arguments_and_failures_leave_nothing(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=">= 0"):
        synth4.generate(tmp_path, -1, 10, progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth4, "_patient", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        synth4.generate(tmp_path / "out", 20, 5, short=True, progress=False)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_pcs_codes_are_official_and_mapped_from_icd9(world):
    titles = world.pcs_titles
    assert len(titles) == 78_603 and all(len(code) == 7 for code in titles)
    assert {p for alternatives in pcs.CURATED.values() for p in alternatives} <= set(titles)
    assert set(world.pcs_map) == {c for c, _ in world.icd9.proc_pool.head} | set(world.icd9.proc_pool.tail)
    assert all(p in titles for alternatives in world.pcs_map.values() for p in alternatives)
    assert world.pcs_map["9671"] == ("5A1935Z", "5A1945Z")  # PCS splits ICD-9's < 96 hours
    dialysis = titles[world.pcs_map["3995"][0]]
    assert dialysis == "Performance of Urinary Filtration, Intermittent, Less than 6 Hours Per Day"
    lexical = pcs.map_procedures(world.icd9.proc_titles, ["612", "0721"], titles)
    assert lexical == {"612": ("0VB60ZZ",), "0721": ("0GB20ZZ",)}  # excision of hydrocele / of adrenal lesion
    assert titles["0VB60ZZ"] == "Excision of Right Tunica Vaginalis, Open Approach"
    assert pcs.short_title("Excision of Stomach, Open Approach") == "stomach excision"
    assert pcs.plain_title(titles["0DJ08ZZ"]) == "inspection of upper intestinal tract"


def test_icd10_evidence_is_mostly_not_the_exact_title(twin, world):
    """As in synth: most coded conditions are written in some surface form, few as the exact title."""
    dx, notes = twin["diagnoses_icd"], twin["discharge"].set_index("hadm_id")["text"].str.lower()
    codes = dx["icd_code"].str.strip().str.upper()
    rows = dx.assign(code=codes)[(dx["icd_version"] == "10") & dx["hadm_id"].isin(notes.index)
                                 & codes.isin(world.cm_titles)]  # (not the ICD-9 string repeated as ICD-10)
    exact = written = 0
    for hadm, code in rows[["hadm_id", "code"]].itertuples(index=False):
        forms = world.cm_forms((code,))
        text = notes[hadm]
        exact += forms.full in text
        written += any(f.lower() in text for f in (*forms.synonyms, forms.plain, forms.full, *forms.paraphrases,
                                                   forms.partial) if f)
    assert written > 0.75 * len(rows) and exact < 0.3 * len(rows)


# ---------------------------------------------------------------- where the evidence was written (issue 23)

def written_forms(codes: tuple[str, ...], world) -> set[str]:
    """How a mention of these codes (undotted; several: a GEM combination) can stand in a note:
    a surface form of their ICD-10 or ICD-9 reading, maybe capitalised."""
    readings = []
    if all(c in world.cm_titles for c in codes):
        readings.append(world.cm_forms(codes))
    if len(codes) == 1 and codes[0] in world.pcs_titles:
        readings.append(world.pcs_forms(codes[0]))
    if len(codes) == 1:
        readings += [forms(codes[0]) for forms, titles in ((world.icd9.dx_forms, world.icd9.dx_titles),
                                                           (world.icd9.proc_forms, world.icd9.proc_titles))
                     if codes[0] in titles]
    plain = {f for r in readings for f in (*r.synonyms, r.plain, r.full, *r.paraphrases, r.partial) if f}
    return plain | {synth._cap(f) for f in plain}


def check_spans(evidence: pd.DataFrame, tables: dict[str, pd.DataFrame], world) -> pd.DataFrame:
    """Each mention (its rows: one per code) is written as a surface form of its codes at its
    offsets in its note's text; evidence codes are the admission's, negated and family ones are
    not (in either version). Returns the mentions with their codes as tuples."""
    notes = tables["discharge"].set_index("note_id")
    assert (notes.loc[evidence["note_id"], "hadm_id"].astype(int).to_numpy() == evidence["hadm_id"].to_numpy()).all()
    written: dict[int, set[str]] = {}
    for table, kind in (("diagnoses_icd", DIAGNOSIS), ("procedures_icd", PROCEDURE)):
        rows = tables[table]
        for hadm, code, version in zip(rows["hadm_id"].astype(int), rows["icd_code"], rows["icd_version"].astype(int)):
            written.setdefault(hadm, set()).add(mimic4.dot_version(code, kind, version))
    mentions = evidence.groupby(["hadm_id", "note_id", "begin", "end", "kind"], sort=False)["code"].agg(tuple)
    mentions = mentions.reset_index()
    for m in mentions.itertuples():
        own = written.get(m.hadm_id, set())
        assert (set(m.code) <= own) if m.kind == "evidence" else not set(m.code) & own, m
        text = notes.at[m.note_id, "text"]
        assert 0 <= m.begin < m.end <= len(text), m
        undotted = tuple(c.replace(".", "") for c in m.code)
        assert text[m.begin:m.end] in written_forms(undotted, world), (m, text[m.begin:m.end])
    return mentions


def test_a_combination_mention_is_evidence_of_each_code_and_a_condition_without_icd10_is_left_out(world):
    psittacosis = tuple(choice.codes[0] for choice in world.gem["0730"][0])
    assert psittacosis == ("A70", "J17")
    view = synth4._Coded10(world, {"0730": psittacosis}, {"3893": "02HV33Z"})
    assert view.codes_of(DIAGNOSIS, "0730") == psittacosis and view.codes_of(PROCEDURE, "3893") == ("02HV33Z",)
    assert view.codes_of(DIAGNOSIS, "4280") == ("I509",)  # not the admission's: its default reading
    assert view.codes_of(DIAGNOSIS, "36511") == ()  # glaucoma: no GEM target
    text, marks = synth._unmark(f"{synth._said(random.Random(1), view, '0730')}; "
                                f"{synth._said(random.Random(2), view, '4280', role=synth.NEGATED)}; "
                                f"{synth._said(random.Random(3), view, '36511', role=synth.FAMILY)}; "
                                f"{synth._said(random.Random(4), view, '3893', PROCEDURE)}")
    said = [text[m.begin:m.end] for m in marks]
    assert "; ".join(said) == text
    assert said[0] in written_forms(psittacosis, world) and said[1] in written_forms(("I509",), world)
    assert said[2] in written_forms(("36511",), world)  # written from its ICD-9 title
    rows, left_out = synth._evidence_rows(marks, view, synth4._dotting(10), {"A70", "J17", "02HV33Z"})
    ends = [(m.begin, m.end) for m in marks]
    assert rows == [("A70", *ends[0], "evidence"), ("J17", *ends[0], "evidence"), ("I50.9", *ends[1], "negated"),
                    ("02HV33Z", *ends[3], "evidence")]
    assert left_out == [marks[2]]


def test_evidence_file_holds_each_mention_in_mimic4_text(twin_dir, twin, prepared, world):
    path = twin_dir / synth4.EVIDENCE_FILE
    assert path.parent == twin_dir / "note" and gzip.open(path, "rt").readline() == "hadm_id,note_id,code,begin,end,kind\n"
    evidence = pd.read_csv(path, dtype={"note_id": str, "code": str, "kind": str})
    assert list(evidence.columns) == list(synth4.EVIDENCE_COLUMNS)
    assert all(evidence[c].dtype == "int64" for c in ("hadm_id", "begin", "end"))
    assert set(evidence["kind"]) == {"evidence", "negated", "family"}
    mentions = check_spans(evidence, twin, world)
    assert (mentions["code"].str.len() > 1).any()  # GEM combinations: one row per code
    # the codes are the labels step 01 reads, in both versions: ICD-9 dotted, ICD-10-CM dotted, PCS undotted
    labels: dict[int, set[str]] = {}
    for notes, _, _ in prepared.values():
        for hadm, codes in zip(notes["hadm_id"], notes["codes"]):
            labels.setdefault(int(hadm), set()).update(codes)
    supported = evidence[evidence["kind"] == "evidence"]
    assert all(code in labels[hadm] for hadm, code in zip(supported["hadm_id"], supported["code"]))
    assert supported["code"].str.fullmatch(r"\d{3}\.\d{1,2}").any()  # ICD-9 (`428.0`)
    assert supported["code"].str.fullmatch(r"[A-Z]\d[0-9A-Z]\.[0-9A-Z]{1,4}").any()  # ICD-10-CM (`I50.9`)
    assert supported["code"].str.fullmatch(r"[0-9A-HJ-NP-Z]{7}").any()  # ICD-10-PCS, undotted


def test_recording_evidence_changes_no_mimic4_table(tmp_path, world):
    """Marks draw nothing and leave nothing: with evidence or without (no marks at all), the same bytes."""
    kept = synth4.generate(tmp_path / "with", 10, 10, seed=2, progress=False, canaries=CANARIES)
    plain = synth4.generate(tmp_path / "without", 10, 10, seed=2, progress=False, canaries=CANARIES, evidence=False)
    assert kept.keys() == plain.keys() == set(mimic4.TABLES)
    for name in kept:
        assert kept[name].read_bytes() == plain[name].read_bytes(), name
    assert not (tmp_path / "without" / synth4.EVIDENCE_FILE).exists()
    tables = {name: read(path) for name, path in kept.items() if not name.startswith("d_")}
    evidence = pd.read_csv(tmp_path / "with" / synth4.EVIDENCE_FILE, dtype={"note_id": str, "code": str})
    mentions = check_spans(evidence, tables, world)  # full notes
    assert mentions["note_id"].nunique() == len(tables["discharge"])
