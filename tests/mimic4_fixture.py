"""A hand-made MIMIC-IV v2.2 + MIMIC-IV-Note v2.2 folder (PhysioNet's layout) with the quirks
`icdlib.data.mimic4` must handle. Comments name what each row is for."""

import csv
import gzip
from pathlib import Path

from icdlib.data.mimic4 import TABLES

DIAGNOSES = [  # subject_id, hadm_id, seq_num, icd_code, icd_version
    (1, 200001, 1, "4019", 9), (1, 200001, 2, "0389", 9),
    (1, 200001, 3, "4019", 9),  # repeated within the admission
    (1, 200001, 4, " v5861 ", 9),  # spaced, lower case
    (1, 200001, 5, "", 9),  # empty code
    (1, 200002, 1, "I10", 10),  # patient 1's next admission, in ICD-10; a 3-character CM code
    (1, 200002, 2, "e119", 10),  # lower case
    (1, 200002, 3, "E8889", 10),  # the string E8889 in both versions: ICD-10 E88.89 here ...
    (1, 200002, 4, "A419", 10),
    (2, 200003, 1, "E8889", 9),  # ... ICD-9 E888.9 here
    (2, 200003, 2, "4019", 9), (2, 200003, 3, "V1052", 9),  # V10.52: in no dictionary
    (2, 200005, 1, "V1052", 9),
    (2, 200005, 2, "V1052", 10),  # dots as the earlier ICD-9 row: dropped (Edin's drop_duplicates)
    (2, 200005, 3, "I10", 10),  # 200005 is coded in both versions: in both datasets
    (3, 200006, 1, "42731", 9),
    (4, 200008, 1, "4019", 9),  # its note has an empty text
    (3, 200009, 1, "I10", 10),  # no discharge note
    (6, 200010, 1, "A419", 10), (6, 200010, 2, "I10", 10),
]
PROCEDURES = [  # subject_id, hadm_id, seq_num, chartdate, icd_code, icd_version
    (1, 200001, 1, "2150-01-02", "3893", 9),
    (1, 200002, 1, "2155-03-02", "0DTJ4ZZ", 10),  # PCS: 7 characters, undotted
    (1, 200002, 2, "2155-03-02", "02hv33z", 10),  # lower case
    (1, 200002, 3, "2155-03-03", "0DTJ4ZZ", 10),  # repeated within the admission
    (2, 200003, 1, "2151-02-01", "3893", 9),
    (6, 200010, 1, "2160-01-01", "0DTJ4ZZ", 10),
]
D_DIAG = [  # icd_code, icd_version, long_title
    ("0389", 9, "Unspecified septicemia"), ("4019", 9, "Unspecified essential hypertension"),
    ("42731", 9, "Atrial fibrillation"), ("E8889", 9, "Unspecified fall"),
    ("V5861", 9, "Long-term (current) use of anticoagulants"),
    ("A419", 10, "Sepsis, unspecified organism"), ("E119", 10, "Type 2 diabetes mellitus without complications"),
    ("E8889", 10, "Other specified metabolic disorders"), ("I10", 10, "Essential (primary) hypertension"),
]
D_PROC = [
    ("3893", 9, "Venous catheterization, not elsewhere classified"),
    ("02HV33Z", 10, "Insertion of Infusion Device into Superior Vena Cava, Percutaneous Approach"),
    ("0DTJ4ZZ", 10, "Resection of Appendix, Percutaneous Endoscopic Approach"),
]
TEXT_200001 = 'Name:  ___                     Unit No:   ___\nAdmission Date:  ___\n"quoted", and a comma'
TEXT_200002 = "Name: ___ ICD-10 stay café\n2, a line shaped like a number list"
NOTES = [  # note_id, subject_id, hadm_id, note_type, note_seq, charttime, storetime, text
    ("1-DS-2", 1, 200001, "DS", 2, "2150-01-06 00:00:00", "2150-01-06 12:00:00", "SECOND NOTE, later"),
    ("1-DS-1", 1, 200001, "DS", 1, "2150-01-05 00:00:00", "2150-01-05 12:00:00", TEXT_200001),
    ("1-DS-3", 1, 200001, "DS", 3, "2150-01-07 00:00:00", "", "SECOND NOTE, later"),  # the same text again
    ("1-DS-4", 1, 200002, "DS", 4, "2155-03-05 00:00:00", "", TEXT_200002),
    ("2-DS-1", 2, 200003, "DS", 1, "2151-02-03 00:00:00", "", "note of 200003"),
    ("2-DS-2", 2, 200005, "DS", 2, "2152-01-01 00:00:00", "", "note of 200005"),
    ("3-DS-1", 3, 200006, "DS", 1, "2153-01-01 00:00:00", "", "note of 200006"),
    ("5-DS-1", 5, 200007, "DS", 1, "2154-01-01 00:00:00", "", "note of an admission without codes"),
    ("4-DS-1", 4, 200008, "DS", 1, "2156-01-01 00:00:00", "", ""),  # empty text
    ("7-DS-1", 7, "", "DS", 1, "2157-01-01 00:00:00", "", "note without hadm_id"),
    ("6-DS-1", 6, 200010, "DS", 1, "2160-01-02 00:00:00", "", "note of 200010, 12 mg 34"),
]
ROWS = {"diagnoses_icd": DIAGNOSES, "procedures_icd": PROCEDURES, "d_icd_diagnoses": D_DIAG,
        "d_icd_procedures": D_PROC, "discharge": NOTES}


def write_mimic4(folder: Path, gz: bool = True, note_dir: Path | None = None, skip: tuple[str, ...] = (),
                 drop_column: tuple[str, str] | None = None, rows: dict | None = None) -> Path:
    """`folder/hosp/*` and `(note_dir or folder)/note/discharge`, quoted as PhysioNet does (when
    needed); `.csv.gz` or `.csv`; `rows` replaces some tables' ROWS. Returns `folder`."""
    for table, rows in {**ROWS, **(rows or {})}.items():
        if table in skip:
            continue
        sub, columns = TABLES[table]
        out = Path(note_dir if note_dir and sub == "note" else folder) / sub
        out.mkdir(parents=True, exist_ok=True)
        keep = [i for i, c in enumerate(columns) if (table, c) != drop_column]
        path = out / f"{table}.csv{'.gz' if gz else ''}"
        opener = gzip.open if gz else open
        with opener(path, "wt", newline="", encoding="utf-8") as f:
            w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            w.writerow([columns[i] for i in keep])
            for row in rows:
                w.writerow([row[i] for i in keep])
    return folder
