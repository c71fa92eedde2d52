"""The adjacency test of group clipping (docs/privacy.md, section 4): the gate for any loss that couples records.

On real features of the tiny profile (tiny backbone, the test bench's source-pretrained teacher), in float64: for
random Poisson batches and for every record of the site added to or removed from the batch, the pre-noise sum of
clipped group gradients moves by at most Delta = 2C. The cases the contract names are each seen: a record into an
empty group, out of a one-member group, into the largest group. A hypothesis sweep covers group sizes (prototypes
and bins, one count for all cells or one per cell, hashed or hyperplane sub-bins, a cap on the members a group
trains on), trained-parameter
presets (low-rank adapters included), clip norms and both clipping paths. The same harness, pointed at per-sample
clipping of a plain in-batch InfoNCE (whose accountant would assume Delta = C), reports a violation, so the test
can fail.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.checkpoint import load_checkpoint
from common.federation.trainable import set_trainable, trainable_names
from common.graph.gmp import GMPConfig
from common.losses.cmkd import CMKDConfig
from common.models.backbones import build_backbone
from common.models.low_rank import attach_low_rank, public_bases
from common.pipeline import domain_features
from common.privacy.site_prototypes import dp_kmeans
from common.train.bookkeeping_clip import BookkeepingClipper, clippable_layers
from common.train.grouped_dp import GroupClippedSGD
from common.train.grouped_site import GroupedSite, record_views
from fed_support import SOURCE, TARGET, shared_bench

TOL = 1e-9  # relative slack for float64 round-off


@functools.lru_cache(maxsize=1)
def _site():
    """(teacher heads in float64, target train features in float64, the teacher's public anchors)."""
    bench = shared_bench()
    ckpt = load_checkpoint(bench.teacher)
    bb = build_backbone(ckpt.backbone)
    tgt = domain_features(bb, bench.data, TARGET, "train", cache_dir=bench.cache, labels=False)
    src = domain_features(bb, bench.data, SOURCE, "train", cache_dir=bench.cache)
    heads = ckpt.heads.double().eval()
    tgt.image_feats, tgt.text_feats = tgt.image_feats.double(), tgt.text_feats.double()
    with torch.no_grad():
        a_img, a_txt = heads.image(src.image_feats[:48].double()), heads.text(src.text_feats[:48].double())
    return heads, tgt, a_img, a_txt


@dataclass
class Grouped:
    """S(B): the pre-noise sum of clipped group gradients of grouped mode for a batch B of record indices, by the
    production path (`GroupedSite.prepare`, then `GroupClippedSGD.clipped_sum`)."""

    stepper: GroupClippedSGD
    site: GroupedSite
    teacher: object
    views: torch.Tensor
    protos: torch.Tensor
    anchors: tuple
    tgt: object
    delta: float

    def __call__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat pre-noise sum, group id of each record of the batch)."""
        trained = self.stepper.trained
        b = torch.tensor(sorted(batch), dtype=torch.long)
        if len(b) == 0:
            return torch.cat([torch.zeros_like(p).reshape(-1) for p in trained]), b
        pack, targets, crit = self.site.prepare(b, self.teacher, self.views, self.protos, *self.anchors, 5, GMPConfig(),
                                                CMKDConfig(hard_negatives=8), 2, True)
        gid = torch.full((self.tgt.n_images,), -1, dtype=torch.long)
        for g, row in enumerate(pack.records.tolist()):
            for r in row:
                if r >= 0:
                    gid[r] = g
        sums, _, _ = self.stepper.clipped_sum(pack, targets, crit)
        return torch.cat([sums[p].reshape(-1) for p in trained]), gid[b]  # -1: left out by the cap


def _grouped(preset="all", clipping="auto", prototypes=4, bins=2, clip=0.05, seed=0, per_cell=False, cap=0,
             sub_bin="hash") -> Grouped:
    teacher, tgt, a_img, a_txt = _site()
    student = load_checkpoint(shared_bench().teacher).heads.double()
    with torch.no_grad():  # a student a few steps away from the teacher
        g = torch.Generator().manual_seed(seed)
        for p in student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    if preset.startswith("lowrank:"):  # adapters on the teacher's bases from public source features, B moved off 0
        attach_low_rank(student, public_bases(teacher, *_public(), int(preset.split(":")[1])))
        with torch.no_grad():
            for n, p in student.named_parameters():
                if n.endswith(".B.weight"):
                    p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    set_trainable(student, trainable_names(student, preset))
    views = record_views(teacher, tgt)
    protos = dp_kmeans(views, prototypes, 1, 1.0, a_txt[:prototypes], g).prototypes if prototypes else views[:0]
    stepper = GroupClippedSGD(student, torch.optim.SGD(student.parameters(), lr=0.0), clip, 0.0, 1.0,
                              torch.Generator(), clipping)
    if per_cell and prototypes:  # a public bin count per prototype cell, as released noisy counts give
        bins = torch.randint(1, bins + 1, (prototypes,), generator=g)
    site = GroupedSite.build(tgt, 0.5, bins, b"adjacency", cap, sub_bin)
    return Grouped(stepper, site, teacher, views, protos, (a_img, a_txt), tgt, 2 * clip)


@functools.lru_cache(maxsize=1)
def _public():
    """Public source features (the anchors' inputs) in float64, for low-rank adapters' bases."""
    bench = shared_bench()
    src = domain_features(build_backbone(load_checkpoint(bench.teacher).backbone), bench.data, SOURCE, "train",
                          cache_dir=bench.cache)
    return src.image_feats[:48].double(), src.text_feats[:48].double()


def _naive_infonce(clip=0.05, seed=0):
    """S(B) of per-sample clipping of a plain in-batch InfoNCE: row i is caption i against every image of the batch."""
    teacher, tgt, _, _ = _site()
    student = load_checkpoint(shared_bench().teacher).heads.double()
    set_trainable(student, trainable_names(student, "all"))
    trained = [p for p in student.parameters() if p.requires_grad]
    clipper = BookkeepingClipper(clippable_layers(student, trained))
    first_caption = torch.tensor([next(t for t, r in enumerate(tgt.text_to_image.tolist()) if r == i) for i in range(tgt.n_images)])

    def s(batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        b = torch.tensor(sorted(batch), dtype=torch.long)
        if len(b) == 0:
            return torch.cat([torch.zeros_like(p).reshape(-1) for p in trained]), b
        img = F.normalize(student.image_head(tgt.image_feats[b]), dim=-1)
        txt = F.normalize(student.text_head(tgt.text_feats[first_caption[b]]), dim=-1)
        losses = -torch.log_softmax(txt @ img.T / 0.05, 1).diagonal()
        sums, _ = clipper.clipped_sum(losses, clip)
        return torch.cat([sums[p].reshape(-1) for p in trained]), torch.arange(len(b))

    return s, clip  # the per-record construction's Delta = C


def _shifts(s, n: int, batch: list[int]) -> tuple[float, set[str]]:
    """Largest ||S(B') - S(B)|| over every record added to or removed from B, and which contract cases were seen."""
    base, gid = s(batch)
    worst, cases = 0.0, set()
    members = sorted(batch)
    for r in range(n):
        if r in batch:
            other, ogid = s([x for x in batch if x != r])
            size = int((gid == gid[members.index(r)]).sum())
            cases.add("out of a one-member group" if size == 1 else "out of a larger group")
        else:
            other, ogid = s(batch + [r])
            mine = ogid[sorted(batch + [r]).index(r)]
            if mine < 0:
                cases.add("into a full group (left out by the cap)")
            else:
                size, largest = int((ogid == mine).sum()), int(torch.bincount(ogid[ogid >= 0]).max())
                cases.add("into an empty group" if size == 1 else "into a non-empty group")
                if size == largest and size > 1:
                    cases.add("into the largest group")
        worst = max(worst, float((other - base).norm()))
    return worst, cases


def _batches(n: int, rate: float, count: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, generator=g) < rate).nonzero().squeeze(1).tolist() for _ in range(count)]


def test_group_clipping_moves_the_sum_by_at_most_two_c_in_every_contract_case():
    s = _grouped(bins=3)  # 12 keys: small batches leave some empty, large ones fill them
    n = s.tgt.n_images
    worst, cases = 0.0, set()
    for batch in _batches(n, 0.2, 1, seed=1) + _batches(n, 0.6, 2, seed=2):
        w, c = _shifts(s, n, batch)
        worst, cases = max(worst, w), cases | c
    assert {"into an empty group", "out of a one-member group", "into the largest group"} <= cases
    assert worst <= s.delta * (1 + TOL)
    assert worst > 0.45 * s.delta  # clipping binds: a record into an empty group alone moves the sum by C
    s.stepper.close()


@settings(max_examples=12, deadline=None)
@given(preset=st.sampled_from(["last", "all", "norms+biases", "lowrank:4"]), clipping=st.sampled_from(["auto", "opacus"]),
       prototypes=st.sampled_from([0, 2, 6]), bins=st.integers(1, 6), clip=st.floats(0.005, 5.0),
       rate=st.floats(0.1, 0.9), seed=st.integers(0, 1000), per_cell=st.booleans(), cap=st.sampled_from([0, 1, 2, 3]),
       sub_bin=st.sampled_from(["hash", "lsh"]))
@example(preset="lowrank:4", clipping="auto", prototypes=2, bins=3, clip=0.05, rate=0.5, seed=3, per_cell=True, cap=0,
         sub_bin="lsh")  # the adapters on both clipping paths in every run, whatever the draw
@example(preset="lowrank:4", clipping="opacus", prototypes=6, bins=2, clip=0.5, rate=0.3, seed=4, per_cell=False, cap=2,
         sub_bin="hash")
def test_group_clipping_sweep(preset, clipping, prototypes, bins, clip, rate, seed, per_cell, cap, sub_bin):
    s = _grouped(preset, clipping, prototypes, bins, clip, seed, per_cell, cap, sub_bin)
    n = s.tgt.n_images
    worst, _ = _shifts(s, n, _batches(n, rate, 1, seed)[0])
    assert worst <= s.delta * (1 + TOL)
    s.stepper.close()


def test_the_harness_catches_per_sample_clipping_of_in_batch_infonce():
    s, delta = _naive_infonce()
    n = _site()[1].n_images
    worst = max(_shifts(s, n, batch)[0] for batch in _batches(n, 0.5, 2, seed=1))
    # a violation far above float64 round-off (TOL): measured 1.04 C with the bench's LayerNorm heads, 1.29 C without
    assert worst > delta * 1.02, f"expected a violation of Delta = C, the largest shift was {worst / delta:.2f} C"
