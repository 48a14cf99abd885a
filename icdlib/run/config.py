"""Run configuration: defaults < `params/<backbone>.yaml` < overrides, validated, recorded.

Every knob of a run lives in `Config` with a typed default. A params file and the overrides
(papermill parameters, `-p key=value` on the CLI) may only name known keys with values of the
default's type and within the key's range (`RANGES`); anything else is one `ConfigError` naming
the key and the choices. Step 01 records the resolved configuration as `<run>/config.json`; later
steps read the run and leave that record as it is.

Notebooks call `from_notebook(globals())` after their parameters cell, so every key of `Config`
works as a papermill parameter (`papermill notebooks/03_train.ipynb out.ipynb -p epochs 1`).

Paths (`output_root`, `mimic_dir`, `note_dir`, `split_dir`, `top50_file`, `evidence_dir`, and `model_path`,
`base_model_path`, `adapter_path` when they name a local folder rather than a hub name) are made absolute against the
caller's working directory when the configuration is resolved, wherever they come from: the command
line, papermill parameters, the API or a params file. The resolved Config holds absolute paths only.

Benchmark presets (`benchmark`, `BENCHMARKS`) are applied by `resolve` after merging: a preset sets
the dataset, the split, the label rule, the filters and the text cleaning its paper used (`caml_full`, `caml_50`,
`edin_clean`, `seed`; `edin_mimic4_icd9`, `edin_mimic4_icd10` for MIMIC-IV), replacing what the defaults and a params file below it say; a value given at the same
layer as `benchmark` or a later one (the params file naming it, then the overrides) that
contradicts the preset is one `ConfigError`. `caml_50` takes CAML's `top50_codes.txt` from
`split_dir` unless `top50_file` names one. With `benchmark: none`, hand-made combinations that
look like a benchmark but are not one (`split: caml_50` without `labels: top50`, `split: clean`
with a train-only `min_count`, `seed_test_share` without `split: seed`) are refused naming the
preset to use, and so is a split of another dataset's admissions (`check_dataset`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from icdlib.run.errors import ConfigError
from icdlib.run.runfolder import atomic_write_text, unwritable

REPO_ROOT = Path(__file__).resolve().parents[2]  # icdlib/run/config.py -> the checkout
PARAMS_DIR = REPO_ROOT / "params"
OUTPUTS_DIR = REPO_ROOT / "outputs"

# model_type (config.json) -> the family name people know: the decoders `icdlib.model.bidirectional` makes
# bidirectional, each with a proof in tests/test_bidirectional.py. Here because the config accepts exactly these.
MODEL_TYPES = {
    "llama": "Llama 2, Llama 3.x, Sheared-LLaMA",
    "mistral": "Mistral / BioMistral",
    "qwen2": "Qwen2 / Qwen2.5",
    "qwen3": "Qwen3",
    "gemma": "Gemma",
    "gemma2": "Gemma 2",
    "gemma3_text": "Gemma 3 text (gemma-3-1b, MedGemma 27B text)",
    "olmo2": "OLMo 2",
    "smollm3": "SmolLM3",
}

SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Config:
    """All parameters of a run. Units and choices in the comments; CHOICES is enforced."""

    # run
    backbone: str = "tiny"  # the params file name: params/<backbone>.yaml
    run: str = ""  # run folder name under output_root; empty means the backbone name
    output_root: str = ""  # folder holding run folders; empty means <repo>/outputs
    mimic_dir: str = ""  # MIMIC-III v1.4 folder, or MIMIC-IV v2.2's (holding hosp/); empty means the synthetic twin
    dataset: str = "mimic3"  # mimic3 | mimic4_icd9 | mimic4_icd10 (MIMIC-IV's admissions coded in that ICD version)
    note_dir: str = ""  # MIMIC-IV-Note v2.2 folder (holding note/); empty means mimic_dir
    seed: int = 1234
    share_safe: str = "auto"  # auto (on for real MIMIC, off for the twin) | on | off

    # synthetic twin (used when mimic_dir is empty)
    synth_admissions: int = 800
    synth_seed: int = 0
    synth_short: bool = True  # short notes for fast demos

    # preprocessing
    benchmark: str = "none"  # none | caml_full | caml_50 | edin_clean | seed | edin_mimic4_icd9 | edin_mimic4_icd10:
    #                          sets split, labels and filters as the
    #                          paper did (BENCHMARKS; applied by resolve, conflicting explicit values are refused)
    note_categories: list[str] = field(default_factory=lambda: ["Discharge summary"])
    note_descriptions: list[str] = field(default_factory=lambda: ["Report", "Addendum"])
    text_cleaning: str = "none"  # none | caml | edin (Edin et al.'s: lower case, only letters and digits)
    split: str = "patient"  # seed | patient | caml_full | caml_50 | clean | mimic4_icd9 | mimic4_icd10
    split_dir: str = ""  # folder with the public split files (caml_full, caml_50, clean, mimic4_icd9, mimic4_icd10)
    labels: str = "observed"  # observed | all | top50
    top50_file: str = ""  # CAML's top-50 code list, one code a line (labels: top50)
    min_count: int = 1  # drop label codes seen fewer times in train (edin_clean: in the whole dataset)
    seed_test_share: float = 0.0  # split seed: hold out this share of the seed's train patients (chosen with
    #                               `seed`) as a patient-disjoint test set; val keeps the HADM_ID 8/9 rule
    evidence: str = "auto"  # auto | mdace | none: the evidence spans step 01 carries into the run's text
    #   (01_preprocess/evidence.parquet, icdlib.data.evidence). auto: the synthetic twin's own spans, none on real
    #   data; mdace: MDACE's coder-annotated spans (Cheng et al. 2023) of MIMIC-III admissions, from evidence_dir
    evidence_dir: str = ""  # MDACE's folder (Inpatient/ICD-9/1.0/*.json, splits/); needed by evidence=mdace

    # model
    base_model_path: str = ""  # the base LLM (hub name or local folder) an adapter-only model_path applies to;
    #                            empty means the base its adapter_config.json names
    model_path: str = ""  # LLM2Vec model: an -mntp adapter folder or a full model (hub name or folder); empty: tiny
    model_type: str = "llama"  # the backbone's architecture: llama | mistral builds a tiny one; a real one's
    #                            is its config.json's (`backbone_type`), "" where not known offline
    adapter_path: str = ""  # optional second LLM2Vec adapter (simcse/supervised) to start LoRA from
    load_in: str = "native"  # native | 4bit | 8bit (bitsandbytes, CUDA only: QLoRA on a quantized base)
    attention: str = "auto"  # auto | sdpa | eager | flash_attention_2 (the attention kernel; auto: SDPA where the
    #                          architecture has it, else eager; all of them bidirectional, padding masked)
    segment_bos: bool = False  # start every segment with the tokenizer's BOS token (as llm2vec encodes)
    instruction: str = "auto"  # auto | none | llm2vec: wrap segments in the chat format the supervised/
    #                            simcse adapters were trained with; auto = llm2vec when adapter_path is set
    tiny_layers: int = 2
    tiny_hidden: int = 128
    tiny_heads: int = 4
    tiny_vocab: int = 4000  # BPE vocabulary trained on the training notes
    tiny_init: str = "random"  # random | lsa (embeddings from an SVD of the training notes)
    train_backbone: str = "lora"  # lora | full | frozen
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(SEVEN_PROJECTIONS))
    head: str = "label_attention"  # label_attention | mean
    attention_dim: int = 512  # label-attention projection size
    segment_length: int = 512  # tokens per segment; the LLM2Vec adapters saw <= 512
    max_segments: int = 8  # 1 reproduces plain truncation
    truncation: str = "head"  # head | tail | head_tail: which tokens of a note longer than max_segments segments stay

    # MNTP (llm2vec's masked next-token prediction) on the train notes before fine-tuning (icdlib.model.mntp)
    mntp_steps: int = 0  # 0: no MNTP stage
    mntp_masking: str = "auto"  # auto (all_mask for Mistral, bert otherwise) | bert (80/10/10) | all_mask
    mntp_probability: float = 0.0  # share of tokens selected; 0: the recipe's (bert 0.2, all_mask 0.8)
    mntp_length: int = 512  # tokens per chunk of the concatenated notes
    mntp_batch_size: int = 32  # chunks per step (all processes together)
    mntp_lr: float = 5.0e-5  # the Trainer default llm2vec's recipe runs with
    mntp_epochs: float = 3.0  # the lr decays linearly to 0 over this many epochs of the chunks (no warm-up) and
    #   the stage stops there if mntp_steps has not: the recipe's Trainer (3 epochs by default, cut short by
    #   stop_after_n_steps = mntp_steps), so the lr stays near mntp_lr; 0: decay to 0 over mntp_steps
    mntp_head: str = "auto"  # auto | train | frozen: the LM head during MNTP. auto is the recipe: the decoder's own
    #   head trains with the LoRA, a head tied to the input embeddings stays frozen with them; 03_train/mntp/
    #   keeps the adapter alone either way (as the recipe saves it), fine-tuning never uses the head
    mntp_compare: str = "none"  # none | without | with: also fine-tune the other arm for 03/04 (needs mntp_steps > 0):
    #   without: the model starts from MNTP, 03_train/without_mntp/ from the backbone as loaded;
    #   with: the model starts from the backbone as loaded, 03_train/with_mntp/ from MNTP

    # training
    epochs: int = 3
    max_steps: int = -1  # optimizer steps; -1 means epochs
    batch_size: int = 4  # notes per micro-batch
    grad_accum: int = 4
    lr: float = 1.0e-4  # LoRA / backbone learning rate
    head_lr: float = 1.0e-3  # label head learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear
    clip: float = 1.0  # gradient norm clip; 0 disables
    pos_weight: float = 0.0  # BCE positive-class weight; 0 means none
    eval_every: int = 200  # optimizer steps between validations
    save_every: int = 200  # optimizer steps between last/ checkpoints
    patience: int = 5  # evaluations without improvement before stopping; 0 disables
    metric: str = "map"  # validation metric selecting best/
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    grad_checkpointing: bool = False
    num_workers: int = 0
    resume: bool = False
    nproc: int = 1  # processes for multi-GPU training (torchrun) launched from 03
    memory_check: bool = True  # on CUDA, 03 first checks the memory plan (python -m icdlib plan) and stops
    #   before loading anything when the run would not fit; false trains anyway
    keep_effective_batch: bool = False  # true: grad_accum is divided among the processes, so a step is
    #   batch_size × grad_accum notes on any number of GPUs and lr/warmup_steps/eval_every keep their meaning
    seeds: list[int] = field(default_factory=list)  # training seeds, one model each (mean ± sd in 04); empty: one
    #   model trained with `seed`. The first is the run's model (03_train/best/), each other one goes to
    #   03_train/seed_<s>/; a seed sets the head's and LoRA's initial weights, the data order and dropout, while
    #   the split, the tiny backbone and the MNTP stage stay those of `seed` (trained once, shared)

    # evaluation
    threshold: float = 0.5
    baseline: bool = True  # 04 also trains the TF-IDF low-rank baseline (icdlib.evaluation.baseline) and scores it
    bootstrap: int = 1000  # resamples of the reported split's admissions for 04's 95% intervals; 0: none
    explain_notes: int = 40  # 04 measures each explanation method (icdlib.evaluation.explanations) against the run's
    #   evidence spans on the first this-many admissions of val and of test that have a true-positive code with
    #   evidence; 0: not measured
    ig_steps: int = 32  # integrated gradients' Gauss-Legendre points (icdlib.model.explain.IG_STEPS: measured there)
    faithfulness_step: int = 2  # words removed per step of comprehensiveness/sufficiency, up to 100 words
    #   (Edin et al.: 2, 50 model passes per pair and direction; 10: 10 passes)

    @property
    def run_name(self) -> str:
        return self.run or self.backbone

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root or OUTPUTS_DIR) / self.run_name

    @property
    def training_seeds(self) -> list[int]:
        """The seeds step 03 fine-tunes with, the run's model's first: `seeds`, or `[seed]` when empty."""
        return list(self.seeds) or [self.seed]

    @property
    def synthetic(self) -> bool:
        return not self.mimic_dir

    @property
    def share_safe_on(self) -> bool:
        """Real MIMIC text never leaves the machine unless the user turned the guard off."""
        return self.share_safe == "on" or (self.share_safe == "auto" and not self.synthetic)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{k}</td><td>{v!r}</td></tr>" for k, v in self.to_dict().items())
        return f"<table><tr><th>parameter</th><th>value</th></tr>{rows}</table>"


CHOICES = {
    "share_safe": ("auto", "on", "off"),
    "dataset": ("mimic3", "mimic4_icd9", "mimic4_icd10"),
    "text_cleaning": ("none", "caml", "edin"),
    "split": ("seed", "patient", "caml_full", "caml_50", "clean", "mimic4_icd9", "mimic4_icd10"),
    "labels": ("observed", "all", "top50"),
    "model_type": ("", *MODEL_TYPES),  # a tiny backbone: TINY_TYPES
    "load_in": ("native", "4bit", "8bit"),
    "attention": ("auto", "sdpa", "eager", "flash_attention_2"),
    "instruction": ("auto", "none", "llm2vec"),
    "tiny_init": ("random", "lsa"),
    "train_backbone": ("lora", "full", "frozen"),
    "head": ("label_attention", "mean"),
    "schedule": ("cosine", "linear"),
    "metric": ("map", "auroc_micro", "auroc_macro", "auprc_micro", "f1_micro", "p_at_8"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "benchmark": ("none", "caml_full", "caml_50", "edin_clean", "seed", "edin_mimic4_icd9", "edin_mimic4_icd10"),
    "truncation": ("head", "tail", "head_tail"),
    "mntp_masking": ("auto", "bert", "all_mask"),
    "mntp_compare": ("none", "without", "with"),
    "mntp_head": ("auto", "train", "frozen"),
    "evidence": ("auto", "mdace", "none"),
}

# How a step runs, not what it computes: a later step may be run with other values than the run
# recorded (another device, more processes, resume), and never takes these from the record.
HOW_TO_RUN = ("device", "num_workers", "nproc", "resume", "memory_check", "keep_effective_batch")

_TYPES = typing.get_type_hints(Config)
_FIELDS = [f.name for f in dataclasses.fields(Config)]

# What a number must be beyond its type: (test, the rule as the error states it). Every int and
# float key is here (and `seeds`, a list of them); a float must also be finite.
_AT_LEAST_0 = (lambda v: v >= 0, "at least 0")
_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_POSITIVE = (lambda v: v > 0, "positive")
RANGES = {
    "seed": _AT_LEAST_0,  # numpy refuses negative seeds
    "synth_admissions": _AT_LEAST_1,
    "synth_seed": _AT_LEAST_0,
    "min_count": _AT_LEAST_0,  # 0 and 1 both keep every code
    "tiny_layers": _AT_LEAST_1,
    "tiny_hidden": _AT_LEAST_1,
    "tiny_heads": _AT_LEAST_1,
    "tiny_vocab": _AT_LEAST_1,
    "lora_r": _AT_LEAST_1,
    "lora_alpha": _AT_LEAST_1,
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "attention_dim": _AT_LEAST_1,
    "segment_length": _AT_LEAST_1,  # and within the backbone's positions: check_positions
    "max_segments": _AT_LEAST_1,
    "epochs": _AT_LEAST_1,
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 (train for epochs) or at least 1"),
    "batch_size": _AT_LEAST_1,
    "grad_accum": _AT_LEAST_1,
    "lr": _POSITIVE,
    "head_lr": _POSITIVE,
    "weight_decay": _AT_LEAST_0,
    "warmup_steps": _AT_LEAST_0,
    "clip": _AT_LEAST_0,  # 0 disables
    "pos_weight": _AT_LEAST_0,  # 0 means none
    "eval_every": _AT_LEAST_1,
    "save_every": _AT_LEAST_1,
    "patience": _AT_LEAST_0,  # 0 disables
    "num_workers": _AT_LEAST_0,
    "nproc": _AT_LEAST_1,
    "threshold": (lambda v: 0 < v < 1, "in (0, 1)"),
    "seed_test_share": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mntp_steps": _AT_LEAST_0,
    "mntp_probability": (lambda v: 0 <= v < 1, "in [0, 1) (0: the recipe's)"),
    "mntp_length": (lambda v: v >= 2, "at least 2"),
    "mntp_batch_size": _AT_LEAST_1,
    "mntp_lr": _POSITIVE,
    "bootstrap": _AT_LEAST_0,  # 0: no intervals
    "explain_notes": _AT_LEAST_0,
    "ig_steps": _AT_LEAST_1,
    "faithfulness_step": (lambda v: 1 <= v <= 100, "in 1..100"),
    "mntp_epochs": _AT_LEAST_0,
    "seeds": (lambda v: all(x >= 0 for x in v) and len(set(v)) == len(v), "distinct non-negative integers"),
}


# What each benchmark preset sets (split_dir, and top50_file for caml_50, stay the user's files).
# caml_full: CAML's ids, labels every code of train, dev and test (preprocess counts all splits);
# caml_50: CAML's ids and its 50 codes; edin_clean: Edin et al.'s split file, codes seen in < 10
# admissions of the whole dataset dropped, then admissions left without codes; seed: the original
# project's rule (HADM_ID 8/9 -> val, no test) and every dictionary code; edin_mimic4_icd9/10: Edin et
# al.'s MIMIC-IV datasets, their split files and the same rare-code rule.
# Each preset's text cleaning is its paper's: CAML's own (lower case, digits dropped) for CAML's
# splits; Edin et al.'s for theirs (prepare_data/prepare_mimiciii_clean.py and prepare_mimiciv.py
# build one TextPreprocessor, lower=True, remove_special_characters_mullenbach=True,
# remove_digits=True, for every dataset). The published rows beside a run were scored on such text.
BENCHMARKS = {
    "caml_full": {"dataset": "mimic3", "split": "caml_full", "labels": "observed", "min_count": 1,
                  "seed_test_share": 0.0, "text_cleaning": "caml"},
    "caml_50": {"dataset": "mimic3", "split": "caml_50", "labels": "top50", "min_count": 1, "seed_test_share": 0.0,
                "text_cleaning": "caml"},
    "edin_clean": {"dataset": "mimic3", "split": "clean", "labels": "observed", "min_count": 10,
                   "seed_test_share": 0.0, "text_cleaning": "edin"},
    "seed": {"split": "seed", "labels": "all", "min_count": 1},
    **{f"edin_{name}": {"dataset": name, "split": name, "labels": "observed", "min_count": 10, "seed_test_share": 0.0,
                        "text_cleaning": "edin"}
       for name in ("mimic4_icd9", "mimic4_icd10")},
}
MIMIC3_SPLITS = ("caml_full", "caml_50", "clean")  # public split files of MIMIC-III admissions
CAML_TOP50_FILE = "top50_codes.txt"  # in split_dir, beside CAML's id files


def _shown_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def apply_benchmark(values: dict, stated: dict) -> dict:
    """`values` (merged and checked) with the preset of `values["benchmark"]` applied.

    `stated` holds the values given at the layer naming the benchmark or a later one: a preset key
    there with another value is a ConfigError; earlier layers (defaults, a params file under a
    `-p benchmark=...`) are replaced. With no preset, benchmark look-alikes are refused."""
    name = values.get("benchmark", "none")
    out = dict(values)
    if name == "none":
        check_dataset(out)
        split, labels = out.get("split", "patient"), out.get("labels", "observed")
        if split == "caml_50" and labels != "top50":
            raise ConfigError(f"split=caml_50 with labels={labels} is not CAML's top-50 task: "
                              f"use benchmark=caml_50 (or labels=top50)")
        if split in ("clean", "mimic4_icd9", "mimic4_icd10") and out.get("min_count", 1) > 1:
            preset = "edin_clean" if split == "clean" else f"edin_{split}"
            raise ConfigError(f"split={split} with min_count={out['min_count']} counts train admissions only, not "
                              f"Edin et al.'s whole dataset: use benchmark={preset} (or min_count=1)")
        if split != "seed" and out.get("seed_test_share", 0.0) > 0:
            raise ConfigError(f"seed_test_share={out['seed_test_share']} holds out a test set from the seed split "
                              f"only, not split={split}: use benchmark=seed (or split=seed)")
        return out
    for key, want in BENCHMARKS[name].items():
        if key in stated and out[key] != want:
            raise ConfigError(f"benchmark={name} sets {key}={_shown_value(want)}, but {key}={_shown_value(out[key])} "
                              f"is given: drop {key} (or use benchmark=none)")
        out[key] = want
    if name == "caml_50" and not out.get("top50_file") and out.get("split_dir"):
        out["top50_file"] = os.path.join(out["split_dir"], CAML_TOP50_FILE)
    return check_dataset(out)


def check_dataset(values: dict) -> dict:
    """`values` if its split and note_dir fit its dataset: MIMIC-III's split files hold MIMIC-III
    admissions, a MIMIC-IV split file its own dataset's, and only MIMIC-IV has a separate note folder."""
    dataset, split = values.get("dataset", "mimic3"), values.get("split", "patient")
    if split in MIMIC3_SPLITS and dataset != "mimic3":
        raise ConfigError(f"split={split} lists MIMIC-III admissions, not dataset={dataset}'s: use split={dataset} "
                          f"(Edin et al.'s file), patient or seed")
    if split.startswith("mimic4_") and split != dataset:
        raise ConfigError(f"split={split} lists the admissions of dataset={split}, not dataset={dataset}'s: "
                          f"use dataset={split} (or another split)")
    if values.get("note_dir") and dataset == "mimic3":
        raise ConfigError("note_dir names MIMIC-IV-Note's folder, but dataset=mimic3 reads NOTEEVENTS from mimic_dir: "
                          "drop note_dir (or set dataset=mimic4_icd9 or mimic4_icd10)")
    return values


def backbones() -> list[str]:
    """The backbone names a run can use: the params files shipped in params/."""
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


def read_params_file(path: Path) -> dict:
    """A params YAML file as a dict of raw values (validated later, with the file named)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of parameter: value, got {type(values).__name__}")
    return values


def _type_name(tp) -> str:
    return f"list of {typing.get_args(tp)[0].__name__}" if typing.get_origin(tp) is list else tp.__name__


def _check_value(key: str, value, source: str):
    """The value converted to the field's type, or a ConfigError naming key, source and type."""
    tp = _TYPES[key]
    ok = False
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        ok = isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        hint = ""
        if tp is float and isinstance(value, str) and re.fullmatch(r"[\d.]+e-?\d+", value):
            hint = " (YAML reads 5e-5 as text: write 5.0e-5)"
        raise ConfigError(
            f"{source}: {key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}{hint}"
        )
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{source}: {key} must be one of {', '.join(CHOICES[key])}; got {value!r}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
    if key in RANGES and not RANGES[key][0](value):
        raise ConfigError(f"{source}: {key} must be {RANGES[key][1]}, got {value!r}")
    return value


def closest_keys(key: str, n: int = 3) -> list[str]:
    """The parameter names nearest to a misspelt `key` (difflib), then those sharing its first word."""
    key = str(key)
    close = difflib.get_close_matches(key, _FIELDS, n=n, cutoff=0.7)
    close += [k for k in _FIELDS if k.split("_")[0] == key.split("_")[0] and k not in close]
    return close[:n + 1]


def _unknown(key, source: str) -> str:
    close = closest_keys(key)
    hint = f" (did you mean {', '.join(close)}?)" if close else f"; known parameters: {', '.join(_FIELDS)}"
    return f"{source}: unknown parameter {key!r}{hint}"


def _merge(values: dict, updates: dict, source: str) -> None:
    for key, value in updates.items():
        if key not in _TYPES:
            raise ConfigError(_unknown(key, source))
        values[key] = _check_value(key, value, source)


LOCAL_PATH_KEYS = ("output_root", "mimic_dir", "note_dir", "split_dir", "top50_file", "evidence_dir")
MODEL_PATH_KEYS = ("model_path", "base_model_path", "adapter_path")  # a hub name or a local folder


def is_local_path(value: str, cwd: Path | str | None = None) -> bool:
    """A local path rather than a hub name (`org/name`): it exists under `cwd`, or looks like a path."""
    if value.startswith(("/", "./", "../", "~", ".\\")) or value in (".", ".."):
        return True
    return (Path(cwd or os.getcwd()) / value).exists()


def absolute_paths(values: dict, cwd: Path | str | None = None) -> dict:
    """`values` with every relative path parameter made absolute against `cwd` (default: the
    working directory). `~` is expanded; empty strings stay empty ("not set"); a model key that is
    a hub name (not an existing path, not starting with /, ./, ../ or ~) stays the name."""
    cwd = Path(cwd or os.getcwd())
    out = dict(values)
    for key in LOCAL_PATH_KEYS + MODEL_PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value:
            continue
        if key in MODEL_PATH_KEYS and not is_local_path(value, cwd):
            continue
        out[key] = os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))
    return out


def resolve(backbone: str, overrides: dict | None = None, params_dir: Path | None = None,
            cwd: Path | str | None = None) -> Config:
    """Defaults, then params/<backbone>.yaml, then overrides; validated, nothing written.

    Relative paths, from the params file or the overrides, are resolved against `cwd` (default:
    the working directory): see `absolute_paths`. Then the benchmark preset: `apply_benchmark`."""
    params_dir = Path(params_dir or PARAMS_DIR)
    known = sorted(p.stem for p in params_dir.glob("*.yaml"))
    if backbone not in known:
        raise ConfigError(f"unknown backbone {backbone!r}; choices: {', '.join(known)} (files in {params_dir.name}/)")
    path = params_dir / f"{backbone}.yaml"
    values: dict = {}
    file_values = read_params_file(path)
    if "backbone" in file_values:
        raise ConfigError(f"{path}: backbone is the file's name, not a key inside it")
    _merge(values, file_values, f"params/{path.name}")
    _merge(values, dict(overrides or {}), "override")
    values["backbone"] = backbone
    stated = dict(overrides or {}) if "benchmark" in (overrides or {}) else {**file_values, **(overrides or {})}
    cfg = Config(**apply_benchmark(absolute_paths(values, cwd), stated))
    check_evidence(cfg)
    if cfg.mntp_compare != "none" and cfg.mntp_steps == 0:
        raise ConfigError(f"mntp_compare={cfg.mntp_compare} compares fine-tuning with and without the MNTP stage, "
                          f"but mntp_steps=0: set mntp_steps (or mntp_compare=none)")
    if "/" in cfg.run_name or cfg.run_name in ("", ".", ".."):
        raise ConfigError(f"run must be a plain folder name, got {cfg.run_name!r}")
    if cfg.model_path or cfg.base_model_path:
        if "model_type" not in (overrides or {}):  # what the backbone is, not llama unless it is
            moved = {"model_path", "base_model_path"} & set(overrides or {})
            cfg = dataclasses.replace(cfg, model_type=backbone_type(cfg, "" if moved else cfg.model_type))
    elif cfg.model_type not in TINY_TYPES:
        raise ConfigError(f"model_type={cfg.model_type!r}: a tiny backbone is one of {', '.join(TINY_TYPES)}")
    if not cfg.model_path:  # a tiny backbone is built from these: heads split the width into even halves
        head_dim, rest = divmod(cfg.tiny_hidden, cfg.tiny_heads)
        if rest or head_dim % 2:
            raise ConfigError(f"tiny_hidden={cfg.tiny_hidden} must be tiny_heads={cfg.tiny_heads} times an even "
                              f"number (the width of a rotary attention head)")
    return cfg


def check_evidence(cfg: Config) -> None:
    """Refuse an evidence source the run cannot read: MDACE annotates MIMIC-III's own notes (by
    ROW_ID), so it needs its folder and real MIMIC-III; evidence_dir means nothing without it."""
    if cfg.evidence != "mdace":
        if cfg.evidence_dir:
            raise ConfigError(f"evidence_dir is read only with evidence=mdace, not evidence={cfg.evidence}: drop "
                              f"evidence_dir (or set evidence=mdace)")
        return
    if not cfg.evidence_dir:
        raise ConfigError("evidence=mdace reads MDACE's annotations from evidence_dir: set evidence_dir to MDACE's "
                          "folder (holding Inpatient/ICD-9/1.0/*.json)")
    if cfg.dataset != "mimic3":
        raise ConfigError(f"evidence=mdace annotates MIMIC-III notes, not dataset={cfg.dataset}'s: use evidence=auto "
                          f"or none")
    if cfg.synthetic:
        raise ConfigError("evidence=mdace maps MDACE's spans onto MIMIC-III's own notes (by ROW_ID), which the "
                          "synthetic twin does not have: set mimic_dir (or evidence=auto, the twin's own spans)")


TINY_TYPES = ("llama", "mistral")  # the architectures `backbones.tiny_config` builds


def backbone_config(ref: str) -> Path | None:
    """The config.json of a backbone `ref`: a local folder's, or a hub repository's in the Hugging Face
    cache; None when neither holds it (nothing is downloaded)."""
    if is_local_path(ref):
        path = Path(ref).expanduser() / "config.json"
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref, "config.json")
    except Exception:  # a malformed name: not in the cache
        return None
    return Path(found) if isinstance(found, str) else None


def backbone_type(cfg: Config, stated: str = "") -> str:
    """A real backbone's `model_type`, as the config.json of its weights (base_model_path, then
    model_path) says when it is a local folder or in the Hugging Face cache; else `stated` (what
    the params file says of the backbone it names)."""
    for ref in (cfg.base_model_path, cfg.model_path):
        path = backbone_config(ref) if ref else None
        if path is not None:
            try:
                return str(json.loads(path.read_text(encoding="utf-8")).get("model_type", ""))
            except (OSError, ValueError, AttributeError):
                return stated
    return stated


def check_positions(cfg: Config, max_positions: int | None) -> None:
    """Refuse a `segment_length` the backbone cannot encode.

    A segment, its format tokens (BOS, instruction) included, is at most `segment_length` tokens
    and must fit the backbone's position embeddings (`max_position_embeddings` of its config;
    None: not known, nothing to check). Tiny backbones are built with max(segment_length, 128)
    positions, so only real ones fail here."""
    if max_positions is not None and cfg.segment_length > max_positions:
        raise ConfigError(f"segment_length={cfg.segment_length} exceeds the backbone's {max_positions} positions: "
                          f"set segment_length to at most {max_positions}")


def load(backbone: str, *, params: dict | None = None, params_dir: Path | None = None, record: bool = True,
         **overrides) -> Config:
    """Resolve the run's configuration and record it as `<run>/config.json`.

    Notebooks call this with their parameters cell: the named parameters plus `params`, a dict
    of any other overrides (what `python -m icdlib run -p key=value` fills in). Empty strings and
    -1 in the named parameters mean "not set" and leave the params file's value.

    `record=False` writes nothing: the steps after 01 read a run and must not rewrite what built
    its data, nor leave a `config.json` in a folder 01 never built (papermill on 03 of a new run).
    """
    merged = {k: v for k, v in overrides.items() if v != "" and v != -1 and v is not None}
    merged.update(params or {})
    cfg = resolve(backbone, merged, params_dir)
    if record:
        save(cfg)
    return cfg


NOTEBOOK_PARAMETERS = ("backbone", "run", "mimic_dir", "params")  # every notebook's parameters cell
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_LITERALS = (str, int, float, bool, type(None), list, dict, tuple)  # what papermill can inject
_SEEN = "__icdlib_parameters__"


def notebook_parameters(namespace: dict) -> dict:
    """The parameters in a notebook's namespace after its parameters cell, as overrides for `resolve`.

    papermill binds each `-p KEY VALUE` as `KEY = VALUE` in a cell after the parameters cell,
    whether or not the notebook declares KEY; this reads them back. A key of `Config` is an
    override, its value typed like the CLI's `-p key=value`: text for a non-text key is read as
    YAML (`-p resume true`, `-r lr 5.0e-5`; `5e-5` stays text and gets the YAML hint). Any other
    plain value bound there (not `_name`, a module, a function or IPython's own names) is an
    unknown parameter: one ConfigError naming the closest keys. `run` and `mimic_dir` empty
    mean "not set"; `params` (a dict) adds overrides and must agree with a key given both ways.

    Names are those bound at the first call, remembered in the namespace: a re-run of the config
    cell reads their current values, not the names later cells bound (05's `threshold`), so a
    parameter added to the parameters cell afterwards needs a kernel restart (or `params`)."""
    names = namespace.get(_SEEN)
    if names is None:
        names = tuple(k for k, v in namespace.items()
                      if not k.startswith("_") and k not in _IPYTHON_NAMES and not isinstance(v, types.ModuleType)
                      and (k in _TYPES or isinstance(v, _LITERALS)))
        namespace[_SEEN] = names
    unknown = [k for k in names if k not in _TYPES and k not in NOTEBOOK_PARAMETERS]
    if unknown:
        raise ConfigError("; ".join(_unknown(k, "notebook parameter") for k in unknown))
    params = namespace.get("params") or {}
    if isinstance(params, str):  # papermill -p params '{max_steps: 50}'
        params = yaml.safe_load(params) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"notebook parameter: params must be a mapping of parameter: value, got "
                          f"{type(params).__name__} {params!r}")
    out = {}
    for key in names:
        if key not in _TYPES or key == "backbone" or key not in namespace:
            continue
        value = namespace[key]
        if key in ("run", "mimic_dir") and value == "":
            continue
        tp = _TYPES[key]
        if tp is not str and isinstance(value, str) and value:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        elif tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigError(f"notebook parameter: {key} must be str, got {type(value).__name__} {value!r} "
                              f"(papermill -p reads numbers: pass text with -r {key} {value})")
        if key in params and params[key] != value:
            raise ConfigError(f"notebook parameter: {key} is given twice, {value!r} and {params[key]!r} in params")
        out[key] = value
    return {**out, **params}


def from_notebook(namespace: dict, *, record: bool = False, params_dir: Path | None = None) -> Config:
    """The run's configuration in a notebook's config cell: `config.from_notebook(globals())`.

    Every parameter of the notebook (its parameters cell, and any key of `Config` passed with
    papermill's `-p`) applies, validated: see `notebook_parameters`. `record=True` is for step
    01, which builds the data: it writes `<run>/config.json`. The later steps only read the run
    and leave that record as 01 wrote it (or write none). In a kernel, an icdlib error raised by
    this cell or a later one shows as its one line (`kernel.show_errors_in_one_line`)."""
    from icdlib.run.kernel import show_errors_in_one_line

    show_errors_in_one_line()
    if not isinstance(namespace.get("backbone"), str):
        raise ConfigError(f"notebook parameter: backbone must be the name of a params file, got "
                          f"{namespace.get('backbone')!r}")
    return load(namespace["backbone"], params=notebook_parameters(namespace), params_dir=params_dir, record=record)


def cli_overrides(cfg: Config, recorded: Config) -> list[str]:
    """`key=value` arguments for `python -m icdlib train -p ...` that turn `recorded` (the run's
    config.json) into `cfg`: every key whose value differs, except those naming the run folder and
    the params file (`backbone`, `run`, `output_root`), which `train` takes otherwise. Values are
    written so that `parse_override` reads them back equal."""
    out = []
    for key, value in cfg.to_dict().items():
        if key in ("backbone", "run", "output_root") or getattr(recorded, key) == value:
            continue
        if not isinstance(value, str):
            value = yaml.safe_dump(value, default_flow_style=True).split("\n...")[0].strip()
        out.append(f"{key}={value}")
    return out


def save(cfg: Config) -> Path:
    path = cfg.run_dir / "config.json"
    try:
        atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n")
    except OSError as e:
        raise unwritable(cfg.run_dir, e) from None
    return path


def from_json(path: Path) -> Config:
    """A Config recorded by `save` (checkpoints and model folders carry one)."""
    values = json.loads(Path(path).read_text())
    return Config(**{k: v for k, v in values.items() if k in _TYPES})


def located(cfg: Config, run_dir: Path) -> dict:
    """`output_root` and `run` that put the run of `cfg` (its config.json) in the folder `run_dir`:
    the folder given wins over the one config.json was written in (a copied or moved run)."""
    run_dir = Path(run_dir)
    return {"output_root": str(run_dir.parent), "run": cfg.run if cfg.run_name == run_dir.name else run_dir.name}


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` from the command line; the value is read as YAML (`lr=1.0e-3`, `resume=true`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if _TYPES.get(key) is str and not isinstance(value, str):
        value = raw
    return key.strip(), value
