"""A hand-made MIMIC-III-shaped folder with every quirk the preprocessing must handle."""

import csv
import gzip
from pathlib import Path

from icdlib.data.mimic import TABLES

DIAGNOSES = [  # ROW_ID, SUBJECT_ID, HADM_ID, SEQ_NUM, ICD9_CODE
    (1, 1, 100001, 1, "4019"), (2, 1, 100001, 2, "0389"), (3, 1, 100001, 3, "4019"),  # duplicate
    (4, 1, 100001, 4, ""),  # empty code
    (5, 1, 100002, 1, "E8889"), (6, 1, 100002, 2, "V5861"), (7, 1, 100002, 3, "389"),  # 389: not in dictionary
    (8, 1, 100002, 4, "4019"),
    (9, 3, 100004, 1, "42731"),  # no discharge summary
    (10, 4, 100009, 1, "4019"),
]
PROCEDURES = [(1, 1, 100001, 1, "3893"), (2, 4, 100009, 1, "9604")]
D_DIAG = [(1, "4019", "Hypertension NOS", "Unspecified essential hypertension"),
          (2, "0389", "Septicemia NOS", "Unspecified septicemia"),
          (3, "E8889", "Fall NOS", "Unspecified fall"),
          (4, "V5861", "Long-term use anticoagul", "Long-term (current) use of anticoagulants"),
          (5, "42731", "Atrial fibrillation", "Atrial fibrillation")]
D_PROC = [(1, "3893", "Venous cath NEC", "Venous catheterization, not elsewhere classified"),
          (2, "9604", "Insert endotracheal tube", "Insertion of endotracheal tube")]
NOTES = [  # ROW_ID, SUBJECT_ID, HADM_ID, CHARTDATE, CHARTTIME, STORETIME, CATEGORY, DESCRIPTION, CGID, ISERROR, TEXT
    (10, 1, 100001, "2150-01-06", "", "", "Discharge summary", "Addendum", "", "", "ADDENDUM late"),
    (11, 1, 100001, "2150-01-05", "2150-01-05 10:00:00", "", "Discharge summary", "Addendum", "", "", 'ADDENDUM early, "quoted"'),
    (12, 1, 100001, "2150-01-05", "", "", "Discharge summary", "Report", "", "", "REPORT A\nline two, with comma"),
    (13, 1, 100001, "2150-01-05", "", "", "Discharge summary", "Addendum", "", "1", "WRONG NOTE"),
    (14, 1, 100001, "2150-01-03", "2150-01-03 08:00:00", "", "Radiology", "CHEST (PA & LAT)", "", "", "CXR text"),
    (15, 1, 100002, "2150-03-01", "", "", "Discharge summary", "Report", "", "", "REPORT B café"),
    (16, 2, 100003, "2150-04-01", "", "", "Discharge summary", "Report", "", "", "REPORT C no codes"),
    (17, 3, 100004, "2150-05-01", "", "", "Nursing", "Generic", "", "", "nursing only"),
    (18, 4, 100009, "2150-06-01", "", "", "Discharge summary", "Report", "", "", "REPORT D"),
    (19, 5, "", "2150-07-01", "", "", "Discharge summary", "Report", "", "", "REPORT without admission"),
]
ROWS = {"NOTEEVENTS": NOTES, "DIAGNOSES_ICD": DIAGNOSES, "PROCEDURES_ICD": PROCEDURES,
        "D_ICD_DIAGNOSES": D_DIAG, "D_ICD_PROCEDURES": D_PROC}


def write_mimic(folder: Path, gz: bool = False, skip: tuple[str, ...] = (), drop_column: tuple[str, str] | None = None,
                notes: list[tuple] | None = None) -> Path:
    """The fixture's tables in `folder`; `notes`: NOTEEVENTS rows in place of NOTES."""
    folder.mkdir(parents=True, exist_ok=True)
    for table, rows in {**ROWS, **({"NOTEEVENTS": notes} if notes is not None else {})}.items():
        if table in skip:
            continue
        columns = list(TABLES[table])
        keep = [i for i, c in enumerate(columns) if not (drop_column and drop_column == (table, c))]
        path = folder / f"{table}.csv{'.gz' if gz else ''}"
        opener = gzip.open if gz else open
        with opener(path, "wt", newline="", encoding="utf-8") as f:
            w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
            w.writerow([columns[i] for i in keep])
            for row in rows:
                w.writerow([row[i] for i in keep])
    return folder
