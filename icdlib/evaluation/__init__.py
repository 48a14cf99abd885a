"""Evaluation (step 04): the baseline, thresholds and metrics with intervals, per-code analysis, and
the explanation measurements against known evidence."""
