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
        "record at one site. Whatever a site sends during the run (its noised model updates and its privacy "
        "ledger) and everything computed from them, including the final model, would have had almost the same "
        "probability had any single record of that site been left out: every outcome's probability changes by "
        "at most a factor e^epsilon, except with probability delta. The DP prototypes a site computes are "
        "accounted because its training reads them, but they never leave the site."),
    "site": (
        "Site-level differential privacy. The unit of privacy is one site's whole dataset. Two federations are "
        "neighbours when they differ by adding or removing one site with all of its records. The models the "
        "server aggregates and publishes would have had almost the same probability had any one site not taken "
        "part at all: every outcome's probability changes by at most a factor e^epsilon, except with probability "
        "delta. This protects all of a site's records at once, whatever the local training did, against anyone "
        "who sees what the server publishes; the server itself sees each site's clipped update before the noise."),
    "none": ("No differential privacy. This run claims no epsilon: the sites' updates were neither clipped nor "
             "noised for privacy, and nothing in this report bounds what they reveal."),
}

# What each claim rests on besides the mathematics (docs/privacy.md, section 9). Shown with the statement.
ASSUMPTIONS = {
    "record": (
        "The site's record count n is treated as public: every DP-SGD step divides its noisy clipped sum by "
        "round(q x n), the expected batch. n itself is never sent, but the accounted epsilon does not cover what "
        "the size of the steps reveals about it.",
        "Batches are Poisson-sampled (each record independently with rate q) and each record's (or group's) "
        "contribution to a step's sum is clipped, as the accountant assumes; the adjacency tests check the "
        "sensitivity bound on real features.",
        "The noise is added at the site, so neither the server nor the other sites need be trusted.",
        "The noise is drawn from torch's pseudo-random generator, seeded per round from the operating system's "
        "secure source; the generator itself is not cryptographically secure and floating-point Gaussian samples "
        "are taken as exact. No secure-generator option is offered (Opacus' secure mode needs torchcsprng, which "
        "has no build for this torch).",
    ),
    "site": (
        "The server is trusted: each site sends its clipped but un-noised update, and the server adds the "
        "Gaussian noise to the sum (Flower's DP wrapper). The guarantee covers what the server publishes, not "
        "what it sees; nothing measured on an un-noised update is written to the run's files.",
        "Each accepted update enters the sum with weight one and the sum is divided by a fixed number of sites, "
        "so one site moves it by at most the clip norm S; the server rejects any update longer than S.",
        "Sites are sampled as the accountant assumes: each independently with probability q (Poisson), or all "
        "of them every round (q = 1).",
        "The central noise comes from numpy's pseudo-random generator inside Flower's wrapper, which is not "
        "cryptographically secure.",
    ),
    "none": (),
}

MECHANISM_TEXT = {
    "dp-sgd": ("DP-SGD at the site, per-record construction: every step includes each record independently with "
               "probability q (Poisson sampling), clips each record's gradient to L2 norm C (by default with the "
               "project's book-keeping ghost clipper in one backward pass; Opacus' ghost clipping for layers it "
               "does not cover) and adds Gaussian noise of standard deviation sigma x C to the sum (sensitivity "
               "Delta = C)."),
    "dp-sgd-grouped": ("DP-SGD at the site, group-clipping construction: the Poisson-sampled records are split "
                       "into disjoint groups by a key computed from each record alone and from released data; "
                       "each group's gradient is clipped to L2 norm C and Gaussian noise of standard deviation "
                       "sigma x Delta is added to the sum, Delta = 2C (one record changes one group's clipped "
                       "gradient)."),
    "dp-kmeans-prototypes": ("Noisy k-means prototypes computed at the site (they never leave it): Gaussian noise "
                             "of standard deviation sigma x sqrt(2) on the cluster sums and counts of unit-norm "
                             "record embeddings (one record moves its cluster's sum by at most 1 and its count by "
                             "1: sensitivity sqrt(2)), no subsampling (q = 1), one release per modality and "
                             "iteration."),
    "site-update-gaussian": ("Central Gaussian mechanism: each site clips its own update to L2 norm S (Flower's "
                             "clipping mod clips it again), the server rejects any longer update, sums the "
                             "accepted ones and adds Gaussian noise of standard deviation sigma x S to the sum "
                             "(sensitivity Delta = S); q is the probability that a site is sampled in a round."),
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

ACCOUNTANT_NAME = {"rdp": "Opacus RDP", "prv": "Opacus PRV", "pld": "dp-accounting PLD",
                   "rdp-dpa": "dp-accounting RDP"}


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def eps_label(eps: float | None, unit: str, delta: float, accountant: str) -> str:
    """'epsilon = 7.995 (record-level, delta = 1e-05, Opacus RDP)'."""
    return f"epsilon = {fmt(eps)} ({unit}-level, delta = {delta:g}, {ACCOUNTANT_NAME.get(accountant, accountant)})"


def person_label(eps: float | None, k: int, delta: float) -> str:
    """'epsilon = 9.06 (person with 2 records at one site, delta = 1e-05, dp-accounting PLD)'."""
    return f"epsilon = {fmt(eps)} (person with {k} records at one site, delta = {delta:g}, dp-accounting PLD)"


def verdict_reason(kind: str, *, eps: float | None, budget: float, unit: str, delta: float, accountant: str,
                   next_eps: float | None = None, refused_rounds=(), reasons=(), errors=(),
                   prior_eps: float | None = None, prior_runs: int = 0, this_run_eps: float | None = None) -> str:
    spent = eps_label(eps, unit, delta, accountant)
    if prior_runs and prior_eps:  # the site's whole history: say what came before this run
        spent += (f" over the site's whole history ({prior_runs} earlier run(s) alone: {fmt(prior_eps)}; this "
                  f"run's spending alone: {fmt(this_run_eps)}; epsilons compose, they do not add)")
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
