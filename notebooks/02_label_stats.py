# %% [markdown]
# # 02 · Label statistics
# Reads `outputs/<run>/01_preprocess/`; writes nothing. How long is the tail of codes, how long
# are the notes, and are the splits balanced?

# %% tags=["parameters"]
backbone = "tiny"      # params/<name>.yaml: tiny, tiny-mistral, llama3, mistral, seed-llama3, sheared-llama,
#                        biomistral-mntp, qwen3, medgemma
run = ""               # run folder name; empty means the backbone name
mimic_dir = ""         # MIMIC-III v1.4 (or MIMIC-IV v2.2) folder; empty means the synthetic twin
params = {}            # other parameters, e.g. {"max_steps": 50}; with papermill also -p max_steps 50

# %%
from icdlib.run import config
from icdlib.data import preprocess
from icdlib.report import label_stats as report
cfg = config.from_notebook(globals())
data = preprocess.read(cfg)  # step 01's output, checked against its manifest
notes, labels = data.notes, data.labels

# %%
from icdlib.run import provenance
from icdlib.report import label_stats as report
report.header(cfg, provenance.collect(cfg.run_dir))

# %% [markdown]
# ## The long tail of codes

# %%
report.label_frequency(labels)

# %% [markdown]
# *How to read it:* the codes ranked from most to least frequent (x) against the number of training
# admissions that carry each (y), both on log scales. A long, falling line is the long tail:
# a few codes are common, most are rare. The dotted and dashed lines mark 10 and 100 admissions and
# the share of codes at or below them: those codes have few examples to learn from, and macro
# metrics weigh them as much as the common ones.

# %%
report.top_codes_plot(labels, n=20)

# %% [markdown]
# *How to read it:* the 20 codes most often assigned in training (blue: diagnoses, orange: procedures),
# bar length = training admissions with the code. These codes carry most of the code assignments,
# so they dominate micro-averaged metrics: a model right on them alone already scores well on micro-F1.

# %%
report.table(report.top_codes(labels, n=20, n_admissions=int((notes["split"] == "train").sum())))

# %% [markdown]
# ## Codes per admission and note lengths

# %%
report.codes_per_admission(notes)

# %% [markdown]
# *How to read it:* how many codes each admission carries (all splits), with the mean (solid) and
# median (dashed). An admission with fewer than k codes caps P@k below 1 even for a perfect model, so
# P@8 and P@15 are read against this distribution.

# %%
report.note_lengths(notes)

# %% [markdown]
# *How to read it:* words per discharge summary; the solid line is the median, the dashed the 95th
# percentile. The model reads at most `max_segments` × `segment_length` tokens of a note (a word is one
# or more tokens): notes longer than that lose a part (`truncation` says which); the next figure counts them.

# %%
from icdlib.model import backbones, encoding
train_texts = notes.loc[notes["split"] == "train", "text"].tolist()
tokenizer, budget = backbones.tokenizer_without_training(cfg, train_texts)  # tiny: the BPE step 03 learns from them
full = encoding.tokenize(notes["text"].tolist(), tokenizer, 0).full_lengths
report.token_lengths(notes, full, budget)

# %% [markdown]
# *How to read it:* tokens per note before truncation, one line per split, with the budget the
# model reads (`max_segments` × the segment's note tokens) dashed. Notes right of the dashed line lose
# tokens: their end with `truncation: head`, their start with `tail`, their middle with `head_tail`. Step 03
# reports the exact shares in its truncation table.

# %%
report.kind_share(notes, labels)

# %% [markdown]
# *How to read it:* of all code assignments in each split, the share that are diagnoses (blue) and
# procedures (orange). The bars should look alike from split to split; a split with a clearly
# different mix was drawn from different admissions.

# %% [markdown]
# ## Splits: balance of frequent codes and codes never seen in training

# %%
report.split_balance(notes, labels.nlargest(10, "n_train")["code"].tolist())

# %% [markdown]
# *How to read it:* for the 10 most frequent training codes, the share of each split's admissions
# that carry the code. A code's bars should be of about the same height; one much rarer (or
# commoner) in test than in train makes its test metrics noisy. On small splits a difference of a
# few admissions is expected.

# %%
report.table(report.unseen_in_train(notes))

# %%
report.summary(notes=notes, labels=labels)
