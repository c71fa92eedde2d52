"""CMKD: contrastive momentum knowledge distillation (our reading of GCKD's second module).

For every target caption (and symmetrically every target image) of a batch:

* **distillation**: the teacher, refined by GMP, gives a soft similarity
  distribution over candidates ``q = softmax(r_q . r_c / tau_t)``; the student
  gives ``p = softmax(s_q . k_c / tau_s)`` over the same candidates and learns
  ``KL(q || p)``. The candidates are the query's own pair (the student's own
  embedding of it on the student side), the keys passed in (``full`` mode:
  the other records of the batch and the momentum queue of refined target
  features; ``per_record`` mode: none), and the public nodes (source anchors
  and, under record-level DP, the DP site prototypes);
* **pair contrast**: cross-entropy of the known pair against negatives: the
  hardest source anchors by teacher similarity (``hard_negatives``) and, in
  ``full`` mode, the other records of the batch and the queue.

Everything the loss of one record reads besides that record is passed in as a
detached tensor that does not depend on the record (keys, public nodes, the
record's own refined teacher embedding). With ``keys`` empty the loss of a
record therefore depends on that record alone: `per_record_losses` returns the
vector of those per-record losses, which is what DP-SGD clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CMKDConfig:
    tau_student: float = 0.05  # student temperature, as in source pretraining
    tau_teacher: float = 0.05  # teacher temperature; equal to the student's so a perfect student reaches zero KL
    kd_weight: float = 1.0  # distillation term
    pair_weight: float = 1.0  # pair contrast term
    hard_negatives: int = 32  # hardest source anchors per query; ~the number of in-batch negatives of a small batch


@dataclass
class Side:
    """One direction (queries of one modality against candidates of the other).

    q_student [B, D]   student embeddings of the queries (with grad)
    pos_student [B, D] student embeddings of each query's own pair (with grad)
    q_teacher [B, D]   refined teacher embeddings of the queries
    pos_teacher [B, D] refined teacher embeddings of the own pair
    keys [K, D]        refined teacher target candidates (full mode), no grad
    key_owner [K]      record id of each key, so a query's own record is masked out (-1: none)
    public [P, D]      public candidates (source anchors of the other modality, prototypes), no grad
    record [B]         record id of each query
    """

    q_student: torch.Tensor
    pos_student: torch.Tensor
    q_teacher: torch.Tensor
    pos_teacher: torch.Tensor
    keys: torch.Tensor
    key_owner: torch.Tensor
    public: torch.Tensor
    record: torch.Tensor


def _side_losses(s: Side, cfg: CMKDConfig) -> torch.Tensor:
    """Per-query loss [B] for one direction."""
    cands = torch.cat([s.keys, s.public]).detach()
    own = torch.zeros((len(s.record), len(cands)), dtype=torch.bool)
    if len(s.keys):
        own[:, : len(s.keys)] = s.key_owner[None, :] == s.record[:, None]
    pos_s = (s.q_student * s.pos_student).sum(-1, keepdim=True)
    pos_t = (s.q_teacher * s.pos_teacher).sum(-1, keepdim=True)
    logit_s = torch.cat([pos_s, s.q_student @ cands.t()], 1) / cfg.tau_student
    logit_t = torch.cat([pos_t, s.q_teacher @ cands.t()], 1) / cfg.tau_teacher
    mask = torch.cat([own.new_zeros(len(own), 1), own], 1)
    logit_s = logit_s.masked_fill(mask, float("-inf"))
    logit_t = logit_t.masked_fill(mask, float("-inf"))
    q = F.softmax(logit_t, 1).detach()
    log_p = F.log_softmax(logit_s, 1)
    kd = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).masked_fill(mask, 0.0).sum(1)
    # pair contrast: own pair vs hardest public negatives (by teacher similarity) and target keys
    h = min(cfg.hard_negatives, len(s.public))
    neg_parts = []
    if h:
        hard = (s.q_teacher @ s.public.t()).topk(h, dim=1).indices
        neg_parts.append((s.q_student[:, None, :] * s.public[hard]).sum(-1))
    if len(s.keys):
        neg_parts.append((s.q_student @ s.keys.t()).masked_fill(own[:, : len(s.keys)], float("-inf")))
    logits = torch.cat([pos_s, *neg_parts], 1) / cfg.tau_student
    pair = -F.log_softmax(logits, 1)[:, 0]
    return cfg.kd_weight * kd + cfg.pair_weight * pair


def per_record_losses(text_side: Side, image_side: Side, text_record: torch.Tensor, n_records: int, cfg: CMKDConfig) -> torch.Tensor:
    """Loss of each record [n_records]: the mean over its captions' and its image's terms."""
    lt = _side_losses(text_side, cfg)
    li = _side_losses(image_side, cfg)
    per_t = lt.new_zeros(n_records).index_add(0, text_record, lt)
    cnt = lt.new_zeros(n_records).index_add(0, text_record, torch.ones_like(lt)).clamp_min(1.0)
    return 0.5 * (per_t / cnt + li)
