"""``audit.html``: one self-contained page (inline CSS, inline SVG figures, no script, no external asset).

Element ids and classes a reader (or a test) can rely on: ``#verdicts`` (one
``tr.site-row[data-site]`` per site), ``#epsilon-plot`` (the figure),
``#flags``, ``#rounds`` (per-entry mechanism table), ``#empirical``,
``#person-level`` (epsilon for a person with k records at one site), ``#config``
and ``#code``.
"""

from __future__ import annotations

import json
import math
from html import escape

from common.report.plots import empirical_plot, epsilon_plot
from common.report.wording import ACCOUNTANT_NAME, VERDICTS, eps_label, fmt, person_label

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1b1b1b}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:1.6em}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d0d0;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#666;font-size:12px}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-weight:600;font-size:12px;white-space:nowrap}
.within-budget{background:#d7f5dd;color:#0b5d1e}.exhausted{background:#fff1c2;color:#6b4e00}
.refused{background:#e2e6ff;color:#1c2f8f}.over-budget{background:#ffd6d6;color:#8a0000}
.no-record,.not-private{background:#eee;color:#444}
.ok{color:#0b5d1e;font-weight:600}.bad{color:#8a0000;font-weight:600}
.statement{background:#f7f9fc;border-left:4px solid #3d6bd6;padding:8px 12px}
figure{margin:8px 0}figure svg{max-width:100%;height:auto}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
"""


def _e(x) -> str:
    return escape(str(x))


def _row(cells, cls: str = "", attrs: str = "") -> str:
    tds = "".join(f'<td class="num">{_e(c[1])}</td>' if isinstance(c, tuple) else f"<td>{c}</td>" for c in cells)
    return f'<tr class="{cls}"{attrs}>{tds}</tr>'


def _head(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"


def _privacy(a: dict) -> str:
    p = a["privacy"]
    items = [f'<p class="statement">{_e(p["statement"])}</p>']
    if p["unit"]:
        items.append("<table>" + _head("unit", "neighbouring relation", "delta", "budget per site",
                                       "accountant (enforced)", "second accountant", "bracket (another library)") +
                     _row([_e(p["unit"]), _e(p["neighbouring"]), (0, f"{p['delta']:g}"), (0, fmt(p["budget"])),
                           _e(ACCOUNTANT_NAME.get(p["accountant"], p["accountant"])), "Opacus PRV",
                           _e(p.get("bracket", ""))]) + "</table>")
        mech = "".join(f"<li><b>{_e(m['name'])}</b>: {_e(m['description'])}</li>" for m in p["mechanisms"])
        items.append(f"<ul>{mech}</ul>" if mech else "")
        assumed = "".join(f"<li>{_e(x)}</li>" for x in p.get("assumptions", []))
        items.append(f'<p>The claim assumes:</p><ul id="assumptions">{assumed}</ul>' if assumed else "")
    return "\n".join(items)


def _verdicts(a: dict) -> str:
    rows = []
    for s in a["sites"]:
        value = math.inf if s.get("epsilon_infinite") else s.get("epsilon")
        eps = "n/a" if s.get("unit") is None else eps_label(value, s["unit"], s["delta"], s["accountant"])
        prv = fmt(s.get("epsilon_prv")) if s.get("epsilon_prv") is not None else _e(s.get("prv_error") or "n/a")
        before = (f'{fmt(s.get("epsilon_prior"))} ({s["prior_runs"]} run(s))' if s.get("prior_runs") else "none")
        rows.append(_row([f"<b>{_e(s['site'])}</b>", f'<span class="badge {_e(s["verdict"])}">'
                          f'{_e(VERDICTS[s["verdict"]])}</span>', _e(eps), (0, before),
                          (0, fmt(s.get("epsilon_this_run"))), (0, fmt(s.get("epsilon_pld"))), prv,
                          (0, fmt(s.get("budget"))), _e(", ".join(map(str, s["rounds_trained"])) or "-"),
                          _e(", ".join(map(str, s["rounds_refused"])) or "-"), _e(s["reason"])],
                         "site-row", f' data-site="{_e(s["site"])}"'))
    return ('<table id="verdicts">' + _head("site", "verdict", "epsilon spent (the site's whole history)",
                                            "earlier runs alone", "this run alone", "dp-accounting PLD (whole)",
                                            "Opacus PRV (whole)", "budget", "rounds trained", "rounds refused", "why")
            + "".join(rows) + "</table>" +
            '<p class="muted">All epsilons of a row share its unit, delta and add/remove relation. Earlier runs and '
            'this run are each composed alone with Opacus RDP; together they compose to the spent epsilon (they '
            'do not add). PLD is the tightest bound (pessimistic estimate).</p>')


def _person(a: dict) -> str:
    rows = []
    for s in a["sites"]:
        p = s.get("person_level")
        if not p:
            continue
        if not p["sizes"]:
            rows.append(_row([f"<b>{_e(s['site'])}</b>", _e(p["method"]), "", "", ""]))
            continue
        cells = [_e(person_label(x["epsilon"], x["k"], p["delta"])) if x["error"] is None and not x["epsilon_infinite"]
                 else _e("inf (no noise)" if x["epsilon_infinite"] else x["error"]) for x in p["sizes"]]
        rows.append(_row([f"<b>{_e(s['site'])}</b>", _e(eps_label(s.get("epsilon"), s["unit"], s["delta"],
                                                                   s["accountant"]))] + cells))
    if not rows:
        return '<p id="person-level">No record-level account: no person-level reading.</p>'
    method = next(s["person_level"]["method"] for s in a["sites"] if s.get("person_level"))
    return ('<table id="person-level">' + _head("site", "one record", "person with 2 records", "3 records",
                                                "5 records") + "".join(rows) + "</table>" +
            f'<p class="muted">Group privacy for add/remove of k records of one site. Method: {_e(method)} '
            '(docs/audit.md).</p>')


def _flags(a: dict) -> str:
    c = a["checks"]
    head = (f'<p>Ledger consistency: every stored epsilon must equal its recomputation from the raw history to '
            f'{c["ledger_rel_tol"]:g} (relative). Accountant agreement: PRV may exceed RDP by at most '
            f'{c["prv_slack"]:g} (2 x PRV eps_error {c["prv_eps_error"]:g}); both bound the same mechanism and RDP '
            f'is the looser one. Bracket: every stored epsilon must lie between dp-accounting\'s PLD (a near-tight '
            f'bound; below its optimistic estimate the claim is certainly too low) and dp-accounting\'s RDP of the '
            f'same history on the same orders (above it the claim does not follow from its history).</p>')
    if not c["flags"]:
        return head + '<p id="flags" class="ok">No inconsistency found.</p>'
    items = "".join(f'<li class="{"bad" if f["severity"] == "error" else ""}">[{_e(f["kind"])}] '
                    f'{_e(f["site"] or "")} {_e(f["keeper"] or "")}: {_e(f["message"])}</li>' for f in c["flags"])
    return head + f'<ul id="flags">{items}</ul>'


def _rounds(a: dict) -> str:
    rows = []
    for acc in a["accounts"]:
        for r in acc["rounds"]:
            for i, s in enumerate(r["spends"]):
                last = i == len(r["spends"]) - 1
                ran = s["mechanism"] != "none"  # a refused or skipped round released nothing
                bracket = s.get("bracket", "ok")
                rows.append(_row([_e(acc["site"]), _e(acc["keeper"]), (0, r["round"]), _e(s["mechanism"]),
                                  _e(s["status"]), (0, fmt(s["noise_multiplier"]) if ran else "-"),
                                  (0, fmt(s["clip_norm"]) if ran else "-"),
                                  (0, fmt(s.get("sensitivity")) if ran else "-"),
                                  (0, fmt(s["sample_rate"]) if ran else "-"),
                                  (0, s["steps"] if ran else "-"),
                                  (0, "inf" if s["epsilon_ledger_infinite"] else fmt(s["epsilon_ledger"], 6)),
                                  (0, fmt(s.get("epsilon_pld"), 6)), (0, fmt(s.get("epsilon_rdp_dpa"), 6)),
                                  f'<span class="{"ok" if bracket == "ok" else "bad"}">{_e(bracket)}</span>',
                                  (0, fmt(r["epsilon_rdp"], 6) if last else ""),
                                  (0, (fmt(r["epsilon_prv"], 6) if r["epsilon_prv"] is not None else "n/a") if last else ""),
                                  (0, fmt(r["budget_left"]) if last else "")]))
    notes = sorted({f'{acc["site"]} ({acc["keeper"]}): prior history from {acc["prior_source"]}'
                    for acc in a["accounts"] if acc["prior_history"]} |
                   {f'{acc["site"]} ({acc["keeper"]}): {n}' for acc in a["accounts"] for n in acc["notes"]} |
                   {f'round {r["round"]} {acc["site"]}: PRV not available: {r["prv_error"]}'
                    for acc in a["accounts"] for r in acc["rounds"] if r["prv_error"]})
    note_html = "".join(f"<li>{_e(n)}</li>" for n in notes)
    unit = "/".join(sorted({acc["unit"] for acc in a["accounts"]})) or "-"
    return ('<table id="rounds">' + _head("site", "ledger", "round", "mechanism", "status", "noise multiplier",
                                          "clip norm", "sensitivity Delta", "sample rate", "steps", "epsilon (ledger)",
                                          "PLD (dp-accounting)", "RDP (dp-accounting)", "bracket",
                                          "epsilon RDP (recomputed)", "epsilon PRV (recomputed)", "budget left")
            + "".join(rows) + "</table>" +
            f'<p class="muted">Epsilons are cumulative after the entry/round, {unit}-level, at the delta above.</p>'
            + (f"<ul>{note_html}</ul>" if note_html else ""))


def _empirical(a: dict) -> str:
    emp = a.get("empirical")
    if not emp:
        return ('<p id="empirical">No empirical audit in this run folder. Run <code>fedgckd audit-empirical --run '
                'RUN_DIR</code> to insert canaries at a site, train with the same mechanism and bound epsilon from '
                'below.</p>')
    acc = emp["accounted_epsilon"]
    acc_s = "inf (no noise)" if acc is None or acc == float("inf") else fmt(acc)
    ok = emp.get("within_accounting", True)
    best = max(emp["guesses"], key=lambda g: g["epsilon_lower"])
    table = ("<table>" + _head("canaries m", "trained on", "site records", "score", "best k (per side)",
                               "correct / guesses", "empirical lower bound", "accounted epsilon (RDP)",
                               "run's record-level epsilon (max site)") +
             _row([(0, emp["canaries"]), (0, emp["included"]), (0, emp["site_records"]), _e(emp["score"]),
                   (0, best["k_plus"]), (0, f'{best["correct"]} / {best["guesses"]}'),
                   (0, f'{fmt(emp["epsilon_lower_bound"])} ({100 * emp["confidence"]:.0f}% conf.)'), (0, acc_s),
                   (0, fmt(emp.get("run_record_epsilon_max")))]) + "</table>")
    verdict = (f'<p class="{"ok" if ok else "bad"}">Empirical lower bound {fmt(emp["epsilon_lower_bound"])} '
               f'{"does not exceed" if ok else "EXCEEDS"} the accounted {acc_s} (record-level, delta '
               f'{emp["delta"]:g}, Opacus RDP) of the audited training.</p>')
    train = emp.get("training", {})
    return (f'<div id="empirical">{verdict}<figure id="empirical-plot">{empirical_plot(emp)}</figure>{table}'
            f'<p class="muted">Method: {_e(emp["method"])}. Statement: {_e(emp["statement"])} Score: '
            f'{_e(emp.get("score_definition", ""))}. Training audited: {_e(json.dumps(train))}.</p></div>')


def _config(a: dict) -> str:
    cfg = a["run"]["config"]
    rows = "".join(_row([_e(k), _e(v)]) for k, v in sorted(cfg.items()))
    return f'<table id="config">{_head("run-config key", "value")}{rows}</table>'


def _code(a: dict) -> str:
    parts = []
    for who, c in (("run", a["code"]["run"]), ("report", a["code"]["report"])):
        if c is None:
            parts.append(_row([who, _e(a["code"]["run_note"]), "", "", ""]))
            continue
        libs = ", ".join(f"{k} {v}" for k, v in c["libraries"].items())
        dirty = {True: " (uncommitted changes)", False: "", None: ""}[c["git_dirty"]]
        parts.append(_row([who, _e(f'{c["package"]} {c["package_version"]}'), _e(f'{c["git_commit"] or "unknown"}{dirty}'),
                           _e(f'python {c["python"]}; {libs}'), _e("; ".join(c["notes"]) or c["recorded_at"])]))
    return f'<table id="code">{_head("code of", "package", "git commit", "versions", "notes")}{"".join(parts)}</table>'


def render_html(audit: dict) -> str:
    ok = audit["checks"]["ok"]
    status = ('<span class="ok">all checks passed</span>' if ok else
              '<span class="bad">INCONSISTENCIES FOUND: see Checks</span>')
    plot = epsilon_plot(audit["accounts"]) if audit["accounts"] else "<p>No ledger entries: nothing to plot.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fedgckd privacy audit</title>
<style>{CSS}</style></head><body>
<h1>fedgckd privacy audit</h1>
<p class="muted">{_e(audit["schema"])} &middot; run {_e(audit["run_dir"])} &middot; generated {_e(audit["generated_at"])}
&middot; rounds completed {_e(audit["run"]["rounds_completed"])}</p>
<p>Status: {status}</p>
<h2>Privacy guarantee</h2>{_privacy(audit)}
<h2>Verdict per site</h2>{_verdicts(audit)}
<h2>Person-level reading</h2>{_person(audit)}
<h2>Epsilon over rounds</h2><figure id="epsilon-plot">{plot}</figure>
<p class="muted">Lines: Opacus RDP recomputed from each ledger's raw history (sites with identical spending draw
one line over another); crosses: Opacus PRV; dotted red: budgets.</p>
<h2>Checks</h2>{_flags(audit)}
<h2>Mechanism per round</h2>{_rounds(audit)}
<h2>Empirical audit</h2>{_empirical(audit)}
<h2>Run configuration</h2>{_config(audit)}
<h2>Code version</h2>{_code(audit)}
</body></html>
"""
