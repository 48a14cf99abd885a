"""Model folders: what a trained coder is on disk, and how it comes back.

A model folder holds only what training changed, in Hugging Face formats, plus what is needed
to rebuild the rest:

    icdlib.json          backbone record (paths as given, architecture, input format), label codes, config,
                         the versions that wrote it
    adapter/             the peft LoRA adapter (train_backbone: lora)
    backbone/            the whole backbone + tokenizer (train_backbone: full)
    head.safetensors     the label head
    trainer_state.pt     optimizer, scheduler, step, RNG states (checkpoints only, for resume)

Folders are written under a temporary name and renamed, so a killed run never leaves a
half-written checkpoint behind; a save that fills the disk stops in one line saying which
checkpoints are still whole (`full_disk_said`).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from icdlib.model import backbone_files, backbones
from icdlib.run import provenance
from icdlib.run.config import Config
from icdlib.model.encoding import PLAIN, SegmentFormat
from icdlib.run.errors import DiskFullError, IcdlibError
from icdlib.model.models import ICDCoder
from icdlib.run.runfolder import atomic_path

MANIFEST = "icdlib.json"


def _unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "encoder") else model


def backbone_record(model_path: str, base_model_path: str = "", encoder=None, fmt: SegmentFormat = PLAIN) -> dict:
    """What a model folder needs to find its backbone again: the paths as the user gave them
    (hub names as names, local folders absolute), its architecture (`backbones.architecture`), the input format."""
    given = backbone_files.locate(model_path, base_model_path).given if model_path else {}
    record = {"model_path": given.get("model_path", ""), "base_model_path": given.get("base_model_path", ""),
              "input_format": fmt.to_dict()}
    if encoder is not None:
        base = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
        record["architecture"] = backbones.architecture(base.config)
    return record


def save(folder: Path, coder: ICDCoder, cfg: Config, labels: pd.DataFrame, backbone: dict | str,
         tokenizer, trainer_state: dict | None = None, weights: dict | None = None) -> Path:
    """Write a model folder (see the module docstring); `labels` is the label table of step 01,
    `backbone` the record of `backbone_record` (or a backbone folder). `weights`: the coder's
    whole state dict when its own tensors are shards (`distributed.full_weights`)."""
    coder = _unwrap(coder)
    folder = Path(folder)
    if isinstance(backbone, (str, Path)):
        backbone = backbone_record(str(backbone), encoder=coder.encoder)
    head = coder.head.state_dict() if weights is None else _part(weights, "head.")
    with atomic_path(folder) as tmp, backbones.quiet():
        tmp.mkdir(parents=True)
        if cfg.train_backbone == "lora":
            coder.encoder.save_pretrained(tmp / "adapter")
        elif cfg.train_backbone == "full":
            whole = None if weights is None else _part(weights, "encoder.")
            coder.encoder.save_pretrained(tmp / "backbone", state_dict=whole)
            tokenizer.save_pretrained(tmp / "backbone")
        save_file({k: v.detach().float().cpu().contiguous() for k, v in head.items()}, tmp / "head.safetensors")
        manifest = {"backbone": {**backbone, "relative": _relative(backbone, folder)},
                    "labels": labels["code"].tolist(), "kinds": labels["kind"].tolist(),
                    "titles": labels["short_title"].tolist(), "config": cfg.to_dict(),
                    "versions": provenance.versions()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
    return folder


def _relative(backbone: dict, folder: Path) -> dict:
    """Local backbone folders relative to the model folder too: a run folder that moves with its
    backbone inside (the tiny one) still finds it; one that moves alone falls back to the absolute path."""
    out = {}
    for key in ("model_path", "base_model_path"):
        ref = backbone.get(key, "")
        if ref and Path(ref).is_absolute() and Path(ref).exists():
            out[key] = os.path.relpath(Path(ref).resolve(), folder.resolve())
    return out


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.exists():
        raise IcdlibError(f"{folder} does not exist")
    if not (folder / MANIFEST).is_file():
        raise IcdlibError(f"{folder} is not an icdlib model folder (no {MANIFEST})")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        mode = manifest["config"]["train_backbone"]
        manifest["labels"], manifest["backbone"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise IcdlibError(f"{folder / MANIFEST} is damaged ({type(e).__name__}: {e}): copy the model folder again") from None
    for part, needed in (("head.safetensors", True), ("adapter", mode == "lora"), ("backbone", mode == "full")):
        if needed and not (folder / part).exists():
            raise IcdlibError(f"model folder {folder} lacks {part}")
    if isinstance(manifest["backbone"], str):  # written before backbone records had fields
        manifest["backbone"] = {"model_path": manifest["backbone"], "base_model_path": "", "relative": {}}
    return manifest


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # one is enough (fast, sentencepiece, BPE)


def check_files(folder: Path, manifest: dict) -> None:
    """The model folder's own files are there and whole, before anything is built from them: every
    `.safetensors` opens (its header and its length agree: a copy cut short does not), a fully
    trained backbone has its config and a tokenizer, an adapter its config. One line naming the file
    otherwise (transformers' own errors name neither the file nor the cause)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    mode = manifest["config"]["train_backbone"]
    needed = {"full": ["backbone/config.json"], "lora": ["adapter/adapter_config.json",
                                                          "adapter/adapter_model.safetensors"]}.get(mode, [])
    for rel in needed:
        if not (folder / rel).is_file():
            raise IcdlibError(f"model folder {folder} lacks {rel}: copy the model folder again")
    if mode == "full" and not any((folder / "backbone" / name).is_file() for name in TOKENIZER_FILES):
        raise IcdlibError(f"model folder {folder} has no tokenizer in backbone/ (none of {', '.join(TOKENIZER_FILES)})"
                          f": copy the model folder again")
    for file in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise IcdlibError(f"model folder {folder}: {file.relative_to(folder)} is damaged ({reason}): it was cut "
                              f"short or is not a safetensors file; copy the model folder again") from None


PREDICT_FLAGS = {"model_path": "backbone-path", "base_model_path": "base-model-path"}  # predict's option of each key


def backbone_location(folder: Path, manifest: dict, model_path: str = "", base_model_path: str = "") -> tuple[str, str]:
    """(model_path, base_model_path) to load: the overrides, else the recorded paths — relative to
    the model folder first, then absolute, then hub names — with one line when none is there."""
    record = manifest["backbone"]
    found = {}
    for key, override in (("model_path", model_path), ("base_model_path", base_model_path)):
        if override:
            found[key] = override
            continue
        recorded, rel = record.get(key, ""), record.get("relative", {}).get(key, "")
        if rel and (Path(folder) / rel).exists():
            found[key] = str((Path(folder) / rel).resolve())
        elif not recorded or not Path(recorded).is_absolute() or Path(recorded).exists():
            found[key] = recorded
        else:
            flag = PREDICT_FLAGS[key]
            raise IcdlibError(f"the backbone of {folder} is not where it was trained: {key} was {recorded} "
                              f"(not found); point to it with predict --{flag} DIR or icdlib.predict.load(..., {key}=DIR)")
    if not found["model_path"]:
        raise IcdlibError(f"{folder}/{MANIFEST} records no backbone: pass --{PREDICT_FLAGS['model_path']}")
    return found["model_path"], found["base_model_path"]


def recorded_versions(folder: Path, manifest: dict) -> dict | None:
    """The versions a model folder was written with: its own record, else its run's
    03_train/manifest.json (folders written before model folders recorded them); None if neither."""
    recorded = manifest.get("versions")
    if not recorded:
        try:
            recorded = json.loads((Path(folder).parent / "manifest.json").read_text()).get("versions")
        except (OSError, ValueError, AttributeError):
            recorded = None
    return recorded or None


def written_with(folder: Path, manifest: dict) -> str:
    """`recorded_versions` as one phrase (`transformers 4.44.2, peft 0.17.1, llm2vec 0.2.3, torch 2.13.0`)."""
    recorded = recorded_versions(folder, manifest)
    if not recorded:
        return "an icdlib that recorded no versions (transformers 4.44.2 and llm2vec 0.2.3, before December 2026)"
    return ", ".join(f"{k} {recorded[k]}" for k in ("transformers", "peft", "llm2vec", "torch") if recorded.get(k))


def load(folder: Path, dtype: torch.dtype = torch.float32, trainable: bool = False,
         expect_labels: list[str] | None = None, model_path: str = "", base_model_path: str = "",
         device: torch.device | None = None):
    """(coder, tokenizer, manifest, config) rebuilt from a model folder; `model_path` and
    `base_model_path` override where the backbone is looked for (a run folder moved elsewhere).

    A folder written by another software stack loads when its files fit this one; when they do
    not, one line names the versions it was written with and the versions here."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_files(folder, manifest)
    labels = manifest["labels"]
    _check_labels(folder, labels, expect_labels)
    cfg = Config(**{k: v for k, v in manifest["config"].items() if k in Config.__dataclass_fields__})
    try:
        encoder, tokenizer = _load_encoder(folder, manifest, cfg, dtype, trainable, model_path, base_model_path, device)
        coder = ICDCoder(encoder, len(labels), cfg.head, cfg.attention_dim)
        load_head(coder, folder)
    except IcdlibError:
        raise
    except (RuntimeError, ValueError, KeyError, OSError, TypeError) as e:
        here = provenance.versions()
        first = " ".join(line.strip() for line in str(e).strip().splitlines()[:2]) or type(e).__name__
        first = first if len(first) <= 300 else first[:299] + "…"
        raise IcdlibError(f"model folder {folder} was written with {written_with(folder, manifest)} and does not load "
                          f"with transformers {here['transformers']}, peft {here['peft']} here ({type(e).__name__}: "
                          f"{first}): retrain it, or load it in the environment that wrote it") from None
    return coder, tokenizer, manifest, cfg


def _load_encoder(folder: Path, manifest: dict, cfg: Config, dtype, trainable: bool, model_path: str,
                  base_model_path: str, device):
    from peft import PeftModel

    if cfg.train_backbone == "full":
        encoder, tokenizer = backbones.load(folder / "backbone", dtype, device=device, attention=cfg.attention)
        encoder.requires_grad_(trainable)
        return encoder, tokenizer
    where, base = backbone_location(folder, manifest, model_path, base_model_path)
    encoder, tokenizer = backbones.load(where, dtype, base_model_path=base, device=device, load_in=cfg.load_in,
                                        attention=cfg.attention)
    recorded = manifest["backbone"].get("architecture")
    # a folder written before architectures were recorded holds a hash of transformers 4's config
    # dict, which transformers 5 cannot reproduce: there the adapter's and head's shapes are the check
    differs = backbones.architecture_difference(recorded, encoder.config) if recorded else ""
    if differs:
        raise IcdlibError(f"the backbone at {where} is not the one {folder} was trained on: {differs}")
    encoder.requires_grad_(False)
    if cfg.train_backbone == "lora":
        with backbones.quiet():
            encoder = PeftModel.from_pretrained(encoder, str(folder / "adapter"), is_trainable=trainable)
    return encoder, tokenizer


def _check_labels(folder: Path, labels: list[str], expected: list[str] | None) -> None:
    if expected is not None and list(expected) != labels:
        raise IcdlibError(f"checkpoint {folder} was trained on another label space ({len(labels)} labels, "
                          f"this run has {len(expected)}): use a new run folder or the same preprocessing")


def input_format(manifest: dict) -> SegmentFormat:
    return SegmentFormat.from_dict(manifest["backbone"].get("input_format"))


def _part(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def full_weights(folder: Path, expect_labels: list[str] | None = None) -> dict:
    """A fully fine-tuned model folder's weights as one state dict of the coder (`encoder.*`,
    `head.*`), on the CPU: what `distributed.load_full_weights` puts into a sharded coder."""
    folder = Path(folder)
    _check_labels(folder, read_manifest(folder)["labels"], expect_labels)
    weights = {}
    for file in sorted((folder / "backbone").glob("*.safetensors")):
        weights.update({f"encoder.{k}": v for k, v in load_file(file).items()})
    weights.update({f"head.{k}": v for k, v in load_file(folder / "head.safetensors").items()})
    return weights


@torch.no_grad()
def load_into(coder: ICDCoder, folder: Path, cfg: Config, expect_labels: list[str] | None = None) -> None:
    """Put a checkpoint's trained weights (adapter or backbone, and head) into a live coder, in place.

    Resuming and scoring `best/` this way keeps one backbone in memory instead of loading a second.
    """
    from peft import set_peft_model_state_dict
    from safetensors import safe_open

    folder = Path(folder)
    manifest = read_manifest(folder)
    _check_labels(folder, manifest["labels"], expect_labels)
    coder = _unwrap(coder)
    if cfg.train_backbone == "lora":
        weights = load_file(folder / "adapter" / "adapter_model.safetensors")
        result = set_peft_model_state_dict(coder.encoder, weights)
        if getattr(result, "unexpected_keys", None):
            raise IcdlibError(f"{folder}/adapter does not fit this model ({len(result.unexpected_keys)} unexpected keys)")
    elif cfg.train_backbone == "full":
        params = dict(coder.encoder.named_parameters()) | dict(coder.encoder.named_buffers())
        files = sorted((folder / "backbone").glob("*.safetensors"))
        seen = set()
        for file in files:  # tensor by tensor: never a second copy of the backbone in memory
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    if name in params:
                        params[name].copy_(f.get_tensor(name))
                        seen.add(name)
        missing = [n for n, _ in coder.encoder.named_parameters() if n not in seen]
        if missing:
            raise IcdlibError(f"{folder}/backbone lacks {len(missing)} weights of this model (first: {missing[0]})")
    load_head(coder, folder)


def load_head(coder: ICDCoder, folder: Path) -> None:
    """head.safetensors into `coder.head`, refused in one line when it is another model's head."""
    head, own = load_file(Path(folder) / "head.safetensors"), coder.head.state_dict()
    wrong = [k for k in own if k not in head or head[k].shape != own[k].shape] + [k for k in head if k not in own]
    if wrong:
        k = wrong[0]
        found = tuple(head[k].shape) if k in head else "missing"
        raise IcdlibError(f"{folder}/head.safetensors is not the head this folder describes ({k}: {found}, expected "
                          f"{tuple(own[k].shape) if k in own else 'no such weight'}; {coder.n_labels} labels in "
                          f"icdlib.json): the folder mixes two models, copy it again")
    coder.head.load_state_dict({k: v.to(own[k].dtype) for k, v in head.items()})


def load_trainer_state(folder: Path) -> dict:
    """`trainer_state.pt` on the CPU, wherever it was written: a rank of a resumed torchrun job must
    not put state saved from cuda:0 back on cuda:0 (`optimizer.load_state_dict` then moves each
    state to its parameter's device)."""
    return torch.load(Path(folder) / "trainer_state.pt", weights_only=False, map_location="cpu")


def resumable(folder: Path) -> bool:
    """A checkpoint training can continue from: a model folder with `trainer_state.pt` that reads."""
    folder = Path(folder)
    if not (folder / "trainer_state.pt").is_file():
        return False
    try:
        read_manifest(folder)
    except IcdlibError:
        return False
    return saved_step(folder) is not None  # mmap: not the optimizer state (GBs for a full backbone)


def saved_step(folder: Path) -> int | None:
    """The training step of a checkpoint's `trainer_state.pt`, read without loading the optimizer
    state (mmap); None when it has none that reads."""
    try:
        state = torch.load(Path(folder) / "trainer_state.pt", weights_only=False, mmap=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, ValueError, KeyError):
        return None
    return state.get("step") if isinstance(state, dict) else None


def whole(folders) -> dict[Path, int | None]:
    """Those of `folders` that are model folders that read, each with its step (`saved_step`)."""
    found = {}
    for folder in map(Path, folders):
        try:
            read_manifest(folder)
        except IcdlibError:
            continue
        found[folder] = saved_step(folder)
    return found


@contextmanager
def full_disk_said(step: int, *checkpoints: Path):
    """A save at `step` that fills the disk (`DiskFullError`, from `atomic_path`) says in its one line
    which of `checkpoints` (`last/`, `best/`) are still whole, and how to go on. Saves are atomic,
    so those are the copies from before the save; each is read again to be sure."""
    try:
        yield
    except DiskFullError as e:
        kept = whole(checkpoints)
        names = [f"{f.name}/" + ("" if at is None else f" of step {at}") for f, at in kept.items()]
        said = (f"kept {' and '.join(names)} as {'it was' if len(names) == 1 else 'they were'}" if names
                else "no checkpoint was written before")
        resumes = any(at is not None for at in kept.values())  # a last/ with its trainer state
        then = "free space there, then rerun the command with -p resume=true" if resumes else "free space there and rerun"
        raise DiskFullError(f"{e.space} saving step {step}: {said}, nothing half-written is left; {then}",
                            space=e.space) from None


def recover(folder: Path) -> Path | None:
    """Put back the newest intact copy of `folder` that a killed `atomic_path` save left as
    `.<name>.tmp-<pid>.<host>` (a process killed between its two renames: the old copy moved aside,
    the complete new one not yet in place). Only copies of dead processes (or this one) count, and
    another node's once untouched for `QUIET_S`; a damaged `folder` in the way is removed. Returns
    `folder`, or None when there is nothing to recover."""
    from icdlib.run.runfolder import LEFTOVER, QUIET_S, _remove, alive, host_tag

    folder = Path(folder)
    found = []
    for entry in folder.parent.glob(f".{folder.name}.tmp-*"):
        m = LEFTOVER.match(entry.name)
        if not m or m["kind"] != "tmp" or not entry.is_dir():
            continue
        pid, here = int(m["pid"]), m["rest"] in (None, "", f".{host_tag()}")
        if here and pid != os.getpid() and alive(pid):
            continue
        if not here and time.time() - entry.stat().st_mtime < QUIET_S:  # another node's: maybe a live save
            continue
        found.append(entry)
    for copy in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if resumable(copy):
            if folder.exists() or folder.is_symlink():
                _remove(folder)
            os.replace(copy, folder)
            return folder
    return None
