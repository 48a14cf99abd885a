"""The memory plan (icdlib/model/memory_plan.py): its arithmetic against models icdlib builds, on the CPU.

Parameters and weight bytes must equal the sum over a built model's tensors exactly. Activations
are compared with what a training step really keeps, at toy shape: the bytes autograd saves for
backward (`saved_tensors_hooks`, unique storages, parameters left out) and the memory allocated
during a forward pass and still held after it (the profiler's allocation events; with gradient
checkpointing the hooks cannot see what a checkpoint keeps), then the peak of the step.
"""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import hub_replica
from icdlib.model import backbones, memory_plan
from icdlib.run import config
from icdlib.cli import main
from icdlib.model.memory_plan import GB, MemoryPlanError
from icdlib.model.models import ICDCoder, adapters_take_input_as_is, checkpoint_activations, loss_fn

PARAMS = Path(__file__).resolve().parent.parent / "params"
NOTES, SEGMENTS, LENGTH, LABELS, ATTENTION_DIM = 2, 2, 32, 50, 16
TOKENS = NOTES * SEGMENTS * LENGTH


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Toy Llama-3 (grouped KV heads), Qwen3 (q/k norms) and Gemma 3 (four norms a layer, sliding
    and global layers, GELU) checkpoints in the hub's layout."""
    root = tmp_path_factory.mktemp("replicas")
    return {family: hub_replica.build(root / family, family) for family in ("llama", "qwen3", "gemma3")}


def replica_config(replica, **overrides) -> config.Config:
    """A params file of the family, pointed at the replica, at toy size."""
    paths = ({"model_path": str(replica.mntp), "base_model_path": str(replica.base)} if replica.mntp else
             {"base_model_path": str(replica.base)})
    backbone = {"llama": "llama3", "qwen3": "qwen3", "gemma3": "medgemma"}[replica.family]
    size = {"lora_r": 4, "attention_dim": ATTENTION_DIM, "batch_size": NOTES, "max_segments": SEGMENTS,
            "segment_length": LENGTH, "load_in": "native", "mntp_steps": 0}
    return config.resolve(backbone, {**paths, **size, **overrides})


def build(cfg: config.Config) -> ICDCoder:
    """The coder as step 03 builds it (train.prepare, train_loop): backbone in the weights' dtype,
    trainability, head, autocast's LoRA inputs as they arrive, checkpointing."""
    dtype = torch.float32 if cfg.train_backbone == "full" or cfg.precision != "bf16" else torch.bfloat16
    encoder, _ = backbones.load(cfg.model_path or cfg.base_model_path, dtype,
                                base_model_path=cfg.base_model_path if cfg.model_path else "", attention=cfg.attention)
    encoder = backbones.make_trainable(encoder, cfg)
    torch.manual_seed(0)
    coder = ICDCoder(encoder, LABELS, cfg.head, cfg.attention_dim)
    if cfg.precision == "bf16":
        adapters_take_input_as_is(coder)
    if cfg.grad_checkpointing:
        checkpoint_activations(encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder)
    return coder.train()


def measure(coder: ICDCoder, bf16: bool) -> dict:
    """What a second micro-batch keeps and peaks at (the first one's gradients exist, as under
    grad_accum): `saved` by the hooks, `held` after the forward pass and `peak` over forward and
    backward, from the profiler's allocation events. A padded note, as in training batches."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(1)
    ids = torch.randint(5, 100, (NOTES, SEGMENTS, LENGTH))
    mask = torch.ones_like(ids)
    mask[1, 1, 20:] = 0
    targets = torch.zeros(NOTES, LABELS)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with autocast:
        first = coder(ids, mask)
    loss_fn(first, targets).backward()
    del first
    parameters = {t.untyped_storage().data_ptr() for t in [*coder.parameters(), *coder.buffers()]}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.profiler.record_function("forward"):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
                logits = coder(ids, mask)
            loss = loss_fn(logits, targets)
        loss.backward()
    events = prof.profiler.kineto_results.events()
    forward_end = next(e.end_ns() for e in events if e.name() == "forward")
    live = peak = 0
    held = None
    for start, size in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        if held is None and start >= forward_end:
            held = live
        live += size
        peak = max(peak, live)
    return {"saved": sum(saved.values()), "held": held, "peak": peak}


def planned(cfg: config.Config) -> dict:
    """The plan's view of the same step: `kept` after the forward pass and `peak`, both without
    the weights and the trained parameters' state (allocated before the profiled step), and the
    estimated part of the peak (the gradients in flight)."""
    arch = memory_plan.architecture(cfg)
    stage = memory_plan.fine_tuning(cfg, arch, "cpu", LABELS)
    terms = {t.name: t.bytes for t in stage.terms}
    head, _ = memory_plan.head_tensors(cfg, arch, "cpu", NOTES, TOKENS, LABELS)
    back, _ = memory_plan.head_backward(cfg, arch, "cpu", NOTES, TOKENS, LABELS)
    kept = sum(b for name, b in terms.items() if name.startswith(("activations", "final norm")))
    casts = terms.get("autocast's weight copies", 0)
    a = memory_plan.compute_bytes(cfg, "cpu")
    # under checkpointing one layer's LoRA copies exist only while it is recomputed, not after the forward pass
    lora_casts = a * memory_plan.lora_parameters(cfg, arch) // arch.layers if cfg.grad_checkpointing and a < 4 else 0
    return {"kept": kept + head + casts - lora_casts, "peak": kept + casts + terms["backward at its largest"],
            "estimated": max(back, 3 * a * TOKENS * arch.intermediate)}


# What the plan leaves out, so what may differ: int64 token tensors (ids, the attention mask,
# positions; at most four 8-byte values a token), the logits (fp32) and the loss, 1 KB of others.
OMITTED = 4 * 8 * TOKENS + 4 * NOTES * LABELS + 1024

CASES = [  # family, train_backbone, attention, checkpointing, precision
    ("llama", "lora", "auto", False, "auto"),
    ("llama", "lora", "auto", True, "auto"),
    ("llama", "full", "auto", False, "auto"),
    ("llama", "full", "auto", True, "auto"),
    ("llama", "lora", "eager", False, "auto"),
    ("llama", "lora", "auto", False, "bf16"),
    ("llama", "lora", "auto", True, "bf16"),
    ("qwen3", "lora", "auto", False, "auto"),
    ("gemma3", "lora", "auto", False, "auto"),
    ("gemma3", "lora", "auto", True, "auto"),
]


@pytest.mark.parametrize("family,train_backbone,attention,checkpointing,precision", CASES)
def test_activations_are_what_a_training_step_keeps(replicas, family, train_backbone, attention, checkpointing,
                                                    precision):
    cfg = replica_config(replicas[family], train_backbone=train_backbone, attention=attention,
                         grad_checkpointing=checkpointing, precision=precision)
    got, plan = measure(build(cfg), precision == "bf16"), planned(cfg)
    print(f"\n{family} {train_backbone} {attention} checkpointing={checkpointing} {precision}: kept {got['held']:,} "
          f"(hooks {got['saved']:,}) / plan {plan['kept']:,} = {got['held'] / plan['kept']:.3f}; peak "
          f"{got['peak']:,} / plan {plan['peak']:,} = {got['peak'] / plan['peak']:.3f}")
    assert abs(got["held"] - plan["kept"]) <= OMITTED
    if not checkpointing:  # the hooks see every saved tensor; under checkpointing not what the checkpoints keep
        assert abs(got["saved"] - plan["kept"]) <= OMITTED
    # the gradients in flight are the estimated part of the peak: it may be off by up to their size
    assert abs(got["peak"] - plan["peak"]) <= plan["estimated"] + OMITTED


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_parameters_and_weights_are_those_of_the_built_model(replicas, family):
    cfg = replica_config(replicas[family], precision="bf16")
    arch = memory_plan.architecture(cfg)
    assert arch.source.startswith("config.json in ")
    encoder, _ = backbones.load(cfg.model_path or cfg.base_model_path, torch.bfloat16,
                                base_model_path=cfg.base_model_path if cfg.model_path else "")
    counts = memory_plan.parameter_counts(arch)
    linear = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in encoder.parameters())
    assert (counts["linear"], counts["linear"] + counts["other"]) == (linear, total)
    assert memory_plan.weights_term(cfg, arch, "cpu").bytes == sum(
        p.numel() * p.element_size() for p in encoder.parameters())

    coder = ICDCoder(backbones.make_trainable(encoder, cfg), LABELS, cfg.head, cfg.attention_dim)
    lora = [p for n, p in coder.named_parameters() if p.requires_grad and "lora_" in n]
    head = [p for n, p in coder.named_parameters() if n.startswith("head.")]
    assert all(p.dtype == torch.float32 for p in lora + head)  # what ADAM's 16 bytes assume
    terms = {t.name: t.bytes for t in memory_plan.trained_terms(cfg, arch, "cpu", LABELS)}
    assert terms["LoRA + AdamW"] == 16 * sum(p.numel() for p in lora)
    assert terms["head (label_attention) + AdamW"] == 16 * sum(p.numel() for p in head)


def test_the_tiny_backbone_has_the_shape_of_its_parameters(tiny_backbone):
    cfg = config.resolve("tiny", {"tiny_layers": 2, "tiny_hidden": 64, "tiny_heads": 4, "tiny_vocab": 300})
    encoder, tokenizer = backbones.load(tiny_backbone)
    arch = memory_plan.architecture(cfg)
    assert arch.name == "tiny" and arch.vocab >= len(tokenizer)
    exact = memory_plan.architecture(config.resolve("tiny", {"model_path": str(tiny_backbone)}))
    assert {k: v for k, v in vars(exact).items() if k not in ("name", "source", "vocab")} == \
        {k: v for k, v in vars(arch).items() if k not in ("name", "source", "vocab")}
    counts = memory_plan.parameter_counts(exact)
    assert counts["linear"] + counts["other"] == sum(p.numel() for p in encoder.parameters())


def test_quantized_weights():
    cfg = config.resolve("llama3", {"load_in": "4bit"})
    arch = memory_plan.architecture(cfg)
    counts = memory_plan.parameter_counts(arch)
    assert (counts["linear"], counts["other"]) == (6_979_321_856, 525_602_816)  # Llama-3-8B without its LM head
    nf4 = memory_plan.weights_term(cfg, arch, "cuda").bytes
    assert nf4 == round(counts["linear"] * (0.5 + 1 / 64 + 4 / 16384) + 2 * counts["other"])
    int8 = memory_plan.weights_term(config.resolve("llama3", {"load_in": "8bit"}), arch, "cuda").bytes
    assert int8 == counts["linear"] + 4 * 32 * 43_008 + 2 * counts["other"]  # an fp32 scale per output row


def test_every_shipped_backbone_has_a_shape_without_downloading():
    for path in sorted(PARAMS.glob("*.yaml")):
        arch = memory_plan.architecture(config.resolve(path.stem))
        assert arch.layers > 0 and arch.head_dim > 0, path.name
    llama = memory_plan.architecture(config.resolve("llama3"))
    assert (llama.hidden, llama.layers, llama.heads, llama.kv_heads, llama.intermediate, llama.vocab) == (
        4096, 32, 32, 8, 14336, 128256)
    with pytest.raises(MemoryPlanError, match=r"no shape known for someone/unknown-7b: .* point model_path"):
        memory_plan.architecture(config.resolve("llama3", {"base_model_path": "someone/unknown-7b",
                                                           "model_path": ""}))


def test_every_shipped_params_file_fits_the_gpu_its_comment_names():
    """A params file for a GPU says which one in a comment line that is also the command checking it."""
    for path in sorted(PARAMS.glob("*.yaml")):
        cfg = config.resolve(path.stem)
        named = re.findall(r"^#.*python -m icdlib plan --backbone (\S+) --gpu-memory (\d+)\s*$",
                           path.read_text(encoding="utf-8"), re.M)
        if not (cfg.model_path or cfg.base_model_path):
            continue  # the tiny backbones run on CPUs
        assert len(named) == 1 and named[0][0] == path.stem, f"{path.name} names no GPU for the plan"
        result = memory_plan.plan(cfg, "cuda", int(named[0][1]) * GB)
        assert result.fits, f"{path.name}: {memory_plan.verdict(result)}"


def test_the_seed_recipe_as_the_original_ran_does_not_fit_80_gb():
    """Batch 8 of 1,024 tokens without checkpointing: ~71 GB of activations beside 15 GB of weights."""
    original = config.resolve("seed-llama3", {"batch_size": 8, "grad_accum": 1})
    result = memory_plan.plan(original, "cuda", 80 * GB)
    terms = {t.name: t.bytes for t in result.stages[0].terms}
    assert 60 * GB < terms["activations, every layer"] < 80 * GB and 14 * GB < terms["weights (bf16, frozen)"] < 16 * GB
    assert not result.fits and result.fix == {"batch_size": 1, "grad_accum": 8}
    assert memory_plan.plan(config.resolve("seed-llama3"), "cuda", 80 * GB).fits


def test_checkpointing_keeps_one_input_a_layer():
    on, off = (memory_plan.plan(config.resolve("llama3", {"grad_checkpointing": c}), "cuda") for c in (True, False))
    kept_on = {t.name: t.bytes for t in on.stages[0].terms}["activations, layer inputs (checkpointing)"]
    kept_off = {t.name: t.bytes for t in off.stages[0].terms}["activations, every layer"]
    assert kept_on == 32 * (8192 * 2 * 4096 + memory_plan.RNG_STATE + memory_plan.CUDA_RNG_STATE)
    assert kept_off > 30 * kept_on
    eager = memory_plan.plan(config.resolve("llama3", {"grad_checkpointing": False, "attention": "eager"}), "cuda")
    more = {t.name: t.bytes for t in eager.stages[0].terms}["activations, every layer"] - kept_off
    # eager keeps heads × L scores (fp32 softmax and its bf16 cast), not SDPA's output, log-sum-exp and mask bias
    assert more == 32 * 8192 * (32 * 512 * (4 + 2) - 2 * 4096 - 4 * 32 - 2 * 512)


def test_the_first_setting_that_fits_is_suggested():
    llama = config.resolve("llama3")
    assert memory_plan.plan(llama, "cuda", 24 * GB).fix == {"batch_size": 1, "grad_accum": 16}
    assert memory_plan.plan(llama, "cuda", 16 * GB).fix == {"load_in": "4bit"}
    assert memory_plan.plan(llama, "cuda", 4 * GB).fix is None
    assert memory_plan.plan(config.resolve("llama3", {"load_in": "4bit"}), "cuda", 24 * GB).fits


def test_check_raises_one_line_naming_the_overrides():
    original = config.resolve("seed-llama3", {"batch_size": 8, "grad_accum": 1})
    with pytest.raises(MemoryPlanError) as failed:
        memory_plan.check(original, torch.device("cuda"), 80 * GB, n_labels=18449)
    assert "\n" not in str(failed.value) and "-p batch_size=1 -p grad_accum=8" in str(failed.value)
    assert memory_plan.check(config.resolve("llama3"), "cuda:0", 80 * GB, n_labels=100).fits


def test_the_mntp_stage_is_planned_too():
    result = memory_plan.plan(config.resolve("qwen3"), "cuda", 40 * GB)
    assert [s.name for s in result.stages] == ["MNTP stage", "fine-tuning"]
    assert result.peak == result.stages[0].total > result.stages[1].total


def test_the_mntp_stage_counts_the_lm_head_as_the_recipe_trains_it():
    """`mntp_head: auto`: Qwen3-8B's own head (151,936 × 4,096, bf16) trains: weight, gradient and
    AdamW's two moments, 4 × 2 B a parameter; MedGemma's is tied to its embeddings: frozen, 2 B."""
    def head(name, **over):
        stage = memory_plan.plan(config.resolve(name, over), "cuda").stages[0]
        return {t.name: t.bytes for t in stage.terms if t.name.startswith("LM head")}

    assert head("qwen3") == {"LM head + grad + AdamW": 151_936 * 4096 * 8}
    assert head("qwen3", mntp_head="frozen") == {"LM head (frozen)": 151_936 * 4096 * 2}
    assert head("medgemma") == {"LM head (frozen)": 262_208 * 5376 * 2}
    assert head("medgemma", mntp_head="train") == {"LM head + grad + AdamW": 262_208 * 5376 * 8}


def test_plan_command_prints_the_arithmetic_and_exits_by_the_verdict(capsys):
    assert main(["plan", "--backbone", "llama3", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "weights (bf16, frozen)" in out and "7,504,924,672 params × 2 B" in out
    assert "activations without checkpointing" in out and out.strip().splitlines()[-1].startswith("fits: ")
    assert main(["plan", "--backbone", "seed-llama3", "--gpu-memory", "80", "-p", "batch_size=8",
                 "-p", "grad_accum=1"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("does not fit: ") and "fits with -p batch_size=1 -p grad_accum=8" in last
    assert main(["plan", "--backbone", "llama3", "--gpu-memory", "24", "-p", "load_in=4bit", "--labels", "50"]) == 0
    assert "labels: 50 (given)" in capsys.readouterr().out
    assert main(["plan", "--backbone", "nope", "--gpu-memory", "80"]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    assert "Exit status: 0 fits, 1 does not fit" in capsys.readouterr().out


# ---------------------------------------------------------------- step 03 checks before it loads

def test_step_03_stops_before_loading_when_the_plan_does_not_fit(tmp_path, monkeypatch):
    """03 on a GPU of 1 MB: one line with what would fit, and nothing loaded (`prepare` never
    runs); `memory_check=false` goes on. On the CPU (no GPU memory to plan) nothing is checked."""
    from icdlib.model import train
    from test_train import small_cfg

    cfg = small_cfg(tmp_path, "plan")
    real = train.check_memory
    monkeypatch.setattr(train, "check_memory", lambda cfg, env, run: real(cfg, env, run, gpu_bytes=10**6))
    monkeypatch.setattr(train, "prepare", lambda *a, **k: pytest.fail("must stop before loading anything"))
    with pytest.raises(memory_plan.DoesNotFit) as e:
        train.fit(cfg, progress=False)
    assert str(e.value).startswith("tiny on this GPU: does not fit: ")
    assert str(e.value).endswith("; memory_check=false trains anyway") and "\n" not in str(e.value)
    with pytest.raises(pytest.fail.Exception, match="must stop before loading"):
        train.fit(dataclasses.replace(cfg, memory_check=False), progress=False)
    env = train.Env(torch.device("cpu"))
    assert real(cfg, env, train.Run.of(cfg)) is None
    assert real(cfg, env, train.Run.of(cfg), gpu_bytes=80 * 10**9).fits


def test_step_03_trains_a_backbone_the_plan_cannot_shape(tmp_path, capsys):
    from icdlib.model import train
    from test_train import small_cfg

    cfg = small_cfg(tmp_path, "unknown")
    odd = dataclasses.replace(cfg, model_path="nobody/unknown-model")
    assert train.check_memory(odd, train.Env(torch.device("cpu")), train.Run.of(cfg), gpu_bytes=80 * 10**9) is None
    assert capsys.readouterr().out.startswith("memory plan skipped: no shape known for nobody/unknown-model")
