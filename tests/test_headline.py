"""The run's headline (the terminal's last line of `icdlib run`, and `reports/index.html`): metrics
only from a 04_evaluate that scored the current `03_train/best/`, and the data named from the run's
record (config.json), not from what the command line happened to say.

The finished run is conftest's `done`, test_run_record's too (01 → 03 → 04 through the step
functions); tests that change a run work on a copy of it.
"""

import dataclasses
import json
import re

from icdlib.run import config
from icdlib import pipeline, steps
from icdlib.report import shared
from icdlib.run.runfolder import Run
from test_run_record import copy_of


def recorded_as(cfg, **values):
    """Rewrite the copy's config.json as step 01 would have written it for a run with `values`."""
    path = Run.of(cfg).config
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2) + "\n")


def numbers(page: str) -> list[str]:
    return re.findall(r"<td>\d\.\d{3}</td>", page)


# ---------------------------------------------------------------- naming the data

def test_data_name_comes_from_the_run_record():
    cases = [({"dataset": "mimic3", "mimic_dir": "/data/mimic3"}, "MIMIC-III"),
             ({"dataset": "mimic3", "mimic_dir": ""}, "synthetic MIMIC-III twin"),
             ({"dataset": "mimic4_icd9", "mimic_dir": "/data/mimic4"}, "MIMIC-IV (ICD-9)"),
             ({"dataset": "mimic4_icd10", "mimic_dir": "/data/mimic4"}, "MIMIC-IV (ICD-10)"),
             ({"dataset": "mimic4_icd10", "mimic_dir": ""}, "synthetic MIMIC-IV twin (ICD-10)")]
    for values, name in cases:
        assert shared.recorded_data_name(values) == name, values
    assert shared.recorded_data_name({}) == "synthetic MIMIC-III twin"  # Config's defaults


def test_headline_and_index_name_the_recorded_data(done, tmp_path):
    """`-p dataset=mimic4_icd10` built the data; the command that prints the headline (`--only 04 05`)
    need not repeat it, and the Config it resolves says mimic3: the record wins, in both places."""
    cfg = copy_of(done, tmp_path)
    recorded_as(cfg, dataset="mimic4_icd10", mimic_dir="/data/mimic-iv-2.2")
    assert pipeline.headline(cfg).startswith("test (MIMIC-IV (ICD-10)): 95% bootstrap intervals; ")
    page = pipeline.write_index(cfg).read_text()
    assert "MIMIC-IV (ICD-10)" in page and "MIMIC-III" not in page
    recorded_as(cfg, dataset="mimic4_icd9", mimic_dir="")
    assert pipeline.headline(cfg).startswith("test (synthetic MIMIC-IV twin (ICD-9)): 95% bootstrap intervals; ")
    assert "synthetic MIMIC-IV twin (ICD-9)" in pipeline.write_index(cfg).read_text()


def test_headline_of_a_synthetic_mimic3_run(done):
    """The model and the frequency prior (this run trains no baseline and no MNTP arm), with intervals, and
    micro-F1 at the threshold tuned on val: the index's convention too (it printed the 0.5 row's before)."""
    m = json.loads(Run.of(done).metrics.read_text())
    lines = pipeline.headline(done).splitlines()
    assert lines[0] == ("test (synthetic MIMIC-III twin): 95% bootstrap intervals; micro-F1 at each system's threshold "
                        "tuned on val")
    assert [line.split("  ")[1] for line in lines[1:]] == ["icdlib", "frequency prior"]
    for line, system in zip(lines[1:], (m["test_tuned"], m["prior"]["test_tuned"])):
        for key, name in (("auroc_micro", "micro-AUROC"), ("map", "MAP"), ("f1_micro", "micro-F1")):
            lo, hi = system["ci95"][key]
            assert f"{name} {system[key]:.3f} [{lo:.3f}, {hi:.3f}]" in line, (key, line)
    page = pipeline.write_index(done).read_text()
    lo, hi = m["test_tuned"]["ci95"]["f1_micro"]
    assert f"<td>{m['test_tuned']['f1_micro']:.3f}</td><td class='ci'>[{lo:.3f}, {hi:.3f}]</td>" in page
    assert "frequency prior (test, tuned threshold)" in page and "<th colspan='2'>F1 micro</th>" in page  # 04's name


# ---------------------------------------------------------------- stale metrics

def test_metrics_of_an_earlier_model_are_not_the_headline(done, tmp_path):
    """`icdlib run --only 03` with another parameter: a new best/, and 04's metrics.json still the old
    model's. The headline and the index say 04 has not scored it, and how to run it, not the numbers."""
    cfg = copy_of(done, tmp_path)
    current = pipeline.write_index(cfg).read_text()
    assert len(numbers(current)) >= 5 and pipeline.headline(cfg).startswith("test (")
    steps.s03_train(dataclasses.replace(cfg, seed=cfg.seed + 1), progress=False)  # 03 rerun, 04 not
    command = (f"python -m icdlib run --backbone tiny --run copy --output-root {tmp_path} --only 04 05")
    line = pipeline.headline(cfg)
    assert line == (f"test (synthetic MIMIC-III twin): 04_evaluate has not scored the current model "
                    f"(03_train/best changed since it ran): run {command}"), line
    page = pipeline.write_index(cfg).read_text()
    assert not numbers(page) and "On the test split" not in page
    assert "04_evaluate has not scored the current model (03_train/best changed since it ran)" in page
    assert "python -m icdlib run --backbone tiny --run copy --output-root &lt;output_root&gt; --only 04 05" in page
    steps.s04_evaluate(cfg)  # 04 scores the new best/: numbers again
    assert pipeline.headline(cfg).startswith("test (synthetic MIMIC-III twin): 95% bootstrap intervals; ")
    assert len(numbers(pipeline.write_index(cfg).read_text())) >= 5


def test_metrics_without_a_record_of_their_model_are_not_the_headline(done, tmp_path):
    """metrics.json with no 04 manifest beside it (04 stopped after writing it, or an older icdlib)."""
    cfg = copy_of(done, tmp_path)
    Run.of(cfg).manifest("04").unlink()
    line = pipeline.headline(cfg)
    assert "micro-AUROC" not in line and "04_evaluate/metrics.json does not record which model it scored" in line
    assert line.endswith("--only 04 05")
    assert not numbers(pipeline.write_index(cfg).read_text())


def test_no_headline_metrics_before_04_has_run(done, tmp_path):
    cfg = copy_of(done, tmp_path)
    Run.of(cfg).metrics.unlink()
    assert pipeline.headline(cfg).startswith("no metrics (synthetic MIMIC-III twin): 04_evaluate has not run "
                                             "for this run: run python -m icdlib run")
    page = pipeline.write_index(cfg).read_text()
    assert "04_evaluate has not run for this run" in page and not numbers(page)
    fresh = config.resolve("tiny", {"output_root": str(tmp_path), "run": "nothing"})
    assert pipeline.headline(fresh) == ""  # no model yet: nothing to say
