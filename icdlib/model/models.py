"""The ICD coder: a bidirectional LLM2Vec encoder read segment by segment, and a label head.

A note arrives as `(batch, segments, segment_length)` token ids. Each non-empty segment is
encoded on its own (the LLM2Vec adapters saw <= 512 tokens), the token states of all segments
are laid end to end, and the head reads them all:

- `mean`: masked mean over every real token → linear (the original project's head);
- `label_attention`: LAAT / PLM-ICD per-label attention. Memory: the attention weights and the
  per-label document vectors are (labels × tokens) and (labels × hidden) per note; for 8.9k
  labels × 4,096 tokens (8 × 512) at hidden 4,096 that is 146 MB + 146 MB per note in fp32,
  plus the same again for their gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MeanHead(nn.Module):
    def __init__(self, hidden: int, n_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, n_labels)
        nn.init.zeros_(self.out.weight)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.out(self.dropout(pooled))


class LabelAttentionHead(nn.Module):
    """LAAT: a_l = softmax_t(u_l · tanh(W h_t)); logit_l = w_l · Σ_t a_lt h_t + b_l."""

    def __init__(self, hidden: int, n_labels: int, attention_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(hidden, attention_dim, bias=False)
        self.query = nn.Linear(attention_dim, n_labels, bias=False)
        # zero output weights: every label starts at its bias (see ICDCoder.init_bias), like LoRA's B
        self.weight = nn.Parameter(torch.zeros(n_labels, hidden))
        self.bias = nn.Parameter(torch.zeros(n_labels))

    def attention(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, labels) weights over tokens; padding gets exactly zero."""
        scores = self.query(torch.tanh(self.project(states)))
        scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return torch.softmax(scores, dim=1)  # over tokens; max-subtracted, so stable

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.dropout(states)
        attention = self.attention(states, mask)
        per_label = torch.einsum("btl,bth->blh", attention, states)
        return (per_label * self.weight).sum(-1) + self.bias


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left and right padding encode alike."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class ICDCoder(nn.Module):
    def __init__(self, encoder: nn.Module, n_labels: int, head: str = "label_attention", attention_dim: int = 512):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.n_labels = n_labels
        self.head = LabelAttentionHead(hidden, n_labels, attention_dim) if head == "label_attention" else MeanHead(hidden, n_labels)

    @torch.no_grad()
    def init_bias(self, label_frequency: torch.Tensor) -> None:
        """Start each label's logit at its training log-odds, so early steps learn evidence, not priors."""
        bias = self.head.bias if isinstance(self.head, LabelAttentionHead) else self.head.out.bias
        p = label_frequency.to(bias.dtype).clamp(1e-4, 1 - 1e-4)
        bias.copy_(torch.log(p) - torch.log1p(-p))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (B, S·L, H) and their mask (B, S·L) for (B, S, L) segmented input;
        `inputs_embeds` (B, S, L, E), when given, replaces the ids' embeddings (the explanation
        methods take gradients with respect to them, icdlib.model.explain)."""
        b, s, length = attention_mask.shape
        mask = attention_mask.reshape(b * s, length).bool()
        used = mask.any(-1)
        if inputs_embeds is None:
            given = {"input_ids": input_ids.reshape(b * s, length)[used]}
        else:
            given = {"inputs_embeds": inputs_embeds.reshape(b * s, length, -1)[used]}
        out = self.encoder(**given, attention_mask=mask[used].long(),
                           position_ids=position_ids(mask[used]), use_cache=False).last_hidden_state
        states = out.new_zeros(b * s, length, out.shape[-1])
        states[used] = out
        return states.reshape(b, s * length, -1), mask.reshape(b, s * length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states, mask = self.encode(input_ids, attention_mask)
        return self.head(states.float(), mask)


def checkpoint_activations(model) -> None:
    """Non-reentrant activation (gradient) checkpointing on a transformers model: gradients reach LoRA
    weights inside each checkpointed layer without an input-grad hook. transformers >= 5.11 calls it
    `activation_checkpointing_enable`; earlier 5.x `gradient_checkpointing_enable`."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def adapters_take_input_as_is(model: nn.Module) -> int:
    """LoRA layers use their input in the dtype it arrives in (bf16 or fp16 under autocast) instead
    of first casting it to their fp32 weights' dtype, as peft does by default; returns how many.

    peft keeps LoRA weights in fp32 (AdamW's updates stay exact) and casts each projection's input
    to fp32 before dropout and `lora_A`: on Llama-3-8B at 4,096 tokens per step that is a copy of
    every one of 224 projections' inputs at twice their size, forward and backward, only for
    autocast to cast the product back to bf16. Without the cast dropout runs in bf16 and autocast
    computes `lora_A` in bf16 from the fp32 weights, as it does every other matmul. Only for models
    run under autocast: a bf16 input meeting fp32 weights outside it is an error."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float = 0.0) -> torch.Tensor:
    weight = None
    if pos_weight > 0:
        weight = torch.full((logits.shape[-1],), pos_weight, device=logits.device, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight)
