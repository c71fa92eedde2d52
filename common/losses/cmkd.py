"""CMKD: contrastive momentum knowledge distillation (our reading of GCKD's second module).

For every target caption (and symmetrically every target image) of a batch,
the student scores a set of candidates of the other modality:

* its own pair (the student's embedding of it),
* ``full`` mode only: the other records of the batch (student embeddings) and
  a momentum queue of earlier records (refined teacher embeddings as keys),
* the hardest public candidates by teacher similarity (source anchors and,
  under record-level DP, the site's DP prototypes; fixed keys),

and learns a soft contrastive target, as ALBEF's momentum distillation does:
``target = (1 - kd_weight) * onehot(own pair) + kd_weight * q``.

* ``full`` mode: batches are built from seeds and their nearest records in
  the GMP-refined teacher graph, and ``q`` spreads equal mass over the own
  pair and every candidate that is a *mutual* graph neighbour of the query's
  record (pseudo-positives). Plain pair contrast would push a person's other
  views in the batch away as negatives; GMP has pulled them together through
  their captions, so they become positives instead.
* otherwise (``per_record`` mode, or no graph): ``q = softmax(r_query .
  r_candidate / tau_teacher)`` from the momentum teacher refined by GMP.

In ``per_record`` mode the only candidates are the record's own pair and
fixed public keys, and the teacher side is the record's own refined
embeddings (detached), so the loss of a record depends on that record alone:
`per_record_losses` returns the vector of per-record losses that DP-SGD clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CMKDConfig:
    tau_student: float = 0.05  # student temperature, as in source pretraining
    tau_teacher: float = 0.05  # teacher temperature for the soft targets
    kd_weight: float = 1.0  # share of the teacher's soft target (ALBEF uses 0.4); 1.0 was best on the dev pair
    hard_negatives: int = 64  # hardest public keys per query (source anchors, prototypes)


@dataclass
class Side:
    """One direction: queries of one modality against candidates of the other.

    q_student [B, D]    student embeddings of the queries (with grad)
    pos_student [B, D]  student embedding of each query's own pair (with grad)
    q_teacher [B, D]    refined teacher embeddings of the queries (no grad)
    pos_teacher [B, D]  refined teacher embedding of the own pair
    cand_student [K, D] full mode: student embeddings of the batch's candidates (with grad)
    cand_teacher [K, D] their refined teacher embeddings
    cand_owner [K]      record of each candidate (the query's own record is masked out)
    queue [Q, D]        full mode: refined teacher features of earlier records (fixed keys)
    queue_owner [Q]
    public [P, D]       public keys: source anchors (+ DP prototypes)
    record [B]          record of each query
    cand_positive [B,K] optional: the teacher's soft target is restricted to the own
                        pair and these candidates (mutual neighbours in the GMP graph)
    """

    q_student: torch.Tensor
    pos_student: torch.Tensor
    q_teacher: torch.Tensor
    pos_teacher: torch.Tensor
    cand_student: torch.Tensor
    cand_teacher: torch.Tensor
    cand_owner: torch.Tensor
    queue: torch.Tensor
    queue_owner: torch.Tensor
    public: torch.Tensor
    record: torch.Tensor
    cand_positive: torch.Tensor | None = None  # [B, K] full mode: candidate is a graph neighbour of the query's record


def _side_losses(s: Side, cfg: CMKDConfig) -> torch.Tensor:
    """Per-query loss [B] for one direction."""
    pub = s.public.detach()
    h = min(cfg.hard_negatives, len(pub))
    parts_s = [(s.q_student * s.pos_student).sum(-1, keepdim=True)]
    parts_t = [(s.q_teacher * s.pos_teacher).sum(-1, keepdim=True)]
    masks = [torch.zeros(len(s.record), 1, dtype=torch.bool)]
    if len(s.cand_student):
        parts_s.append(s.q_student @ s.cand_student.t())
        parts_t.append(s.q_teacher @ s.cand_teacher.t())
        masks.append(s.cand_owner[None, :] == s.record[:, None])
    if len(s.queue):
        q = s.queue.detach()
        parts_s.append(s.q_student @ q.t())
        parts_t.append(s.q_teacher @ q.t())
        masks.append(s.queue_owner[None, :] == s.record[:, None])
    if h:
        # similarities to every public key by one matmul, then the teacher's h hardest columns
        # (gathering the [B, h, D] keys instead cost more than the rest of the step)
        t_pub = s.q_teacher @ pub.t()
        hard = t_pub.topk(h, dim=1).indices
        parts_s.append((s.q_student @ pub.t()).gather(1, hard))
        parts_t.append(t_pub.gather(1, hard))
        masks.append(torch.zeros(len(s.record), h, dtype=torch.bool))
    mask = torch.cat(masks, 1)
    allowed = None
    if s.cand_positive is not None and len(s.cand_student):
        allowed = torch.zeros_like(mask)
        allowed[:, 0] = True
        allowed[:, 1 : 1 + len(s.cand_student)] = s.cand_positive
        allowed &= ~mask
    logit_s = (torch.cat(parts_s, 1) / cfg.tau_student).masked_fill(mask, float("-inf"))
    logit_t = (torch.cat(parts_t, 1).detach() / cfg.tau_teacher).masked_fill(mask, float("-inf"))
    if allowed is not None:
        # graph neighbours are pseudo-positives: equal mass on the own pair and every mutual neighbour
        logit_t = torch.zeros_like(logit_t).masked_fill(~allowed, float("-inf"))
    target = cfg.kd_weight * F.softmax(logit_t, 1)
    target[:, 0] += 1.0 - cfg.kd_weight
    log_p = F.log_softmax(logit_s, 1).masked_fill(mask, 0.0)
    return -(target * log_p).sum(1)


def per_record_losses(text_side: Side, image_side: Side, text_record: torch.Tensor, n_records: int, cfg: CMKDConfig) -> torch.Tensor:
    """Loss of each record [n_records]: the mean over its captions' and its image's terms."""
    lt = _side_losses(text_side, cfg)
    li = _side_losses(image_side, cfg)
    per_t = lt.new_zeros(n_records).index_add(0, text_record, lt)
    cnt = lt.new_zeros(n_records).index_add(0, text_record, torch.ones_like(lt)).clamp_min(1.0)
    return 0.5 * (per_t / cnt + li)
