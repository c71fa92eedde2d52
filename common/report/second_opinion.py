"""What the audit states about an account beyond its enforced accountant: PLD, and the person-level reading.

- ``epsilon_pld``: dp-accounting's PLD epsilon (pessimistic estimate) of the
  account's whole history, the tightest number in the report (same unit,
  delta, add/remove relation); ``pld_error`` says why it is missing.
- ``person_level`` (record-level accounts): epsilon for a person with k
  records at this site, k in ``GROUP_SIZES`` (`common.privacy.person_level`,
  method and citation in docs/audit.md). Under site-level DP the unit
  already covers every record of the site, so the reading is the site-level
  epsilon itself and the object says so.
"""

from __future__ import annotations

import math

from common.privacy.person_level import GROUP_SIZES, METHOD
from common.privacy.second_library import BracketUnavailable
from common.report.recompute import Recomputer
from common.report.run_reader import Account

SITE_LEVEL_PERSON = ("site-level DP protects all of a site's records at once: a person with any number of records at "
                     "this site is covered by the site-level epsilon itself")


def second_opinion(acc: Account, history: list[tuple], rc: Recomputer) -> dict:
    try:
        pld = rc.pld.epsilon(history, acc.delta)
        pld_out, pld_error = (None if math.isinf(pld) else pld), ("no noise: infinite" if math.isinf(pld) else None)
    except BracketUnavailable as ex:
        pld_out, pld_error = None, str(ex)
    if acc.unit == "site":
        person = {"unit": "person (k records of one site)", "method": SITE_LEVEL_PERSON, "sizes": []}
    elif acc.keeper != "site":
        person = None
    else:
        person = {"unit": "person (k records of one site)", "method": METHOD, "delta": acc.delta,
                  "sizes": rc.group.reading(history, acc.delta, GROUP_SIZES, record_epsilon=pld_out)}
    return {"epsilon_pld": pld_out, "pld_error": pld_error, "person_level": person}
