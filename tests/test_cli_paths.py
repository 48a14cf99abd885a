"""Paths mean what the caller typed, `train --run-dir` trains where it is told, the README's torchrun
commands parse, two torchrun "nodes" on localhost score every admission once, and a successful
run prints no kernel error."""

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import assert_scored_once, small_cfg

from icdlib import cli
from icdlib.run import config
from icdlib.data import preprocess

ROOT = Path(__file__).resolve().parent.parent
HUB = "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp"


# ---------------------------------------------------------------- A: paths from the caller's cwd

def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    here = tmp_path / "here"
    (here / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(here)
    values = config.absolute_paths({"model_path": HUB, "base_model_path": "meta-llama/Meta-Llama-3-8B-Instruct",
                                    "adapter_path": "", "mimic_dir": "", "output_root": "relout",
                                    "split_dir": "../splits", "top50_file": "~/top50.txt", "lr": 1.0})
    assert values == {"model_path": HUB, "base_model_path": "meta-llama/Meta-Llama-3-8B-Instruct", "adapter_path": "",
                      "mimic_dir": "", "output_root": str(here / "relout"), "split_dir": str(tmp_path / "splits"),
                      "top50_file": os.path.expanduser("~/top50.txt"), "lr": 1.0}
    # a model key is a local folder when it exists here or looks like a path; else a hub name
    local = config.absolute_paths({"model_path": "models/m", "base_model_path": "./not-yet", "adapter_path": "../a"})
    assert local == {"model_path": str(here / "models/m"), "base_model_path": str(here / "not-yet"),
                     "adapter_path": str(tmp_path / "a")}
    assert config.resolve("llama3").model_path == HUB
    assert config.resolve("llama3", {"model_path": "models/m"}).model_path == str(here / "models/m")
    assert config.resolve("tiny", {"mimic_dir": "mimic"}, cwd=tmp_path).mimic_dir == str(tmp_path / "mimic")
    assert config.resolve("tiny").output_root == "" and config.resolve("tiny").run_dir == config.OUTPUTS_DIR / "tiny"


def test_params_file_paths_resolve_against_the_caller_not_the_file(tmp_path, monkeypatch):
    params_dir = tmp_path / "params"
    params_dir.mkdir()
    (params_dir / "site.yaml").write_text(f"mimic_dir: data/mimic\nmodel_path: {HUB}\noutput_root: runs\n")
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    cfg = config.load("site", params_dir=params_dir)
    assert cfg.mimic_dir == str(here / "data/mimic") and cfg.model_path == HUB
    assert cfg.run_dir == here / "runs" / "site"
    assert json.loads((here / "runs/site/config.json").read_text())["output_root"] == str(here / "runs")


def test_relative_output_root_keeps_the_whole_run_under_the_working_directory(relative_run):
    work, done, before, run_dir = relative_run.work, relative_run.done, relative_run.before, relative_run.run_dir
    for rel in ("config.json", "01_preprocess/notes.parquet", "03_train/history.csv", "03_train/best/icdlib.json",
                "03_train/predictions_val.npz", "04_evaluate/metrics.json"):
        assert (run_dir / rel).is_file(), rel
    assert sorted(p.name for p in (run_dir / "reports").glob("*.html")) == [f"{n}.html" for n in (
        "01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis", "index")]
    assert sorted(p.name for p in work.iterdir()) == ["mimic", "relout", "splits"]
    assert sorted(p.name for p in (work / "relout").iterdir()) == ["index.html", "r"]  # the output root's index
    assert "href='r/reports/index.html'" in (work / "relout" / "index.html").read_text()
    for path, existed in before.items():
        assert path.exists() == existed, f"the run wrote into {path}"
    recorded = json.loads((run_dir / "config.json").read_text())
    assert (recorded["output_root"], recorded["mimic_dir"], recorded["split_dir"]) == (
        str(work / "relout"), str(work / "mimic"), str(work / "splits"))
    assert f"reports in {run_dir / 'reports'}" in done.stdout


def test_relative_mimic_and_split_dirs_are_read_from_the_working_directory(relative_run):
    assigned = relative_run.assigned
    notes = preprocess.load(relative_run.run_dir).notes
    assert len(notes) > 50 and set(notes["split"]) == {"train", "val", "test"}
    assert (notes.set_index("hadm_id")["split"] == assigned.reindex(notes["hadm_id"]).to_numpy()).all()


# ---------------------------------------------------------------- E: no kernel error on success

def test_successful_run_prints_no_kernel_error(relative_run):
    done = relative_run.done
    assert "KeyboardInterrupt" not in done.stderr + done.stdout
    assert "[IPKernelApp] ERROR" not in done.stderr


def test_kernel_shutdown_sends_no_interrupt():
    """jupyter_client's shutdown begins with SIGINT, which hits the kernel while it still handles
    papermill's last kernel_info request; our manager shuts down without it. An explicit
    interrupt still reaches the kernel."""
    from icdlib.run.kernel import kernel_manager_class

    sent = []

    class Spy(kernel_manager_class()):
        async def _async_signal_kernel(self, signum):
            sent.append(signum)
            await super()._async_signal_kernel(signum)

    async def start_interrupt_stop():
        km = Spy(kernel_name="python3")
        await km.start_kernel(extra_arguments=["--IPKernelApp.log_level=ERROR"])
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            await km.interrupt_kernel()
            await km.shutdown_kernel()
        finally:
            kc.stop_channels()
        return await km.is_alive()

    assert asyncio.run(start_interrupt_stop()) is False
    assert sent == [signal.SIGINT]


# ---------------------------------------------------------------- B: train --run-dir COPY

def test_train_writes_into_the_folder_it_is_given(tmp_path, monkeypatch):
    orig = small_cfg(tmp_path / "orig", "a", max_steps=2, eval_every=2)
    shutil.copytree(orig.run_dir, tmp_path / "copies" / "b")
    shutil.copytree(orig.run_dir, tmp_path / "copies" / "c")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--run-dir", "copies/b", "--quiet"]) == 0
    assert cli.main(["train", "c", "--output-root", "copies", "--quiet"]) == 0
    assert not (orig.run_dir / "03_train").exists()
    for name in ("b", "c"):
        out = tmp_path / "copies" / name / "03_train"
        assert (out / "history.csv").is_file() and (out / "predictions_val.npz").is_file()
        assert (out / "best" / "icdlib.json").is_file() and (out / "last").is_dir()
    assert sorted(p.name for p in (tmp_path / "copies").iterdir()) == ["b", "c"]


def test_train_refuses_ambiguous_folders(tmp_path, capsys):
    assert cli.main(["train"]) == 2
    assert "train needs a run" in capsys.readouterr().err
    assert cli.main(["train", "x", "--run-dir", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert cli.main(["train", "--run-dir", str(tmp_path), "-p", "run=other"]) == 2
    assert "not with -p output_root=/run=" in capsys.readouterr().err


# ---------------------------------------------------------------- C: the README's torchrun commands

def readme_torchrun_commands() -> list[str]:
    """Every `torchrun ... -m icdlib train ...` command in the README (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text())
    found = re.findall(r"torchrun [^`\n]*-m icdlib train[^`\n]*", text)
    return [c.split("#")[0].strip() for c in found]


def test_readme_torchrun_commands_parse():
    from torch.distributed.run import get_args_parser

    commands = readme_torchrun_commands()
    assert "torchrun --nproc_per_node 4 -m icdlib train llama3" in commands
    assert any("--nnodes" in c and "--rdzv-backend c10d" in c for c in commands)
    for command in commands:
        ns = get_args_parser().parse_args(shlex.split(command)[1:])
        assert ns.module and ns.training_script == "icdlib", command
        args = cli.parser().parse_args(ns.training_script_args)
        assert args.command == "train" and (args.run or args.run_dir), command


def test_every_train_option_passes_through_torchrun():
    """torchrun takes unique prefixes of its own options and rejects ambiguous ones, even after
    the script name: each option `train` shows must reach icdlib untouched."""
    from torch.distributed.run import get_args_parser

    sub = next(a for a in cli.parser()._actions if a.dest == "command").choices["train"]
    shown = [o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
    assert {"--run-dir", "--output-root", "-p", "--param", "--quiet"} <= set(shown)
    for option in shown:
        for tail in (["llama3", option, "v"], [option, "v", "llama3"]):
            ns = get_args_parser().parse_args(["--nproc_per_node", "4", "-m", "icdlib", "train", *tail])
            assert ns.training_script_args == ["train", *tail], option
    with pytest.raises(SystemExit):  # why the run is positional: torchrun's --run-path
        get_args_parser().parse_args(["--nproc_per_node", "4", "-m", "icdlib", "train", "--run", "llama3"])


def test_every_command_says_what_it_does_and_every_option_has_help(capsys):
    """`python -m icdlib COMMAND --help` describes the command and every option it shows (was: synth had no
    description, its --seed and --quiet no help)."""
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest}"
    with pytest.raises(SystemExit):
        cli.main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Write a synthetic twin of MIMIC-III v1.4" in text
    assert "--seed SEED random seed: the same seed writes the same twin (default: 0)" in text
    assert "--quiet no progress bar" in text


# ---------------------------------------------------------------- D: two nodes on localhost

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.end_to_end(seconds=30)
def test_two_nodes_score_every_admission_once(tmp_path):
    """Two torchrun agents, one process each, meet through a c10d rendezvous on 127.0.0.1 as two
    nodes would; rank 0 must write the scores one process computes, for every val admission."""
    cfg = small_cfg(tmp_path, "nodes", max_steps=2, eval_every=1)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "icdlib-test",
           "--rdzv-conf", "join_timeout=120", "--local-addr", "127.0.0.1",
           "-m", "icdlib", "train", "nodes", "--output-root", str(tmp_path), "--quiet"]
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    try:
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node, log in zip(nodes, logs):
            if node.poll() is None:
                node.kill()
                node.wait()
            log.close()
    for i, code in enumerate(codes):
        assert code == 0, (tmp_path / f"node{i}.log").read_text()[-3000:]
    assert_scored_once(cfg)
