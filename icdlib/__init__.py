"""icdlib: automatic ICD-9 coding of MIMIC-III notes with LLM2Vec encoders.

The numbered notebooks narrate; this package computes. One module per concern: `config`,
`mimic`, `synth`, `splits`, `labels`, `preprocess`, `backbones`, `data`, `models`, `train`,
`checkpoint`, `metrics`, `baseline`, `report`, `analysis`, `predict`, `pipeline`, `cli`.
"""

__version__ = "0.1.0"
