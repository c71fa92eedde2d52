"""The embedded text-to-image person-retrieval benchmark: generated people, captions, domains.

Drawn pedestrians (Pillow) with identities made of visible attributes, several
images per identity (view, pose, framing, background) and two grammar captions
per image, in several domains that differ as CUHK-PEDES, ICFG-PEDES and
RSTPReid do (drawing style, viewpoint, background, lighting, resolution,
caption vocabulary and length). Written in the CUHK-PEDES annotation format.

- `synthesize(out_dir, seed, profile, workers, progress)` writes a benchmark;
- `preview(data_dir, out_png)` draws a contact sheet;
- `PROFILES` holds the size profiles (``tiny``, ``default``);
- `DOMAINS` holds the domain styles (``flat``, ``outline``, ``shaded``).

Modules: `attributes` (attribute space, identities), `geometry` (pose,
skeleton, camera), `paint` (styled primitives), `garments`, `headwear`,
`accessories`, `person` (drawing a person), `backgrounds`, `render` (one image),
`vocab` and `captions` (grammars), `domains`, `profiles`, `generate`, `preview`.
"""

from common.data.synth.domains import DOMAINS, DomainStyle
from common.data.synth.generate import synthesize
from common.data.synth.preview import preview
from common.data.synth.profiles import PROFILES, Profile

__all__ = ["DOMAINS", "PROFILES", "DomainStyle", "Profile", "preview", "synthesize"]
