"""The DP mechanisms a ledger may hold: name, unit, construction and L2 sensitivity (docs/privacy.md).

Every mechanism is a Gaussian mechanism that releases ``S(B) + N(0, (z * Delta)^2 I)``;
the accountant sees only the noise multiplier ``z``, the sampling rate ``q``
and the number of steps, so ``Delta`` is what ties a ledger row to the code
that ran. Each row of a ledger therefore records its ``sensitivity`` (Delta,
in the units of the released sum) next to its ``clip_norm``.

Names are stable codes: metrics carry their index in ``MECHANISMS``, so a
new mechanism is appended at the end, never inserted.

- ``dp-sgd``: per-record construction (docs/privacy.md section 4, construction
  1): each record's gradient clipped to C; Delta = C.
- ``dp-kmeans-prototypes``: a release of a site's structure
  (`common.privacy.site_prototypes`): unit-norm records, per-cluster sums and
  counts; Delta = sqrt(2) whatever the clip norm (there is none).
- ``site-update-gaussian``: site-level DP, each site's update clipped to S,
  noise on the sum; Delta = S.
- ``dp-sgd-grouped``: group clipping (section 4, construction 2): each group's
  gradient clipped to C; Delta = 2C (plus C' when per-record terms clipped to
  C' are added: the caller passes that Delta explicitly).
"""

from __future__ import annotations

import math

MECHANISMS = ("none", "dp-sgd", "dp-kmeans-prototypes", "site-update-gaussian", "dp-sgd-grouped")
MECHANISM_UNIT = {"dp-sgd": "record", "dp-kmeans-prototypes": "record", "site-update-gaussian": "site",
                  "dp-sgd-grouped": "record"}
# Which construction of docs/privacy.md a mechanism is ("release": a DP statistic of the site, not a training step).
CONSTRUCTION = {"none": "none", "dp-sgd": "per-record", "dp-kmeans-prototypes": "release",
                "site-update-gaussian": "site", "dp-sgd-grouped": "grouped"}
KMEANS_SENSITIVITY = math.sqrt(2.0)  # joint L2 change of (cluster sums, counts) for one unit-norm record
GROUPED_FACTOR = 2.0  # a record moves one group's clipped gradient from one vector of norm <= C to another


def default_sensitivity(mechanism: str, clip_norm: float | None) -> float | None:
    """Delta of ``mechanism`` with clip norm ``clip_norm`` (None where neither determines it, e.g. "none")."""
    if mechanism == "dp-kmeans-prototypes":
        return KMEANS_SENSITIVITY
    if clip_norm is None:
        return None
    if mechanism in ("dp-sgd", "site-update-gaussian"):
        return float(clip_norm)
    if mechanism == "dp-sgd-grouped":
        return GROUPED_FACTOR * float(clip_norm)
    return None
