"""icdlib.model.quantize without a GPU: refusals, the BitsAndBytesConfig it builds, QLoRA preparation.

bitsandbytes is not installed by `make setup` (it is the `gpu` extra). Where transformers only
reads its version, a stand-in `bitsandbytes-0.50.2.dist-info` on sys.path is enough; where a
module is needed, a stand-in package that fails on import proves nobody imported it.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from icdlib.model import quantize
from icdlib.run.errors import IcdlibError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU


@pytest.fixture
def bnb_metadata(tmp_path, monkeypatch):
    """bitsandbytes' installed version as transformers reads it, without the package (unless it is installed)."""
    if quantize.bitsandbytes_version() is None:
        info = tmp_path / "bitsandbytes-0.50.2.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n")
        monkeypatch.syspath_prepend(str(tmp_path))
    assert quantize.bitsandbytes_version() is not None


@pytest.mark.parametrize("load_in", ["4bit", "8bit"])
@pytest.mark.parametrize("device", [CPU, torch.device("mps"), "cpu"])
def test_quantized_load_is_refused_off_cuda_in_one_line(load_in, device):
    with pytest.raises(IcdlibError) as e:
        quantize.check(load_in, device)
    assert str(e.value) == f"load_in={load_in} needs a CUDA GPU (bitsandbytes); on CPU/MPS use load_in=native"


def test_native_always_passes_and_unknown_values_are_refused():
    quantize.check("native", CPU)
    quantize.check("native", CUDA)
    assert quantize.bnb_config("native") is None
    with pytest.raises(IcdlibError, match=r"^load_in must be one of native, 4bit, 8bit, got '2bit'$"):
        quantize.check("2bit", CUDA)
    with pytest.raises(IcdlibError, match="got '16bit'"):
        quantize.bnb_config("16bit")


def test_cuda_without_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setattr(quantize, "bitsandbytes_version", lambda: None)
    for call in (lambda: quantize.check("4bit", CUDA), lambda: quantize.bnb_config("8bit")):
        with pytest.raises(IcdlibError) as e:
            call()
        assert "bitsandbytes, which is not installed: pip install -e '.[gpu]'" in str(e.value)
        assert "\n" not in str(e.value)


def test_a_bitsandbytes_that_does_not_import_is_one_line(monkeypatch):
    monkeypatch.setattr(quantize, "bitsandbytes_version", lambda: "0.50.2")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(IcdlibError) as e:
        quantize.check("8bit", CUDA)
    message = str(e.value)
    assert message.startswith("load_in=8bit: bitsandbytes 0.50.2 is installed but does not import (")
    assert message.endswith("reinstall it with pip install -e '.[gpu]'") and "\n" not in message


def test_bnb_config_fields(bnb_metadata):
    four = quantize.bnb_config("4bit")
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantize.bnb_config("4bit", torch.float16).bnb_4bit_compute_dtype == torch.float16
    eight = quantize.bnb_config("8bit")
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert eight.to_dict()["quant_method"] == "bitsandbytes"
    with pytest.raises(IcdlibError, match="computes in bf16 or fp16, not torch.float32"):
        quantize.bnb_config("4bit", torch.float32)


def test_bitsandbytes_is_imported_only_by_check_on_cuda(tmp_path):
    """A stand-in bitsandbytes that fails on import: importing icdlib.model.quantize and building configs never touch it."""
    package = tmp_path / "bitsandbytes"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('bitsandbytes was imported')\n")
    info = tmp_path / "bitsandbytes-0.50.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n")
    script = textwrap.dedent("""
        import sys, torch
        from icdlib.model import quantize
        from icdlib.run.errors import IcdlibError
        assert quantize.bitsandbytes_version() == "0.50.2"
        assert quantize.bnb_config("4bit").bnb_4bit_quant_type == "nf4"
        assert quantize.bnb_config("8bit").load_in_8bit
        quantize.check("native", torch.device("cuda"))
        try:
            quantize.check("4bit", torch.device("cpu"))
        except IcdlibError:
            pass
        assert "bitsandbytes" not in sys.modules, "imported too early"
        try:
            quantize.check("4bit", torch.device("cuda"))
        except IcdlibError as e:
            print("REFUSED", e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert ("REFUSED load_in=4bit: bitsandbytes 0.50.2 is installed but does not import "
            "(bitsandbytes was imported); reinstall it with pip install -e '.[gpu]'") in out.stdout


def _tiny_bimodel(dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaModel

    from icdlib.model.bidirectional import make_bidirectional

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    return make_bidirectional(LlamaModel._from_config(config, dtype=dtype, attn_implementation="sdpa"))


def test_prepare_for_training_freezes_checkpoints_and_keeps_dtypes():
    from peft import LoraConfig, get_peft_model

    model = _tiny_bimodel()
    prepared = quantize.prepare_for_training(model)
    assert prepared is model
    assert not any(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # nothing upcast to fp32
    assert model.gradient_checkpointing
    assert model._gradient_checkpointing_func.keywords == {"use_reentrant": False}
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    lora.train()
    ids = torch.randint(1, 128, (2, 16))
    out = lora(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
    out.float().pow(2).mean().backward()
    trainable = [p for p in lora.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)  # non-reentrant: no input-grad hook needed

    plain = quantize.prepare_for_training(_tiny_bimodel(), gradient_checkpointing=False)
    assert not plain.gradient_checkpointing


def test_peft_prepare_would_upcast_what_prepare_for_training_keeps():
    """Why prepare_for_training does not call peft's prepare_model_for_kbit_training (see its docstring)."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(_tiny_bimodel(), gradient_checkpointing_kwargs={"use_reentrant": False})
    assert {p.dtype for p in model.parameters()} == {torch.float32}
