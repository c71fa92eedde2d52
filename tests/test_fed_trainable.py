"""Which head parameters train and travel (run-config ``train-params``)."""

from __future__ import annotations

import pytest

from common.federation.trainable import array_bytes, get_arrays, set_trainable, trainable_names
from common.models.heads import DualHeads, HeadConfig


@pytest.fixture()
def heads() -> DualHeads:
    return DualHeads(6, 10, HeadConfig(hidden=8, out_dim=4, input_norm=True, hidden_norm=True))


def test_presets_pick_the_documented_parameters(heads):
    names = [n for n, _ in heads.named_parameters()]
    assert trainable_names(heads, "all") == names
    assert trainable_names(heads, "last") == ["text_head.net.4.weight", "text_head.net.4.bias",
                                               "image_head.net.4.weight", "image_head.net.4.bias"]
    nb = trainable_names(heads, "norms+biases")
    # LayerNorms at net.0 (input) and net.2 (hidden): weight and bias; Linears at net.1 and net.4: bias only
    expected = [f"{h}.net.{i}.{p}" for h in ("text_head", "image_head") for i, p in
                [(0, "weight"), (0, "bias"), (1, "bias"), (2, "weight"), (2, "bias"), (4, "bias")]]
    assert nb == expected
    count = sum(p.numel() for n, p in heads.named_parameters() if n in nb)
    assert count == (6 + 6 + 8 + 8 + 8 + 4) + (10 + 10 + 8 + 8 + 8 + 4)  # hand-counted


def test_prefixes_and_typos(heads):
    assert trainable_names(heads, "text_head.net.4") == ["text_head.net.4.weight", "text_head.net.4.bias"]
    with pytest.raises(ValueError, match="match no head parameter"):
        trainable_names(heads, "text_head.net.9")


def test_only_chosen_parameters_require_grad_and_travel(heads):
    names = trainable_names(heads, "norms+biases")
    set_trainable(heads, names)
    assert [n for n, p in heads.named_parameters() if p.requires_grad] == names
    arrays = get_arrays(heads, names)
    assert list(arrays) == names
    assert array_bytes(arrays) == 4 * sum(p.numel() for n, p in heads.named_parameters() if n in names)


def test_per_record_mode_keeps_the_text_head(heads):
    from common.federation.trainable import trainable_for_mode

    assert trainable_for_mode(heads, "last", "full") == trainable_names(heads, "last")
    assert trainable_for_mode(heads, "last", "per_record") == ["image_head.net.4.weight", "image_head.net.4.bias"]
    assert all(n.startswith("image_head.") for n in trainable_for_mode(heads, "all", "per_record"))
    with pytest.raises(ValueError, match="text head"):
        trainable_for_mode(heads, "text_head.net.4", "per_record")


def test_train_params_advice_follows_the_median_sites_records_per_step():
    from common.federation.trainable import train_params_advice

    assert train_params_advice("last", []) is None
    assert train_params_advice("last", [45, 60, 40]) is None  # small sites: 'last' is already the better choice
    big = train_params_advice("last", [20, 500, 320])  # median 320: the whole image head
    assert big and "train-params=all" in big and "320" in big
    assert train_params_advice("last", [20, 200, 160]) is None  # median 160: level in the measurement, no advice
    assert train_params_advice("all", [200, 300, 150]) is None
    small = train_params_advice("all", [45, 90, 500])  # median 90
    assert small and "train-params=last" in small and "90" in small
    assert train_params_advice("norms+biases", [45]) is None and train_params_advice("norms+biases", [500]) is None
    assert train_params_advice(" last ", [300]) is not None and train_params_advice("last", [299]) is None
