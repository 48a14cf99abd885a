"""MIMIC-III and MIMIC-IV readers, the code systems (ICD-9, ICD-10-CM/PCS), splits, label spaces,
evidence spans, and step 01 that joins them into a run's dataset."""
