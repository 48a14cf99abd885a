"""icdlib.model.bidirectional, per family: a later token reaches an earlier one, padding reaches nothing,
nothing outside the converted model changes, and an unknown architecture is refused in one line.

Each family is transformers' own bare model class at toy size (random weights, fp32), with every
attention kernel it offers on a CPU (eager and SDPA; Gemma 2 has eager only). A sliding-window
family gets a window shorter than the input, so that its windowed layers are exercised too.
"""

import pytest
import torch
import transformers as T

from icdlib.model import bidirectional
from icdlib.run.errors import IcdlibError
from icdlib.model.models import position_ids

SMALL = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
WINDOW = 6  # shorter than the 14-token input: sliding layers see a window, on both sides
CONFIGS = {
    "llama": lambda: T.LlamaConfig(**SMALL),
    "mistral": lambda: T.MistralConfig(sliding_window=WINDOW, **SMALL),
    "qwen2": lambda: T.Qwen2Config(**SMALL),
    "qwen3": lambda: T.Qwen3Config(head_dim=8, **SMALL),
    "gemma": lambda: T.GemmaConfig(head_dim=8, **SMALL),
    "gemma2": lambda: T.Gemma2Config(head_dim=8, sliding_window=WINDOW, **SMALL),
    "gemma3_text": lambda: T.Gemma3TextConfig(head_dim=8, sliding_window=WINDOW,
                                              layer_types=["sliding_attention", "full_attention"], **SMALL),
    "olmo2": lambda: T.Olmo2Config(**SMALL),
    "smollm3": lambda: T.SmolLM3Config(**SMALL),
}
KERNELS = [(family, kernel) for family in CONFIGS for kernel in ("eager", "sdpa")
           if not (family == "gemma2" and kernel == "sdpa")]  # transformers has no SDPA for Gemma 2
TOL = dict(atol=2e-6, rtol=0)  # fp32: padding must change nothing beyond rounding


def build(family: str, kernel: str, convert: bool = True):
    torch.manual_seed(0)
    model = T.AutoModel.from_config(CONFIGS[family](), attn_implementation=kernel).eval()
    return bidirectional.make_bidirectional(model) if convert else model


def states(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token states as icdlib reads them: positions counted over real tokens (models.position_ids)."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask.bool()),
                     use_cache=False).last_hidden_state


def test_every_supported_family_is_proven_here():
    assert set(CONFIGS) == set(bidirectional.SUPPORTED)


@pytest.mark.parametrize("family,kernel", KERNELS)
def test_a_later_token_changes_an_earlier_tokens_state(family, kernel):
    ids = torch.randint(3, 120, (1, 14), generator=torch.Generator().manual_seed(1))
    later = ids.clone()
    later[0, 9] = 3 + (ids[0, 9] - 3 + 50) % 117  # token 9: within two windows of token 0
    mask = torch.ones_like(ids)
    causal = build(family, kernel, convert=False)
    # the yardstick can fail: the unconverted decoder's first tokens do not see token 9
    torch.testing.assert_close(states(causal, ids, mask)[0, :4], states(causal, later, mask)[0, :4], **TOL)
    model = build(family, kernel)
    assert bidirectional.is_bidirectional(model)
    change = (states(model, ids, mask)[0, :4] - states(model, later, mask)[0, :4]).abs().amax(-1)
    assert (change > 1e-4).all(), change


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_a_sliding_window_stays_a_window_on_both_sides(kernel):
    """Mistral with a window of 6 on both layers: token 13 reaches token 1 (12 apart, two windows)
    but not token 0, and token 0 reaches token 12 but not token 13 (transformers' bidirectional
    window: distance <= window)."""
    model = build("mistral", kernel)
    ids = torch.randint(3, 120, (1, 14), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    last, first = ids.clone(), ids.clone()
    last[0, 13] = 3 + (ids[0, 13] - 3 + 50) % 117
    first[0, 0] = 3 + (ids[0, 0] - 3 + 50) % 117
    base = states(model, ids, mask)[0]
    by_last, by_first = states(model, last, mask)[0], states(model, first, mask)[0]
    torch.testing.assert_close(by_last[0], base[0], **TOL)
    assert (by_last[1] - base[1]).abs().max() > 1e-4
    torch.testing.assert_close(by_first[13], base[13], **TOL)
    assert (by_first[12] - base[12]).abs().max() > 1e-4


@pytest.mark.parametrize("family,kernel", KERNELS)
def test_padding_changes_no_real_tokens_state(family, kernel):
    model = build(family, kernel)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 120, (1, 14), generator=gen)
    alone = states(model, ids, torch.ones_like(ids))[0]
    for left, right in ((0, 5), (5, 0), (3, 9)):
        padded = torch.cat([torch.zeros(1, left, dtype=ids.dtype), ids, torch.zeros(1, right, dtype=ids.dtype)], 1)
        mask = (torch.arange(padded.shape[1]) >= left) & (torch.arange(padded.shape[1]) < left + 14)
        out = states(model, padded, mask.long()[None])[0, left:left + 14]
        torch.testing.assert_close(out, alone, **TOL)
    # in a batch: a shorter neighbour and its padding leave a row as it is alone
    short = torch.randint(3, 120, (1, 6), generator=gen)
    batch = torch.cat([ids, torch.cat([short, torch.zeros(1, 8, dtype=ids.dtype)], 1)])
    mask = torch.cat([torch.ones(1, 14), torch.cat([torch.ones(1, 6), torch.zeros(1, 8)], 1)]).long()
    out = states(model, batch, mask)
    torch.testing.assert_close(out[0], alone, **TOL)
    torch.testing.assert_close(out[1, :6], states(model, short, torch.ones_like(short))[0], **TOL)
    # changing what the padding holds changes nothing either
    noisy = batch.clone()
    noisy[1, 6:] = torch.randint(3, 120, (8,), generator=gen)
    torch.testing.assert_close(states(model, noisy, mask)[1, :6], out[1, :6], **TOL)


def test_nothing_global_changes():
    """A causal model of the same family, built before or after a conversion, stays causal."""
    before = build("llama", "sdpa", convert=False)
    converted = build("llama", "sdpa")
    after = build("llama", "sdpa", convert=False)
    ids = torch.randint(3, 120, (1, 10), generator=torch.Generator().manual_seed(3))
    later = ids.clone()
    later[0, -1] = 3 + (ids[0, -1] - 3 + 9) % 117
    mask = torch.ones_like(ids)
    for model in (before, after):
        assert not bidirectional.is_bidirectional(model)
        torch.testing.assert_close(states(model, ids, mask)[0, 0], states(model, later, mask)[0, 0], **TOL)
    assert bidirectional.is_bidirectional(converted)


def test_a_causal_lm_and_a_peft_wrapped_model_convert_too():
    from peft import LoraConfig, get_peft_model

    lm = bidirectional.make_bidirectional(T.LlamaForCausalLM(T.LlamaConfig(**SMALL)))
    assert bidirectional.is_bidirectional(lm.model)
    wrapped = get_peft_model(T.AutoModel.from_config(T.MistralConfig(**SMALL)), LoraConfig(r=2, target_modules=["q_proj"]))
    bidirectional.make_bidirectional(wrapped)
    assert bidirectional.is_bidirectional(wrapped.get_base_model())


def test_an_unsupported_architecture_is_one_line_naming_the_supported():
    gpt2 = T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    with pytest.raises(bidirectional.UnsupportedArchitecture) as e:
        bidirectional.make_bidirectional(T.AutoModel.from_config(gpt2))
    text = str(e.value)
    assert "\n" not in text and "'gpt2'" in text and "GPT2Config" in text
    assert "supported model types are llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text" in text
    multimodal = T.Gemma3Config()
    with pytest.raises(IcdlibError, match="multimodal Gemma 3 checkpoint .* use a text-only one"):
        bidirectional.check(multimodal)


def test_attention_choices():
    for name in ("sdpa", "eager"):
        bidirectional.check_attention(name)
    with pytest.raises(IcdlibError, match="choose one of sdpa, eager, flash_attention_2"):
        bidirectional.check_attention("flex_attention")
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        with pytest.raises(IcdlibError, match="needs the flash-attn package"):
            bidirectional.check_attention("flash_attention_2")
