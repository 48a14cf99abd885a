# %% [markdown]
# # 04 · Evaluate
# Reads `01_preprocess/` and `03_train/predictions_*.npz`; writes `outputs/<run>/04_evaluate/`:
# `metrics.json` and `per_code.parquet`. A TF-IDF + linear baseline trained on the same split
# and label space is scored beside the model. The reference rows are published MIMIC-III
# results: a run on the synthetic twin is not comparable to them.

# %% tags=["parameters"]
backbone = "tiny"      # tiny | tiny-mistral | llama3 | mistral | seed-llama3
run = ""               # run folder name; empty means the backbone name
mimic_dir = ""         # MIMIC-III v1.4 folder; empty means the synthetic twin
params = {}            # any other parameter of params/<backbone>.yaml, e.g. {"max_steps": 50}

# %%
from icdlib import analysis, config, evaluate, report
cfg = config.load(backbone, run=run, mimic_dir=mimic_dir, params=params)
ev = evaluate.load(cfg)
results = evaluate.score_all(ev, cfg)
split = evaluate.eval_split(ev)
s = ev.splits[split]

# %% [markdown]
# ## Metrics (%), beside published MIMIC-III numbers

# %%
report.metrics_table(evaluate.systems(ev))

# %%
per_code = analysis.per_code(s.y_true, s.y_score, ev.labels, results["threshold"])
evaluate.write(cfg, ev, per_code)

# %% [markdown]
# ## Precision–recall, model against baseline

# %%
curves = {"icdlib": (s.y_true, s.y_score)}
curves.update({"TF-IDF baseline": (s.y_true, ev.baseline[split])} if ev.baseline else {})
report.pr_curve(curves)

# %% [markdown]
# ## Per code: quality against training frequency

# %%
report.per_code_vs_frequency(per_code)

# %%
report.f1_by_frequency_bucket(per_code)

# %% [markdown]
# ## Threshold and calibration (validation)

# %%
report.threshold_curve(ev.splits["val"].y_true, ev.splits["val"].y_score, results["threshold"])

# %%
report.calibration(s.y_true, s.y_score)
