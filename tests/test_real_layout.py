"""Real backbones as a user on an offline cluster has them, on a toy replica of the hub layout.

The replica (tests/hub_replica.py) has the files McGill-NLP ships: an adapter-only `-mntp` folder
whose adapter_config.json names the gated base on the hub, the base itself, and a `-supervised`
adapter. Everything here runs with HF_HUB_OFFLINE=1 and no network.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import huggingface_hub.constants as hub
import numpy as np
import pandas as pd
import pytest
import torch

import hub_replica
from icdlib.model import backbone_files, backbones, checkpoint, inference, train
from icdlib.run import config
from icdlib import predict, steps
from icdlib.data import preprocess
from icdlib.model.bidirectional import is_bidirectional
from icdlib.run.errors import IcdlibError

ROOT = Path(__file__).resolve().parent.parent
TEST_SIZE = {"synth_admissions": 120, "min_count": 3, "benchmark": "none", "split": "patient", "segment_length": 64, "max_segments": 2,
             "attention_dim": 16, "batch_size": 8, "grad_accum": 1, "warmup_steps": 1, "max_steps": 4,
             "eval_every": 2, "save_every": 2, "lr": 1.0e-3}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return hub_replica.build(tmp_path_factory.mktemp("hub-llama"), "llama")


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    return hub_replica.build(tmp_path_factory.mktemp("hub-mistral"), "mistral")


def first_token_state(model, tokenizer, text="heart failure with atrial fibrillation"):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]


def one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text and len(text) < 600, text
    return text


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_mntp_folder_loads_with_the_base_named_or_found_by_name(family, llama, mistral, monkeypatch):
    """A local -mntp folder on a local base, and the hub names found in the HF cache (llm2vec's way),
    give the same bidirectional model with the MNTP adapter merged (test_llm2vec_reference.py: equal
    to llm2vec's own outputs)."""
    replica = {"llama": llama, "mistral": mistral}[family]
    model, tokenizer = backbones.load(str(replica.mntp), base_model_path=str(replica.base))
    assert type(model).__name__ == f"{family.capitalize()}Model" and is_bidirectional(model)
    assert model.config._name_or_path == replica.names["base"]
    assert not getattr(model, "_hf_peft_config_loaded", False)
    ours = first_token_state(model, tokenizer)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(replica.hf_cache))
    by_name, _ = backbones.load(replica.names["mntp"])
    torch.testing.assert_close(first_token_state(by_name, tokenizer), ours, atol=1e-6, rtol=0)
    # the MNTP adapter is merged (not the plain base) and attention is bidirectional
    plain, _ = backbones.load(str(replica.base))
    assert not torch.allclose(first_token_state(plain, tokenizer), ours, atol=1e-4)
    changed = first_token_state(model, tokenizer, "heart failure with atrial sepsis")
    assert not torch.allclose(changed[0], ours[0])


def test_hub_names_resolve_from_the_cache(llama, monkeypatch):
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(llama.hf_cache))
    found = backbone_files.locate(llama.names["mntp"])
    assert found.base.startswith(str(llama.hf_cache)) and "Meta-Llama-3-8B-Instruct" in found.base
    assert found.given == {"model_path": llama.names["mntp"], "base_model_path": llama.names["base"]}
    found = backbone_files.locate(str(llama.mntp))  # a local -mntp folder, its base from the cache by name
    assert found.given == {"model_path": str(llama.mntp), "base_model_path": llama.names["base"]}


def _copy(src: Path, dst: Path, drop=()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def test_each_wrong_path_is_one_line(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    cases = {
        "no such folder": (str(tmp_path / "nowhere"), ""),
        "is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it once where there is internet "
        "(huggingface-cli download meta-llama/Meta-Llama-3-8B-Instruct": (str(llama.mntp), ""),
        "no tokenizer in": (str(_copy(llama.mntp, tmp_path / "no-tok", ("tokenizer*", "special_tokens*"))),
                            str(_copy(llama.base, tmp_path / "base-no-tok", ("tokenizer*", "special_tokens*")))),
        "holds no weights": (str(llama.mntp), str(_copy(llama.base, tmp_path / "no-weights", ("*.safetensors",)))),
        "holds neither weights": (str(_copy(llama.base, tmp_path / "full-no-weights", ("*.safetensors",))), ""),
        "no config.json": (str(tmp_path), ""),
    }
    broken = _copy(llama.mntp, tmp_path / "broken")
    (broken / "adapter_config.json").write_text('{"base_model_name_or_path": ')
    cases["adapter_config.json is not valid JSON"] = (str(broken), str(llama.base))
    for expected, (model_path, base) in cases.items():
        with pytest.raises(IcdlibError) as e:
            backbone_files.locate(model_path, base)
        assert expected in one_line(e.value), (expected, str(e.value))


def test_unreachable_hub_is_one_line_within_seconds(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.monotonic()
    with pytest.raises(IcdlibError) as e:
        backbone_files.locate(str(llama.mntp))
    assert time.monotonic() - t0 < 10
    text = one_line(e.value)
    assert "cannot be reached" in text and "HF_HUB_OFFLINE=1" in text and "meta-llama/Meta-Llama-3-8B-Instruct" in text


def icdlib(*args, cwd, env=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "icdlib", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)


def test_cli_stops_on_a_wrong_backbone_before_step_01(tmp_path):
    done = icdlib("run", "--backbone", "llama3", "--output-root", "out", "-p", "model_path=./models/missing-mntp",
                  cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model_path=" in lines[0] and "no such folder" in lines[0], done.stderr
    assert not (tmp_path / "out" / "llama3" / "01_preprocess").exists()


def replica_cfg(tmp_path, replica, mode, **over):
    values = {**TEST_SIZE, "output_root": str(tmp_path / "out"), "run": mode, "model_path": str(replica.mntp),
              "base_model_path": str(replica.base), "train_backbone": mode, **over}
    cfg = config.resolve("mistral" if replica.family == "mistral" else "llama3", values)
    config.save(cfg)
    steps.s01_preprocess(cfg, progress=False)
    return cfg


@pytest.mark.parametrize("mode", ["lora", "full", "frozen"])
def test_each_train_backbone_saves_resumes_and_reloads(mode, mistral, tmp_path, monkeypatch):
    cfg = replica_cfg(tmp_path, mistral, mode, grad_checkpointing=mode == "lora")
    history = train.fit(cfg, progress=False)
    assert history["step"].tolist() == [2, 4]
    best = cfg.run_dir / "03_train/best"
    coder, tokenizer, manifest, _ = checkpoint.load(best)
    assert manifest["backbone"]["model_path"] == str(mistral.mntp)
    assert manifest["backbone"]["base_model_path"] == str(mistral.base)
    prep = train.prepare(cfg)
    alone = train.score(coder, prep.tokens["val"], cfg, train.Env(torch.device("cpu")), tokenizer.pad_token_id,
                        fmt=prep.fmt)
    np.testing.assert_allclose(np.load(cfg.run_dir / "03_train/predictions_val.npz")["scores"], alone, atol=1e-5)
    # predict on a CPU holds a real backbone in bf16 where the CPU computes it (an 8B model: 16 GB, not 30)
    coder = predict.load(best, device="cpu")
    expected = torch.bfloat16 if inference._cpu_bf16() else torch.float32
    assert {p.dtype for n, p in coder.model.encoder.named_parameters() if "lora" not in n} == {expected}
    table = coder.predict("Discharge Diagnosis: congestive heart failure.", top_k=5)[0]
    assert len(table) == 5 and table["score"].between(0, 1).all()
    # resume loads the backbone once: last/ and best/ go into the live model in place
    loads = []
    real_load = backbones.load
    monkeypatch.setattr(backbones, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    history = train.fit(replace(cfg, max_steps=6, resume=True), progress=False)
    assert history["step"].tolist() == [2, 4, 6] and len(loads) == 1


def test_lora_adapter_path_starts_from_the_supervised_adapter_quietly(llama, tmp_path, recwarn, capfd):
    cfg = replica_cfg(tmp_path, llama, "lora", adapter_path=str(llama.supervised))
    prep = train.prepare(cfg)
    # the supervised adapter's weights are the LoRA that trains (not a fresh zero-initialised one)
    b = [p for n, p in prep.coder.encoder.named_parameters() if "lora_B" in n]
    assert b and all(p.requires_grad for p in b) and any(p.abs().sum() > 0 for p in b)
    # instruction auto: with a supervised adapter every segment is BOS + llm2vec's Llama-3 user turn
    turn = prep.tokenizer("<|start_header_id|>user<|end_header_id|>\n\n", add_special_tokens=False)["input_ids"]
    assert list(prep.fmt.prefix) == [prep.tokenizer.bos_token_id, *turn]
    assert list(prep.fmt.suffix) == [prep.tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    noisy = [str(w.message) for w in recwarn if "peft_config" in str(w.message) or "adapter" in str(w.message)]
    assert not noisy
    assert "multiple adapters" not in capfd.readouterr().err


def test_offline_recipe_from_the_readme_then_predict_after_moving(relative_run, tmp_path):
    """The README's offline recipe (conftest.relative_run: llama3 on the replica, every path relative
    to the user's own folder, 01→05); then the run folder goes two levels deeper and predict runs
    from another folder; then the models move too and predict is pointed at them."""
    run, done = relative_run.run_dir, relative_run.done
    metrics = json.loads((run / "04_evaluate/metrics.json").read_text())
    assert metrics["test"]["n_docs"] > 0 and 0 <= metrics["test"]["auroc_micro"] <= 1
    for name in ("01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis"):
        assert (run / "reports" / f"{name}.html").is_file()
    assert "multiple adapters" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    record = json.loads((run / "03_train/best/icdlib.json").read_text())["backbone"]
    models = relative_run.models
    assert record["model_path"] == str(models / "LLM2Vec-Meta-Llama-3-8B-Instruct-mntp")
    assert record["base_model_path"] == str(models / "Meta-Llama-3-8B-Instruct")
    assert len(record["input_format"]["prefix"]) > 1  # BOS + llm2vec's user turn (supervised adapter)

    deeper = tmp_path / "archive" / "2026"
    shutil.copytree(run, deeper / "llama3")  # a copy: the suite's other tests read the original
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "note.txt").write_text("Discharge Diagnosis: congestive heart failure, atrial fibrillation.")
    model = "../archive/2026/llama3/03_train/best"
    done = icdlib("predict", "--model", model, "--text-file", "note.txt", "--json", cwd=other)
    assert done.returncode == 0, done.stderr[-3000:]
    before = json.loads(done.stdout)
    assert len(before) == 15 and all(0 <= r["score"] <= 1 for r in before)

    moved = relative_run.root / "moved-models"
    shutil.move(str(models), moved)
    try:
        done = icdlib("predict", "--model", model, "--text-file", "note.txt", cwd=other)
        assert done.returncode == 2
        line = done.stderr.strip()
        assert len(line.splitlines()) == 1 and "LLM2Vec-Meta-Llama-3-8B-Instruct-mntp" in line and "--backbone-path" in line
        rel = os.path.relpath(moved, other)
        done = icdlib("predict", "--model", model, "--text-file", "note.txt", "--json",
                      "--backbone-path", f"{rel}/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp",
                      "--base-model-path", f"{rel}/Meta-Llama-3-8B-Instruct", cwd=other)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout) == before
    finally:
        shutil.move(str(moved), models)


def test_quantized_loading_is_refused_off_cuda_in_one_line(llama):
    with pytest.raises(IcdlibError) as e:
        backbones.load(str(llama.mntp), torch.bfloat16, base_model_path=str(llama.base), load_in="4bit")
    assert "needs a CUDA GPU" in one_line(e.value)
    with pytest.raises(IcdlibError) as e:  # full training of a quantized base cannot work anywhere
        backbones.load(str(llama.mntp), torch.float32, base_model_path=str(llama.base), load_in="8bit")
    assert "train_backbone=lora" in one_line(e.value)


def test_segment_length_beyond_the_backbones_positions_is_one_line(mistral, tmp_path):
    cfg = replica_cfg(tmp_path, mistral, "frozen")
    with pytest.raises(IcdlibError) as e:
        train.prepare(replace(cfg, segment_length=1024, max_segments=1))  # the replica has 512 positions
    assert "segment_length=1024 exceeds the backbone's 512 positions" in one_line(e.value)


# ---------------------------------------------------------------- MNTP on real layouts (issue 13)

MNTP = {"mntp_steps": 4, "mntp_length": 32, "mntp_batch_size": 4, "mntp_lr": 1.0e-3, "save_every": 2}


def test_mntp_continues_mcgills_adapter_and_its_folder_is_a_model_path(llama, tmp_path):
    """With a McGill -mntp model_path, MNTP keeps training that adapter (unmerged) on its base with
    the checkpoint's own LM head (trained beside it, as the recipe does, and not saved); 03_train/mntp/
    then loads exactly like the McGill folder."""
    from peft import PeftModel
    from safetensors.torch import load_file

    cfg = replica_cfg(tmp_path, llama, "lora", **MNTP)
    env = train.Env(torch.device("cpu"))
    notes = preprocess.load(cfg.run_dir).notes
    encoder, tokenizer, path, base, _ = train.load_backbone(cfg, env, notes[notes["split"] == "train"], progress=False)
    folder = cfg.run_dir / "03_train/mntp"
    assert (path, base) == (str(folder), str(llama.base))
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(llama.base) and adapter["r"] == 4  # McGill's adapter, r=4
    ours, theirs = load_file(folder / "adapter_model.safetensors"), load_file(llama.mntp / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(k.startswith("base_model.model.layers.") for k in ours)
    assert any(not torch.equal(ours[k], theirs[k]) for k in ours)  # trained further
    loaded, _ = backbones.load(folder, base_model_path=str(llama.base))
    torch.testing.assert_close(first_token_state(encoder, tokenizer), first_token_state(loaded, tokenizer),
                               atol=1e-5, rtol=1e-5)
    assert not isinstance(encoder, PeftModel)  # merged before fine-tuning


def test_mntp_turns_a_plain_decoder_into_an_encoder(mistral, tmp_path):
    """`base_model_path` alone (a plain Mistral *ForCausalLM checkpoint) plus mntp_steps: a fresh
    LoRA (r=16) trained with the Mistral recipe (all tokens masked), then the whole step 03."""
    cfg = replica_cfg(tmp_path, mistral, "lora", model_path="", **MNTP)
    train.fit(cfg, progress=False)
    folder = cfg.run_dir / "03_train/mntp"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(mistral.base) and adapter["r"] == 16
    history = pd.read_csv(folder / "history.csv")
    assert history["step"].tolist() == [1, 2, 3, 4]
    loaded, _ = backbones.load(folder, base_model_path=str(mistral.base))
    assert type(loaded).__name__ == "MistralModel" and is_bidirectional(loaded)
    manifest = json.loads((cfg.run_dir / "03_train/best/icdlib.json").read_text())
    assert manifest["backbone"]["model_path"] == str(folder) and manifest["backbone"]["base_model_path"] == str(mistral.base)
    coder = predict.load(cfg.run_dir / "03_train/best", device="cpu")
    assert coder is not None
