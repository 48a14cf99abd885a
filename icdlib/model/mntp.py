"""Masked next-token prediction (MNTP): adapt a bidirectional encoder to the notes before fine-tuning.

LLM2Vec makes a decoder an encoder in steps: bidirectional attention, then MNTP, which masks a
share of the tokens and trains the model to predict each masked token i from its output at
position i-1, through the decoder's own language-model head. This module runs that step on the
**train split's notes only** (never val or test text), following McGill-NLP/llm2vec's
`experiments/run_mntp.py` and `train_configs/mntp/*.json`:

* the corpus is the notes tokenised as the tokenizer does by default (BOS per note), concatenated
  and cut into `mntp_length`-token chunks (512), the remainder dropped;
* masking (`mntp_masking`): `bert` selects 20% of the tokens (never special ones) and replaces
  80% of them by the mask token, 10% by a random token, keeps 10% (transformers'
  DataCollatorForLanguageModeling); `all_mask` selects 80% and replaces all (llm2vec's Mistral
  recipe); `auto` picks `all_mask` for Mistral and `bert` otherwise. The mask token is the
  tokenizer's, else `_` (llm2vec's "blank");
* loss: cross-entropy of the logits at i-1 against the token at i, over masked tokens (the shift
  of LlamaForCausalLM.forward, which llm2vec's *BiForMNTP classes inherit);
* LoRA r=16, alpha 32, dropout 0.05 on the seven projections of the inner model (`lora_*`), AdamW
  without weight decay, gradient clip 1.0. A McGill `-mntp` model_path is not merged first: its
  own MNTP adapter keeps training;
* the learning rate (`schedule_length`, `lr_factor`): the recipe leaves the Trainer's defaults,
  a linear decay without warm-up over `num_train_epochs=3` epochs, and ends training after
  `stop_after_n_steps` (1000) steps, long before: its rate stays near 5e-5. Here the same, the
  decay over `mntp_epochs` (3) epochs of the chunks, cut at `mntp_steps`;
* the LM head (`mntp_head: auto`): the recipe puts LoRA on the inner model only
  (`model.model = initialize_peft(model.model)`), so the decoder's own `lm_head`, outside it,
  stays trainable and the Trainer updates it with the LoRA; a head tied to the input embeddings
  is frozen with them. Its save keeps the adapter alone (`save_peft_model`): the trained head is
  dropped, as here;
* under torchrun every process draws the whole batch's masks (the draws of one process) and
  trains on its contiguous part of the batch (`share`), its loss weighted by its share of the
  batch's masked tokens, so that each update and logged loss are those of one process on the
  whole batch. Dropout differs between processes: it is seeded by `seed`, rank and step.

The result is `03_train/mntp/`, laid out like McGill's `-mntp` repositories (config.json,
tokenizer, adapter_config.json naming the base, adapter_model.safetensors with keys
`base_model.model.layers.*`), so another run loads it with `model_path` (and `base_model_path`)
as it loads theirs. Its `history.csv` is the MNTP learning curve, one row per step (loss, the
update's learning rate, and the tokens and wall time so far, which `cost` sets beside the
fine-tuning's); `03_train/mntp_last/` holds the state `resume: true` continues from; a finished
stage is reused while its key is unchanged.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from icdlib.model import backbones
from icdlib.model.backbone_files import Located
from icdlib.run.config import Config
from icdlib.run.errors import IcdlibError
from icdlib.model.inference import Env, autocast, compute_dtype
from icdlib.model.models import checkpoint_activations
from icdlib.run.progress import Heartbeat, duration, seconds_left
from icdlib.run.runfolder import Run, atomic_path, content_key, read_key, source_hash, write_key

RECIPES = {"bert": 0.2, "all_mask": 0.8}  # share of tokens selected, per masking style (llm2vec's configs)
BLANK_MASK = "_"
PARAMS = ("mntp_steps", "mntp_masking", "mntp_probability", "mntp_length", "mntp_batch_size", "mntp_lr",
          "mntp_epochs", "mntp_head", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "seed")


@dataclass(frozen=True)
class Masking:
    style: str  # bert | all_mask
    probability: float
    mask_id: int


def masking(cfg: Config, tokenizer, config) -> Masking:
    """The recipe for this backbone: `auto` is all_mask for Mistral, bert otherwise."""
    style = cfg.mntp_masking
    if style == "auto":
        style = "all_mask" if type(config).__name__.startswith("Mistral") else "bert"
    probability = cfg.mntp_probability or RECIPES[style]
    token = tokenizer.mask_token or BLANK_MASK
    mask_id = tokenizer.convert_tokens_to_ids(token)
    if mask_id is None or (mask_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise IcdlibError(f"MNTP: the tokenizer has no mask token and no {BLANK_MASK!r} token to stand for it")
    return Masking(style, probability, int(mask_id))


def corpus(texts: list[str], tokenizer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, special) of shape [chunks, length]: the notes tokenised, concatenated, cut into chunks."""
    encoded = tokenizer(list(texts), return_special_tokens_mask=True)
    ids = np.concatenate([np.asarray(x, np.int64) for x in encoded["input_ids"]]) if texts else np.zeros(0, np.int64)
    special = np.concatenate([np.asarray(x, bool) for x in encoded["special_tokens_mask"]]) if texts else np.zeros(0, bool)
    n = len(ids) // length
    if n == 0:
        raise IcdlibError(f"MNTP: the train notes hold {len(ids):,} tokens, fewer than one {length}-token chunk "
                          f"(lower mntp_length or set mntp_steps=0)")
    return (torch.from_numpy(ids[: n * length].reshape(n, length)),
            torch.from_numpy(special[: n * length].reshape(n, length)))


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, recipe: Masking, vocab_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels): labels hold the original token where it was selected, -100 elsewhere.

    The same draws, in the same order, as transformers' DataCollatorForLanguageModeling
    (`bert`) and llm2vec's full-masking collator (`all_mask`), from `generator`."""
    inputs, labels = ids.clone(), ids.clone()
    chance = torch.full(ids.shape, recipe.probability)
    chance.masked_fill_(special, 0.0)
    selected = torch.bernoulli(chance, generator=generator).bool()
    labels[~selected] = -100
    if recipe.style == "all_mask":
        inputs[selected] = recipe.mask_id
        return inputs, labels
    replaced = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & selected
    inputs[replaced] = recipe.mask_id
    randomised = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & selected & ~replaced
    inputs[randomised] = torch.randint(vocab_size, ids.shape, dtype=ids.dtype, generator=generator)[randomised]
    return inputs, labels


def mntp_loss(encoder, lm_head: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
              reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the token at i given the output at i-1 over the selected tokens (`targets`),
    their mean or (`reduction="sum"`) their sum; only those positions go through the LM head (a
    128k vocabulary over every position would not fit)."""
    hidden = encoder(input_ids=inputs, attention_mask=torch.ones_like(inputs), use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction=reduction)


def schedule_length(cfg: Config, chunks: int) -> int:
    """Steps the learning rate decays over: `mntp_epochs` epochs of `chunks` chunks in batches of
    `mntp_batch_size` (the Trainer's `ceil(num_train_epochs × batches per epoch)`), or `mntp_steps`
    with `mntp_epochs: 0`. The stage runs `min(mntp_steps, schedule_length)` steps (`stage_steps`)."""
    if cfg.mntp_epochs == 0:
        return cfg.mntp_steps
    return max(1, math.ceil(cfg.mntp_epochs * math.ceil(chunks / cfg.mntp_batch_size)))


def stage_steps(cfg: Config, chunks: int) -> int:
    """The stage's optimizer steps: `mntp_steps`, or fewer when the schedule ends first (as the
    recipe's Trainer stops at the end of its epochs)."""
    return min(cfg.mntp_steps, schedule_length(cfg, chunks))


def lr_factor(step: int, length: int) -> float:
    """The share of `mntp_lr` the update after `step` earlier ones uses: transformers'
    `get_linear_schedule_with_warmup` without warm-up, `(length - step) / length`, 0 from `length` on."""
    return max(0.0, (length - step) / max(1, length))


def targets(labels: torch.Tensor) -> int:
    """How many tokens `mntp_loss` scores: the selected ones after each chunk's first."""
    return int((labels[:, 1:] != -100).sum())


class Objective(torch.nn.Module):
    """The encoder and its LM head as one module whose forward is the MNTP loss (one module, so
    that DDP also averages a trainable head's gradients)."""

    def __init__(self, encoder, head: torch.nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return mntp_loss(self.encoder, self.head, inputs, labels, reduction)


def objective(encoder, cfg: Config, located: Located | None) -> Objective:
    """The stage's model: the encoder with its trainable adapter (`with_lora`) and its LM head
    (`lm_head_for`, trained or frozen by `mntp_head`)."""
    model = with_lora(encoder, cfg)
    head, _ = lm_head_for(model.get_base_model(), located, cfg.mntp_head)
    return Objective(model, head)


def train_step(forward, optimizer: torch.optim.Optimizer, params: list, inputs: torch.Tensor, labels: torch.Tensor,
               device: torch.device, dtype: torch.dtype, at: int = 0, scored: int | None = None,
               world: int = 1) -> torch.Tensor:
    """One MNTP optimizer step: the loss (`forward`: an Objective, maybe under DDP), backward,
    gradient clip 1.0, AdamW; returns the batch's loss. Stops before the update on a non-finite loss.

    Under DDP (`world` processes), `inputs` and `labels` are this process's part of a batch whose
    parts hold `scored` tokens to score in all (`targets` of the whole batch). The process's loss
    is its sum over its own tokens / `scored` × `world`, so that DDP's mean of the gradients is the
    gradient of one process on the whole batch; the returned loss is the whole batch's, the same
    on every process (which then all stop together on a non-finite one). A part with no token to
    score contributes a zero gradient."""
    scored = targets(labels) if scored is None else scored
    with autocast(device, dtype):
        summed = forward(inputs.to(device), labels.to(device), reduction="sum")
    loss = summed.detach().clone()
    if world > 1:
        dist.all_reduce(loss)
    loss = loss / max(scored, 1)
    if not torch.isfinite(loss):
        raise IcdlibError(f"MNTP loss is {loss.item()} at step {at}: lower mntp_lr")
    (summed * (world / max(scored, 1))).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


class LMHead(torch.nn.Linear):
    """A decoder's language-model head: logits = h · Wᵀ, soft-capped (`cap · tanh(logits / cap)`)
    where the architecture caps them (Gemma 2's `final_logit_softcapping`), as its `*ForCausalLM` does."""

    def __init__(self, hidden: int, vocab: int, softcap: float | None = None, **kwargs):
        super().__init__(hidden, vocab, bias=False, **kwargs)
        self.softcap = softcap

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().forward(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def head_trains(mode: str, tied: bool) -> bool:
    """Whether the LM head trains (`mntp_head`): `auto` as the recipe, where get_peft_model freezes
    the inner model, input embeddings included, and leaves the decoder's own `lm_head` (outside
    it) to the Trainer: trained unless tied to the embeddings."""
    return mode == "train" or (mode == "auto" and not tied)


def lm_head_for(encoder, located: Located | None, mode: str = "auto") -> tuple[torch.nn.Module, bool]:
    """(LM head, trainable): a copy of the checkpoint's `lm_head.weight`, or of the input
    embeddings where it has none (tied, or the tiny model), trained or frozen by `mode`
    (`mntp_head`, `head_trains`); a trained head never reaches the saved adapter."""
    embeddings = encoder.get_input_embeddings().weight
    head = LMHead(embeddings.shape[1], embeddings.shape[0], getattr(encoder.config, "final_logit_softcapping", None),
                  device=embeddings.device, dtype=embeddings.dtype)
    weight = backbones.lm_head_weight(located) if located is not None else None
    tied = bool(getattr(encoder.config, "tie_word_embeddings", False))
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight) if weight is not None else embeddings)
    trainable = head_trains(mode, tied)
    head.requires_grad_(trainable)
    return head, trainable


def share(chunks: torch.Tensor, world: int, rank: int) -> slice:
    """The positions of a batch (`chunks`: its chunk indices) that process `rank` of `world`
    trains on: `world` contiguous parts in rank order whose sizes differ by at most one, so every
    chunk is on exactly one process; empty for the last ranks when the batch is smaller than `world`."""
    size, extra = divmod(len(chunks), world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def dropout_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a process's global RNG (dropout: CPU and GPU generators) for one step: another
    stream per process, and the same for that step whether the stage ran through or resumed."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def key(cfg: Config, backbone_key: str, train_ids: list[int], train_texts: list[str]) -> str:
    """What a finished stage depends on: its parameters, the backbone, the train notes, the code."""
    import hashlib

    texts = hashlib.sha256()
    for t in train_texts:
        texts.update(t.encode("utf-8", "replace") + b"\0")
    return content_key({"params": {k: getattr(cfg, k) for k in PARAMS}, "backbone": backbone_key,
                        "ids": hashlib.sha256(np.asarray(train_ids, np.int64).tobytes()).hexdigest(),
                        "texts": texts.hexdigest(),
                        "code": source_hash(mask_tokens, mntp_loss, targets, corpus, train_step, share, dropout_seed,
                                            schedule_length, stage_steps, lr_factor, head_trains, lm_head_for,
                                            train)})


def finished(folder: Path, stage_key: str) -> bool:
    return read_key(folder) == stage_key and (Path(folder) / "adapter_model.safetensors").is_file()


def with_lora(encoder, cfg: Config):
    """The encoder with a trainable MNTP adapter: the one it was loaded with (a McGill `-mntp`
    model, unmerged), or a fresh LoRA on the inner model as in the recipe."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(encoder, PeftModel):
        for name, p in encoder.named_parameters():
            p.requires_grad_("lora_" in name)
        return encoder
    encoder.requires_grad_(False)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none")
    with backbones.quiet():
        return get_peft_model(encoder, lora)


def _save_state(folder: Path, model, head, head_trainable: bool, optimizer, scheduler, step: int, epoch: int,
                batch: int, history: list[dict], generator: torch.Generator) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        tensors = {k: v.detach().cpu().contiguous()
                   for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
        if head_trainable:
            tensors["lm_head.weight"] = head.weight.detach().cpu().contiguous()
        save_file(tensors, tmp / "weights.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "epoch": epoch, "batch": batch, "history": history, "generator": generator.get_state()},
                   tmp / "state.pt")


def _load_state(folder: Path, model, head, head_trainable: bool) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "weights.safetensors"))
    if head_trainable:
        with torch.no_grad():
            head.weight.copy_(tensors.pop("lm_head.weight"))
    set_peft_model_state_dict(model, tensors)
    # onto the CPU: optimizer.load_state_dict moves the moments to their parameters' device, and
    # the generator state must be a CPU tensor
    return torch.load(folder / "state.pt", map_location="cpu", weights_only=False)


def train(cfg: Config, env: Env, encoder, tokenizer, train_texts: list[str], located: Located | None,
          base_name: str, stage_key: str, progress: bool = True):
    """Run MNTP (resuming from `mntp_last/` when asked) for `stage_steps` steps, save
    `03_train/mntp/`; returns the encoder with the adapter merged, ready for fine-tuning."""
    run = Run.of(cfg)
    out, last = run.mntp, run.mntp_last
    recipe = masking(cfg, tokenizer, encoder.config)
    ids, special = corpus(train_texts, tokenizer, cfg.mntp_length)
    torch.manual_seed(cfg.seed)  # a fresh adapter's initial weights: of the stage's key alone, not of the caller
    obj = objective(encoder, cfg, located).to(env.device)
    model, head = obj.encoder, obj.head
    head_trainable = head.weight.requires_grad
    if cfg.grad_checkpointing:
        checkpoint_activations(model.get_base_model())
    params = [p for p in obj.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.mntp_lr, weight_decay=0.0)
    length, total = schedule_length(cfg, len(ids)), stage_steps(cfg, len(ids))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, length))
    generator = torch.Generator().manual_seed(cfg.seed)
    step, epoch, batch, history = 0, 0, 0, []
    if cfg.resume and (last / "state.pt").is_file() and read_key(last) == stage_key:
        state = _load_state(last, model, head, head_trainable)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, batch, history = state["step"], state["epoch"], state["batch"], state["history"]
        generator.set_state(state["generator"])
    dtype = compute_dtype(cfg, env.device)
    forward = obj
    if env.world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    every = max(1, total // 10)
    report = _Reporter(run.progress, progress and env.master) if env.master else None
    if report:
        report({"event": "mntp_start", "notes": len(train_texts), "chunks": len(ids), "length": cfg.mntp_length,
                "style": recipe.style, "probability": recipe.probability, "total": total, "step": step,
                "schedule": length})
    model.train()
    # a resumed stage adds to what its history counted before the kill
    t0, tokens, first = time.perf_counter(), 0, step
    done = history[-1] if history else {}
    tokens_before, elapsed_before = done.get("tokens", 0), done.get("elapsed_s", 0.0)
    while step < total:
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        batches = [order[i:i + cfg.mntp_batch_size] for i in range(0, len(order), cfg.mntp_batch_size)]
        while batch < len(batches) and step < total:
            chunks = batches[batch]
            # every rank draws the whole batch's masks (the same draws at any world size), then takes its part
            inputs, labels = mask_tokens(ids[chunks], special[chunks], recipe, len(tokenizer), generator)
            scored = targets(labels)
            part = share(chunks, env.world, env.rank)
            inputs, labels = inputs[part], labels[part]
            if not len(inputs):  # still in DDP's all-reduce, with a chunk that scores nothing: a zero gradient
                inputs, labels = ids[chunks[:1]], torch.full_like(ids[chunks[:1]], -100)
            torch.manual_seed(dropout_seed(cfg.seed, env.rank, step))
            lr = scheduler.get_last_lr()[0]  # this update's
            loss = train_step(forward, optimizer, params, inputs, labels, env.device, dtype, at=step, scored=scored,
                              world=env.world)
            scheduler.step()
            step, batch = step + 1, batch + 1
            tokens += len(chunks) * cfg.mntp_length
            elapsed = time.perf_counter() - t0
            history.append({"step": step, "epoch": epoch + batch / len(batches), "loss": float(loss.item()),
                            "lr": lr, "tokens_per_s": tokens / max(elapsed, 1e-9),
                            "tokens": tokens_before + tokens, "elapsed_s": elapsed_before + elapsed})
            if report and (step % every == 0 or step == total or report.heartbeat.due()):
                # a tenth of the steps is a line (in the notebook too); a heartbeat only a record
                tenth = step % every == 0 or step == total
                report({"event": "mntp" if tenth else "mntp_heartbeat", "step": step, "total": total,
                        "loss": float(loss.item()), "tokens_per_s": history[-1]["tokens_per_s"],
                        "eta_s": seconds_left(elapsed, step - first, total - step)}, show=tenth)
            if env.master and (step % cfg.save_every == 0 or step == total):
                _save_state(last, model, head, head_trainable, optimizer, scheduler, step, epoch, batch, history,
                            generator)
                write_key(last, stage_key)
        if batch >= len(batches):
            epoch, batch = epoch + 1, 0
    if env.master:
        save(out, model, tokenizer, base_name, history, stage_key)
    if env.world > 1:
        dist.barrier()
    return backbones.merged(model)


def progress_text(record: dict) -> str:
    """A progress record of the stage as one line (03's notebook and `icdlib run` print it)."""
    if record["event"] == "mntp_start":
        decay = f", lr decaying linearly over {record['schedule']:,} steps" if record.get("schedule") else ""
        return (f"MNTP on {record['notes']:,} train notes: {record['chunks']:,} chunks of {record['length']} tokens, "
                f"{record['style']} masking of {record['probability']:.0%}, {record['total']} steps from step "
                f"{record['step']}{decay}")
    return (f"MNTP step {record['step']}/{record['total']} loss {record['loss']:.4f} "
            f"{record['tokens_per_s'] / 1e3:.1f}k tok/s ETA {duration(record.get('eta_s'))}")


class _Reporter:
    """Appends the stage's progress records to `03_train/progress.jsonl`, where `icdlib run`
    follows them (a fine-tuning after the stage starts the file afresh); prints them when `show`
    (a heartbeat, `icdlib.run.progress`, is never printed: it is for the terminal of `icdlib run`)."""

    def __init__(self, path: Path, show: bool):
        self.path, self.show, self.started = Path(path), show, time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.heartbeat = Heartbeat()

    def __call__(self, record: dict, show: bool = True) -> None:
        record = {**record, "started": self.started, "time": time.time()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.heartbeat.beat()
        if self.show and show:
            print(progress_text(record), flush=True)


def save(folder: Path, model, tokenizer, base_name: str, history: list[dict], stage_key: str) -> Path:
    """`03_train/mntp/` in McGill's -mntp layout (see the module docstring), plus history.csv."""
    with atomic_path(folder) as tmp, backbones.quiet():
        model.save_pretrained(tmp, save_embedding_layers=False)  # the embeddings stay the base's
        config = json.loads((tmp / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_name
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        base = model.get_base_model()
        base.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
        write_key(tmp, stage_key)
    return folder


def load_history(run_dir: Path) -> pd.DataFrame | None:
    """The MNTP learning curve of a run, or None when it had no MNTP stage."""
    path = Run(run_dir).mntp / "history.csv"
    return pd.read_csv(path) if path.is_file() else None


def tokens_per_s(history: pd.DataFrame) -> float:
    return float(history["tokens_per_s"].iloc[-1]) if history is not None and len(history) else math.nan


def cost(stage: pd.DataFrame | None, arms: dict[str, pd.DataFrame], model: pd.DataFrame | None = None) -> pd.DataFrame:
    """What the MNTP arm costs: one row per phase (the MNTP stage, then each fine-tuning: `arms`
    from `train.mntp_arms`, or without a comparison the model's own history `model`, which
    started from MNTP) with its optimizer steps, tokens seen (MNTP: chunks × length; fine-tuning:
    non-padding tokens of the training batches, all processes) and wall time in seconds (the steps,
    fine-tuning's validations included, as the histories record them: NaN in a run written before
    they did), and the wall time as a share of the fine-tuning after MNTP's. Empty without a stage."""
    if stage is None or not len(stage):
        return pd.DataFrame(columns=["steps", "tokens", "wall_s", "share_of_fine_tuning"])
    phases = {"MNTP stage": stage}
    phases.update({f"fine-tuning {name}": h for name, h in arms.items()} if arms else
                  {"fine-tuning with MNTP": model if model is not None else pd.DataFrame()})

    def last(history: pd.DataFrame, column: str) -> float:
        return float(history[column].iloc[-1]) if column in history and len(history) else math.nan

    table = pd.DataFrame({name: {"steps": last(h, "step"), "tokens": last(h, "tokens"), "wall_s": last(h, "elapsed_s")}
                          for name, h in phases.items()}).T
    table["share_of_fine_tuning"] = table["wall_s"] / table.loc["fine-tuning with MNTP", "wall_s"]
    table[["steps", "tokens"]] = table[["steps", "tokens"]].astype("Int64")  # counts; <NA> where not recorded
    table.index.name = "phase"
    return table


def cost_text(table: pd.DataFrame) -> str:
    """`cost` as one sentence: `MNTP cost 95 s (40% of the 238 s the fine-tuning after it took), 300
    steps over 1,228,800 tokens.`, and with a comparison the two arms' totals."""
    if not len(table):
        return "No MNTP stage in this run (`mntp_steps: 0`): no extra compute."
    steps, tokens = table["steps"]["MNTP stage"], table["tokens"]["MNTP stage"]
    wall, tuned = table["wall_s"]["MNTP stage"], table["wall_s"]["fine-tuning with MNTP"]
    steps = f"{steps:,} steps" + (f" over {tokens:,} tokens" if pd.notna(tokens) else "")
    if not math.isfinite(wall):
        return f"MNTP ran {steps}; its wall time is not recorded (a run written before icdlib recorded it)."
    share = (f" ({wall / tuned:.0%} of the {tuned:,.0f} s the fine-tuning after it took)"
             if math.isfinite(tuned) and tuned > 0 else "")
    text = f"MNTP cost {wall:,.0f} s{share}, {steps}."
    without = table["wall_s"].get("fine-tuning without MNTP", math.nan)
    if math.isfinite(tuned) and math.isfinite(without):
        text += f" The arm with MNTP took {wall + tuned:,.0f} s in all, the arm without it {without:,.0f} s."
    return text

