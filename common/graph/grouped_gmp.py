"""GMP restricted to groups: `common.graph.gmp`'s full-mode graph, built inside each group of `grouped` mode.

Groups come packed: group g holds ``Ri`` image slots and ``Rt`` caption slots
(padded; ``mi``/``mt`` mark the real ones, ``slot`` names each caption's
image slot). Per group, the nodes are its images and captions, and the public
nodes (source anchors embedded by the teacher, the site's DP-released
prototypes). Edges, as in `gmp.build_graph` with ``mode="full"``: each caption
to its own image (``pair_weight``, both ways); each node to its ``k_intra``
nearest nodes of the same modality *in its group* and ``k_cross`` of the other
modality in its group (both ways); each node to its ``k_public`` nearest
public nodes (public -> node, ``public_weight`` times the cosine); a self loop
on every node. APPNP over the row-normalised adjacency then mixes each node
with its neighbours. Public nodes have only their self loop, so they stay
fixed and enter as constants.

Nothing here crosses a group: a group's refined embeddings are a function of
its own members and public data (a test checks each group against
`gmp.propagate` run on that group alone). No gradient: GMP only shapes the
teacher's targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.graph.gmp import GMPConfig


def _knn_block(x: torch.Tensor, mx: torch.Tensor, y: torch.Tensor, my: torch.Tensor, k: int, min_sim: float,
               same: bool) -> torch.Tensor:
    """[G, Nx, Ny] weights w[g, i, j] = cos(x_i, y_j) where y_j is among x_i's k nearest real y of its group."""
    g, nx, ny = x.shape[0], x.shape[1], y.shape[1]
    out = x.new_zeros(g, nx, ny)
    k = min(k, ny - 1 if same else ny)
    if k <= 0 or nx == 0:
        return out
    sim = x @ y.transpose(1, 2)
    invalid = ~(mx[:, :, None] & my[:, None, :])
    if same:
        invalid = invalid | torch.eye(nx, dtype=torch.bool)[None]
    val, idx = sim.masked_fill(invalid, float("-inf")).topk(k, dim=2)
    keep = torch.isfinite(val) & (val > min_sim)
    return out.scatter_add_(2, idx, torch.where(keep, val, torch.zeros_like(val)))


@torch.no_grad()
def propagate_groups(img: torch.Tensor, mi: torch.Tensor, txt: torch.Tensor, mt: torch.Tensor, slot: torch.Tensor,
                     public: torch.Tensor, cfg: GMPConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined unit-norm embeddings (images [G, Ri, D], captions [G, Rt, D]); padded slots come back as zeros."""
    img = F.normalize(img, dim=-1) * mi[..., None]
    txt = F.normalize(txt, dim=-1) * mt[..., None]
    g, ri, rt = img.shape[0], img.shape[1], txt.shape[1]
    n = ri + rt
    x0 = torch.cat([img, txt], 1)
    mask = torch.cat([mi, mt], 1)
    w = torch.diag_embed(x0.new_ones(g, n))  # w[g, i, j]: weight of the edge j -> i
    pair = x0.new_zeros(g, rt, ri).scatter_(2, slot[..., None], cfg.pair_weight) * mt[..., None]
    w[:, ri:, :ri] += pair
    w[:, :ri, ri:] += pair.transpose(1, 2)
    blocks = [(img, mi, img, mi, cfg.k_intra, True, 0, 0), (txt, mt, txt, mt, cfg.k_intra, True, ri, ri),
              (txt, mt, img, mi, cfg.k_cross, False, ri, 0), (img, mi, txt, mt, cfg.k_cross, False, 0, ri)]
    for x, mx, y, my, k, same, ox, oy in blocks:
        e = _knn_block(x, mx, y, my, k, cfg.min_sim, same)
        w[:, ox : ox + x.shape[1], oy : oy + y.shape[1]] += e
        w[:, oy : oy + y.shape[1], ox : ox + x.shape[1]] += e.transpose(1, 2)
    pub_sum = x0.new_zeros(g, n, x0.shape[2])
    pub_deg = x0.new_zeros(g, n)
    kp = min(cfg.k_public, len(public))
    if kp > 0:  # real nodes only (padded ones get no public edge): most slots of a batch are padding
        pub = F.normalize(public.to(x0.dtype), dim=-1)
        real = mask.nonzero(as_tuple=True)
        val, idx = (x0[real] @ pub.T).topk(kp, dim=1)
        wp = torch.where(val > cfg.min_sim, val, torch.zeros_like(val)) * cfg.public_weight
        pub_sum[real] = (wp[..., None] * pub[idx]).sum(1)
        pub_deg[real] = wp.sum(1)
    deg = w.sum(2) + pub_deg
    x = _appnp(w, x0, pub_sum, deg, mask, cfg)
    return x[:, :ri], x[:, ri:]


def _appnp(w: torch.Tensor, x0: torch.Tensor, pub_sum: torch.Tensor, deg: torch.Tensor, mask: torch.Tensor,
           cfg: GMPConfig) -> torch.Tensor:
    """APPNP ``x <- (1 - alpha) (W x + pub_sum) / deg + alpha x0`` on the real nodes, unit-norm; padded nodes come
    back as zeros. The groups' adjacencies form one block-diagonal sparse matrix over the real nodes (a padded node
    has only its self loop and no edge to a real one), so padding and the absent edges cost nothing."""
    real = mask.nonzero(as_tuple=True)
    pos = torch.full(mask.shape, -1, dtype=torch.long)
    pos[real] = torch.arange(len(real[0]))
    g, i, j = (w * (mask[:, :, None] & mask[:, None, :])).nonzero(as_tuple=True)  # row-major: sorted, distinct
    m = len(real[0])
    adj = torch.sparse_coo_tensor(torch.stack([pos[g, i], pos[g, j]]), w[g, i, j], (m, m), check_invariants=True)
    adj = adj.coalesce()
    x0r, pub_r, deg_r = x0[real], pub_sum[real], deg[real][:, None]
    x = x0r
    for _ in range(cfg.steps):
        x = (1 - cfg.alpha) * (torch.sparse.mm(adj, x) + pub_r) / deg_r + cfg.alpha * x0r
    return x0.new_zeros(x0.shape).index_put(real, F.normalize(x, dim=-1))
