"""`predict` suite: notes/s of `icdlib.predict` on the CPU with tiny models.

A model folder is written once per shape (a tiny backbone whose tokenizer is learnt on the twin's
notes, a fresh label-attention head); the weights are untrained, which does not change the
cost. Timed: `predict.load` of the folder, `Coder.predict` on full-length discharge
summaries (tokenising, segmenting, scoring, ranking the codes), batch size 8, and the same call
with `evidence=True` (the default method, AttInGrad: a forward and a backward pass per code, the
15 codes of each note batched) on the first `evidence_notes` of them.
"""

from __future__ import annotations

import time
from pathlib import Path

from icdlib.model import checkpoint
from icdlib import predict
from icdlib.data import preprocess
from icdlib.bench.harness import ensure_twin, summary
from icdlib.bench.train import bench_config, tiny_coder

SCALES = {"full": {"admissions": 400, "notes": 128, "evidence_notes": 16},
          "smoke": {"admissions": 60, "notes": 8, "evidence_notes": 2}}
SHAPES = {"demo shape (params/tiny.yaml: 2 × 256 tokens)": {"segment_length": 256, "max_segments": 2},
          "8 × 512 tokens": {"segment_length": 512, "max_segments": 8}}


def model_folder(twin: Path, scratch: Path, shape: dict) -> tuple[Path, list[str]]:
    """A saved model of that shape, and the twin's discharge summaries to code."""
    cfg = bench_config(twin, scratch, **shape)
    pre = preprocess.build(cfg, progress=False)
    folder = scratch / f"model-{shape['max_segments']}x{shape['segment_length']}"
    coder, tokenizer, backbone = tiny_coder(cfg, pre.notes, pre.labels, scratch / "backbone")
    checkpoint.save(folder, coder, cfg, pre.labels, backbone, tokenizer)
    return folder, pre.notes["text"].tolist()


def run(scale: str = "full", repeats: int = 3, warmup: int = 1, data_dir: Path | None = None,
        progress: bool = True, **_) -> dict:
    plan = SCALES[scale]
    twin = ensure_twin(Path(data_dir), plan["admissions"], progress)
    scratch = Path(data_dir) / "scratch-predict"
    rows = []
    for name, shape in SHAPES.items():
        folder, texts = model_folder(twin, scratch, shape)
        texts = texts[:plan["notes"]]
        explained = texts[:plan["evidence_notes"]]
        loads, rates, evidence_rates = [], [], []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            coder = predict.load(folder, device="cpu")
            t1 = time.perf_counter()
            tables = coder.predict(texts, top_k=15)
            t2 = time.perf_counter()
            assert len(tables) == len(texts) and all(len(t) == 15 for t in tables)
            tables = coder.predict(explained, top_k=15, evidence=True)
            t3 = time.perf_counter()
            assert all(len(t["evidence"]) == 15 for t in tables)
            if i >= warmup:
                loads.append(t1 - t0)
                rates.append(len(texts) / (t2 - t1))
                evidence_rates.append(len(explained) / (t3 - t2))
            if progress:
                print(f"[bench predict] {name}, {'warm-up' if i < warmup else f'run {i - warmup + 1}/{repeats}'}: "
                      f"load {t1 - t0:.2f} s, {len(texts) / (t2 - t1):.1f} notes/s, "
                      f"{len(explained) / (t3 - t2):.2f} notes/s with evidence", flush=True)
        rows.append({"case": f"{len(texts)} discharge summaries ({len(explained)} with evidence), "
                             f"{len(coder.labels):,} codes, top 15",
                     "system": f"icdlib.predict, {name}", "load_s": summary(loads), "notes_per_s": summary(rates),
                     "evidence_notes_per_s": summary(evidence_rates)})
    return {
        "description": "CPU, float32, batch size 8. Notes/s covers tokenising, segmenting, scoring and ranking "
                       "the codes of each note; with evidence, also the top spans of each of the 15 codes "
                       "(predict(..., evidence=True): AttInGrad, a forward and a backward pass per code); load is "
                       "reading the model folder (backbone, head, manifest).",
        "columns": [["notes_per_s", "notes/s", 1], ["evidence_notes_per_s", "notes/s with evidence", 2],
                    ["load_s", "load s", 2]],
        "rows": rows,
    }
