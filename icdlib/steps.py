"""The five steps of a run, in order: one function each, named for its notebook.

    s01_preprocess(cfg)      -> Preprocessed   writes 01_preprocess/ (notes, labels, stats, manifest)
    s02_label_stats(cfg)     -> Preprocessed   reads 01 (checked); writes nothing
    s03_train(cfg)           -> history        writes 03_train/ (best/, last/, history, predictions, manifest)
    s04_evaluate(cfg)        -> Evaluation     writes 04_evaluate/ (metrics.json, per_code.parquet, manifest)
    s05_error_analysis(cfg)  -> Evaluation     reads 01, 03 and 04 (checked); writes nothing

Each step that writes holds the run folder's lock while it runs, checks the manifests of the
steps before it, and records its own (`icdlib.run.record`); the notebooks call these and display.
"""

from __future__ import annotations

from icdlib import twin
from icdlib.data import preprocess
from icdlib.evaluation.evaluate import read as s05_error_analysis
from icdlib.evaluation.evaluate import run as s04_evaluate
from icdlib.data.preprocess import read as s02_label_stats
from icdlib.model import backbone_files
from icdlib.run.config import Config


def s01_preprocess(cfg: Config, progress: bool = True) -> preprocess.Preprocessed:
    """Step 01 as a run starts it: the backbone's files checked first (a wrong path should cost
    seconds, not a preprocessing run), the synthetic twin made or reused when `mimic_dir` is empty
    (`twin.ensure`), then `preprocess.run`, which reads that folder."""
    backbone_files.check(cfg)
    twin.ensure(cfg, progress)
    return preprocess.run(cfg, progress)


def s03_train(cfg: Config, progress: bool = True):
    """Step 03, `icdlib.model.train.run`, imported when called: importing `steps` (notebook 01,
    `icdlib run`'s own process) loads neither torch nor transformers, 4 s of a process's start."""
    from icdlib.model import train

    return train.run(cfg, progress)


STEPS = {"01_preprocess": s01_preprocess, "02_label_stats": s02_label_stats, "03_train": s03_train,
         "04_evaluate": s04_evaluate, "05_error_analysis": s05_error_analysis}

__all__ = ["STEPS", "s01_preprocess", "s02_label_stats", "s03_train", "s04_evaluate", "s05_error_analysis"]
