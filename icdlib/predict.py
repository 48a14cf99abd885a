"""Coding new notes with a trained model folder (`03_train/best/`): the public entry point.

    coder = icdlib.predict.load("outputs/tiny/03_train/best")
    coder.predict(["Discharge Diagnosis: CHF, afib ..."], top_k=15)[0]   # code, kind, title, score, assigned

`load` and `Coder` live in `icdlib.model.trained` (the model layer, where step 04 loads them too;
its docstring says how a code is assigned, what is truncated, and the evidence) and are the same
objects here. This module adds what `python -m icdlib predict` prints: the truncation and decision
lines, the evidence as text lines or a standalone HTML page, and the note read from a text file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from icdlib.model import explain as explaining
from icdlib.model.trained import Coder, evidence_column, is_blank, load
from icdlib.run.errors import IcdlibError

__all__ = ["Coder", "decision_line", "evidence_column", "evidence_lines", "evidence_page", "load", "read_text_file",
           "truncation_line"]


def evidence_lines(table: pd.DataFrame) -> list[str]:
    """The evidence column as text, one line per span: code, [begin:end], score, the span's text
    (quoted, on one line)."""
    lines = []
    for code, spans in zip(table["code"], table["evidence"]):
        if not spans:
            lines.append(f"{code}  (no word with a positive score)")
        for s in spans:
            lines.append(f"{code}  [{s['begin']}:{s['end']}]  {s['score']:.4f}  {json.dumps(s['text'], ensure_ascii=False)}")
    return lines


def evidence_page(text: str, table: pd.DataFrame, words: list[pd.DataFrame], method: str) -> str:
    """A standalone HTML page: per code of `table` (with its `words` from `Coder.explain`), the
    code, its title and score, a colour legend and the text around its best-scored word, words
    shaded by score. It holds the given text, the codes and scores, nothing else (no paths, no
    script, no external resource); every text is escaped."""
    sections = [explaining.words_html(text, w, code, title, caption=f"score {score:.3f}")
                for code, title, score, w in zip(table["code"], table["title"], table["score"], words)]
    return explaining.page_html(sections, f"Evidence for the predicted codes ({explaining.DESCRIPTIONS[method]})")


def truncation_line(counts: dict, mode: str = "head") -> str:
    """One line saying how much of a note the model did not read ("" when it read all of it);
    `mode`: the model's truncation (which tokens it kept)."""
    tokens, kept = int(counts["tokens"]), int(counts["kept_tokens"])
    if kept >= tokens:
        return ""
    dropped = 100 * (tokens - kept) / tokens
    share = f"{dropped:.0f}%" if dropped >= 1 else "<1%"
    which = {"tail": "last", "head_tail": "first and last"}.get(mode, "first")
    return (f"note truncated: kept the {which} {kept:,} of {tokens:,} tokens ({share} dropped); "
            f"raise max_segments to read more (predict --max-segments N)")


def decision_line(table: pd.DataFrame, shown: int, threshold: float, source: str) -> str:
    """One line for what the first `shown` rows of `table` (a `predict` table of every code) do not
    say: codes assigned beyond them, and the threshold when it is not the run's tuned one; "" otherwise."""
    parts = []
    beyond = int(table["assigned"].iloc[shown:].sum())
    if beyond > 0:
        parts.append(f"{beyond} more code{'s' if beyond > 1 else ''} assigned beyond these {shown}: "
                     f"raise --top-k to see {'them' if beyond > 1 else 'it'}")
    if not source.startswith("tuned") and source != "given":
        parts.append(f"assigned at {threshold:g}, {source}; --threshold sets one")
    return "; ".join(parts)


def read_text_file(path: Path) -> str:
    """The note in the text file `path`; one line when it cannot be read, is not UTF-8 or holds no text."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise IcdlibError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise IcdlibError(f"{path} is a folder: --text-file takes one text file (one note)") from None
    except PermissionError:
        raise IcdlibError(f"{path} cannot be read (permission denied)") from None
    except UnicodeDecodeError as e:
        raise IcdlibError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    if is_blank(text):
        raise IcdlibError(f"the note in {path} is empty: nothing to code")
    return text
