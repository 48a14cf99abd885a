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
from icdlib.evaluation import analysis, evaluate
from icdlib.run import config
cfg = config.from_notebook(globals())
ev = evaluate.read(cfg)  # what 04 wrote, checked against the run's manifests
cfg, threshold, per_code = ev.cfg, ev.results["threshold"], ev.per_code  # cfg: with step 01's data parameters
split = evaluate.eval_split(ev)
s = ev.splits[split]

# %%
from icdlib.run import provenance
from icdlib.report import error_analysis as report
report.header(cfg, provenance.collect(cfg.run_dir))

# %% [markdown]
# ## Worst and best codes (F1, then AUPRC)
# Only codes with enough positives in the split are ranked (`analysis.MIN_SUPPORT`): a code seen once
# scores F1 0 or 1 on one admission, and a table of them changes with every training seed.

# %%
report.ranked_codes_note(per_code, analysis.MIN_SUPPORT, split)

# %%
report.table(analysis.worst_codes(per_code, n=10))

# %% [markdown]
# *How to read it:* the codes with the lowest F1 at the tuned threshold (ties: the lower AUPRC);
# "positives" is the code's admissions in the split, "train admissions" in training, "predicted" how often
# the model predicted it. F1 0 with "predicted" 0: the code's scores never reach the threshold; a low F1
# beside a high AUPRC: the model ranks the code well but the one threshold shared by all codes misses it.

# %%
report.table(analysis.best_codes(per_code, n=10))

# %% [markdown]
# *How to read it:* the codes with the highest F1, in the same columns. Codes with many training
# admissions are expected here; one with few train admissions has wording the model picks up easily, often
# a name the notes spell out.

# %% [markdown]
# ## Most frequent false positives and false negatives

# %%
false_pos, false_neg = analysis.frequent_errors(s.y_true, s.y_score, ev.labels, threshold)
report.table(false_pos)

# %% [markdown]
# *How to read it:* the codes most often predicted where they are not coded: "count" is the admissions of
# the split where the code's score reached the tuned threshold without the code being true, out of
# "predicted", those where it was predicted. A count close to "predicted" is a code predicted mostly wrongly;
# one whose sibling is in the category table below is a near miss.

# %%
report.table(false_neg)

# %% [markdown]
# *How to read it:* the codes most often missed: "count" is the admissions coded with the code whose score
# stayed under the threshold, out of "positives", those coded with it. Frequent codes lead both lists by
# sheer number: a count close to "positives" is a code missed most of the time, a small share a common one.

# %% [markdown]
# ## Confusions within a category, and accuracy at coarser levels
# A category is ICD-9's 3 digits or ICD-10's 3 characters; an ICD-10 label space is also scored by
# ICD-10-CM block and chapter (procedures: PCS body system and section).

# %%
report.table(analysis.category_confusions(s.y_true, s.y_score, ev.labels, threshold))

# %% [markdown]
# *How to read it:* each row is a pair within one category, a true code missed while the other code was
# predicted for the same admission (coded 428.30, predicted 428.0), with "count" the admissions where it
# happened. Pairs that recur are codes whose notes read alike: the last characters are the hard part.
# No row: no missed code had a wrong sibling predicted.

# %%
levels = analysis.category_level(s.y_true, s.y_score, ev.labels, threshold, dataset=cfg.dataset)
report.table(levels)

# %% [markdown]
# *How to read it:* micro precision, recall and F1 when a prediction counts as right if its group is;
# the rise from the full-code row mixes near misses with the merging itself (codes of a group count once).

# %%
near = analysis.near_misses(s.y_true, s.y_score, ev.labels, threshold)
report.table(near)

# %% [markdown]
# *How to read it:* each true code the model missed at the tuned threshold, by what it predicted in that
# code's category for the admission: a wrong code of it (a near miss: coded 428.30, predicted 428.0),
# only other true codes of it, or nothing of it. `share` is of all missed true codes; a large
# "category not predicted" share means the misses are not in the last characters of the code.

# %% [markdown]
# ## Errors against note length and number of codes

# %%
report.table(analysis.errors_by(s.notes, s.y_true, s.y_score, threshold, by="length"))

# %% [markdown]
# *How to read it:* the split's admissions in up to five groups of about equal size by note length in
# words (`bin`: the group's range); per group, the mean F1 of its admissions ("mean F1 per admission"; one with no
# code true or predicted left out), the micro-F1 of its codes pooled, and the mean false positives and
# false negatives per admission. F1 falling on the longest notes points at truncation (03: how much of a
# note the model reads); on the shortest, at notes that say too little.

# %%
report.table(analysis.errors_by(s.notes, s.y_true, s.y_score, threshold, by="n_codes"))

# %% [markdown]
# *How to read it:* the same, by the number of codes the admission carries (all of them, those outside
# the label space too). More codes leave more to miss: false negatives per admission rising with the bin while the F1s hold
# means recall is lost on the busy admissions, not precision.
#
# ## Do the explanations point at the evidence?
# Step 04 explained the model's true-positive codes with five methods (`icdlib.model.explain`: label
# attention, attention × input-gradient (AttInGrad, Edin et al. 2024), input × gradient, integrated
# gradients, occlusion of sentences) and compared each with the run's evidence spans: those the twin
# wrote beside each note, or MDACE's coder annotations on MIMIC-III (`-p evidence=mdace`).

# %%
report.overview(ev)

# %%
report.methods(ev)

# %%
report.family(ev, "plausibility")

# %%
report.family(ev, "faithfulness")

# %%
report.family(ev, "negation")

# %% [markdown]
# ## What the best method shows, admission by admission

# %%
report.worked_examples(cfg, ev, split)

# %%
report.summary(per_code=per_code, levels=levels, near_misses=near)
