"""Where a backbone's files are: each path or hub name checked and resolved to a local folder before
any work, in one line when something is missing. It imports neither torch nor transformers, so the
`icdlib run` command and notebook 01 check a backbone without loading them (`icdlib.model.backbones`
loads it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from icdlib.run.config import Config, is_local_path
from icdlib.run.errors import IcdlibError


class BackboneError(IcdlibError):
    """A backbone's files are missing, unreadable or unreachable; the message says what to do."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
HUB_PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class Located:
    """A backbone's parts as local folders (hub names resolved), and what the user gave."""

    model: str  # folder holding config.json (+ tokenizer, + adapter_config.json when adapter-only)
    base: str  # folder of the base LLM an adapter-only model applies to; "" for a full model
    tokenizer: str  # folder the tokenizer is read from
    given: dict  # {"model_path": ..., "base_model_path": ...} as given (local paths absolute)
    name_or_path: str  # the base model's hub name as its config records it (picks llm2vec's formats)


def is_local(ref: str) -> bool:
    """A local folder (or a path-looking string), as opposed to a hub name like `org/name`."""
    return bool(ref) and is_local_path(ref)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_reachable() -> bool:
    """One TCP connect to the hub, a few seconds at most (transformers alone retries for minutes)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_SECONDS).close()
        return True
    except OSError:
        return False


def _cached(name: str) -> str:
    """The local snapshot of hub repository `name` in the Hugging Face cache, or ""."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not in the cache (LocalEntryNotFoundError and friends)
        return ""


def _fetch_hint(name: str, key: str) -> str:
    return (f"download it once where there is internet (huggingface-cli download {name} --local-dir "
            f"/models/{name.split('/')[-1]}) and set {key}=/models/{name.split('/')[-1]}")


def local_folder(ref: str, key: str, probe: dict) -> str:
    """`ref` as a local folder: a path is checked, a hub name is found in the cache or fetched by name.
    `key` names the parameter in the error line; `probe` remembers whether the hub answered."""
    if is_local(ref):
        path = Path(ref).expanduser().resolve()
        if not path.is_dir():
            raise BackboneError(f"{key}={ref}: no such folder")
        return str(path)
    cached = _cached(ref)
    if cached:
        return cached
    if _hub_offline():
        raise BackboneError(f"{key}={ref} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                            + _fetch_hint(ref, key))
    if "reachable" not in probe:
        probe["reachable"] = _hub_reachable()
    if not probe["reachable"]:
        raise BackboneError(f"{key}={ref}: the Hugging Face hub cannot be reached (no answer within "
                            f"{HUB_PROBE_SECONDS:.0f} s) and the model is not in the HF cache: "
                            + _fetch_hint(ref, key) + " (on offline machines set HF_HUB_OFFLINE=1)")
    from huggingface_hub import snapshot_download

    try:  # the hub is there: fetch what transformers would fetch (weights, config, tokenizer)
        return snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as e:
        gated = " (gated: accept its licence on the hub and `huggingface-cli login`)" if "401" in str(e) or "403" in str(e) else ""
        raise BackboneError(f"{key}={ref}: could not be downloaded{gated}: {str(e).splitlines()[0]}") from None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackboneError(f"{path.parent} has no {path.name}: {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BackboneError(f"{path} is not valid JSON ({e}): re-download it") from None


def locate(model_path: str, base_model_path: str = "") -> Located:
    """Check a backbone's files before any work and return them as local folders; one line if not.

    `model_path` is an LLM2Vec model: either adapter-only (McGill's `-mntp` repositories hold
    config.json, the tokenizer and a LoRA adapter whose adapter_config.json names the base LLM),
    or a full model. For an adapter-only model the base is `base_model_path` when given, else the
    base its adapter_config.json names, looked up in the Hugging Face cache (or fetched).
    """
    probe: dict = {}
    model = Path(local_folder(model_path, "model_path", probe))
    config = _read_json(model / "config.json", "not a model folder (expected an LLM2Vec model: config.json, "
                                              "tokenizer, weights or adapter)")
    given = {"model_path": str(model) if is_local(model_path) else model_path, "base_model_path": ""}
    base = ""
    if (model / "adapter_config.json").is_file():
        adapter = _read_json(model / "adapter_config.json", "")
        named = adapter.get("base_model_name_or_path") or ""
        ref = base_model_path or named
        if not ref:
            raise BackboneError(f"{model}/adapter_config.json names no base model: set base_model_path")
        key = "base_model_path" if base_model_path else f"base_model_path (the base named in {model.name}/adapter_config.json)"
        base = local_folder(ref, key, probe)
        given["base_model_path"] = base if is_local(ref) else ref
        if not list(Path(base).glob("*.safetensors")) and not list(Path(base).glob("*.bin")):
            raise BackboneError(f"base model folder {base} holds no weights (*.safetensors): download the whole repository")
        _read_json(Path(base) / "config.json", "not a model folder")
    elif not list(model.glob("*.safetensors")) and not list(model.glob("*.bin")):
        raise BackboneError(f"{model} holds neither weights (*.safetensors) nor a LoRA adapter (adapter_config.json)")
    tokenizer = next((str(f) for f in (model, Path(base) if base else None)
                      if f is not None and any((f / n).is_file() for n in TOKENIZER_FILES)), "")
    if not tokenizer:
        raise BackboneError(f"no tokenizer in {model}" + (f" or {base}" if base else "")
                            + f" (expected one of {', '.join(TOKENIZER_FILES)})")
    return Located(str(model), base, tokenizer, given, config.get("_name_or_path") or "")


def check(cfg: Config) -> Located | None:
    """Fail fast: the backbone of `cfg` (and its second adapter) is loadable, before step 01 works."""
    if not cfg.model_path and not cfg.base_model_path:
        return None
    found = locate(cfg.model_path or cfg.base_model_path, cfg.base_model_path if cfg.model_path else "")
    if cfg.adapter_path:
        adapter = Path(local_folder(cfg.adapter_path, "adapter_path", {}))
        _read_json(adapter / "adapter_config.json", "adapter_path must be a PEFT adapter folder")
    return found
