"""Evaluation (step 04): the baseline, thresholds and metrics with intervals, the systems' names
(`names`), per-code analysis, and the explanation measurements against known evidence."""
