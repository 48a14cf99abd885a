"""icdlib: automatic ICD coding of MIMIC-III and MIMIC-IV notes with LLM2Vec encoders.

The numbered notebooks narrate; this package computes. Its folders are its layers, lowest first; a
module imports only from its own layer or lower ones, and no import goes in a circle
(tests/test_layers.py checks both, on every import, also those inside functions):

    run/         config, the run folder and atomic writes, step manifests, provenance, errors, progress,
                 how a process ends (`process`)
    measure/     metrics, bootstrap intervals, explanation metrics: pure functions of arrays
    data/        MIMIC-III/IV readers, code systems, splits, label spaces, evidence spans, step 01
    twin/        the synthetic MIMIC-III and MIMIC-IV twins
    model/       backbones (their files checked without torch: `backbone_files`), bidirectional conversion,
                 quantization, the coder, tokenised batches, inference, checkpoints, MNTP, training (step 03),
                 explanations, a trained run (`trained`)
    evaluation/  the baseline, step 04 and the names of its systems, per-code analysis, explanations measured
    report/      a module per notebook (its figures, tables and closing sentences) and what they share
    top          `steps` (01→05, in order), `pipeline`, `compare` (runs side by side), `predict` (code new
                 notes), `cli` and `__main__` (`python -m icdlib`), `papermill_engine`, `bench/` (benchmarks)
"""

__version__ = "0.1.0"

from icdlib.run.kernel import quiet_tqdm_auto_without_ipywidgets  # noqa: E402
from icdlib.run.process import exit_without_collecting  # noqa: E402

quiet_tqdm_auto_without_ipywidgets()  # in a Jupyter kernel without ipywidgets: no TqdmWarning in any report
exit_without_collecting()  # a process that imported torch and transformers ends 1 s sooner (run.process)
