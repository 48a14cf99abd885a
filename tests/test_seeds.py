"""Several training seeds in one run (`seeds`): one model per seed, scored each, their mean ± sd."""

import json
import math

import numpy as np
import pytest
import torch

from icdlib import cli, pipeline
from icdlib.report import evaluate as evaluate_report
from icdlib.run import config
from icdlib.evaluation import evaluate
from icdlib.measure import metrics
from icdlib.model import train
from icdlib.run.errors import ConfigError, IcdlibError
from icdlib.run.runfolder import Run
from test_train import SMALL, Killed, small_cfg, trainable_weights

SEEDS = [1234, 7]  # the first is tiny.yaml's `seed`: the model must be the one a run without `seeds` trains
LORA = {**SMALL, "train_backbone": "lora", "baseline": False}


# ---------------------------------------------------------------- the parameter

@pytest.mark.parametrize("value, said", [
    ([0, 0], "override: seeds must be distinct non-negative integers, got [0, 0]"),
    ([3, -1], "override: seeds must be distinct non-negative integers, got [3, -1]"),
    ([0, True], "override: seeds must be list of int, got list [0, True]"),
    (["0", "1"], "override: seeds must be list of int, got list ['0', '1']"),
    (1, "override: seeds must be list of int, got int 1"),
])
def test_seeds_must_be_distinct_non_negative_integers(value, said):
    with pytest.raises(ConfigError) as e:
        config.resolve("tiny", {"seeds": value})
    assert str(e.value) == said


def test_seeds_from_the_command_line_and_papermill():
    assert config.resolve("tiny").seeds == [] and config.resolve("tiny").training_seeds == [1234]
    assert config.resolve("tiny", {"seeds": [5, 0]}).training_seeds == [5, 0]
    args = cli.parser().parse_args(["run", "--backbone", "tiny", "--seeds", "0", "1", "2"])
    assert cli.with_seeds({}, args.seeds) == {"seeds": [0, 1, 2]}
    assert cli.parser().parse_args(["train", "r", "--seeds", "3"]).seeds == [3]
    assert cli.with_seeds({"lr": 0.1}, None) == {"lr": 0.1}
    with pytest.raises(IcdlibError, match=r"^--seeds 0 1 and -p seeds=\[1, 0\] disagree: give one$"):
        cli.with_seeds({"seeds": [1, 0]}, [0, 1])
    assert config.parse_override("seeds=[0,1,2]") == ("seeds", [0, 1, 2])
    # papermill -p seeds "[0, 1]" binds text, read as YAML like any non-text parameter
    assert config.notebook_parameters({"backbone": "tiny", "seeds": "[0, 1]"}) == {"seeds": [0, 1]}
    assert "seeds" in train.PARAMS and "seeds" not in config.HOW_TO_RUN


# ---------------------------------------------------------------- spread and table, by hand

def test_seed_spread_is_mean_and_sample_sd_over_the_seeds_that_define_a_metric():
    per_seed = {"0": {"threshold": 0.3, "test_tuned": {"f1_micro": 0.5, "f1_macro": math.nan, "n_docs": 4,
                                                      "threshold": 0.3, "label_set": "x"}},
                "1": {"threshold": 0.4, "test_tuned": {"f1_micro": 0.7, "f1_macro": 0.2, "n_docs": 4,
                                                      "threshold": 0.4, "label_set": "x"}},
                "2": {"threshold": 0.2, "test_tuned": {"f1_micro": 0.6, "f1_macro": 0.4, "n_docs": 4,
                                                      "threshold": 0.2, "label_set": "x"}}}
    spread = evaluate.seed_spread(per_seed)
    assert set(spread) == {"test_tuned"} and set(spread["test_tuned"]) == {"f1_micro", "f1_macro"}
    micro, macro = spread["test_tuned"]["f1_micro"], spread["test_tuned"]["f1_macro"]
    assert micro["n"] == 3 and micro["mean"] == pytest.approx(0.6) and micro["sd"] == pytest.approx(0.1)
    # the NaN seed left out: mean 0.3 of 0.2 and 0.4, sd sqrt(((0.1)^2 + (0.1)^2) / 1)
    assert macro["n"] == 2 and macro["mean"] == pytest.approx(0.3) and macro["sd"] == pytest.approx(math.sqrt(0.02))
    one = evaluate.seed_spread({"0": per_seed["0"]})["test_tuned"]["f1_micro"]
    assert one == {"mean": 0.5, "sd": None, "n": 1}

    results = {"seeds": per_seed, "seed_spread": spread}
    table = evaluate_report.seed_spread_table(results, "test_tuned")
    assert table.index.tolist() == ["seed 0 (the model)", "seed 1", "seed 2", "mean ± sd (3 seeds)"]
    assert table.loc["seed 1", "F1 micro"] == "0.700" and table.loc["seed 0 (the model)", evaluate_report.TABLE_NAMES[
        "f1_macro"]] == "–"
    assert table.loc["mean ± sd (3 seeds)", "F1 micro"] == "0.600 ± 0.100"
    assert table.loc["mean ± sd (3 seeds)", evaluate_report.TABLE_NAMES["f1_macro"]] == "0.300 ± 0.141 (n=2)"
    assert table.loc["seed 2", "MAP"] == "–"  # not in these toy metrics
    shown = evaluate_report.seed_spread_table({"seeds": {"0": per_seed["0"]}})
    assert isinstance(shown, evaluate_report.Shown) and str(shown).startswith("One seed: no spread.")
    assert str(evaluate_report.seed_spread_table({})).startswith("One seed: no spread.")


# ---------------------------------------------------------------- a two-seed run

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny LoRA run trained without `seeds` and with SEEDS, each evaluated (04)."""
    root = tmp_path_factory.mktemp("seeds")
    one = small_cfg(root, "one", **LORA)
    two = small_cfg(root, "two", **LORA, seeds=SEEDS)
    for cfg in (one, two):
        train.fit(cfg, progress=False)
        evaluate.run(cfg)
    return one, two


def read_metrics(cfg) -> dict:
    return json.loads(Run.of(cfg).metrics.read_text())


def test_each_seed_trains_its_own_model_in_the_run_folder(runs):
    one, two = runs
    run, other = Run.of(two), Run(two.run_dir, "seed_7")
    a, b = trainable_weights(run.checkpoint("best")), trainable_weights(other.checkpoint("best"))
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    assert all(not torch.equal(a[k], b[k]) for k in a)  # the head and every LoRA matrix
    scores = {r: np.load(r.predictions("test"))["scores"] for r in (run, other)}
    assert not np.allclose(scores[run], scores[other])
    manifest = json.loads(run.manifest("03").read_text())
    assert manifest["params"]["seeds"] == SEEDS
    assert {"03_train/seed_7/best", "03_train/seed_7/predictions_test.npz"} <= set(manifest["outputs"])
    # the first seed's model is the model a run without `seeds` trains, to the bit
    for split in ("val", "test"):
        np.testing.assert_array_equal(np.load(Run.of(one).predictions(split))["scores"],
                                      np.load(run.predictions(split))["scores"])
    assert json.loads(Run.of(one).manifest("03").read_text())["params"]["seeds"] == []


def test_04_scores_every_seed_and_their_spread(runs):
    _, two = runs
    results = read_metrics(two)
    assert list(results["seeds"]) == ["1234", "7"]
    ev = evaluate.load(two)
    for key in evaluate.scored_keys(ev):  # the first seed's entries are the model's
        assert results["seeds"]["1234"][key] == results[key]
    # seed 7 by hand: its threshold tuned on its own val scores, then the metrics of its test scores
    other = Run(two.run_dir, "seed_7")
    val, test = (np.load(other.predictions(s))["scores"] for s in ("val", "test"))
    tuned = metrics.tune_threshold(ev.splits["val"].y_true, val)
    assert results["seeds"]["7"]["threshold"] == pytest.approx(tuned)
    mine = results["seeds"]["7"]["test_tuned"]
    hand = metrics.compute(ev.splits["test"].y_true, test, tuned)
    assert mine["f1_micro"] == pytest.approx(hand["f1_micro"]) and mine["map"] == pytest.approx(hand["map"])
    edin = metrics.compute(ev.splits["test"].y_true, test, tuned, label_set="edin")
    assert results["seeds"]["7"]["test_tuned_edin"]["map"] == pytest.approx(edin["map"])
    for metric in ("f1_micro", "map", "auroc_macro", "p_at_8"):
        x, y = results["test_tuned"][metric], mine[metric]
        spread = results["seed_spread"]["test_tuned"][metric]
        assert spread["n"] == 2 and x != y
        assert spread["mean"] == pytest.approx((x + y) / 2)
        assert spread["sd"] == pytest.approx(abs(x - y) / math.sqrt(2))  # ddof=1 of two values


def test_a_run_without_seeds_writes_what_it_wrote_before(runs):
    one, two = runs
    single, several = read_metrics(one), read_metrics(two)
    assert "seeds" not in single and "seed_spread" not in single
    assert set(several) - set(single) == {"seeds", "seed_spread"}
    for key in set(single) - {"provenance", "explanations"}:
        assert single[key] == several[key], key
    for method, got in single["explanations"]["methods"].items():  # all but the seconds each method took
        assert {k: v for k, v in got.items() if k != "seconds_per_note"} == \
            {k: v for k, v in several["explanations"]["methods"][method].items() if k != "seconds_per_note"}, method


def test_the_seeds_show_in_04_the_index_and_the_terminal(runs, capsys):
    _, two = runs
    results = read_metrics(two)
    table = evaluate_report.seed_spread_table(results, "test_tuned")
    assert table.index.tolist() == ["seed 1234 (the model)", "seed 7", "mean ± sd (2 seeds)"]
    assert table.loc["seed 7", "F1 micro"] == f"{results['seeds']['7']['test_tuned']['f1_micro']:.3f}"
    spread = results["seed_spread"]["test_tuned"]["map"]
    assert table.loc["mean ± sd (2 seeds)", "MAP"] == f"{spread['mean']:.3f} ± {spread['sd']:.3f}"

    page = pipeline.write_index(two).read_text()
    row = pipeline.seed_spread_rows(results)[0]
    assert row in page and page.index("icdlib (test, tuned threshold)") < page.index(row)
    assert f"<td colspan='2'>{spread['mean']:.3f} ± {spread['sd']:.3f}</td>" in row
    assert "mean ± sd over seeds 1234, 7 (test, each at its tuned threshold)" in row
    assert pipeline.seed_spread_rows(read_metrics(runs[0])) == []

    # the last fit of the run reported in the run's progress file, which `icdlib run` follows
    tail = pipeline.ProgressTail("03_train", Run.of(two).progress, since=0)
    lines = tail.poll()
    assert lines[0] == "[icdlib] 03_train fine-tuning seed 7 (2 of 2): 03_train/seed_7/"
    assert lines[1].startswith("[icdlib] 03_train training 6 steps from step 0")
    assert "val map" in lines[-1]


# ---------------------------------------------------------------- resume

def count_steps(monkeypatch) -> dict:
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def counted(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    return calls


def test_a_killed_multi_seed_run_resumes_where_it_stopped(runs, tmp_path, monkeypatch, capsys):
    """Killed in seed 7's fine-tuning (its step 5, after the step-3 save): the resume trains neither
    the model again nor seed 7's first 3 steps, ends with the uninterrupted run's seed 7, and may add
    a seed; a resume putting another seed first is refused."""
    _, whole = runs
    cfg = small_cfg(tmp_path, "killed", **LORA, seeds=SEEDS)
    calls = count_steps(monkeypatch)
    real = torch.optim.AdamW.step

    def dying(self, *a, **k):
        if calls["n"] == 6 + 4:  # the model's 6 steps, then seed 7's fifth
            raise Killed()
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying)
    with pytest.raises(Killed):
        train.fit(cfg, progress=False)
    killed = Run(cfg.run_dir, "seed_7")
    assert train.checkpoint.saved_step(killed.checkpoint("last")) == 3 and not killed.predictions("test").exists()
    model_predictions = {s: Run.of(cfg).predictions(s).stat().st_mtime_ns for s in ("val", "test")}

    calls = count_steps(monkeypatch)
    resumed = config.load("tiny", params={"output_root": str(tmp_path), "run": "killed", **LORA,
                                          "seeds": [*SEEDS, 9], "resume": True}, record=False)
    train.fit(resumed, progress=True)
    assert calls["n"] == 3 + 6  # seed 7 from its step 3, then the new seed 9 from the start
    out = capsys.readouterr().out
    assert "resuming at step 6 with seeds [1234, 7] → [1234, 7, 9]" in out
    assert "fine-tuning seed 7 (2 of 3): 03_train/seed_7/\ntraining 6 steps from step 3" in out
    assert "fine-tuning seed 9 (3 of 3): 03_train/seed_9/\ntraining 6 steps from step 0" in out
    assert {s: Run.of(cfg).predictions(s).stat().st_mtime_ns for s in ("val", "test")} == model_predictions
    a = trainable_weights(Run(whole.run_dir, "seed_7").checkpoint("last"))
    b = trainable_weights(killed.checkpoint("last"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(np.load(Run(whole.run_dir, "seed_7").predictions("test"))["scores"],
                                  np.load(killed.predictions("test"))["scores"])
    assert json.loads(Run.of(cfg).manifest("03").read_text())["params"]["seeds"] == [*SEEDS, 9]

    calls = count_steps(monkeypatch)
    train.fit(resumed, progress=False)  # everything finished: nothing trains, nothing is scored again
    assert calls["n"] == 0

    with pytest.raises(IcdlibError) as e:
        train.fit(config.load("tiny", params={"output_root": str(tmp_path), "run": "killed", **LORA,
                                              "seeds": [7, 1234], "resume": True}, record=False), progress=False)
    assert str(e.value) == ("resume=true but 03_train/last is the model of training seed 1234, this run asks "
                            "seeds=[7, 1234] (the first is the model's): put 1234 first, or set resume=false to "
                            "start over")


def test_a_training_seed_draws_its_own_initial_weights(runs):
    """LoRA's A matrices and the head's projections start from the training seed's draw (LoRA's B and
    the head's output weights start at zero whatever the seed)."""
    _, two = runs

    def initial(seed):
        prep = train.prepare(two, seed=seed)
        assert prep.seed == (two.seed if seed is None else seed)
        return {k: p.detach().clone() for k, p in prep.coder.named_parameters() if p.requires_grad}

    model, other, again = initial(None), initial(SEEDS[1]), initial(SEEDS[1])
    assert all(torch.equal(other[k], again[k]) for k in other)
    drawn = [k for k in model if "lora_A" in k or k in ("head.project.weight", "head.query.weight")]
    assert len(drawn) == 2 + 2 * 7  # two layers of seven projections, and the head's two
    assert all(not torch.equal(model[k], other[k]) for k in drawn)
