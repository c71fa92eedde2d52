"""DP whitening of a site's embedding space (common/privacy/site_whitening.py): hand-worked moments and
maps, the noise each release carries, the exact fold into the last Linear, and its accounting in `adapt`."""

import pytest
import torch
from torch import nn

from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads, HeadConfig
from common.privacy.site_whitening import fold, noisy_moments, record_outputs, whiten_heads, whitening_map
from common.train.adapt import AdaptConfig, adapt
from common.train.site_context import PublicBank


def test_moments_of_clipped_rows_by_hand():
    z = torch.tensor([[3.0, 4.0], [0.0, 0.5]])  # the first row has norm 5 and is clipped to (0.6, 0.8)
    n, s, ss = noisy_moments(z, clip=1.0, sigma=0.0, gen=None)
    assert n == 2.0
    torch.testing.assert_close(s, torch.tensor([0.6, 1.3], dtype=torch.float64))
    torch.testing.assert_close(ss, torch.tensor([[0.36, 0.48], [0.48, 0.64 + 0.25]], dtype=torch.float64))


def test_whitening_map_with_shrinkage_by_hand():
    # points (+-2, 0) and (0, +-1): mean 0, covariance diag(2, 0.5); eigenvalue mean 1.25
    z = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    mu, m = whitening_map(*noisy_moments(z, clip=10.0, sigma=0.0, gen=None), shrink=1.0)
    torch.testing.assert_close(mu, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(m, torch.diag(torch.tensor([3.25, 1.75], dtype=torch.float64).rsqrt()))


def test_without_shrinkage_the_map_whitens():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64) + 3.0
    mu, m = whitening_map(*noisy_moments(z, clip=1e6, sigma=0.0, gen=None), shrink=1e-12)
    w = (z - mu) @ m.T
    torch.testing.assert_close(w.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.cov(w.T, correction=0), torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(m, m.T)


def test_each_release_carries_its_calibrated_noise():
    """Noise std: sigma on the count, sigma * clip on the sum, sigma * clip^2 on every entry of the
    upper triangle of the outer-product sum (mirrored, so the release stays symmetric)."""
    z = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, 0.2]])
    clip, sigma, draws = 3.0, 2.0, 4000
    n0, s0, ss0 = noisy_moments(z, clip, 0.0, None)
    g = torch.Generator().manual_seed(1)
    ns, ss_, sss = zip(*(noisy_moments(z, clip, sigma, g) for _ in range(draws)))
    dn = torch.tensor(ns, dtype=torch.float64) - n0
    ds = torch.stack(ss_) - s0
    dss = torch.stack(sss) - ss0
    assert all(torch.equal(x, x.T) for x in sss[:10])
    assert abs(float(dn.std()) / sigma - 1) < 0.06
    assert torch.allclose(ds.std(0) / (sigma * clip), torch.ones(3, dtype=torch.float64), atol=0.06)
    iu = torch.triu_indices(3, 3)
    assert torch.allclose(dss[:, iu[0], iu[1]].std(0) / (sigma * clip**2), torch.ones(6, dtype=torch.float64), atol=0.06)
    assert abs(float(ds.mean(0).abs().max())) < 4 * sigma * clip / draws**0.5  # unbiased


def test_fold_is_exact():
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(4, 3).double()
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    before = lin(x).detach()
    mu = torch.randn(3, generator=g, dtype=torch.float64)
    m = torch.randn(3, 3, generator=g, dtype=torch.float64)
    fold(lin, mu, m)
    torch.testing.assert_close(lin(x).detach(), (before - mu) @ m.T)


def _site(n=24, dt=6, di=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    fs = FeatureSet(torch.randn(n, di, generator=g), torch.randn(2 * n, dt, generator=g),
                    torch.arange(n).repeat_interleave(2), torch.full((n,), -1), torch.full((2 * n,), -1),
                    [f"i{i}" for i in range(n)], [f"c{t}" for t in range(2 * n)])
    return fs, PublicBank(torch.randn(16, di, generator=g), torch.randn(16, dt, generator=g))


def test_record_outputs_average_a_records_captions():
    fs, _ = _site()
    heads = DualHeads(6, 5, HeadConfig(out_dim=4, hidden=8, input_norm=True, hidden_norm=True))
    z_img, z_txt = record_outputs(heads, fs)
    with torch.no_grad():
        caps = heads.text_head(fs.text_feats)
    torch.testing.assert_close(z_txt[3], (caps[6] + caps[7]) / 2)
    assert z_img.shape == z_txt.shape == (24, 4)


def test_whiten_heads_refuses_a_release_without_noise_and_accounts_the_one_it_makes():
    fs, bank = _site()
    heads = DualHeads(6, 5, HeadConfig(out_dim=4, hidden=8, input_norm=True, hidden_norm=True))
    with pytest.raises(ValueError, match="noise multiplier must be positive"):
        whiten_heads(heads, fs, bank.image_feats, bank.text_feats, 0.0, 1.0, None)
    out, history = whiten_heads(heads, fs, bank.image_feats, bank.text_feats, 5.0, 1.0, torch.Generator().manual_seed(0))
    assert history == [(5.0, 1.0, 3), (5.0, 1.0, 3)]
    # only the last Linear of each head changes
    changed = [k for k, v in out.state_dict().items() if not torch.equal(v, heads.state_dict()[k])]
    assert sorted(changed) == ["image_head.net.4.bias", "image_head.net.4.weight", "text_head.net.4.bias", "text_head.net.4.weight"]


def test_per_record_adapt_ends_whitened_and_logs_the_release():
    fs, bank = _site()
    heads = DualHeads(6, 5, HeadConfig(out_dim=4, hidden=8, input_norm=True, hidden_norm=True))
    cfg = AdaptConfig(mode="per_record", epochs=1, batch_size=8, prototypes=0, teacher_rounds=1)
    whitened, log = adapt(heads, fs, bank, cfg)
    plain, plain_log = adapt(heads, fs, bank, AdaptConfig(**{**cfg.__dict__, "whiten": 0.0}))
    expected, _ = whiten_heads(plain, fs, bank.image_feats, bank.text_feats, 5.0, 1.0, torch.Generator().manual_seed(0))
    for a, b in zip(whitened.state_dict().values(), expected.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert log["privacy_history"][-2:] == [(5.0, 1.0, 3), (5.0, 1.0, 3)] and plain_log["privacy_history"] == []
    assert "whitened" in log["selection"]
    with pytest.raises(ValueError, match="federated local round"):
        adapt(heads, fs, bank, cfg, steps=2)
