"""Many torchrun processes, one answer: how ranks start, take turns, draw randomness and stop.

Two process groups with two timeouts, because a collective waits as long as its slowest rank:

- the default group (`START_TIMEOUT`, 60 min) for what may legitimately keep ranks apart for
  minutes: loading a 16 GB backbone from a shared filesystem, rank 0 tokenising every split while
  the others wait at a barrier, rank 0 writing a checkpoint, validation;
- the training group (`STEP_TIMEOUT`, 3 min) for the optimizer steps: DDP's gradient all-reduce
  and the per-step failure flag. Between two steps ranks are seconds apart, so a rank that died
  where no flag can report it (an out-of-memory error inside the backward pass) stops the others
  after 3 minutes, not NCCL's default 10. On one node torchrun does better still: when a worker
  exits with an error its agent stops the others within about 2 seconds.

Failures during a step are reported by `stop_together`: every rank reduces a flag before the
backward pass, so an exception, a NaN loss or an out-of-memory error on one rank stops all of them
at the same step with the same one-line message, which rank 0 prints (`RanksStopped`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from icdlib.run.errors import IcdlibError
from icdlib.model.inference import Env, pick_device

START_TIMEOUT = timedelta(minutes=60)
STEP_TIMEOUT = timedelta(minutes=3)


class RanksStopped(IcdlibError):
    """Every rank stopped at the same step because one of them failed; each holds the same message,
    so only rank 0 prints it."""


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_from_environment() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def setup(device_choice: str = "auto") -> Env:
    """This process's device and, under torchrun, the process group: the GPU is chosen first
    (`set_device`), then the group is made with it (`device_id`: NCCL connects eagerly, on the
    right GPU) and `START_TIMEOUT`."""
    if not launched():
        env = Env(pick_device(device_choice))
        allow_tf32(env.device)
        return env
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_choice in ("auto", "cuda")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=START_TIMEOUT, device_id=device if cuda else None)
    allow_tf32(device)
    return Env(device, dist.get_rank(), dist.get_world_size())


def allow_tf32(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def step_group(env: Env):
    """The training group (`STEP_TIMEOUT`); None in one process. Every rank must call it."""
    return dist.new_group(timeout=STEP_TIMEOUT) if env.world > 1 else None


def barrier(env: Env) -> None:
    """Wait for every rank on the default group (long timeout): after rank 0 alone wrote something."""
    if env.world > 1:
        dist.barrier()


@contextmanager
def master_first(env: Env):
    """Rank 0 runs the block first (it writes a cache), the others then run it (and read the cache)."""
    if not env.master:
        barrier(env)
    yield
    if env.master:
        barrier(env)


def gather(obj, env: Env) -> list:
    """`obj` of every rank, in rank order, on every rank (default group)."""
    if env.world == 1:
        return [obj]
    out = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def stop_together(failure: tuple[str, str] | None, env: Env, group, step: int) -> None:
    """Raise on every rank if any rank failed this step. `failure` is this rank's (one-line cause,
    traceback text) or None. Under torchrun each rank raises `RanksStopped` naming the failed ranks,
    the step and the causes (the tracebacks travel with it as `.details`). Costs one all-reduce of
    one number per micro-step when nothing failed."""
    if env.world == 1:
        return  # the caller raises its own error
    flag = torch.tensor([0.0 if failure is None else 1.0], device=env.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if flag.item() == 0:
        return
    everyone = [None] * env.world
    dist.all_gather_object(everyone, failure, group=group)
    failed = [(r, f) for r, f in enumerate(everyone) if f is not None]
    causes = "; ".join(f"rank {r}: {cause}" for r, (cause, _) in failed)
    error = RanksStopped(f"{len(failed)} of {env.world} ranks failed at step {step}, all stopped ({causes})")
    error.details = {r: text for r, (_, text) in failed}
    raise error


def leave_together(wait: timedelta = timedelta(seconds=10)) -> None:
    """Every rank stopped at the same step (`RanksStopped`) meets once more, so none exits (and
    has torchrun end the others) before rank 0 has printed why; at most `wait`."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier(async_op=True).wait(timeout=wait)
        except RuntimeError:
            pass  # a rank already gone: nothing left to wait for


def seed_rank(seed: int, env: Env, salt: int = 0) -> None:
    """Give ranks other than 0 their own torch random stream (dropout masks differ across ranks);
    rank 0 keeps its stream, so one process draws as before. Data order has its own generators."""
    if env.rank > 0:
        torch.manual_seed(seed + 1_000_003 * env.rank + salt)


# ---------------------------------------------------------------- sharded full fine-tuning (FSDP)

def shard(coder, dtype: torch.dtype) -> None:
    """Shard a coder whose whole backbone trains over the ranks, in place, with torch's FSDP
    (`fully_shard`): each decoder layer is a unit, the root holds the embeddings, the final norm
    and the head. Each rank keeps 1/N of the fp32 weights, gradients and AdamW moments (an 8B
    backbone: 32 + 32 + 64 GB in all, 16 GB per GPU on 8); a layer's weights are gathered, in the
    compute dtype, only while it runs."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in _decoder_layers(coder.encoder):
        fully_shard(layer, mp_policy=policy)
    fully_shard(coder, mp_policy=policy)


def _decoder_layers(encoder) -> list:
    layers = getattr(encoder, "layers", None)
    if layers is None:
        raise IcdlibError(f"cannot shard {type(encoder).__name__}: it has no .layers (a decoder's blocks)")
    return list(layers)


def resharded(model):
    """`model` with every FSDP unit holding its shards again. After a forward pass without
    gradients (validation) the root unit keeps its gathered weights, and then its parameters are
    other tensors than the optimizer's."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def full_weights(model) -> dict:
    """Every weight of a (sharded) model, whole, on the CPU of rank 0 (an empty dict elsewhere).
    Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(resharded(model), options=whole)


def load_full_weights(model, weights: dict) -> None:
    """`full_weights`' dict (read on rank 0; the others pass {}) into a sharded model's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    whole = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(resharded(model), weights, options=whole)


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer's state keyed by parameter name, whole, on the CPU (of rank 0 when sharded):
    it resumes on any number of processes. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(resharded(model), optimizer, options=whole)


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """An optimizer state saved by `full_optimizer_state` (any number of processes), or one saved
    by `optimizer.state_dict()` (parameter numbers: the same model, unsharded)."""
    numbered = [p for group in state["param_groups"] for p in group["params"]]
    if all(isinstance(p, int) for p in numbered):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(resharded(model), optimizer, state, options=StateDictOptions(full_state_dict=True))
