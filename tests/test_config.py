import json

import pytest

from icdlib.run import config
from icdlib.run.errors import ConfigError
from icdlib.run.runfolder import RunFolderError


@pytest.fixture
def params_dir(tmp_path):
    d = tmp_path / "params"
    d.mkdir()
    (d / "good.yaml").write_text('lr: 1.0e-3\nbatch_size: 2\nnote_categories: ["Discharge summary"]\nhead: mean\n')
    return d


def test_defaults_file_and_overrides_layer(params_dir):
    cfg = config.resolve("good", {"batch_size": 7, "lr": 1}, params_dir)
    assert cfg.batch_size == 7 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.head == "mean" and cfg.epochs == config.Config().epochs
    assert cfg.run_name == "good"


def test_shipped_params_files_all_validate():
    names = config.backbones()
    assert {"tiny", "tiny-mistral", "llama3", "mistral", "seed-llama3"} <= set(names)
    for name in names:
        cfg = config.resolve(name)
        assert cfg.backbone == name
    assert config.resolve("llama3").model_path == "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp"
    assert config.resolve("mistral").model_path == "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp"
    seed = config.resolve("seed-llama3")
    assert (seed.split, seed.labels, seed.note_descriptions, seed.max_segments, seed.segment_length) == (
        "seed", "all", ["Report"], 1, 1024)


def test_seed_llama3_names_the_seed_preset_and_keeps_its_other_values(tmp_path):
    """The original project's recipe is benchmark seed (its reference row shows in 04); the preset sets
    what the file set by hand before (split seed, labels all), so every other value is unchanged."""
    assert set(config.BENCHMARKS["seed"]) == {"split", "labels", "min_count"}  # no dataset, text cleaning
    seed = config.resolve("seed-llama3")
    assert (seed.benchmark, seed.split, seed.labels, seed.min_count, seed.text_cleaning) == (
        "seed", "seed", "all", 1, "none")
    by_hand = config.read_params_file(config.PARAMS_DIR / "seed-llama3.yaml")
    assert by_hand.pop("benchmark") == "seed"
    (tmp_path / "seed-llama3.yaml").write_text(json.dumps({**by_hand, "split": "seed", "labels": "all"}))
    before = config.resolve("seed-llama3", params_dir=tmp_path)
    assert before.benchmark == "none"
    assert {k: v for k, v in vars(seed).items() if k != "benchmark"} == \
        {k: v for k, v in vars(before).items() if k != "benchmark"}
    with pytest.raises(ConfigError, match=r"^benchmark=seed sets split=seed, but split=patient is given"):
        config.resolve("seed-llama3", {"split": "patient"})
    assert config.resolve("seed-llama3", {"benchmark": "none", "split": "patient"}).split == "patient"


def test_unknown_backbone_lists_choices(params_dir):
    with pytest.raises(ConfigError, match=r"unknown backbone 'nope'; choices: good"):
        config.resolve("nope", params_dir=params_dir)


def test_unknown_key_is_named(params_dir):
    with pytest.raises(ConfigError, match=r"override: unknown parameter 'batchsize'"):
        config.resolve("good", {"batchsize": 3}, params_dir)


@pytest.mark.parametrize("key,value,message", [
    ("lr", "5e-5", r"lr must be float, got str '5e-5' \(YAML reads 5e-5 as text"),
    ("batch_size", 2.5, r"batch_size must be int, got float 2.5"),
    ("resume", 1, r"resume must be bool, got int 1"),
    ("note_categories", "Discharge summary", r"note_categories must be list of str"),
    ("head", "max", r"head must be one of label_attention, mean; got 'max'"),
])
def test_wrong_types_and_choices(params_dir, key, value, message):
    with pytest.raises(ConfigError, match=message):
        config.resolve("good", {key: value}, params_dir)


def test_malformed_yaml_names_the_file_and_line(params_dir):
    (params_dir / "bad.yaml").write_text("lr: 1.0e-3\nbatch_size: [2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        config.resolve("bad", params_dir=params_dir)


def test_yaml_float_trap_in_a_file(params_dir):
    (params_dir / "trap.yaml").write_text("lr: 5e-5\n")
    with pytest.raises(ConfigError, match=r"params/trap.yaml: lr must be float"):
        config.resolve("trap", params_dir=params_dir)


def test_load_writes_config_json_and_empty_means_unset(params_dir, tmp_path):
    cfg = config.load("good", run="", mimic_dir="", params={"output_root": str(tmp_path / "out"), "seed": 3},
                      params_dir=params_dir)
    recorded = json.loads((tmp_path / "out" / "good" / "config.json").read_text())
    assert recorded["seed"] == 3 and recorded["batch_size"] == 2 and recorded["mimic_dir"] == ""
    assert config.from_json(tmp_path / "out" / "good" / "config.json") == cfg


def test_share_safe_defaults_on_for_real_mimic(params_dir):
    assert config.resolve("good", params_dir=params_dir).share_safe_on is False
    assert config.resolve("good", {"mimic_dir": "/data/mimic"}, params_dir).share_safe_on is True
    assert config.resolve("good", {"mimic_dir": "/data/mimic", "share_safe": "off"}, params_dir).share_safe_on is False


def test_parse_override_reads_yaml_values():
    assert config.parse_override("lr=1.0e-3") == ("lr", 1.0e-3)
    assert config.parse_override("resume=true") == ("resume", True)
    assert config.parse_override("note_categories=[Radiology]") == ("note_categories", ["Radiology"])
    assert config.parse_override("model_path=123") == ("model_path", "123")
    with pytest.raises(ConfigError, match="key=value"):
        config.parse_override("lr")


# ---- values within range (issue 11): each refused in one line naming the key

@pytest.mark.parametrize("key,value,rule", [
    ("batch_size", -4, "at least 1"), ("batch_size", 0, "at least 1"), ("segment_length", 0, "at least 1"),
    ("epochs", 0, "at least 1"), ("grad_accum", 0, "at least 1"), ("max_segments", 0, "at least 1"),
    ("eval_every", 0, "at least 1"), ("save_every", -1, "at least 1"), ("tiny_hidden", 0, "at least 1"),
    ("tiny_layers", 0, "at least 1"), ("tiny_heads", 0, "at least 1"), ("tiny_vocab", 0, "at least 1"),
    ("lora_r", 0, "at least 1"), ("lora_alpha", 0, "at least 1"), ("attention_dim", 0, "at least 1"),
    ("nproc", 0, "at least 1"), ("synth_admissions", 0, "at least 1"),
    ("max_steps", 0, r"-1 \(train for epochs\) or at least 1"),
    ("max_steps", -2, r"-1 \(train for epochs\) or at least 1"),
    ("warmup_steps", -1, "at least 0"), ("patience", -1, "at least 0"), ("seed", -1, "at least 0"),
    ("synth_seed", -3, "at least 0"), ("num_workers", -1, "at least 0"), ("min_count", -1, "at least 0"),
    ("lr", 0.0, "positive"), ("head_lr", -1.0e-3, "positive"), ("weight_decay", -0.1, "at least 0"),
    ("clip", -1.0, "at least 0"), ("pos_weight", -2.0, "at least 0"), ("bootstrap", -1, "at least 0"),
    ("lora_dropout", 1.0, r"in \[0, 1\)"), ("lora_dropout", -0.1, r"in \[0, 1\)"),
    ("threshold", 0.0, r"in \(0, 1\)"), ("threshold", 1.0, r"in \(0, 1\)"),
])
def test_values_out_of_range_name_the_key(params_dir, key, value, rule):
    with pytest.raises(ConfigError, match=rf"^override: {key} must be {rule}, got {value!r}$"):
        config.resolve("good", {key: value}, params_dir)


def test_every_number_has_a_range():
    numbers = {k for k, tp in config._TYPES.items() if tp in (int, float, list[int])}  # seeds: a list of them
    assert numbers == set(config.RANGES)


@pytest.mark.parametrize("key,value", [("lr", float("inf")), ("lr", float("nan")), ("threshold", float("nan"))])
def test_floats_must_be_finite(params_dir, key, value):
    with pytest.raises(ConfigError, match=rf"override: {key} must be a finite number"):
        config.resolve("good", {key: value}, params_dir)


def test_edges_that_mean_something_are_accepted(params_dir):
    cfg = config.resolve("good", {"max_steps": -1, "patience": 0, "warmup_steps": 0, "lora_dropout": 0.0, "clip": 0.0,
                                  "pos_weight": 0.0, "min_count": 0, "seed": 0, "threshold": 0.001, "epochs": 1,
                                  "batch_size": 1, "segment_length": 1}, params_dir)
    assert (cfg.max_steps, cfg.patience, cfg.epochs, cfg.segment_length) == (-1, 0, 1, 1)


def test_a_bad_value_in_a_params_file_names_the_file(params_dir):
    (params_dir / "neg.yaml").write_text("batch_size: -4\n")
    with pytest.raises(ConfigError, match=r"^params/neg.yaml: batch_size must be at least 1, got -4$"):
        config.resolve("neg", params_dir=params_dir)


def test_tiny_heads_must_split_the_width_into_even_heads(params_dir):
    with pytest.raises(ConfigError, match=r"tiny_hidden=30 must be tiny_heads=4 times an even number"):
        config.resolve("good", {"tiny_hidden": 30, "tiny_heads": 4}, params_dir)
    with pytest.raises(ConfigError, match=r"tiny_hidden=12 must be tiny_heads=4 times an even number"):
        config.resolve("good", {"tiny_hidden": 12, "tiny_heads": 4}, params_dir)
    assert config.resolve("good", {"tiny_hidden": 32, "tiny_heads": 4}, params_dir).tiny_hidden == 32
    real = config.resolve("good", {"tiny_hidden": 30, "model_path": "McGill-NLP/some-mntp"}, params_dir)
    assert real.tiny_hidden == 30  # unused by a real backbone


def test_check_positions():
    cfg = config.resolve("tiny", {"segment_length": 1024})
    with pytest.raises(ConfigError, match=r"^segment_length=1024 exceeds the backbone's 512 positions: "
                                          r"set segment_length to at most 512$"):
        config.check_positions(cfg, 512)
    config.check_positions(cfg, 1024)
    config.check_positions(cfg, None)


def test_cli_refuses_a_negative_batch_size_at_once(tmp_path):
    """`batch_size=-4` used to loop forever rewriting last/; now: exit 2, one line, nothing written."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "icdlib", "run", "--backbone", "tiny", "--run", "r", "--output-root",
                           str(tmp_path / "out"), "--quiet", "-p", "batch_size=-4"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "icdlib: error: override: batch_size must be at least 1, got -4"
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "out").exists()


def test_unknown_key_names_the_closest_keys(params_dir):
    with pytest.raises(ConfigError, match=r"^override: unknown parameter 'epoch' \(did you mean epochs[,?]"):
        config.resolve("good", {"epoch": 1}, params_dir)
    with pytest.raises(ConfigError, match=r"unknown parameter 'segment_len' \(did you mean segment_length"):
        config.resolve("good", {"segment_len": 1}, params_dir)
    with pytest.raises(ConfigError, match=r"unknown parameter 'zzz'; known parameters: backbone, run, "):
        config.resolve("good", {"zzz": 1}, params_dir)


# ---- notebook parameters (papermill -p KEY VALUE) and the run record

def notebook_namespace(tmp_path, **injected):
    """What a notebook's globals hold at its config cell: the parameters cell, what papermill injected,
    the cell's imports and IPython's own names."""
    import pandas

    return {"__name__": "__main__", "__builtins__": __builtins__, "_i1": "backbone = 'tiny'", "_": None,
            "In": ["", "backbone = 'tiny'"], "Out": {}, "get_ipython": lambda: None, "exit": object(),
            "quit": object(), "open": open, "config": config, "pd": pandas,
            "backbone": "good", "run": "", "mimic_dir": "", "params": {"output_root": str(tmp_path / "out")},
            **injected}


def test_notebook_parameters_are_typed_like_the_cli(params_dir, tmp_path):
    from pathlib import Path

    ns = notebook_namespace(tmp_path, epochs=1, lr=5e-5, resume="true", lora_targets="[q_proj, v_proj]",
                            head="mean", split_dir="splits")
    cfg = config.from_notebook(ns, params_dir=params_dir)
    assert (cfg.epochs, cfg.lr, cfg.resume, cfg.lora_targets) == (1, 5e-5, True, ["q_proj", "v_proj"])
    assert cfg.split_dir == str(Path.cwd() / "splits")  # relative to where the notebook runs, as everywhere
    assert (cfg.run_name, cfg.batch_size) == ("good", 2)  # empty run: the backbone's name; the file's value


def test_notebook_text_for_a_float_gets_the_yaml_hint(params_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"lr must be float, got str '5e-5' \(YAML reads 5e-5 as text"):
        config.from_notebook(notebook_namespace(tmp_path, lr="5e-5"), params_dir=params_dir)
    with pytest.raises(ConfigError, match=r"batch_size must be int, got float 2.5"):
        config.from_notebook(notebook_namespace(tmp_path, batch_size=2.5), params_dir=params_dir)
    with pytest.raises(ConfigError, match=r"run must be str, got int 2024 \(papermill -p reads numbers: pass text "
                                          r"with -r run 2024\)"):
        config.from_notebook(notebook_namespace(tmp_path, run=2024), params_dir=params_dir)


def test_unknown_notebook_parameter_names_the_closest_keys(params_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^notebook parameter: unknown parameter 'epoch' \(did you mean epochs"):
        config.from_notebook(notebook_namespace(tmp_path, epoch=1), params_dir=params_dir)
    with pytest.raises(ConfigError, match=r"unknown parameter 'batchsize' \(did you mean batch_size"):
        config.from_notebook(notebook_namespace(tmp_path, batchsize=3), params_dir=params_dir)
    assert not (tmp_path / "out").exists()


def test_notebook_params_dict_keeps_working_and_must_agree(params_dir, tmp_path):
    (params_dir / "capped.yaml").write_text("max_steps: 5\n")
    ns = notebook_namespace(tmp_path, backbone="capped")
    ns["params"] = {**ns["params"], "seed": 7, "max_steps": 50}
    assert (config.from_notebook(ns, params_dir=params_dir).seed, config.from_notebook(ns, params_dir=params_dir)
            .max_steps) == (7, 50)
    explicit = notebook_namespace(tmp_path, backbone="capped", max_steps=-1)  # -p max_steps -1: back to epochs
    assert config.from_notebook(explicit, params_dir=params_dir).max_steps == -1
    both = notebook_namespace(tmp_path, epochs=2)
    both["params"] = {**both["params"], "epochs": 3}
    with pytest.raises(ConfigError, match=r"epochs is given twice, 2 and 3 in params"):
        config.from_notebook(both, params_dir=params_dir)
    both["params"]["epochs"] = 2
    assert config.from_notebook(both, params_dir=params_dir).epochs == 2
    text = notebook_namespace(tmp_path)
    text["params"] = "{output_root: %s, max_steps: 9}" % (tmp_path / "out")  # -p params '{...}'
    assert config.from_notebook(text, params_dir=params_dir).max_steps == 9


def test_rerunning_the_config_cell_ignores_names_later_cells_bound(params_dir, tmp_path):
    """In JupyterLab the config cell may run again after 04 bound `split` and 05 `threshold`."""
    ns = notebook_namespace(tmp_path, epochs=2)
    assert config.from_notebook(ns, params_dir=params_dir).epochs == 2
    ns.update(threshold=0.73, split="test", results={}, cfg=object(), epochs=4)
    cfg = config.from_notebook(ns, params_dir=params_dir)
    assert (cfg.epochs, cfg.threshold, cfg.split) == (4, 0.5, "patient")


def test_only_step_01_records_config_json(params_dir, tmp_path):
    """01 records; a later step with other parameters (03 with -p epochs 1) leaves the record as it is."""
    first = config.from_notebook(notebook_namespace(tmp_path, synth_admissions=60), record=True, params_dir=params_dir)
    path = first.run_dir / "config.json"
    before = path.read_bytes()
    later = config.from_notebook(notebook_namespace(tmp_path, synth_admissions=200, epochs=1), params_dir=params_dir)
    assert (later.synth_admissions, later.epochs) == (200, 1)
    assert path.read_bytes() == before and json.loads(before)["synth_admissions"] == 60
    again = config.from_notebook(notebook_namespace(tmp_path, synth_admissions=80), record=True, params_dir=params_dir)
    assert json.loads(path.read_text())["synth_admissions"] == again.synth_admissions == 80


def test_a_later_step_writes_no_record(params_dir, tmp_path):
    """Only 01 records the run: papermill on 03 of a run 01 never built left `config.json` behind."""
    cfg = config.load("good", params={"output_root": str(tmp_path / "out"), "seed": 5}, params_dir=params_dir,
                      record=False)
    assert not cfg.run_dir.exists()
    config.load("good", params={"output_root": str(tmp_path / "out"), "seed": 5}, params_dir=params_dir)
    config.load("good", params={"output_root": str(tmp_path / "out"), "seed": 6}, params_dir=params_dir, record=False)
    assert json.loads((cfg.run_dir / "config.json").read_text())["seed"] == 5


def test_cli_overrides_turn_the_record_into_the_config(params_dir, tmp_path):
    """What a step that does not rewrite config.json passes to `train -p ...` (torchrun from 03)."""
    record = config.resolve("good", {"output_root": str(tmp_path)}, params_dir)
    cfg = config.resolve("good", {"output_root": str(tmp_path / "x"), "run": "other", "epochs": 1, "lr": 5e-5,
                                  "lora_targets": ["q_proj", "v_proj"], "resume": True, "split_dir": "/data/splits",
                                  "model_path": "123", "threshold": 0.25}, params_dir)
    args = config.cli_overrides(cfg, record)
    # model_type too: the backbone "123" is another one, whose architecture nothing here knows ("", not llama)
    assert sorted(a.split("=")[0] for a in args) == ["epochs", "lora_targets", "lr", "model_path", "model_type",
                                                     "resume", "split_dir", "threshold"]
    back = dict(config.parse_override(a) for a in args)
    rebuilt = config.resolve("good", {**{k: v for k, v in record.to_dict().items() if k != "backbone"}, **back},
                             params_dir)
    assert {k: getattr(rebuilt, k) for k in back} == {k: getattr(cfg, k) for k in back}


def test_an_unwritable_output_root_stops_01_in_one_line(params_dir, tmp_path, monkeypatch):
    """papermill on 01 with a read-only output root ended in an OSError traceback from config.json."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").write_text("a file where the output root should be")
    with pytest.raises(RunFolderError, match=r"^cannot write the run folder ro/good: Not a directory \(ro/good\); "
                                             r"choose a writable --output-root"):
        config.load("good", params={"output_root": "ro"}, params_dir=params_dir)


def test_config_json_records_the_backbones_own_model_type(tmp_path, monkeypatch):
    """Was: `model_type: llama` in the config.json of a Mistral run (the tiny backbone's default). A real
    backbone's model_type is its config.json's when the folder (or the Hugging Face cache) holds it, else
    what its params file says, which agrees with icdlib's table of the shipped backbones."""
    from icdlib.model import memory_plan

    for backbone in config.backbones():
        cfg = config.resolve(backbone)
        if cfg.model_path or cfg.base_model_path:
            shape = memory_plan.HUB_NAMES[cfg.base_model_path or cfg.model_path]
            assert cfg.model_type == memory_plan.SHAPES[shape].get("model_type", "llama"), backbone
    assert (config.resolve("mistral").model_type, config.resolve("biomistral-mntp").model_type) == ("mistral", "mistral")
    assert (config.resolve("tiny").model_type, config.resolve("tiny-mistral").model_type) == ("llama", "mistral")
    recorded = config.load("mistral", params={"output_root": str(tmp_path), "run": "m"})
    assert json.loads((recorded.run_dir / "config.json").read_text())["model_type"] == "mistral"

    folder = tmp_path / "my-qwen"  # another backbone behind a params file: its own config.json decides
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 8}))
    assert config.resolve("llama3", {"model_path": "", "base_model_path": str(folder)}).model_type == "qwen3"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    unknown = config.resolve("llama3", {"model_path": "someone/other-mntp", "base_model_path": "someone/base"})
    assert unknown.model_type == ""  # not llama3.yaml's llama: nothing here knows that backbone
    assert config.resolve("llama3", {"model_path": "someone/other-mntp", "model_type": "mistral"}).model_type == "mistral"
    with pytest.raises(ConfigError, match=r"^model_type='qwen3': a tiny backbone is one of llama, mistral$"):
        config.resolve("tiny", {"model_type": "qwen3"})
