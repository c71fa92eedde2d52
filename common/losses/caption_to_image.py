"""The text phase of per-record GCKD: each caption learns to land on its own record's image embedding.

In per-record mode every candidate a contrastive loss may use is public, and
the public (source) data differ from the target in both modalities, so a text
head trained contrastively learns to tell the domains apart instead of the
people (see `common.train.adapt`). After the image head has learned to meet
the teacher's captions, the image head is fixed and the text head is
regressed onto it: ``1 - cos(student caption, image embedding of its own
record)``, the image side detached. There are no negatives, so there is no
shortcut to learn and nothing to collapse onto (every target is a fixed,
different point), and the loss of a record reads that record alone.
"""

from __future__ import annotations

import torch


def caption_to_image_losses(s_txt: torch.Tensor, s_img: torch.Tensor, text_record: torch.Tensor, n_records: int) -> torch.Tensor:
    """Loss of each record [n_records]: the mean over its captions of 1 - cos(caption, its image).

    s_txt [T, D] unit-norm student caption embeddings (with grad)
    s_img [N, D] unit-norm image embeddings of the records (detached here)
    text_record [T] the record of each caption
    """
    per_caption = 1.0 - (s_txt * s_img.detach()[text_record]).sum(-1)
    total = per_caption.new_zeros(n_records).index_add(0, text_record, per_caption)
    count = per_caption.new_zeros(n_records).index_add(0, text_record, torch.ones_like(per_caption)).clamp_min(1.0)
    return total / count
