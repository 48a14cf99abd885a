# %% [markdown]
# # 01 · Preprocess
# Reads the MIMIC-III v1.4 tables, or with `dataset: mimic4_icd9 | mimic4_icd10` MIMIC-IV v2.2's
# `hosp/` and MIMIC-IV-Note's `note/discharge` (`note_dir`), as Edin et al. prepared them; an
# empty `mimic_dir` generates the dataset's synthetic twin. Writes `outputs/<run>/01_preprocess/`:
# one row per admission with its discharge summary, codes and split (`notes.parquet`), and the
# label space with the dictionary titles (`labels.parquet`). Below: what made this
# report, and the parameters that differ from `params/<backbone>.yaml`; the fingerprints of the
# files written are at the end.

# %% tags=["parameters"]
backbone = "tiny"      # params/<name>.yaml: tiny, tiny-mistral, llama3, mistral, seed-llama3, sheared-llama,
#                        biomistral-mntp, qwen3, medgemma
run = ""               # run folder name; empty means the backbone name
mimic_dir = ""         # MIMIC-III v1.4 (or MIMIC-IV v2.2) folder; empty means the synthetic twin
params = {}            # other parameters, e.g. {"max_steps": 50}; with papermill also -p max_steps 50

# %%
from icdlib import steps
from icdlib.run import config
from icdlib.data import preprocess
cfg = config.from_notebook(globals(), record=True)  # step 01 records the run's config.json

# %%
from icdlib.run import provenance
from icdlib.report import preprocess as report
report.header(cfg, provenance.collect(cfg.run_dir, files=()))

# %% [markdown]
# ## What was kept, what was dropped, and why
# Every filter is counted: notes flagged ISERROR (MIMIC-III), notes without an admission, empty or
# repeated codes, codes of the other ICD version (MIMIC-IV), admissions without codes or without a
# discharge summary, rare codes (Edin's presets), IDs missing from split files.

# %%
result = steps.s01_preprocess(cfg)  # the twin made first when mimic_dir is empty
report.table(preprocess.stats_table(result.stats))

# %% [markdown]
# ## Evidence spans
# Where a code's support is written (`01_preprocess/evidence.parquet`, offsets into the text): the
# synthetic twin's own spans, or MDACE's coder annotations with `evidence: mdace` on MIMIC-III,
# carried through the note join and the text cleaning; spans the run cannot place are counted.

# %%
preprocess.evidence_note(cfg, result)

# %% [markdown]
# ## Split and benchmark
# What the split is, how many val admissions share a patient with train, and this run's counts
# beside the published counts of each benchmark preset of the dataset (`benchmark` sets split and labels).

# %%
preprocess.split_notes(cfg, result)

# %%
preprocess.benchmark_check(cfg, result)

# %% [markdown]
# ## A few admissions
# Ids and codes only when `share_safe` is on (always on for real MIMIC unless turned off); otherwise also
# the note's first words from its Chief Complaint on (every note opens with the same de-identified header).

# %%
report.table(preprocess.sample(result.notes, share_safe=cfg.share_safe_on))

# %%
report.table(result.labels.head(10))

# %%
report.summary(notes=result.notes, labels=result.labels, data=provenance.collect(cfg.run_dir)["data"])
