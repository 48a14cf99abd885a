"""The benchmark suites and the datasets of the `preprocess` suite, by name, in the order
`benchmarks/RESULTS.md` lists them. A leaf module: `icdlib.bench` checks a request against them and
`icdlib.bench.results` orders the records by them, neither through the other."""

SUITES = ("preprocess", "metrics", "train", "predict", "twin", "gpu")
DATASETS = ("mimic3", "mimic4_icd9", "mimic4_icd10")
