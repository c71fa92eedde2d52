"""The text phase of per-record GCKD: each caption learns to land on its own record's image embedding.

In per-record mode every candidate a contrastive loss may use is public, and
the public (source) data differ from the target in both modalities, so a text
head trained contrastively learns to tell the domains apart instead of the
people (see `common.train.adapt`). After the image head has learned to meet
the teacher's captions, the image head is fixed and the text head is
regressed onto it: ``1 - cos(student caption, image embedding of its own
record)``, the image side detached. Every target is a fixed, different
point, so there is nothing to collapse onto, and the loss of a record reads
that record alone.

Optionally (`public_images`), a small contrastive term adds negatives: the
fixed image head's embeddings of the public source images nearest the
record's own image embedding. They are public and chosen by the record's own
image, so the loss still reads that record alone; as the image head is fixed,
the text head cannot win it by moving the keys away, only by placing the
caption nearer its own image than the look-alike public ones.
"""

from __future__ import annotations

import torch


def caption_to_image_losses(s_txt: torch.Tensor, s_img: torch.Tensor, text_record: torch.Tensor, n_records: int,
                            public_images: torch.Tensor | None = None, hard_negatives: int = 64, weight: float = 0.1,
                            tau: float = 0.05) -> torch.Tensor:
    """Loss of each record [n_records]: the mean over its captions of 1 - cos(caption, its image),
    plus, with `public_images`, ``weight`` times the cross-entropy of the own image against the
    `hard_negatives` public images nearest it (temperature `tau`).

    s_txt [T, D] unit-norm student caption embeddings (with grad)
    s_img [N, D] unit-norm image embeddings of the records (detached here)
    text_record [T] the record of each caption
    public_images [P, D] unit-norm embeddings of public images by the same (fixed) image head
    """
    own_img = s_img.detach()[text_record]
    own = (s_txt * own_img).sum(-1)
    per_caption = 1.0 - own
    k = 0 if public_images is None else min(hard_negatives, len(public_images))
    if k and weight:
        keys = public_images.detach()
        hard = (own_img @ keys.t()).topk(k, dim=1).indices  # chosen by the record's own image only
        logits = torch.cat([own[:, None], (s_txt @ keys.t()).gather(1, hard)], 1) / tau
        per_caption = per_caption - weight * torch.log_softmax(logits, 1)[:, 0]
    total = per_caption.new_zeros(n_records).index_add(0, text_record, per_caption)
    count = per_caption.new_zeros(n_records).index_add(0, text_record, torch.ones_like(per_caption)).clamp_min(1.0)
    return total / count
