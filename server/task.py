"""What the server holds: the teacher (EMA), the global student, the public anchor bank, target val.

- teacher: starts as the source-pretrained checkpoint; after every round it
  moves toward the aggregated student, ``teacher = m * teacher + (1 - m) * student``
  on the trainable parameters (the rest of both is the checkpoint's, bit for bit);
- global student: the checkpoint's heads with the aggregated trainable arrays;
- anchor bank: trunk features of a subset of the source train split (public
  to the server); what travels is the current teacher's embeddings of it;
- with ``train-params=lowrank:R``: each round's adapter bases ``A``, computed
  here from the broadcast student on the anchor bank's trunk features (only
  the server holds them) and sent with the student; the sites' B's are
  folded back with the same ``A`` (`common.federation.adapters`);
- target val: only for the per-round R1/mAP report (never used to select).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.checkpoint import Checkpoint, clone_heads, load_checkpoint, save_checkpoint, source_data_dir
from common.federation import adapters
from common.federation.config import ConfigError, FedConfig
from common.federation.payload import pack_teacher
from common.federation.trainable import array_bytes, broadcast_names, get_arrays, load_arrays, size_report, update_shapes
from common.models.backbones import build_backbone
from common.pipeline import domain_features
from common.train.pretrain import evaluate_heads
from common.train.site_context import PublicBank


class ServerTask:
    def __init__(self, cfg: FedConfig, features=None):
        """`features(backbone, data_dir, domain, split)` -> FeatureSet; default reads the feature cache."""
        cfg.require("data_dir", "target", "teacher")
        self.cfg = cfg
        ckpt = load_checkpoint(cfg.teacher)
        self.backbone = build_backbone(cfg.backbone or ckpt.backbone)
        self.fingerprint = self.backbone.fingerprint()
        self.ckpt = load_checkpoint(cfg.teacher, expect_fingerprint=self.fingerprint)
        src = self.ckpt.meta.get("source", {})
        source = cfg.source or src.get("domain")
        if not source:
            raise ValueError(f"{cfg.teacher}: the checkpoint records no source domain; set source=... in the run config")
        cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        feats = features or (lambda bb, d, dom, split, labels=True: domain_features(bb, d, dom, split, labels=labels, cache_dir=cache))
        # the source's data folder: the run's data dir if it holds the domain, else where the teacher was trained
        src_data = cfg.data_dir if cfg.source or (Path(cfg.data_dir) / source).is_dir() else source_data_dir(cfg.teacher, src)
        src_fs = feats(self.backbone, src_data, source, "train")
        self.bank = PublicBank.from_source(src_fs, cfg.anchors, seed=cfg.seed)
        self.val = feats(self.backbone, cfg.data_dir, cfg.target, "val") if cfg.server_eval else None
        self.teacher = clone_heads(self.ckpt.heads).eval()
        self.student = clone_heads(self.ckpt.heads).eval()
        self.names = broadcast_names(self.teacher, cfg.train_params, cfg.loss_mode)  # the global student's arrays
        self.update = update_shapes(self.teacher, cfg.train_params, cfg.loss_mode)  # what a site sends back
        self.low_rank = adapters.rank_of(cfg.train_params)
        bases_b = 0
        if self.low_rank is not None:
            try:
                bases_b = array_bytes(self.round_bases(self.student_arrays()))
            except ValueError as ex:
                raise ConfigError(f"train-params={cfg.train_params!r}: {ex}") from None
        self.sizes = size_report(self.backbone, self.teacher, self.names, self.update, bases_b, cfg.update_codec)
        self.source = {"domain": source, "anchors": int(len(self.bank.image_feats))}
        self._payload = None

    # -- what travels ----------------------------------------------------------------------
    def student_arrays(self) -> dict[str, np.ndarray]:
        return get_arrays(self.student, self.names)

    def round_bases(self, broadcast: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``lowrank:R``: this round's bases A (``A.<path>``) from the broadcast student on the public anchor bank."""
        student = clone_heads(self.student)
        load_arrays(student, broadcast)
        return adapters.round_bases(student.eval(), self.bank.image_feats, self.bank.text_feats, self.low_rank)

    def reply_reference(self, broadcast: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What a site that trained nothing would reply: the broadcast itself, or with ``lowrank:R`` zero B's and
        the broadcast biases (updates are checked against it)."""
        if self.low_rank is None:
            return dict(broadcast)
        return adapters.reference(self.student, broadcast, self.cfg.train_params)

    def teacher_payload(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, config) of the current teacher version; computed once per version."""
        if self._payload is None:
            a_img, a_txt = self.bank.embed(self.teacher)
            self._payload = pack_teacher(self.teacher, a_img, a_txt, self.backbone.name, self.fingerprint)
        return self._payload

    @property
    def teacher_version(self) -> str:
        return self.teacher_payload()[1]["teacher-version"]

    # -- after a round ---------------------------------------------------------------------
    @torch.no_grad()
    def end_round(self, arrays: dict[str, np.ndarray]) -> None:
        """Adopt the aggregated student and move the teacher toward it (EMA)."""
        load_arrays(self.student, arrays)
        m = self.cfg.teacher_momentum
        t_params, s_params = dict(self.teacher.named_parameters()), dict(self.student.named_parameters())
        for n in self.names:
            t_params[n].mul_(m).add_(s_params[n], alpha=1 - m)
        self._payload = None

    # -- checkpoint ----------------------------------------------------------------------------
    def heads_state(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(student, teacher) state dicts as numpy arrays (every head parameter and buffer)."""
        dump = lambda heads: {k: v.detach().cpu().numpy().copy() for k, v in heads.state_dict().items()}  # noqa: E731
        return dump(self.student), dump(self.teacher)

    def restore(self, student: dict[str, np.ndarray], teacher: dict[str, np.ndarray]) -> None:
        """Load the heads a checkpoint saved (strict: the same head shapes as the teacher checkpoint's)."""
        for heads, sd in ((self.student, student), (self.teacher, teacher)):
            heads.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
        self._payload = None

    def evaluate(self) -> dict:
        """Student and teacher on the target val split (reporting only)."""
        if self.val is None:
            return {}
        s, t = evaluate_heads(self.student, self.val), evaluate_heads(self.teacher, self.val)
        return {"R1": s["R1"], "R5": s["R5"], "mAP": s["mAP"], "mINP": s["mINP"],
                "teacher_R1": t["R1"], "teacher_mAP": t["mAP"]}

    def save_models(self, out: Path, meta: dict) -> dict[str, Path]:
        bb, ck = self.backbone, self.ckpt
        paths = {}
        for role, heads in (("model", self.student), ("teacher", self.teacher)):
            m = {"role": "student" if role == "model" else "teacher-ema", "source": ck.meta.get("source", {}),
                 "target": {"data": self.cfg.data_dir, "domain": self.cfg.target}, "teacher": self.cfg.teacher,
                 "federation": meta}
            paths[role] = save_checkpoint(Checkpoint(heads, bb.name, self.fingerprint, ck.head_config, ck.text_dim,
                                                     ck.image_dim, self.cfg.seed, m), Path(out) / role)
        return paths
