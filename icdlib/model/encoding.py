"""Tokenised notes and batches for training and scoring.

Notes are tokenised once (cached in the run folder as flat token arrays) and cut into up to
`max_segments` windows of `segment_length` tokens. Batches group notes of similar length and
pad only as far as the longest note of the batch needs, which on discharge summaries (a few
hundred to a few thousand tokens) saves most of the padding a fixed length would cost.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from icdlib.data.labels import multi_hot


@dataclass
class Tokenized:
    """Token ids of n notes as one flat array with offsets (note i is ids[offsets[i]:offsets[i+1]])."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, n + 1
    full_lengths: np.ndarray | None = None  # int64, n: each note's tokens before truncation (None: unknown)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """Tokens kept per note (after truncation)."""
        return np.diff(self.offsets)

    def note(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


TRUNCATION_MODES = ("head", "tail", "head_tail")


def cut(ids, max_tokens: int, mode: str = "head"):
    """The tokens of one note kept within `max_tokens`: its start (`head`), its end (`tail`), or
    both (`head_tail`: the first ceil(max_tokens / 2) tokens, then the last floor(max_tokens / 2)).
    A note within the budget is kept whole."""
    if mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {mode!r}")
    if len(ids) <= max_tokens:
        return ids
    if max_tokens <= 0:
        return ids[:0]
    if mode == "head":
        return ids[:max_tokens]
    if mode == "tail":
        return ids[len(ids) - max_tokens:]
    tail = max_tokens // 2
    if not tail:
        return ids[:max_tokens]
    return np.concatenate([np.asarray(ids[:max_tokens - tail]), np.asarray(ids[len(ids) - tail:])])


def tokenize(texts: list[str], tokenizer, max_tokens: int, batch: int = 256, mode: str = "head") -> Tokenized:
    """Token ids without special tokens, each note cut to `max_tokens` by `cut` (`mode`: head, tail,
    head_tail); `full_lengths` keeps every note's length before the cut."""
    chunks, lengths, full = [], [], []
    for start in range(0, len(texts), batch):
        enc = tokenizer(list(texts[start:start + batch]), add_special_tokens=False, truncation=False)["input_ids"]
        for ids in enc:
            full.append(len(ids))
            ids = np.asarray(cut(np.asarray(ids, dtype=np.int32), max_tokens, mode), dtype=np.int32)
            chunks.append(ids)
            lengths.append(len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    return Tokenized(ids=ids, offsets=offsets, full_lengths=np.asarray(full, dtype=np.int64))


def tokenize_cached(texts: list[str], tokenizer, max_tokens: int, cache_dir: Path, name: str,
                    mode: str = "head") -> Tokenized:
    """`tokenize`, reusing `<cache_dir>/<name>-<hash>.npz` when texts and tokenizer are unchanged.

    The hash is of what makes the tokens (the texts, the tokenizer's definition, max_tokens, the
    truncation `mode`, the cache's format); the other `<name>-*.npz` of the folder are removed, so
    the cache holds the current tokens only. The file keeps ids, offsets and full_lengths."""
    h = hashlib.sha256()
    h.update(str(max_tokens).encode())
    h.update(f"truncation={mode};full_lengths".encode())  # caches before full_lengths hash differently
    h.update(tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer") else repr(tokenizer).encode())
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    path = Path(cache_dir) / f"{name}-{h.hexdigest()[:16]}.npz"
    tok = None
    if path.is_file():
        with np.load(path) as z:
            if "full_lengths" in z:
                tok = Tokenized(ids=z["ids"], offsets=z["offsets"], full_lengths=z["full_lengths"])
    if tok is None:
        tok = tokenize(texts, tokenizer, max_tokens, mode=mode)
        from icdlib.run.runfolder import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the name
            np.savez(f, ids=tok.ids, offsets=tok.offsets, full_lengths=tok.full_lengths)
    for old in Path(cache_dir).glob(f"{name}-*.npz"):
        if old != path and old.name[len(name) + 1:-len(".npz")].isalnum():
            old.unlink(missing_ok=True)
    return tok


def truncation_stats(tokens: Tokenized) -> dict:
    """How much of the notes `tokens` keeps: notes, truncated notes and their share, tokens before
    and after the cut and the share dropped, the median and 90th percentile of the full lengths."""
    full = np.asarray(tokens.full_lengths if tokens.full_lengths is not None else tokens.lengths(), dtype=np.int64)
    kept = tokens.lengths()
    n, total, n_kept = len(full), int(full.sum()), int(kept.sum())
    truncated = int((kept < full).sum())
    return {"notes": n, "truncated_notes": truncated, "share_truncated": truncated / n if n else 0.0,
            "tokens": total, "tokens_kept": n_kept, "share_dropped": (total - n_kept) / total if total else 0.0,
            "median_tokens": float(np.median(full)) if n else 0.0,
            "p90_tokens": float(np.percentile(full, 90)) if n else 0.0}


@dataclass(frozen=True)
class SegmentFormat:
    """Tokens around every segment's text, as the encoder saw text in training.

    LLM2Vec encodes a text as BOS + text, and its supervised / SimCSE adapters were trained with
    the text inside a chat turn (`<|start_header_id|>user<|end_header_id|>\\n\\n … <|eot_id|>` for
    Llama-3, `[INST] … [/INST]` for Mistral). The empty format reproduces plain token windows.
    """

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    def body(self, segment_length: int) -> int:
        """Note tokens per segment once the prefix and suffix are in."""
        return segment_length - len(self.prefix) - len(self.suffix)

    def budget(self, segment_length: int, max_segments: int) -> int:
        """Note tokens a model reads: every segment's body, max_segments times."""
        return self.body(segment_length) * max_segments

    def to_dict(self) -> dict:
        return {"prefix": list(self.prefix), "suffix": list(self.suffix)}

    @classmethod
    def from_dict(cls, values: dict | None) -> "SegmentFormat":
        values = values or {}
        return cls(tuple(values.get("prefix", ())), tuple(values.get("suffix", ())))


PLAIN = SegmentFormat()


class NotesDataset(torch.utils.data.Dataset):
    """Item i: (token ids of note i, multi-hot targets of note i, its index)."""

    def __init__(self, tokens: Tokenized, code_lists, label_codes: list[str]):
        self.tokens = tokens
        self.targets = multi_hot(code_lists, label_codes)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return self.tokens.note(i), self.targets[i], i


def collate(items, segment_length: int, pad_id: int, padding_side: str = "right", fmt: SegmentFormat = PLAIN) -> dict:
    """Stack notes as (B, S, L) segments; S is the batch's most segments, L shrinks for short batches.

    Each segment is `fmt.prefix + up to fmt.body(segment_length) note tokens + fmt.suffix`.
    """
    body, extra = fmt.body(segment_length), len(fmt.prefix) + len(fmt.suffix)
    lengths = [max(len(ids), 1) for ids, _, _ in items]
    n_seg = max((n + body - 1) // body for n in lengths)
    seg_len = segment_length if n_seg > 1 else max(lengths) + extra
    input_ids = torch.full((len(items), n_seg, seg_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), n_seg, seg_len), dtype=torch.long)
    prefix, suffix = torch.tensor(fmt.prefix, dtype=torch.long), torch.tensor(fmt.suffix, dtype=torch.long)
    for row, (ids, _, _) in enumerate(items):
        ids = torch.from_numpy(ids.astype(np.int64))
        for k, start in enumerate(range(0, len(ids), body)):
            segment = torch.cat([prefix, ids[start:start + body], suffix])
            input_ids[row, k, :len(segment)] = segment
            mask[row, k, :len(segment)] = 1
    if padding_side == "left":
        input_ids, mask = left_pad_segments(input_ids, mask)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "targets": torch.from_numpy(np.stack([t for _, t, _ in items])),
        "index": torch.tensor([i for _, _, i in items]),
    }


def left_pad_segments(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each segment's padding to its left (what llm2vec's own pooling expects)."""
    order = torch.argsort(mask, dim=-1, stable=True)  # padding (0) first, tokens keep their order
    return torch.gather(input_ids, -1, order), torch.gather(mask, -1, order)


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of similar-length notes, shuffled per epoch (deterministic for a seed and epoch).

    Notes are shuffled, cut into pools of 50 batches, sorted by length within a pool, batched,
    and the batches shuffled. With `rank`/`world` each process takes every world-th batch of the
    same list, so ranks see disjoint notes (batches are dropped to keep ranks equal).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool = True,
                 rank: int = 0, world: int = 1):
        self.lengths, self.batch_size, self.seed, self.shuffle = np.asarray(lengths), batch_size, seed, shuffle
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            out = [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
            pool = self.batch_size * 50
            out = []
            for start in range(0, n, pool):
                chunk = order[start:start + pool]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                out += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
            out = [out[i] for i in rng.permutation(len(out))]
        if self.world > 1:
            usable = len(out) - len(out) % self.world
            out = out[self.rank:usable:self.world]
        return out

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
