"""The ``audit.json`` schema, version ``fedgckd-audit/1``: every field, what it means, where it comes from.

Versioning: adding a field keeps the version; removing or renaming a field,
or changing what one means, bumps it to ``fedgckd-audit/2``. The file is
strict JSON (no NaN or Infinity): an epsilon that is infinite (no noise) or
could not be computed is ``null``, and a neighbouring ``*_infinite`` flag or
``*_error`` string says which and why. Every epsilon is at the ``delta`` and
for the ``unit`` of its object, by the accountant its field name says.

Top level
- ``schema`` (str): ``"fedgckd-audit/1"``.
- ``generated_at`` (str): local time of the audit, ISO 8601.
- ``run_dir`` (str): absolute path of the audited run folder.
- ``code``: ``run`` (the code that ran the federation, from RUN_DIR/provenance.json
  written at the run's end; ``null`` if the run did not record one),
  ``run_note`` (why ``run`` is null, else null), ``report`` (the code that
  wrote this audit). Each: ``package``, ``package_version``, ``git_commit``
  (null outside a git checkout), ``git_dirty`` (uncommitted changes to tracked
  files), ``python``, ``libraries`` (torch, opacus, flwr, numpy, scipy,
  matplotlib versions), ``recorded_at``, ``notes`` (what could not be known).
- ``run``: ``config`` (the run config, kebab-case keys, from metrics.json),
  ``backbone`` ({name, fingerprint}), ``source`` ({domain, anchors}),
  ``rounds_completed`` (last round in metrics.json; 0 = initial evaluation
  only), ``wall_s``, ``events`` (refusals, rejections, errors: [{round, site,
  kind, reason}]).
- ``privacy``: ``mode`` (none | record | site), ``unit`` (record | site | null),
  ``neighbouring`` (the relation in words), ``statement`` (the guarantee in
  plain words), ``delta``, ``budget`` (per-site epsilon budget of the run
  config), ``accountant`` (the one enforced, normally rdp),
  ``second_accountant`` ("prv"), ``bracket`` (the other library's check, in
  words), ``mechanisms`` ([{name, description}] of the mechanisms in the
  ledgers), ``assumptions`` ([str]: what the claim rests on besides the
  mathematics), ``header`` (the server's privacy header as is).
- ``sites``: one object per site the run knew of (see Sites).
- ``accounts``: one object per ledger (see Accounts).
- ``checks``: ``ledger_rel_tol`` (1e-6), ``prv_slack`` (0.02),
  ``prv_eps_error``, ``max_prv_evaluations``, ``flags`` ([{site, keeper,
  round, kind, severity, message}]; kinds: ledger-inconsistent,
  accountants-disagree, over-budget, unit-mismatch, delta-mismatch,
  below-pld, above-rdp (a ledger row outside the dp-accounting bracket),
  within-discretisation (a warning), empirical-inconsistent,
  empirical-exceeds-accounted), ``ok`` (no flag of severity "error").
- ``empirical``: null, or the empirical audit (see Empirical).

Sites (the verdicts)
- ``site``; ``verdict``: ``over-budget`` (epsilon > budget: the promise is
  broken), ``refused`` (the site refused at least one round: failed closed),
  ``exhausted`` (one more round like its last would exceed the budget),
  ``within-budget``, ``no-record`` (no ledger entry reached the server),
  ``not-private`` (privacy none); checked in that order.
- ``reason``: the verdict in a sentence, naming epsilon, unit, delta, accountant.
- ``keeper``: which ledger the verdict reads ("site": the site's own).
- ``unit``, ``delta``, ``budget``, ``accountant``.
- ``epsilon``: final epsilon, recomputed from the raw history by the keeper's
  accountant: the site's whole history (earlier runs over the same state
  folder, this run, and any later runs), equal to the site's own ledger;
  ``epsilon_infinite``; ``epsilon_prv`` / ``prv_error``: the PRV
  recomputation or why there is none; ``server_epsilon``: the server's
  account of the same site (site-level DP), else null.
- ``epsilon_prior`` / ``prior_runs``: earlier runs' spending alone (Opacus
  RDP) and how many runs; ``epsilon_this_run``: this run's spending alone;
  ``epsilon_pld``: dp-accounting's PLD of the whole history;
  ``person_level``: see Accounts.
- ``rounds_trained``, ``rounds_refused``: round numbers; ``events``: this site's events.

Accounts (one ledger kept by one keeper)
- ``site``, ``keeper`` ("site" | "server"), ``unit``, ``neighbouring``, ``delta``,
  ``budget``, ``accountant``.
- ``epsilon`` / ``epsilon_infinite``: as in Sites; ``epsilon_rdp``,
  ``epsilon_prv``, ``prv_error``: both recomputations of the final state;
  ``epsilon_ledger``: the last epsilon the ledger stored; ``epsilon_prior_rdp``:
  epsilon of the spending before this run; ``prior_runs``; ``run_key`` (this
  run's key, "" for ledgers without keys); ``epsilon_this_run_rdp``: this
  run's spending alone; ``epsilon_later_rdp``: later runs' (null if none);
  ``later_history``: their history; ``epsilon_pld`` / ``pld_error``:
  dp-accounting's PLD of the whole history or why there is none.
- ``person_level``: null (the server's own ledger), or {``unit``,
  ``method`` (in words, with its citation), ``delta``, ``sizes``: [{``k``,
  ``epsilon`` (add/remove of k records of one site, dp-accounting PLD of the
  mixture-of-Gaussians pair), ``epsilon_infinite``, ``error``}]} (empty
  ``sizes`` under site-level DP: the unit covers every record of the site).
- ``next_round_epsilon``: epsilon after one more round like the last one that
  spent anything (null if none, or infinite); ``next_round_exceeds_budget``.
- ``prior_source``: where spending before this run was looked for;
  ``prior_history``: it, as [noise_multiplier, sample_rate, steps];
  ``history``: the whole composed history; ``notes``: anything unusual.
- ``rounds``: [{``round``, ``spends`` ([{mechanism, noise_multiplier,
  clip_norm (null: the mechanism does not clip), sensitivity (Delta, the
  noise is noise_multiplier x Delta), sample_rate, steps, status, run_key,
  epsilon_ledger (stored, cumulative), epsilon_ledger_infinite, epsilon_pld
  and epsilon_rdp_dpa (dp-accounting's PLD and RDP of the history through
  this row), bracket ("ok" | "below-pld" | "above-rdp" |
  "within-discretisation" | "not-checked"), bracket_reason}]),
  ``epsilon_rdp`` / ``epsilon_rdp_infinite`` / ``rdp_warnings`` (Opacus RDP
  after the round), ``epsilon_prv`` / ``prv_error`` (Opacus PRV after the
  round), ``budget_left`` (budget minus the enforced accountant's epsilon)}].

Empirical (``fedgckd audit-empirical``; `common.report.empirical`)
- ``method``, ``statement`` (the theorem implemented), ``score`` ("update" |
  "pair") and ``score_definition``; ``unit`` ("record"), ``neighbouring``.
- ``canaries`` (m), ``included`` (coins that came up heads), ``site_records``
  (real records of the audited site), ``coins`` and ``scores`` (per canary).
- ``guesses``: [{k_plus, k_minus, correct, guesses, epsilon_lower,
  beta_each}] for each k tried; ``beta``, ``confidence`` (= 1 - beta).
- ``epsilon_lower_bound``: the largest epsilon rejected at the stated
  confidence, recomputed here from ``scores`` and ``coins``.
- ``accounted_epsilon`` (Opacus RDP of ``history``, recomputed here; null if
  infinite), ``accounted_infinite``, ``accountant``, ``delta``, ``history``,
  ``training`` (noise per round, sample rate, steps, clip norm, lr, trained
  parameters, prototype settings, mechanisms), ``within_accounting``
  (lower bound <= accounted).
- ``run_record_epsilon_max``: the largest record-level epsilon of the run's
  sites, for comparison; ``source`` (data, target, teacher, site, run);
  ``wall_s``.
"""

from __future__ import annotations

SCHEMA = "fedgckd-audit/1"
TOP_LEVEL = ("schema", "generated_at", "run_dir", "code", "run", "privacy", "sites", "accounts", "checks", "empirical")
SITE_FIELDS = ("site", "verdict", "reason", "keeper", "unit", "delta", "budget", "accountant", "epsilon",
               "rounds_trained", "rounds_refused", "events", "server_epsilon")
VERDICT_KINDS = ("over-budget", "refused", "exhausted", "within-budget", "no-record", "not-private")


def check(audit: dict) -> list[str]:
    """Missing or unexpected pieces of an audit dict (empty when it has the documented shape)."""
    problems = [f"missing top-level field {k!r}" for k in TOP_LEVEL if k not in audit]
    if audit.get("schema") != SCHEMA:
        problems.append(f"schema is {audit.get('schema')!r}, expected {SCHEMA!r}")
    for s in audit.get("sites", []):
        problems += [f"site {s.get('site')!r} lacks {k!r}" for k in SITE_FIELDS if k not in s]
        if s.get("verdict") not in VERDICT_KINDS:
            problems.append(f"site {s.get('site')!r} has unknown verdict {s.get('verdict')!r}")
    return problems
