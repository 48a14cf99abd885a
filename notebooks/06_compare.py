# %% [markdown]
# # 06 · Compare runs
# Reads the run folders named in `runs` (their 01, 03 and 04; the first is run A, and every other
# run is compared with it); writes `comparison.json` beside this report, by default in
# `<output_root>/comparisons/<A>_vs_<B>/`. Runs of another benchmark, dataset, split or label space,
# or scored on other admissions, are refused in one line naming the difference, and so is a run
# whose 04 has not scored its current model. Each model is scored on the shared test admissions
# (val when the runs have no test set) at the threshold its own 04 tuned on validation, over the
# label set its benchmark's published rows use.

# %% tags=["parameters"]
runs = []              # run folders, or run names under output_root; the first is run A
output_root = ""       # where run names are looked up; empty means the repository's outputs folder
out = ""               # the comparison's folder; empty means output_root/comparisons/A_vs_B
resamples = 1000       # bootstrap resamples of the admissions
seed = 0               # the bootstrap's random seed

# %%
from icdlib import compare
from icdlib.run import kernel
kernel.show_errors_in_one_line()
cmp = compare.load(runs, output_root=output_root)  # checked: one line for the first difference
result = compare.score(cmp, resamples=resamples, seed=seed)
written = compare.write(result, compare.destination(cmp.sides, out, output_root))

# %%
from icdlib.run import provenance
from icdlib.report import compare as report
report.provenance(provenance.collect(cmp.sides[0].cfg.run_dir, files=()))

# %% [markdown]
# ## The runs

# %%
report.table(compare.runs_table(cmp))

# %%
compare.scored(result)

# %%
report.table(compare.differences(cmp))

# %% [markdown]
# *How to read it:* the first table names each run (run A first) with its backbone, data, the
# threshold its 04 tuned and the commit 04 ran at; the second has one row per parameter whose value
# differs between the runs (their `config.json`, with the values step 03 trained with), every other
# parameter being the same. A difference in the numbers below comes from these settings, and from
# the luck of one training run.

# %% [markdown]
# ## Metrics with 95% intervals

# %%
report.table(compare.metrics_table(result))

# %% [markdown]
# *How to read it:* each run's metric (a fraction, 0–1) on the shared admissions, F1 at the run's own tuned
# threshold, with its 95% bootstrap interval in brackets: where the figure would fall on other test
# samples like this one (the admissions resampled with replacement). Overlapping intervals do not
# mean that the runs are alike: the paired differences below are the test.

# %% [markdown]
# ## Paired differences, run A − run B

# %%
report.table(compare.paired_table(result))

# %% [markdown]
# *How to read it:* run A's metric minus run B's, in the metric's unit, with the 95% interval of
# the difference when both models are scored on the same resampled admissions each time (what is
# easy or hard about an admission cancels out). A verdict is given only where the interval excludes
# 0; where it includes 0, these admissions cannot tell the two models apart on that metric.

# %% [markdown]
# ## Per code

# %%
compare.code_figure(cmp)

# %% [markdown]
# *How to read it:* one dot per code with a positive in the split: its F1 (left, each model at its
# tuned threshold) and AUPRC (right) under run B (x) and run A (y). Dots above the dashed diagonal
# are codes A does better, below it codes B does better; bigger dots have more positives. The codes
# furthest from the diagonal are named.

# %%
report.table(compare.code_table(result, "f1"))

# %%
report.table(compare.code_table(result, "auprc"))

# %% [markdown]
# *How to read it:* the codes whose F1 (first table) or AUPRC (second) differs most between the
# two models, either way, with their positives in the split (`support`) and training admissions
# (`n_train`). A large difference on a code with a support of 1 or 2 is one or two admissions: look
# at the support before reading much into it.

# %% [markdown]
# ## Where the models disagree

# %%
report.table(compare.disagreement_counts(result))

# %%
report.table(compare.disagreement_codes(result))

# %% [markdown]
# *How to read it:* the admission-code pairs one model assigns at its tuned threshold and the other
# does not. `true / all`: of the pairs only that model assigns, how many are codes the admission
# has. The model whose lone assignments are more often true gains from its extra codes; the second
# table lists the codes the models disagree on most often.

# %%
compare.summary(result)
