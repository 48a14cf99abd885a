import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A tiny random LlamaBiModel + BPE tokenizer saved in Hugging Face format."""
    from icdlib import backbones, config

    cfg = config.resolve("tiny", {"tiny_layers": 2, "tiny_hidden": 64, "tiny_heads": 4, "tiny_vocab": 300})
    words = ("congestive heart failure atrial fibrillation hypertension acute kidney injury sepsis "
             "pneumonia diabetes mellitus intubation catheter patient admitted discharged stable").split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(60)]
    return backbones.make_tiny(cfg, texts, tmp_path_factory.mktemp("tiny") / "backbone")
