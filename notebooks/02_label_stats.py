# %% [markdown]
# # 02 · Label statistics
# Reads `outputs/<run>/01_preprocess/`; writes nothing. How long is the tail of codes, how long
# are the notes, and are the splits balanced?

# %% tags=["parameters"]
backbone = "tiny"      # tiny | tiny-mistral | llama3 | mistral | seed-llama3
run = ""               # run folder name; empty means the backbone name
mimic_dir = ""         # MIMIC-III v1.4 folder; empty means the synthetic twin
params = {}            # any other parameter of params/<backbone>.yaml, e.g. {"max_steps": 50}

# %%
from icdlib import config, preprocess, report
cfg = config.load(backbone, run=run, mimic_dir=mimic_dir, params=params)
data = preprocess.load(cfg.run_dir)
notes, labels = data.notes, data.labels

# %% [markdown]
# ## The long tail of codes

# %%
report.label_frequency(labels)

# %%
report.top_codes_plot(labels, n=20)

# %%
report.top_codes(labels, n=20, n_admissions=int((notes["split"] == "train").sum()))

# %% [markdown]
# ## Codes per admission and note lengths

# %%
report.codes_per_admission(notes)

# %%
report.note_lengths(notes)

# %%
report.kind_share(notes, labels)

# %% [markdown]
# ## Splits: balance of frequent codes and codes never seen in training

# %%
report.split_balance(notes, labels.nlargest(10, "n_train")["code"].tolist())

# %%
report.unseen_in_train(notes)
