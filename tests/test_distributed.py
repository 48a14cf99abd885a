"""Many processes, one answer: a failing rank stops every rank, rank 0 prepares the tokens, resume
maps to this process's device, ranks draw their own dropout, and the schedule is stated."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from icdlib.model import checkpoint, distributed, train
from icdlib.run import config
from icdlib.data import preprocess
from icdlib.model.inference import Env
from test_cli_paths import free_port
from test_train import small_cfg, trainable_weights

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(Path(__file__).resolve().parent / "torchrun_worker.py")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
       "PYTHONPATH": str(ROOT)}


@pytest.mark.end_to_end(seconds=38)
def test_a_failing_rank_stops_every_rank_at_once_with_one_line(tmp_path):
    """Two torchrun agents (two "nodes": no agent can stop the other's worker) and rank 1 raising
    in its second forward pass: both ranks leave by themselves within 30 s of the fault, rank 0's
    log holds one `icdlib: error:` line naming the rank, the step and the cause, rank 1 prints
    none, and the traceback is in 03_train/failure.txt."""
    small_cfg(tmp_path, "fault", max_steps=20, eval_every=10)
    mark = tmp_path / "fault-time"
    env = {**ENV, "FAIL_RANK": "1", "FAIL_STEP": "2", "FAIL_MARK": str(mark)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "icdlib-fault",
           "--rdzv-conf", "join_timeout=120", "--local-addr", "127.0.0.1", "--max-restarts", "0",
           WORKER, "train", "fault", "--output-root", str(tmp_path), "--quiet"]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
             for log in logs]
    ended = []
    try:
        for node in nodes:
            node.wait(timeout=300)
            ended.append(time.time())
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert mark.is_file(), logs[0].read_text()[-3000:]
    assert max(ended) - float(mark.read_text()) < 30
    assert [node.returncode for node in nodes] == [1, 1]  # torchrun's code for a failed worker
    said = [[line for line in log.read_text().splitlines() if line.startswith("icdlib:")] for log in logs]
    texts = sum(said, [])
    assert len(texts) == 1, said
    assert texts[0] == ("icdlib: error: 1 of 2 ranks failed at step 1, all stopped (rank 1: RuntimeError: injected "
                        "fault) (tracebacks: 03_train/failure.txt)")
    failure = (tmp_path / "fault/03_train/failure.txt").read_text()
    assert failure.startswith("---- rank 1\nTraceback") and failure.rstrip().endswith("RuntimeError: injected fault")
    assert "exitcode  : 2" in logs[0].read_text() + logs[1].read_text()  # each worker left with icdlib's code


@pytest.mark.end_to_end(seconds=38)
def test_rank_0_tokenises_once_and_the_others_read_its_cache(tmp_path):
    """Under torchrun only rank 0 tokenises (three splits); rank 1 waits and reads the cache."""
    cfg = small_cfg(tmp_path, "tok", max_steps=1, eval_every=1)
    log = tmp_path / "tokenize.log"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           WORKER, "train", "tok", "--output-root", str(tmp_path), "--quiet"],
                          cwd=tmp_path, env={**ENV, "TOKENIZE_LOG": str(log)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = [line.split() for line in log.read_text().splitlines()]
    sizes = preprocess.load(cfg.run_dir).notes["split"].value_counts()
    assert calls == [["0", str(sizes["train"])], ["0", str(sizes["val"])], ["0", str(sizes["test"])]]
    assert len(list((cfg.run_dir / "03_train/tokens").glob("*.npz"))) == 3


def test_trainer_state_written_on_another_device_loads_here(tmp_path):
    """A trainer_state.pt whose tensors were saved on cuda:1 (a rank of another job) loads on this
    machine's CPU, where torch.load without map_location would ask for that GPU."""
    state = {"optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []}, "step": 4,
             "rng": {"torch": torch.get_rng_state()}}
    registry = torch.serialization._package_registry
    tag = (0, lambda obj: "cuda:1" if getattr(obj, "device", None) is not None and obj.device.type == "cpu" else None,
           lambda obj, location: None)
    registry.insert(0, tag)
    try:
        torch.save(state, tmp_path / "trainer_state.pt")
    finally:
        registry.remove(tag)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "trainer_state.pt", weights_only=False)
    loaded = checkpoint.load_trainer_state(tmp_path)
    assert loaded["optimizer"]["state"][0]["exp_avg"].device.type == "cpu"
    assert loaded["optimizer"]["state"][0]["exp_avg"].tolist() == [1.0, 1.0, 1.0] and loaded["step"] == 4
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    torch.save({"optimizer": optimizer.state_dict()}, tmp_path / "trainer_state.pt")
    optimizer.load_state_dict(checkpoint.load_trainer_state(tmp_path)["optimizer"])
    assert {s["exp_avg"].device for s in optimizer.state.values()} == {model.weight.device}


def test_ranks_draw_their_own_dropout_and_rank_0_draws_as_one_process():
    torch.manual_seed(7)
    alone = torch.rand(4)
    draws = []
    for rank in range(3):
        torch.manual_seed(7)
        distributed.seed_rank(7, Env(torch.device("cpu"), rank, 3))
        draws.append(torch.rand(4))
    assert torch.equal(draws[0], alone)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_resume_restores_each_rank_stream_or_reseeds_on_another_world():
    streams = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        streams.append(train.rng_state())
    state = {"rng": streams[0], "rng_ranks": streams, "step": 5}
    cfg = config.load("tiny", record=False)
    train.restore_rng(state, cfg, Env(torch.device("cpu"), 1, 2))
    torch.manual_seed(101)
    expected = torch.rand(3)
    train.restore_rng(state, cfg, Env(torch.device("cpu"), 1, 2))
    assert torch.equal(torch.rand(3), expected)
    train.restore_rng(state, cfg, Env(torch.device("cpu"), 1, 3))  # three processes now: a fresh stream
    assert not torch.equal(torch.rand(3), expected)
    old = {"rng": streams[0], "step": 5}  # a checkpoint from before rng_ranks: rank 0's stream
    train.restore_rng(old, cfg, Env(torch.device("cpu"), 0, 1))
    torch.manual_seed(100)
    first = torch.rand(3)
    train.restore_rng(old, cfg, Env(torch.device("cpu"), 0, 1))
    assert torch.equal(torch.rand(3), first)


# ---------------------------------------------------------------- the schedule in plain sight

def plan_for(world, batches, **over):
    cfg = config.load("llama3", params=over, record=False)
    return train.schedule_plan(cfg, batches, world)


def test_schedule_plan_on_one_and_eight_gpus():
    """MIMIC-III full with params/llama3.yaml: 47,719 train notes, batch 2, accumulation 8. On one
    GPU a step is 16 notes, 2,983 steps per epoch; on 8 GPUs it is 128 notes and 373 steps, so 500
    warm-up steps cover 45% of 1,119 and only one validation (step 1,000... and the last) is left."""
    one = plan_for(1, 23860)
    assert (one["effective_batch"], one["steps_per_epoch"], one["total_steps"]) == (16, 2983, 8949)
    assert one["evaluations"][:2] == [1000, 2000] and len(one["evaluations"]) == 9
    assert train.schedule_warnings(one) == []
    eight = plan_for(8, 2983)
    assert (eight["effective_batch"], eight["steps_per_epoch"], eight["total_steps"]) == (128, 373, 1119)
    assert round(eight["warmup_share"], 3) == 0.447 and eight["evaluations"] == [1000, 1119]
    warnings = train.schedule_warnings(eight)
    assert warnings == ["warm-up covers 45% of training (500 of 1119 steps): lower warmup_steps (on more processes "
                        "there are fewer steps: keep_effective_batch=true keeps one process's schedule)"]
    kept = plan_for(8, 2983, keep_effective_batch=True)
    assert (kept["grad_accum"], kept["effective_batch"], kept["steps_per_epoch"], kept["total_steps"]) == (1, 16, 2983,
                                                                                                          8949)
    assert train.schedule_warnings(kept) == []
    few = plan_for(1, 100, eval_every=1000, warmup_steps=0)
    assert train.schedule_warnings(few) == ["only one validation in 39 steps (eval_every=1000): best/ is the last "
                                            "model, whatever patience says; lower eval_every"]
    assert train.schedule_text(eight) == (
        "8 processes × 2 notes × 8 accumulated = 128 notes per step; 373 steps per epoch, 1119 in all; warm-up 500 "
        "steps (45%); 2 validations (steps 1000, 1119); 1 save of last/ besides each epoch's end")


def test_keep_effective_batch_needs_a_divisible_accumulation():
    cfg = config.load("llama3", params={"keep_effective_batch": True}, record=False)
    assert train.accumulation(cfg, 4) == 2 and train.accumulation(cfg, 1) == 8
    with pytest.raises(train.TrainingError, match=r"grad_accum \(8\) to be a multiple of the number of processes \(3\)"):
        train.accumulation(cfg, 3)


def test_the_schedule_and_its_warnings_are_printed_and_recorded(tmp_path, capsys):
    cfg = small_cfg(tmp_path, "plan", max_steps=4, eval_every=10, warmup_steps=2)
    train.fit(cfg)
    out = capsys.readouterr().out.splitlines()
    start = next(line for line in out if line.startswith("training 4 steps"))
    assert "1 process × 8 notes × 1 accumulated = 8 notes per step" in start and "warm-up 2 steps (50%)" in start
    assert "warning: warm-up covers 50% of training (2 of 4 steps): lower warmup_steps" in out
    assert "warning: only one validation in 4 steps (eval_every=10): best/ is the last model, whatever patience " \
           "says; lower eval_every" in out
    records = [json.loads(line) for line in (cfg.run_dir / "03_train/progress.jsonl").read_text().splitlines()]
    assert records[0]["plan"]["total_steps"] == 4 and [r["event"] for r in records[1:3]] == ["warning", "warning"]


# ---------------------------------------------------------------- two processes, one answer

def torchrun(tmp_path, run, nproc=2, **env):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), WORKER, "train", run, "--output-root", str(tmp_path), "--quiet"],
                          cwd=tmp_path, env={**ENV, **env}, capture_output=True, text=True, timeout=600)
    return done


def assert_same_weights(a: Path, b: Path, atol=1e-5):
    x, y = trainable_weights(a), trainable_weights(b)
    assert sorted(x) == sorted(y)
    for k in x:
        torch.testing.assert_close(y[k], x[k], atol=atol, rtol=0, msg=k)


@pytest.mark.end_to_end(seconds=38)
@pytest.mark.parametrize("train_backbone", ["full", "lora"])
def test_two_processes_train_as_one_with_twice_the_accumulation(tmp_path, monkeypatch, train_backbone):
    """Two processes taking 4 notes each per step (FSDP for a whole backbone, DDP for LoRA) train
    the weights one process gets from 4 notes × 2 accumulated, within 1e-5 (dropout off: ranks
    draw their own masks). The sharded run's checkpoints are whole model folders."""
    same = {"train_backbone": train_backbone, "batch_size": 4, "max_steps": 3, "eval_every": 3, "save_every": 3,
            "lora_dropout": 0.0}
    one = small_cfg(tmp_path, "one", grad_accum=2, **same)
    two = small_cfg(tmp_path, "two", grad_accum=1, **same)
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    train.fit(one, progress=False)
    done = torchrun(tmp_path, "two", NO_DROPOUT="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(one.run_dir / "03_train/best", two.run_dir / "03_train/best")
    assert_same_weights(one.run_dir / "03_train/last", two.run_dir / "03_train/last")
    a, b = (np.load(c.run_dir / "03_train/predictions_val.npz") for c in (one, two))
    np.testing.assert_allclose(b["scores"], a["scores"], atol=1e-5)
    state = checkpoint.load_trainer_state(two.run_dir / "03_train/last")
    assert state["processes"] == 2 and len(state["rng_ranks"]) == 2
    if train_backbone == "full":  # by parameter name: resumable on any number of processes
        assert all(isinstance(k, str) for k in state["optimizer"]["state"])


@pytest.mark.end_to_end(seconds=38)
def test_a_sharded_run_resumes_on_one_process(tmp_path, monkeypatch):
    """FSDP on 2 processes, stopped after its step-3 save (rank 1 fails in step 5), then resumed in
    one process; keep_effective_batch makes a step 4 × 2 notes on both: the same weights as one
    process trained throughout."""
    same = {"train_backbone": "full", "batch_size": 4, "max_steps": 6, "eval_every": 3, "save_every": 3,
            "grad_accum": 2, "keep_effective_batch": True}  # 4 × 2 notes per step on 1 and on 2 processes
    whole = small_cfg(tmp_path, "whole", **same)
    split = small_cfg(tmp_path, "split", **same)
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    train.fit(whole, progress=False)
    done = torchrun(tmp_path, "split", NO_DROPOUT="1", FAIL_RANK="1", FAIL_STEP="5", FAIL_MARK=str(tmp_path / "mark"))
    assert done.returncode != 0 and "rank 1: RuntimeError: injected fault" in done.stderr
    assert checkpoint.load_trainer_state(split.run_dir / "03_train/last")["step"] == 3
    resumed = dataclasses.replace(split, resume=True)
    history = train.fit(resumed, progress=False)
    assert history["step"].tolist() == [3, 6]
    assert_same_weights(whole.run_dir / "03_train/last", split.run_dir / "03_train/last")
    assert_same_weights(whole.run_dir / "03_train/best", split.run_dir / "03_train/best")
