"""The synthetic MIMIC-III and MIMIC-IV twins: MIMIC-shaped files for tests and the demo, written
with the readers' own schemas (`icdlib.data`)."""
