"""The MNTP stage: llm2vec's masking and loss on exact small cases, train notes only, McGill's
adapter layout, exact resume, the stage inside step 03, and under torchrun the updates of one process.

Run as a script under torchrun, this file is the worker of the three-process test (`ddp_stage`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from icdlib.model import backbone_files, backbones, checkpoint, mntp, train
from icdlib.run import config
from icdlib.data import preprocess
from icdlib.model.inference import Env
from icdlib.run.runfolder import MNTP_ARMS, Run
import test_train
from test_train import ROOT, kill_at_fifth_step

SMALL = {**test_train.SMALL, "max_steps": 3, "mntp_steps": 6, "mntp_length": 64, "mntp_batch_size": 8,
         "mntp_lr": 3e-3}
TEXTS = ["Acute kidney injury with hypertension.", "Septic shock, intubated.", "CHF exacerbation; afib with RVR."] * 8


def small_cfg(root, run, **over):
    return test_train.small_cfg(root, run, **{**SMALL, **over})


@pytest.fixture(scope="module")
def tokenizer():
    tok = backbones.train_tokenizer(TEXTS, 120)
    assert tok.convert_tokens_to_ids("_") != tok.unk_token_id  # the recipe's "blank" mask token exists
    return tok


def test_corpus_concatenates_the_notes_and_cuts_whole_chunks(tokenizer):
    ids, special = mntp.corpus(TEXTS[:3], tokenizer, 8)
    flat = [t for text in TEXTS[:3] for t in tokenizer(text)["input_ids"]]
    assert ids.shape == (len(flat) // 8, 8)
    assert ids.flatten().tolist() == flat[: ids.numel()]  # in order, the remainder dropped
    assert special.sum() == sum(1 for t in flat[: ids.numel()] if t in tokenizer.all_special_ids)
    with pytest.raises(Exception, match="fewer than one 4096-token chunk"):
        mntp.corpus(TEXTS[:1], tokenizer, 4096)


def test_bert_masking_draws_what_transformers_collator_draws(tokenizer):
    from transformers import DataCollatorForLanguageModeling

    ids, special = mntp.corpus(TEXTS, tokenizer, 16)
    tokenizer.mask_token = "_"
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.2)
    torch.manual_seed(7)
    expected_inputs, expected_labels = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special.clone())
    recipe = mntp.Masking("bert", 0.2, tokenizer.convert_tokens_to_ids("_"))
    inputs, labels = mntp.mask_tokens(ids, special, recipe, len(tokenizer), torch.Generator().manual_seed(7))
    assert torch.equal(inputs, expected_inputs) and torch.equal(labels, expected_labels)
    selected = labels != -100
    assert not selected[special].any() and torch.equal(labels[selected], ids[selected])
    assert (inputs[selected] == recipe.mask_id).float().mean() == pytest.approx(0.8, abs=0.12)


def test_all_mask_masks_every_selected_token(tokenizer):
    ids, special = mntp.corpus(TEXTS, tokenizer, 16)
    recipe = mntp.Masking("all_mask", 0.8, 5)
    inputs, labels = mntp.mask_tokens(ids, special, recipe, len(tokenizer), torch.Generator().manual_seed(0))
    selected = labels != -100
    assert (inputs[selected] == 5).all() and torch.equal(inputs[~selected], ids[~selected])
    assert not selected[special].any()
    assert selected[~special].float().mean() == pytest.approx(0.8, abs=0.08)


def test_recipe_per_family(tokenizer):
    from transformers import LlamaConfig, MistralConfig

    cfg = config.Config()
    assert mntp.masking(cfg, tokenizer, LlamaConfig()).style == "bert"
    assert mntp.masking(cfg, tokenizer, LlamaConfig()).probability == 0.2
    assert mntp.masking(cfg, tokenizer, MistralConfig()) == mntp.Masking("all_mask", 0.8, tokenizer.convert_tokens_to_ids("_"))
    assert mntp.masking(config.Config(mntp_masking="bert", mntp_probability=0.3), tokenizer, MistralConfig()).probability == 0.3


def test_loss_is_the_causal_lm_shift_over_masked_tokens(tokenizer):
    """Our loss (LM head on the selected positions only) equals LlamaForCausalLM's own loss (its
    shift over every position, which llm2vec's LlamaBiForMNTP inherits) on the same bidirectional
    weights. tests/test_llm2vec_reference.py compares it with LlamaBiForMNTP itself."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from icdlib.model.bidirectional import make_bidirectional

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    reference = make_bidirectional(LlamaForCausalLM(cfg)).eval()
    ids, special = mntp.corpus(TEXTS, tokenizer, 16)
    inputs, labels = mntp.mask_tokens(ids, special, mntp.Masking("bert", 0.2, 3), len(tokenizer),
                                      torch.Generator().manual_seed(1))
    expected = reference(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels).loss
    ours = mntp.mntp_loss(reference.model, reference.lm_head, inputs, labels)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)


def test_stage_reads_train_notes_only_and_its_loss_falls(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, "r", mntp_steps=20, mntp_lr=1e-2, max_steps=1)
    seen = []
    real = mntp.corpus

    def spy(texts, tokenizer, length):
        seen.extend(texts)
        return real(texts, tokenizer, length)

    monkeypatch.setattr(mntp, "corpus", spy)
    train.fit(cfg, progress=False)
    notes = pd.read_parquet(cfg.run_dir / "01_preprocess/notes.parquet")
    assert sorted(seen) == sorted(notes.loc[notes["split"] == "train", "text"])
    assert not set(seen) & set(notes.loc[notes["split"] != "train", "text"])
    history = mntp.load_history(cfg.run_dir)
    assert history["step"].tolist() == list(range(1, 21))
    assert history["loss"].iloc[-3:].mean() < history["loss"].iloc[:3].mean() - 0.3, history["loss"].tolist()


def test_adapter_has_mcgills_layout_and_loads_as_their_mntp_folders_do(tmp_path):
    cfg = small_cfg(tmp_path, "m", max_steps=1)
    env = Env(torch.device("cpu"))
    notes = preprocess.load(cfg.run_dir).notes
    encoder, tokenizer, path, base, _ = train.load_backbone(cfg, env, notes[notes["split"] == "train"], progress=False)
    folder = Run.of(cfg).mntp
    assert path == str(folder) and base == str(Run.of(cfg).backbone.resolve())
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == base and adapter["r"] == 16 and adapter["lora_alpha"] == 32
    assert set(adapter["target_modules"]) == set(config.SEVEN_PROJECTIONS)
    keys = load_file(folder / "adapter_model.safetensors").keys()
    assert keys and all(k.startswith("base_model.model.layers.") for k in keys)
    # the LM head trained (the tiny backbone's own, mntp_head: auto) but, as the recipe saves, not in the adapter
    assert not [k for k in keys if "head" in k]
    assert "lm_head.weight" in load_file(Run.of(cfg).mntp_last / "weights.safetensors")
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    # the folder is a model_path, as McGill's -mntp repositories are: the same encoder outputs
    loaded, _ = backbones.load(folder, base_model_path=base)
    ids = torch.tensor([tokenizer("Septic shock and acute kidney injury.")["input_ids"]])
    with torch.no_grad():
        a = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        b = loaded(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_finished_stage_is_reused_and_a_changed_one_redone(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, "c", max_steps=1)
    train.fit(cfg, progress=False)
    stamp = (Run.of(cfg).mntp / "adapter_model.safetensors").stat().st_mtime_ns
    loads, real_load = [], backbones.load
    monkeypatch.setattr(backbones, "load", lambda path, *a, **k: loads.append(Path(path)) or real_load(path, *a, **k))
    train.fit(cfg, progress=False)
    assert (Run.of(cfg).mntp / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert loads == [Run.of(cfg).mntp]  # reused: the backbone is not loaded first
    monkeypatch.setattr(backbones, "load", real_load)
    changed = config.load("tiny", params={"output_root": str(tmp_path), "run": "c", **SMALL, "max_steps": 1,
                                          "mntp_steps": 4})
    train.fit(changed, progress=False)
    assert mntp.load_history(cfg.run_dir)["step"].max() == 4


def test_kill_and_resume_equals_an_uninterrupted_stage(tmp_path, monkeypatch):
    whole = small_cfg(tmp_path, "whole", max_steps=1)
    train.fit(whole, progress=False)
    broken = small_cfg(tmp_path, "broken", max_steps=1)
    kill_at_fifth_step(broken, monkeypatch)  # after the step-3 MNTP state, mid-way to step 6
    assert not (Run.of(broken).mntp / "adapter_model.safetensors").exists()
    assert torch.load(Run.of(broken).mntp_last / "state.pt", weights_only=False)["step"] == 3
    resumed = config.load("tiny", params={"output_root": str(tmp_path), "run": "broken", **SMALL, "max_steps": 1,
                                          "resume": True})
    train.fit(resumed, progress=False)
    a = load_file(Run.of(whole).mntp / "adapter_model.safetensors")
    b = load_file(Run.of(broken).mntp / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert mntp.load_history(whole.run_dir)["loss"].tolist() == mntp.load_history(broken.run_dir)["loss"].tolist()
    assert mntp.load_history(whole.run_dir)["tokens"].tolist() == mntp.load_history(broken.run_dir)["tokens"].tolist()
    assert mntp.load_history(broken.run_dir)["elapsed_s"].is_monotonic_increasing


@pytest.mark.parametrize("arm", ["without", "with"])
def test_comparison_is_a_second_fine_tuning_of_the_same_split(tmp_path, arm):
    """mntp_compare: the other arm fine-tunes from the other backbone (with or without MNTP) on the
    same split; 04 scores it beside the model."""
    from icdlib.evaluation import evaluate

    cfg = small_cfg(tmp_path, "cmp", mntp_compare=arm, baseline=False)
    train.fit(cfg, progress=False)
    other = Run(cfg.run_dir, MNTP_ARMS[arm])
    for split in ("val", "test"):
        a, b = np.load(Run.of(cfg).predictions(split)), np.load(other.predictions(split))
        np.testing.assert_array_equal(a["hadm_id"], b["hadm_id"])
        assert not np.allclose(a["scores"], b["scores"])
    model_from = json.loads((Run.of(cfg).checkpoint("best") / "icdlib.json").read_text())["backbone"]["model_path"]
    other_from = json.loads((other.checkpoint("best") / "icdlib.json").read_text())["backbone"]["model_path"]
    with_mntp, without = (model_from, other_from) if arm == "without" else (other_from, model_from)
    assert with_mntp.endswith("03_train/mntp") and without.endswith("03_train/backbone")
    arms = train.mntp_arms(cfg, train.load_history(cfg.run_dir))
    assert set(arms) == {"with MNTP", "without MNTP"} and all(len(h) for h in arms.values())
    cost = mntp.cost(mntp.load_history(cfg.run_dir), arms)
    assert cost.loc["MNTP stage", "tokens"] == cfg.mntp_steps * cfg.mntp_batch_size * cfg.mntp_length
    tuned = cost.loc[["fine-tuning with MNTP", "fine-tuning without MNTP"], "tokens"].tolist()
    assert tuned[0] == tuned[1] > 0  # the same batches
    assert (cost["wall_s"] > 0).all() and cost.loc["fine-tuning with MNTP", "share_of_fine_tuning"] == 1.0
    ev = evaluate.run(cfg)
    assert ev.results[MNTP_ARMS[arm]]["test_tuned"]["n_docs"] == ev.results["test"]["n_docs"]
    assert any(name.startswith(f"icdlib {arm} MNTP test @tuned") for name in evaluate.systems(ev))
    diffs = ev.results["paired"][f"model - {MNTP_ARMS[arm]}"]  # what MNTP did, with its interval
    assert diffs["map"]["diff"] == pytest.approx(ev.results["test_tuned"]["map"] -
                                                 ev.results[MNTP_ARMS[arm]]["test_tuned"]["map"])


def test_a_comparison_without_the_stage_is_refused():
    with pytest.raises(config.ConfigError, match="mntp_compare=with .* but mntp_steps=0"):
        config.resolve("tiny", {"mntp_steps": 0})


@pytest.mark.end_to_end(seconds=40)
def test_two_processes_run_the_stage_and_split_each_batch(tmp_path):
    """torchrun --nproc_per_node 2: each gloo process takes half of every MNTP batch (the same
    masks as one process draws); rank 0 writes the adapter, then fine-tuning starts from it."""
    cfg = small_cfg(tmp_path, "ddp", max_steps=2, eval_every=1)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    params = [x for k in ("mntp_steps", "mntp_length", "mntp_batch_size", "mntp_lr", "mntp_compare")
              for x in ("-p", f"{k}={getattr(cfg, k)}")]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                           "icdlib", "train", "ddp", "--output-root", str(tmp_path), "--quiet", *params],
                          cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    history = mntp.load_history(cfg.run_dir)
    assert history["step"].tolist() == list(range(1, cfg.mntp_steps + 1))
    assert np.isfinite(history["loss"]).all()
    loaded, _ = backbones.load(Run.of(cfg).mntp, base_model_path=str(Run.of(cfg).backbone.resolve()))
    assert loaded is not None
    manifest = json.loads((Run.of(cfg).checkpoint("best") / "icdlib.json").read_text())
    assert manifest["backbone"]["model_path"].endswith("03_train/mntp")


def test_each_process_takes_a_contiguous_part_and_every_chunk_is_on_one():
    for n in range(10):
        chunks = torch.arange(100, 100 + n)
        for world in range(1, 6):
            parts = [mntp.share(chunks, world, rank) for rank in range(world)]
            assert torch.cat([chunks[p] for p in parts]).tolist() == chunks.tolist(), (n, world)
            sizes = [len(chunks[p]) for p in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True), (n, world, sizes)


def test_state_is_read_onto_the_cpu_whatever_device_wrote_it(tmp_path, monkeypatch):
    """state.pt written from tensors on another device (here storages tagged `elsewhere`, a device
    this process cannot restore to, as a GPU rank's state is on a rank with another GPU or none)
    loads onto the CPU; the optimizer puts its moments on its parameters' device, and the masking
    generator takes its state back."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    encoder = LlamaModel(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    obj = mntp.objective(encoder, config.Config(), None)
    params = [p for p in obj.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ids = torch.randint(50, (2, 16))
    inputs, labels = mntp.mask_tokens(ids, torch.zeros_like(ids, dtype=torch.bool), mntp.Masking("all_mask", 0.5, 3),
                                      50, torch.Generator().manual_seed(0))
    mntp.train_step(obj, optimizer, params, inputs, labels, torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(5)

    writing = {"on": True}

    def tag(storage):
        return "elsewhere" if writing["on"] else None

    def restore(storage, location):
        if location == "elsewhere":
            raise RuntimeError("restored onto the device that wrote it, which this process cannot reach")

    monkeypatch.setattr(torch.serialization, "_package_registry", list(torch.serialization._package_registry))
    torch.serialization.register_package(9, tag, restore)  # before the CPU's (10): every storage is tagged
    mntp._save_state(tmp_path / "last", obj.encoder, obj.head, True, optimizer, scheduler, 1, 0, 1, [], generator)
    writing["on"] = False
    with pytest.raises(RuntimeError, match="cannot reach"):  # without map_location, the old load
        torch.load(tmp_path / "last" / "state.pt", weights_only=False)

    state = mntp._load_state(tmp_path / "last", obj.encoder, obj.head, True)
    fresh = torch.optim.AdamW(params, lr=1e-3)
    fresh.load_state_dict(state["optimizer"])
    for p in params:
        for moment in ("exp_avg", "exp_avg_sq"):
            assert fresh.state[p][moment].device == p.device
            assert torch.equal(fresh.state[p][moment], optimizer.state[p][moment])
    restored = torch.Generator()
    restored.set_state(state["generator"])
    assert torch.equal(torch.rand(4, generator=restored), torch.rand(4, generator=generator))


# 70 chunks of 128 tokens: 17 batches of 4, then one of 2
DDP = {"synth_admissions": 10, "mntp_length": 128, "mntp_batch_size": 4, "save_every": 1000}


def ddp_stage(root: str, runs: list[str]) -> None:
    """Under torchrun: the MNTP stage of each run as `icdlib train` runs it (`train.load_backbone`),
    each process writing to `<run>/rank<r>.json` the chunks it trained on at each step (its part
    of the batch, `mntp.share`) and the first row of its first LoRA dropout mask on a dense input."""
    import torch.distributed as dist

    for run in runs:
        cfg = config.from_json(Run(Path(root) / run).config)  # as small_cfg wrote it
        env = train.setup(cfg)
        chunks, masks, real_share = [], [], mntp.share

        def share(batch, world, rank):
            part = real_share(batch, world, rank)
            chunks.append(batch[part].tolist())
            return part

        def dropout(module, args, output):
            # the first mask of a dense input (a 0 the inputs hold would stay 0 whatever the draw)
            if isinstance(module, torch.nn.Dropout) and module.training and not masks and (args[0] != 0).all():
                masks.append((output[0] != 0).flatten().tolist())

        mntp.share = share
        hook = torch.nn.modules.module.register_module_forward_hook(dropout)
        notes = preprocess.load(cfg.run_dir).notes
        train.load_backbone(cfg, env, notes[notes["split"] == "train"], progress=False)
        hook.remove()
        mntp.share = real_share
        (cfg.run_dir / f"rank{env.rank}.json").write_text(json.dumps({"chunks": chunks, "mask": masks}))
    dist.destroy_process_group()


@pytest.mark.end_to_end(seconds=40)
def test_three_processes_train_every_chunk_once_and_update_as_one_process(tmp_path):
    """torchrun --nproc_per_node 3, batches of 4 chunks (parts of 2, 1 and 1; the epoch's last
    batch, of 2, leaves the third process an empty part): over two epochs every chunk is trained on
    exactly once per epoch, and without dropout the losses and weights are one process's (within
    the 1e-5 of the two-process scores in test_train). With dropout, the processes draw different
    masks."""
    steps = 36  # two epochs of 18 batches
    three = small_cfg(tmp_path, "three", **DDP, mntp_steps=steps, lora_dropout=0.0)
    dropout = small_cfg(tmp_path, "dropout", **DDP, mntp_steps=1, lora_dropout=0.1)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
                           __file__, str(tmp_path), "three", "dropout"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    records = [json.loads((three.run_dir / f"rank{r}.json").read_text()) for r in range(3)]
    start = [json.loads(line) for line in Run.of(three).progress.read_text().splitlines()][0]
    n = start["chunks"]
    per_epoch = -(-n // DDP["mntp_batch_size"])
    assert n % DDP["mntp_batch_size"] == 2 and per_epoch * 2 == steps
    for epoch in range(2):
        steps_of = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        trained = sorted(c for r in records for s in steps_of for c in r["chunks"][s])
        assert trained == list(range(n)), epoch
    assert [len(r["chunks"][0]) for r in records] == [2, 1, 1]
    assert [len(r["chunks"][per_epoch - 1]) for r in records] == [1, 1, 0]

    one = small_cfg(tmp_path, "one", **DDP, mntp_steps=steps, lora_dropout=0.0)
    notes = preprocess.load(one.run_dir).notes
    train.load_backbone(one, Env(torch.device("cpu")), notes[notes["split"] == "train"], progress=False)
    a, b = mntp.load_history(one.run_dir), mntp.load_history(three.run_dir)
    assert b["step"].tolist() == list(range(1, steps + 1))
    np.testing.assert_allclose(b["loss"], a["loss"], atol=1e-5, rtol=0)
    for name in ("mntp/adapter_model.safetensors", "mntp_last/weights.safetensors"):  # the latter with the LM head
        x, y = (load_file(cfg.run_dir / "03_train" / name) for cfg in (one, three))
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(y[k], x[k], atol=1e-5, rtol=0, msg=k)
    assert "lm_head.weight" in x

    masks = [json.loads((dropout.run_dir / f"rank{r}.json").read_text())["mask"][0] for r in range(3)]
    kept = [np.asarray(m) for m in masks]
    assert all(0.85 < k.mean() < 0.95 for k in kept)  # about 10% dropped
    assert all((kept[i] != kept[j]).mean() > 0.1 for i, j in ((0, 1), (0, 2), (1, 2)))  # 0.18 when independent


if __name__ == "__main__":
    ddp_stage(sys.argv[1], sys.argv[2:])


def test_an_older_fine_tuning_last_does_not_take_over_an_mntp_resume(tmp_path, monkeypatch, capsys):
    """A run fine-tuned without MNTP, started over with the stage and killed inside it: the resume
    took the first run's `last/` (refused: `set resume=false to start over`). Now starting over
    removes the earlier `last/`, and the resume finishes the stage, then fine-tunes after it."""
    over = {"output_root": str(tmp_path), "run": "r", **SMALL, "max_steps": 1}
    first = small_cfg(tmp_path, "r", max_steps=1, mntp_steps=0, mntp_compare="none")
    train.fit(first, progress=False)
    assert checkpoint.resumable(Run.of(first).checkpoint("last"))
    kill_at_fifth_step(config.load("tiny", params=over), monkeypatch)  # inside MNTP, after its step-3 state
    assert not Run.of(first).checkpoint("last").exists()
    history = train.fit(config.load("tiny", params={**over, "resume": True}), progress=False)
    assert mntp.load_history(first.run_dir)["step"].max() == 6 and history["step"].tolist() == [1]
    assert json.loads((Run.of(first).checkpoint("best") / "icdlib.json").read_text())["backbone"]["model_path"].endswith(
        "03_train/mntp")


def test_a_last_older_than_the_mntp_stage_names_what_to_remove(tmp_path, monkeypatch):
    """A folder where that happened before the fix (an older `last/` beside a newer MNTP state)."""
    cfg = small_cfg(tmp_path, "old", max_steps=1, mntp_steps=0, mntp_compare="none")
    train.fit(cfg, progress=False)
    run = Run.of(cfg)
    run.mntp_last.mkdir()
    torch.save({"step": 3}, run.mntp_last / "state.pt")
    resumed = config.load("tiny", params={"output_root": str(tmp_path), "run": "old", **SMALL, "resume": True})
    with pytest.raises(train.TrainingError) as e:
        train.fit(resumed, progress=False)
    assert str(e.value) == ("resume=true but 03_train/last is older than the MNTP stage's 03_train/mntp_last: remove "
                            "03_train/last to resume the stage and fine-tune after it, or set resume=false to start over")


# ---------------------------------------------------------------- the recipe's schedule and head, fair arms (issue 22)

def test_lr_is_the_recipes_three_epoch_linear_decay_cut_at_mntp_steps():
    """llm2vec's MNTP configs leave the Trainer's learning-rate defaults: linear decay from the
    rate to 0 without warm-up over ceil(3 epochs × batches per epoch) steps (transformers'
    get_linear_schedule_with_warmup), and stop_after_n_steps ends training before that."""
    from dataclasses import replace

    from transformers import get_linear_schedule_with_warmup

    cfg = config.Config(mntp_steps=10, mntp_batch_size=4)
    assert mntp.schedule_length(cfg, 70) == 54  # 18 batches per epoch (the last of 2 chunks), 3 epochs
    assert mntp.stage_steps(cfg, 70) == 10
    assert mntp.stage_steps(replace(cfg, mntp_steps=100), 70) == 54  # the epochs end first, as in the Trainer
    assert mntp.schedule_length(replace(cfg, mntp_epochs=1.5), 70) == 27
    assert mntp.schedule_length(replace(cfg, mntp_epochs=0.0), 70) == 10  # 0: the decay over mntp_steps
    ours = [mntp.lr_factor(s, 54) for s in range(56)]
    assert ours[:3] == [1.0, 53 / 54, 52 / 54] and ours[53] == 1 / 54 and ours[54:] == [0.0, 0.0]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-5)
    reference = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=54)
    theirs = []
    for _ in range(56):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert theirs == pytest.approx([5e-5 * f for f in ours], rel=1e-12, abs=0)


def test_the_stage_runs_the_schedule_and_records_each_steps_rate_and_cost(tmp_path):
    """70 chunks in batches of 4 (18 per epoch), `mntp_epochs: 1`: the rate decays over 18 steps and
    the stage stops there although `mntp_steps` asks 30; history.csv holds each update's rate,
    the tokens read so far and the wall time."""
    cfg = small_cfg(tmp_path, "lr", **DDP, mntp_steps=30, mntp_epochs=1.0, mntp_lr=2e-3, max_steps=1)
    notes = preprocess.load(cfg.run_dir).notes
    train.load_backbone(cfg, Env(torch.device("cpu")), notes[notes["split"] == "train"], progress=False)
    start = [json.loads(line) for line in Run.of(cfg).progress.read_text().splitlines()][0]
    assert (start["chunks"], start["total"], start["schedule"]) == (70, 18, 18)
    history = mntp.load_history(cfg.run_dir)
    assert history["step"].tolist() == list(range(1, 19))
    assert history["lr"].tolist() == pytest.approx([2e-3 * (18 - s) / 18 for s in range(18)], rel=1e-12, abs=0)
    assert history["tokens"].tolist() == [min(4 * s, 70) * 128 for s in range(1, 19)]  # the last batch: 2 chunks
    assert (history["elapsed_s"].diff().dropna() > 0).all()


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_trains_where_the_recipes_trainer_trains_it(tmp_path, tied):
    """llm2vec's run_mntp.py puts LoRA on the inner model (`model.model = initialize_peft(model.model)`):
    peft freezes that model, its input embeddings included, and leaves the outer `lm_head` trainable
    unless it is tied to them. icdlib's objective (`mntp_head: auto`) trains its copy of the head in
    exactly that case, from the checkpoint's weights, and an update changes it; `frozen` and `train`
    force either way."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(0)
    shape = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                        tie_word_embeddings=tied)
    recipe = LlamaForCausalLM(shape)
    recipe.save_pretrained(tmp_path)
    with backbones.quiet():
        recipe.model = get_peft_model(recipe.model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
                                                               target_modules=list(config.SEVEN_PROJECTIONS)))
    theirs = {n for n, p in recipe.named_parameters() if p.requires_grad and "lora_" not in n}
    assert theirs == (set() if tied else {"lm_head.weight"})

    located = backbone_files.Located(str(tmp_path), "", str(tmp_path), {}, "")
    obj = mntp.objective(LlamaModel.from_pretrained(tmp_path), config.Config(), located)
    ours = {n for n, p in obj.named_parameters() if p.requires_grad and "lora_" not in n}
    assert ours == (set() if tied else {"head.weight"})
    assert torch.equal(obj.head.weight, recipe.lm_head.weight)
    before = obj.head.weight.detach().clone()
    params = [p for p in obj.parameters() if p.requires_grad]
    ids = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(0))
    inputs, labels = mntp.mask_tokens(ids, torch.zeros_like(ids, dtype=torch.bool), mntp.Masking("bert", 0.5, 3), 50,
                                      torch.Generator().manual_seed(0))
    mntp.train_step(obj, torch.optim.AdamW(params, lr=1e-2), params, inputs, labels, torch.device("cpu"),
                    torch.float32)
    assert torch.equal(obj.head.weight, before) == tied
    base = obj.encoder.get_base_model()
    assert [mntp.lm_head_for(base, located, mode)[1] for mode in ("frozen", "train")] == [False, True]


def test_mntp_head_frozen_is_the_stages_parameter(tmp_path):
    """`mntp_head: frozen` keeps the tiny backbone's head out of the optimizer: mntp_last/ then holds
    the adapter alone, and the stage's key differs from the default's (a finished stage is redone)."""
    cfg = small_cfg(tmp_path, "frozen", mntp_head="frozen", mntp_steps=3, save_every=3, max_steps=1)
    notes = preprocess.load(cfg.run_dir).notes
    train.load_backbone(cfg, Env(torch.device("cpu")), notes[notes["split"] == "train"], progress=False)
    assert "lm_head.weight" not in load_file(Run.of(cfg).mntp_last / "weights.safetensors")
    default = small_cfg(tmp_path, "auto", mntp_steps=3, max_steps=1)
    assert mntp.key(cfg, "b", [1], ["x"]) != mntp.key(default, "b", [1], ["x"])


def test_both_arms_start_from_the_same_weights_and_batches(tmp_path, monkeypatch):
    """mntp_compare: the fine-tuning with MNTP and the one without start from the same fresh LoRA and
    head weights and train on the same batches in the same order; the backbone underneath differs
    (the MNTP adapter merged in)."""
    from icdlib.model.encoding import LengthBucketSampler

    cfg = small_cfg(tmp_path, "fair", train_backbone="lora", mntp_compare="with", baseline=False, max_steps=4,
                    eval_every=4, save_every=4)
    starts, orders = [], []
    real_loop, real_iter = train.train_loop, LengthBucketSampler.__iter__

    def loop(cfg, prep, env, progress=True, run=None, title=""):
        starts.append({n: p.detach().clone() for n, p in prep.coder.named_parameters()})
        orders.append([])
        return real_loop(cfg, prep, env, progress, run, title)

    def batches(self):
        for batch in real_iter(self):
            if self.shuffle:
                orders[-1].append(list(batch))
            yield batch

    monkeypatch.setattr(train, "train_loop", loop)
    monkeypatch.setattr(LengthBucketSampler, "__iter__", batches)
    train.fit(cfg, progress=False)
    without, with_mntp = starts
    assert without.keys() == with_mntp.keys()
    fresh = [n for n in without if "lora_" in n or n.startswith("head.")]
    assert any("lora_" in n for n in fresh) and any(n.startswith("head.") for n in fresh)
    for name in fresh:
        assert torch.equal(without[name], with_mntp[name]), name
    assert any(not torch.equal(without[n], with_mntp[n]) for n in without if n not in fresh)
    assert len(orders[0]) == 4 and orders[0] == orders[1]


def test_cost_states_the_mntp_arms_extra_compute():
    stage = pd.DataFrame({"step": [1, 2], "tokens": [512, 1024], "elapsed_s": [10.0, 30.0]})
    with_mntp = pd.DataFrame({"step": [3, 6], "tokens": [900, 1800], "elapsed_s": [40.0, 120.0]})
    without = pd.DataFrame({"step": [3, 6], "tokens": [900, 1700], "elapsed_s": [45.0, 100.0]})
    table = mntp.cost(stage, {"without MNTP": without, "with MNTP": with_mntp})
    assert list(table.index) == ["MNTP stage", "fine-tuning without MNTP", "fine-tuning with MNTP"]
    assert table.loc["MNTP stage"].tolist() == [2, 1024, 30.0, 0.25]
    assert table.loc["fine-tuning without MNTP"].tolist() == [6, 1700, 100.0, 100 / 120]
    assert mntp.cost_text(table) == ("MNTP cost 30 s (25% of the 120 s the fine-tuning after it took), 2 steps over "
                                     "1,024 tokens. The arm with MNTP took 150 s in all, the arm without it 100 s.")
    alone = mntp.cost(stage, {}, with_mntp)  # no comparison: the model's own fine-tuning, after MNTP
    assert list(alone.index) == ["MNTP stage", "fine-tuning with MNTP"]
    assert mntp.cost_text(alone) == ("MNTP cost 30 s (25% of the 120 s the fine-tuning after it took), 2 steps over "
                                     "1,024 tokens.")
    older = mntp.cost(stage[["step"]], {}, with_mntp[["step"]])  # histories written before the columns
    assert mntp.cost_text(older) == ("MNTP ran 2 steps; its wall time is not recorded (a run written before icdlib "
                                     "recorded it).")
    assert mntp.cost(None, {}, with_mntp).empty
    assert mntp.cost_text(mntp.cost(None, {}, with_mntp)) == ("No MNTP stage in this run (`mntp_steps: 0`): no extra "
                                                              "compute.")
