# %% [markdown]
# # 04 · Evaluate
# Reads `01_preprocess/` and `03_train/predictions_*.npz`; writes `outputs/<run>/04_evaluate/`:
# `metrics.json` and `per_code.parquet`. Two reference systems are scored beside the model, on the
# same split and label space: the **frequency prior**, which gives every admission each code's share
# of the train admissions (it ignores the note: the floor a coder must clear), and the **TF-IDF
# low-rank baseline** (`icdlib.evaluation.baseline`), a linear model on TF-IDF features of word unigrams and
# hashed bigrams whose weight matrix is low-rank (features → 256 dimensions → codes), trained for all
# codes at once with SGD. Published reference rows appear only when the run
# reproduces their benchmark on real data (`benchmark: caml_full` or `seed` on MIMIC-III,
# `edin_mimic4_icd9` or `edin_mimic4_icd10` on MIMIC-IV); none for the synthetic twins, whose
# numbers are not comparable to them.

# %% tags=["parameters"]
backbone = "tiny"      # params/<name>.yaml: tiny, tiny-mistral, llama3, mistral, seed-llama3, sheared-llama,
#                        biomistral-mntp, qwen3, medgemma
run = ""               # run folder name; empty means the backbone name
mimic_dir = ""         # MIMIC-III v1.4 (or MIMIC-IV v2.2) folder; empty means the synthetic twin
params = {}            # other parameters, e.g. {"max_steps": 50}; with papermill also -p max_steps 50

# %%
from icdlib.run import config
from icdlib.evaluation import evaluate
from icdlib.report import evaluate as report
cfg = config.from_notebook(globals())
ev = evaluate.run(cfg)  # scores, trains the baseline, writes metrics.json, per_code.parquet, manifest.json
cfg, results, per_code = ev.cfg, ev.results, ev.per_code  # cfg: with step 01's data parameters
split = evaluate.eval_split(ev)
s = ev.splits[split]

# %%
from icdlib.run import provenance
from icdlib.report import evaluate as report
report.header(cfg, provenance.collect(cfg.run_dir))

# %% [markdown]
# ## Metrics
# Each system's `@tuned` row is at its own threshold tuned on validation for micro-F1 (the value
# follows); the ranking metrics (AUROC, AUPRC, P@k, R-precision, MAP) do not depend on it, so the
# model's `@0.5` row under it holds only what the fixed threshold 0.5 changes: the F1s. Every metric
# is a fraction (0–1), as in metrics.json; published numbers (papers give %) are divided by 100.
# The caption gives the split scored, its admissions (`n_docs`), the codes ranked (`n_labels`, with
# their label set), the labels with a positive and a negative there (`n_labels_scored`, those of
# the macro AUROC/AUPRC), and whether published numbers of the run's benchmark are shown (only when
# the run reproduces a benchmark on real data). Rows rank every code of the label space, except for
# Edin et al.'s benchmarks (`edin_*`): there, as in their code, only the codes with a positive in the
# split (AUROC over every code); metrics.json holds both (`test`, `test_edin`, ...).
# With `mntp_compare` the model is named for its arm (`icdlib without MNTP`, say) and the other arm's
# rows (`icdlib with MNTP`) are the same fine-tuning started from the backbone after the MNTP stage (or
# without it).

# %%
report.metrics_styled(evaluate.systems(ev), evaluate.compared(ev, split), split, cfg.benchmark, cfg.synthetic,
                       cfg.dataset)

# %% [markdown]
# *Which macro-F1 is which:* `F1 macro (mean per label, Edin)` is the mean of the per-code F1 over
# the codes with a positive in the split (Edin et al. 2023; `f1_macro` in metrics.json);
# `F1 macro (CAML: of macro-P and macro-R)` is the F1 of the macro precision and the macro recall over
# all codes of the label space (CAML's code, also used by LAAT, MSMN and PLM-ICD; `f1_macro_caml`).
# They are different figures (Edin et al. found the CAML one about twice the mean on MIMIC-III full);
# published rows report only the CAML one. P@k, MAP and R-precision average over the same
# admissions: those with at least one code in the label space. On this run:

# %%
report.macro_f1_gap(results[f"{split}_tuned"], split)

# %% [markdown]
# ## How sure: 95% bootstrap intervals
# The reported split's admissions are resampled with replacement (`bootstrap` resamples, the same
# draws for every system) and every metric is recomputed on each resample; the interval holds the
# middle 95% of the values. `bootstrap: 0` turns this off.

# %%
report.table(report.interval_table(evaluate.systems(ev)))

# %% [markdown]
# *How to read it:* each cell is the metric on the whole split and, in brackets, the range within which
# it fell in 95% of the resamples: how far the figure could move with another sample of admissions of
# the same kind. Two systems whose intervals overlap can still differ reliably; the next table tests
# that directly. The intervals cover the admissions, not training: another seed moves the model too.
# Macro figures shift under resampling (a code whose only positive admissions a resample leaves out
# drops out of that resample's average, or counts as zero in CAML's), so their value can sit outside
# its interval, above or below: read those intervals as rough.
# A dash: the metric is undefined on some resample (a code set without a positive, say), or, in the
# `@0.5` row, a ranking metric (the row above gives it).

# %%
report.paired_styled(results)

# %% [markdown]
# *How to read it:* each row is the model (at its tuned threshold) minus another system (at its own),
# in the metric's unit, on the same resampled admissions each time: positive means the model is ahead.
# A bold cell's interval excludes 0, the only case where the summary below calls the model better or
# worse; the other differences are within what resampling the admissions produces.

# %% [markdown]
# ## What the label space leaves out
# An admission keeps all its codes in `notes.parquet`; only those of the run's label space are targets.

# %%
from icdlib.evaluation import analysis
report.label_space_dropped(analysis.outside_label_space(s.notes, ev.labels), split, len(ev.labels))

# %% [markdown]
# *How to read it:* the code assignments (admission, code) of the scored split whose code is not a label
# (unseen in train with `labels: observed`, dropped by a rare-code filter, or outside the top 50) are
# neither hits nor misses: every recall, F1 and ranking figure above is over the assignments left, so a
# large share outside means those figures describe a smaller task than the split's full coding.

# %% [markdown]
# ## Across training seeds
# With `seeds` (`python -m icdlib run ... --seeds 0 1 2`), step 03 fine-tuned one model per seed from
# the same backbone, split and label space; the first seed's is the run's model (the rows above), the
# others are in `03_train/seed_<s>/`. Each is scored on the reported split at its own threshold tuned on
# validation, under the label set of the table above (metrics.json: `seeds`, `seed_spread`).

# %%
report.table(report.seed_spread_table(results, f"{split}_tuned" + evaluate.compared_suffix(ev)))  # reading: its note

# %% [markdown]
# ## What the split is
# Which admissions were scored, and how far val and test are from train (patients shared).

# %%
from icdlib.data import preprocess
preprocess.split_notes(cfg, preprocess.read(cfg))

# %% [markdown]
# ## Precision–recall, model against the reference systems

# %%
curves = {report.model_name(results): (s.y_true, s.y_score), "frequency prior": (s.y_true, ev.prior[split])}
curves.update({"TF-IDF low-rank baseline": (s.y_true, ev.baseline[split])} if ev.baseline else {})
report.pr_curve(curves)

# %% [markdown]
# *How to read it:* precision against recall over all (admission, code) pairs of the reported
# split (test when there is one) as the threshold sweeps from high to low. Higher and further right is
# better; AP in the legend is the area under the curve (micro-AUPRC). Where the model's curve lies
# below another's, that system ranks the right codes higher at that recall; the frequency prior's curve
# is the floor any system that reads the note should clear.

# %% [markdown]
# ## Per code: quality against training frequency

# %%
report.per_code_vs_frequency(per_code)

# %% [markdown]
# *How to read it:* one dot per code with a positive in the reported split (the same codes in both
# panels): its AUPRC (left) and its F1 at the tuned threshold (right) against the number of training
# admissions with the code (log scale); the red line is the mean per
# frequency bin. A line rising to the right says rare codes are learned worse, the usual pattern in
# ICD coding and what macro metrics expose.

# %%
report.f1_by_frequency_bucket(per_code)

# %% [markdown]
# *How to read it:* the mean F1 of the codes in each training-frequency bucket (n: codes of the
# bucket with a positive in the reported split, as in the figure above). The left buckets are the rare codes; a bar near zero there means those codes are practically
# never predicted right.

# %% [markdown]
# ## Threshold (validation) and calibration (reported split)

# %%
report.threshold_curve(ev.splits["val"].y_true, ev.splits["val"].y_score, results["threshold"])

# %% [markdown]
# *How to read it:* micro precision (green), recall (orange) and F1 (blue) on the validation split
# as the decision threshold moves. The black line is the threshold tuned there for micro-F1 (and
# applied to test), the dotted grey one 0.5. A tuned threshold far below 0.5 means the scores are
# small: at 0.5 the model would predict almost no code.

# %%
report.calibration(s.y_true, s.y_score)

# %% [markdown]
# *How to read it:* top, for (admission, code) pairs grouped by predicted score, the share that are
# true codes against the mean score; on the diagonal a score of 0.3 means a 30 % chance. Points below
# it are over-confident, above it under-confident. Bottom, the pairs per bin (log scale): most scores
# are near 0, so the points on the right rest on few pairs.

# %%
report.summary(metrics=results, per_code=per_code, synthetic=cfg.synthetic, dataset=cfg.dataset)
