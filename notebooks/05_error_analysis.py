# %% [markdown]
# # 05 · Error analysis
# Reads `01_preprocess/`, `03_train/` and `04_evaluate/`; writes nothing. Which codes fail, which
# are confused with their neighbours, and which notes are hard.

# %% tags=["parameters"]
backbone = "tiny"      # params/<name>.yaml: tiny, tiny-mistral, llama3, mistral, seed-llama3, sheared-llama,
#                        biomistral-mntp, qwen3, medgemma
run = ""               # run folder name; empty means the backbone name
mimic_dir = ""         # MIMIC-III v1.4 (or MIMIC-IV v2.2) folder; empty means the synthetic twin
params = {}            # other parameters, e.g. {"max_steps": 50}; with papermill also -p max_steps 50

# %%
from icdlib import analysis, config, evaluate, explain
cfg = config.from_notebook(globals())
ev = evaluate.read(cfg)  # what 04 wrote, checked against the run's manifests
cfg, threshold, per_code = ev.cfg, ev.results["threshold"], ev.per_code  # cfg: with step 01's data parameters
split = evaluate.eval_split(ev)
s = ev.splits[split]

# %%
from icdlib import provenance, report
report.header(cfg, provenance.collect(cfg.run_dir))

# %% [markdown]
# ## Worst and best codes (F1, then AUPRC)

# %%
analysis.worst_codes(per_code, n=15)

# %%
analysis.best_codes(per_code, n=15)

# %% [markdown]
# ## Most frequent false positives and false negatives

# %%
false_pos, false_neg = analysis.frequent_errors(s.y_true, s.y_score, ev.labels, threshold)
false_pos

# %%
false_neg

# %% [markdown]
# ## Confusions within a category, and accuracy at coarser levels
# A category is ICD-9's 3 digits or ICD-10's 3 characters; an ICD-10 label space is also scored by
# ICD-10-CM block and chapter (procedures: PCS body system and section).

# %%
analysis.category_confusions(s.y_true, s.y_score, ev.labels, threshold)

# %%
levels = analysis.category_level(s.y_true, s.y_score, ev.labels, threshold, dataset=cfg.dataset)
levels

# %% [markdown]
# *How to read it:* micro precision, recall and F1 when a prediction counts as right if its group is;
# the rise from the full-code row mixes near misses with the merging itself (codes of a group count once).

# %%
near = analysis.near_misses(s.y_true, s.y_score, ev.labels, threshold)
near

# %% [markdown]
# *How to read it:* each true code the model missed at the tuned threshold, by what it predicted in that
# code's category for the admission: a wrong code of it (a near miss: coded 428.30, predicted 428.0),
# only other true codes of it, or nothing of it. `share` is of all missed true codes; a large
# "category not predicted" share means the misses are not in the last characters of the code.

# %% [markdown]
# ## Errors against note length and number of codes

# %%
analysis.errors_by(s.notes, s.y_true, s.y_score, threshold, by="length")

# %%
analysis.errors_by(s.notes, s.y_true, s.y_score, threshold, by="n_codes")

# %% [markdown]
# ## What the label attention reads for the split's most frequent code
# Token highlights on one note (off when `share_safe` is on: no note text in shared reports).

# %%
explain.highlight(cfg, s.notes, s.y_true, ev.labels)

# %%
report.summary(per_code=per_code, levels=levels, near_misses=near)
