# %% [markdown]
# # 03 · Train
# Reads `outputs/<run>/01_preprocess/`; writes `outputs/<run>/03_train/`: checkpoints (`last/`,
# `best/`), `history.csv` and the best model's `predictions_{val,test}.npz`. With `nproc` > 1
# the training runs under torchrun in a subprocess.

# %% tags=["parameters"]
backbone = "tiny"      # tiny | tiny-mistral | llama3 | mistral | seed-llama3
run = ""               # run folder name; empty means the backbone name
mimic_dir = ""         # MIMIC-III v1.4 folder; empty means the synthetic twin
params = {}            # any other parameter of params/<backbone>.yaml, e.g. {"max_steps": 50}

# %%
from icdlib import config, report, train
cfg = config.load(backbone, run=run, mimic_dir=mimic_dir, params=params)
cfg

# %%
history = train.run(cfg)

# %% [markdown]
# ## Learning curves
# Training loss, and the validation metrics at every evaluation; `best/` is the best `metric`.

# %%
report.history(history)

# %%
history.tail(10)
