"""Size profiles of the generated benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from common.data.synth.domains import DOMAINS


@dataclass(frozen=True)
class Profile:
    """How much to generate, per domain.

    identities: (train, val, test) identities per domain.
    images_per_identity: images of each identity (each with 2 captions).
    size: (width, height) of the written images.
    domains: which `DOMAINS` to write.
    jpeg_quality: JPEG quality (4:4:4 chroma, so small coloured parts keep their colour).
    """

    name: str
    identities: tuple[int, int, int]
    images_per_identity: int
    size: tuple[int, int]
    domains: tuple[str, ...] = tuple(DOMAINS)
    jpeg_quality: int = 90


PROFILES: dict[str, Profile] = {
    # For tests: every domain, every split, the minimum of 2 images per
    # identity, small 32x64 images. Writes 144 images in about a second.
    "tiny": Profile(name="tiny", identities=(16, 4, 4), images_per_identity=2, size=(32, 64)),
    # The real benchmark: 1,000 identities per domain split 600/200/200 (the
    # val/test sizes of CUHK-PEDES, 1,000 identities each, scaled to our
    # smaller training set), 3 images per identity as in CUHK-PEDES, and
    # 64x128 images (the 1:2 aspect of pedestrian crops, large enough to show
    # shoes and bags, small enough that 9,000 images render in well under two
    # minutes on two cores and fit in ~30 MB).
    "default": Profile(name="default", identities=(600, 200, 200), images_per_identity=3, size=(64, 128)),
    # For the scale benchmark (benchmarks/scale.py): enough train identities
    # for 1,000 sites of one identity or more each (the partitioners need
    # one per site), small images and two domains so it renders in about a
    # minute. Not a quality benchmark: val/test are kept small.
    "scale": Profile(name="scale", identities=(2000, 100, 100), images_per_identity=2, size=(32, 64),
                     domains=("flat", "outline")),
    # For realistic site sizes (benchmarks/site_size.py, the grouped-DP and
    # federated benchmarks): the two target domains with ten times the
    # default's train identities (18,000 records each: the scale of RSTPReid,
    # about half of CUHK-PEDES), so that ten sites hold about 1,800 records
    # each, or one site all of them. The source stays the default profile's
    # flat domain. Same image size and val/test sizes as the default.
    "sites": Profile(name="sites", identities=(6000, 200, 200), images_per_identity=3, size=(64, 128),
                     domains=("outline", "shaded")),
}
