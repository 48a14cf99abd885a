import json

import pytest

from icdlib import config
from icdlib.errors import ConfigError


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
