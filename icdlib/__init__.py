"""icdlib: automatic ICD-9 coding of MIMIC-III notes with LLM2Vec encoders.

The numbered notebooks narrate; this package computes. One module per concern: `config`,
`mimic`, `synth`, `splits`, `labels`, `preprocess`, `backbones`, `data`, `models`, `inference`,
`train`, `checkpoint`, `metrics`, `baseline`, `evaluate`, `report`, `analysis`, `predict`,
`runfolder` (the run folder's paths, atomic writes, its lock), `record` (step manifests and their
checks), `provenance`, `pipeline`, `compare` (runs side by side, notebook 06), `cli`. The steps
01→05, in order: `steps`.
"""

__version__ = "0.1.0"
