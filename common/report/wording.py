"""The report's plain-language sentences: privacy units, mechanisms, verdicts.

Every epsilon the report prints goes through `eps_label`, which names the
unit, delta and accountant next to the number.
"""

from __future__ import annotations

import math

UNIT_STATEMENT = {
    "record": (
        "Record-level differential privacy. The unit of privacy is one image-caption record (one image with its "
        "captions) held by one site. Two datasets are neighbours when they differ by adding or removing one such "
        "record at one site. Whatever a site sends during the run (its model updates, its noisy prototypes) and "
        "everything computed from them, including the final model, would have had almost the same probability "
        "had any single record of that site been left out: every outcome's probability changes by at most a "
        "factor e^epsilon, except with probability delta."),
    "site": (
        "Site-level differential privacy. The unit of privacy is one site's whole dataset. Two federations are "
        "neighbours when they differ by adding or removing one site with all of its records. The models the "
        "server aggregates and publishes would have had almost the same probability had any one site not taken "
        "part at all: every outcome's probability changes by at most a factor e^epsilon, except with probability "
        "delta. This protects all of a site's records at once, whatever the local training did."),
    "none": ("No differential privacy. This run claims no epsilon: the sites' updates were neither clipped nor "
             "noised for privacy, and nothing in this report bounds what they reveal."),
}

MECHANISM_TEXT = {
    "dp-sgd": ("DP-SGD at the site (Opacus, ghost clipping): every step includes each record independently with "
               "probability q (Poisson sampling), clips each record's gradient to L2 norm C and adds Gaussian "
               "noise of standard deviation sigma x C to the sum."),
    "dp-kmeans-prototypes": ("Noisy k-means prototypes released by the site: Gaussian noise of standard deviation "
                             "sigma on the cluster sums and counts of unit-norm record embeddings (sensitivity 1), "
                             "no subsampling (q = 1), one release per modality and iteration."),
    "site-update-gaussian": ("Central Gaussian mechanism: the server clips each site's update to L2 norm C and "
                             "adds Gaussian noise of standard deviation sigma x C to the sum of the clipped "
                             "updates; q is the probability that a site is sampled in a round."),
    "none": "Nothing was released under privacy in this round (refused or not sampled).",
}

VERDICTS = {
    "within-budget": "within budget",
    "exhausted": "budget exhausted",
    "refused": "refused",
    "over-budget": "OVER BUDGET",
    "no-record": "no ledger record",
    "not-private": "no DP",
}

ACCOUNTANT_NAME = {"rdp": "Opacus RDP", "prv": "Opacus PRV"}


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def eps_label(eps: float | None, unit: str, delta: float, accountant: str) -> str:
    """'epsilon = 7.995 (record-level, delta = 1e-05, Opacus RDP)'."""
    return f"epsilon = {fmt(eps)} ({unit}-level, delta = {delta:g}, {ACCOUNTANT_NAME.get(accountant, accountant)})"


def verdict_reason(kind: str, *, eps: float | None, budget: float, unit: str, delta: float, accountant: str,
                   next_eps: float | None = None, refused_rounds=(), reasons=(), errors=()) -> str:
    spent = eps_label(eps, unit, delta, accountant)
    if kind == "over-budget":
        return f"{spent} exceeds the budget {budget:g}: the guarantee the run promised does not hold."
    if kind == "refused":
        why = "; ".join(dict.fromkeys(reasons)) or "no reason recorded"
        return (f"refused round(s) {', '.join(map(str, refused_rounds))} (failed closed): {why}. "
                f"Spent: {spent} of budget {budget:g}.")
    if kind == "exhausted":
        return (f"{spent} of budget {budget:g}; one more round like the last would reach {fmt(next_eps)} > "
                f"{budget:g}, so the site will refuse further rounds.")
    if kind == "within-budget":
        more = f"; one more round like the last would reach {fmt(next_eps)}" if next_eps is not None else ""
        return f"{spent} of budget {budget:g}{more}."
    if kind == "not-private":
        return "the run used no differential privacy: no epsilon is claimed for this site."
    errs = f" Errors reported: {'; '.join(errors)}." if errors else ""
    return f"no ledger entry from this site reached the server.{errs}"
