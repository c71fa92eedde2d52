"""GMP: graph-based multi-domain propagation (our reading of GCKD's first module).

Nodes are teacher embeddings: the target's images and captions, and a set of
*public* nodes (the source anchor bank of images and captions computed by the
teacher on the labelled source domain, plus, under record-level DP, the site's
prototypes released by DP k-means). Edges join

- each caption to its own image (the known pair), both ways;
- each target node to its k nearest public nodes (cosine), within and across
  modalities: public -> target only, so public nodes are never changed;
- in ``full`` mode only: each target node to its k nearest target nodes of the
  same modality and of the other modality (both directions).

Propagation is APPNP (torch-geometric, K steps, teleport alpha) over the
row-normalised, self-looped adjacency: each node's refined embedding is a
mixture of its own teacher embedding and the weighted mean of its neighbours'.
It has **no learned weights**: GMP is a deterministic function of the teacher's
features, computed without gradient, so it never enters the DP gradient path
and needs no training of its own. What it changes is the *targets* the student
learns from: samples of one person, which sit close to each other within a
modality, pull each other's refined embeddings together, and a caption's
refined embedding inherits its image's neighbourhood (and vice versa).

In ``per_record`` mode a target node's neighbours are its own record's nodes
and public nodes only, so the refined embedding of a record is a function of
that record alone plus public data: the decomposition that record-level DP
needs (docs/privacy.md, section 4). Tests check this.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch_geometric.nn import APPNP

from common.graph.knn import knn_edge_index

MODES = ("full", "per_record")


@dataclass
class GMPConfig:
    """Defaults chosen on the flat->outline development pair (see README), then fixed for every pair.

    On an unseen domain the teacher's *cross-modal* and image-image
    neighbours are weak while caption-caption neighbours are strong (captions
    of one person share their attribute words), so the known pair edge is
    weighted high and cross-modal kNN is off: an image then inherits the
    caption neighbourhood of its own captions, two hops away.
    """

    k_intra: int = 4  # same-modality target neighbours (full mode); about one person's other views
    k_cross: int = 0  # other-modality target neighbours; the teacher's cross-modal similarity is the weakest signal on a new domain
    k_public: int = 4  # public neighbours (source anchors, site prototypes) per target node
    pair_weight: float = 8.0  # the known image-caption pair is the one certain edge
    public_weight: float = 0.1  # public nodes are another domain (or noisy prototypes): a light pull
    steps: int = 3  # APPNP K: image -> its captions -> their caption neighbours -> those captions' images
    alpha: float = 0.1  # APPNP teleport: keep a tenth of the node's own teacher embedding
    min_sim: float = 0.0  # drop kNN edges with negative cosine


def _sym(ei: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([ei, ei.flip(0)], 1), torch.cat([w, w])


def _knn(x: torch.Tensor, k: int, y: torch.Tensor | None, min_sim: float) -> tuple[torch.Tensor, torch.Tensor]:
    n_keys = len(y) if y is not None else len(x) - 1
    k = min(k, n_keys)
    if k <= 0:
        return torch.empty(2, 0, dtype=torch.long), torch.empty(0)
    ei, w = knn_edge_index(x, k, y=y)
    keep = w > min_sim
    return ei[:, keep], w[keep]


def build_graph(
    image: torch.Tensor,
    text: torch.Tensor,
    text_to_image: torch.Tensor,
    public: torch.Tensor,
    cfg: GMPConfig,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Edges over nodes ordered [target images | target captions | public].

    Returns (edge_index [2, E] source->target, weight [E], number of nodes).
    All inputs are unit-norm teacher embeddings; nothing here needs grad.
    """
    if mode not in MODES:
        raise ValueError(f"unknown GMP mode {mode!r}; choose from {MODES}")
    ni, nt, npub = len(image), len(text), len(public)
    t_off, p_off = ni, ni + nt
    edges, weights = [], []
    txt_idx = torch.arange(nt) + t_off
    pair = torch.stack([txt_idx, text_to_image])
    e, w = _sym(pair, torch.full((nt,), cfg.pair_weight))
    edges.append(e), weights.append(w)
    targets = torch.cat([image, text])
    if npub:
        ei, w = _knn(targets, cfg.k_public, public, cfg.min_sim)
        edges.append(torch.stack([ei[0] + p_off, ei[1]])), weights.append(w * cfg.public_weight)
    if mode == "full":
        for x, off in ((image, 0), (text, t_off)):
            ei, w = _knn(x, cfg.k_intra, None, cfg.min_sim)
            e, w = _sym(ei + off, w)
            edges.append(e), weights.append(w)
        ei, w = _knn(text, cfg.k_cross, image, cfg.min_sim)  # captions' nearest images
        e, w = _sym(torch.stack([ei[0], ei[1] + t_off]), w)
        edges.append(e), weights.append(w)
        ei, w = _knn(image, cfg.k_cross, text, cfg.min_sim)  # images' nearest captions
        e, w = _sym(torch.stack([ei[0] + t_off, ei[1]]), w)
        edges.append(e), weights.append(w)
    n = ni + nt + npub
    loops = torch.arange(n)
    edges.append(torch.stack([loops, loops])), weights.append(torch.ones(n))
    return torch.cat(edges, 1), torch.cat(weights).float(), n


def row_normalised_adjacency(edge_index: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    """Sparse (CSR) matrix A with A[target, source] = w / sum of the target's incoming weights."""
    deg = torch.zeros(n).index_add_(0, edge_index[1], weight)
    w = weight / deg[edge_index[1]]
    adj = torch.sparse_coo_tensor(torch.stack([edge_index[1], edge_index[0]]), w, size=(n, n), check_invariants=False)
    adj = adj.coalesce()  # sums duplicate edges (e.g. a pair that is also a kNN edge)
    with warnings.catch_warnings():  # torch flags every CSR tensor as "beta"; PyG's spmm wants CSR
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return adj.to_sparse_csr()


@torch.no_grad()
def propagate(
    image: torch.Tensor,
    text: torch.Tensor,
    text_to_image: torch.Tensor,
    public: torch.Tensor,
    cfg: GMPConfig,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined (unit-norm) teacher embeddings of the target images and captions."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    public = F.normalize(public, dim=-1) if len(public) else public.reshape(0, image.shape[1])
    ei, w, n = build_graph(image, text, text_to_image, public, cfg, mode)
    adj = row_normalised_adjacency(ei, w, n)
    x = torch.cat([image, text, public])
    out = APPNP(K=cfg.steps, alpha=cfg.alpha, normalize=False)(x, adj)
    out = F.normalize(out, dim=-1)
    return out[: len(image)], out[len(image) : len(image) + len(text)]
