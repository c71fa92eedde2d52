"""The report's figures as inline SVG strings (matplotlib, no pyplot, no display, no files).

Text is drawn as paths (``svg.fonttype = "path"``), so the SVG needs no font
on the reader's machine, and the SVG carries no date, so the same audit gives
the same bytes.
"""

from __future__ import annotations

import io
import math

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = matplotlib.colormaps["tab10"].colors


def _svg(fig: Figure, salt: str) -> str:
    FigureCanvasAgg(fig)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML


def epsilon_plot(accounts: list[dict]) -> str:
    """Epsilon after each round (RDP, the primary accountant) for every account, with each budget as a line."""
    fig = Figure(figsize=(8.0, 4.2), dpi=100)
    ax = fig.add_subplot()
    sites = sorted({a["site"] for a in accounts})
    color = {s: COLORS[i % len(COLORS)] for i, s in enumerate(sites)}
    budgets: dict[float, str] = {}
    for a in accounts:
        xs = [0] + [r["round"] for r in a["rounds"]]
        ys = [a["epsilon_prior_rdp"]] + [r["epsilon_rdp"] if r["epsilon_rdp"] is not None else math.nan for r in a["rounds"]]
        server = a["keeper"] == "server"
        ax.plot(xs, ys, linestyle="--" if server else "-", marker="s" if server else "o", markersize=4,
                color=color[a["site"]], label=f"{a['site']} ({'server' if server else 'site'} ledger, RDP)")
        prv = [(r["round"], r["epsilon_prv"]) for r in a["rounds"] if r["epsilon_prv"] is not None]
        if prv and not server:
            ax.plot(*zip(*prv), linestyle="none", marker="x", markersize=6, color=color[a["site"]])
        budgets.setdefault(a["budget"], a["unit"])
    for b, unit in budgets.items():
        ax.axhline(b, color="#b00020", linewidth=1.5, linestyle=":")
        ax.annotate(f"budget {b:g} ({unit}-level)", (0, b), xytext=(2, 3), textcoords="offset points",
                    color="#b00020", fontsize=8)
    ax.plot([], [], linestyle="none", marker="x", color="#555", label="PRV recomputation (second accountant)")
    ax.set_xlabel("round (0 = before the run)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    unit = "/".join(sorted({a["unit"] for a in accounts})) or "-"
    delta = "/".join(f"{d:g}" for d in sorted({a["delta"] for a in accounts})) or "-"
    ax.set_ylabel(f"epsilon ({unit}-level, delta {delta})")
    ax.set_title("Privacy spent per site after each round")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if accounts:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _svg(fig, "epsilon")


def empirical_plot(emp: dict) -> str:
    """Canary scores (in vs out) and the empirical lower bound beside the accounted epsilon."""
    fig = Figure(figsize=(8.0, 3.0), dpi=100)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    scores, coins = emp["scores"], emp["coins"]
    inside = [s for s, c in zip(scores, coins) if c]
    outside = [s for s, c in zip(scores, coins) if not c]
    bins = 20
    left.hist(outside, bins=bins, alpha=0.6, color=COLORS[0], label=f"not trained on ({len(outside)})")
    left.hist(inside, bins=bins, alpha=0.6, color=COLORS[1], label=f"trained on ({len(inside)})")
    left.set_xlabel(f"membership score ({emp.get('score', 'update')})")
    left.set_ylabel("canaries")
    left.legend(fontsize=7)
    left.set_title("Canary scores", fontsize=10)
    acc = emp["accounted_epsilon"]
    finite = acc is not None and math.isfinite(acc)
    values = [emp["epsilon_lower_bound"], acc if finite else 0.0]
    bars = right.bar(["empirical\nlower bound", "accounted\n(RDP)"], values, color=[COLORS[2], COLORS[3]])
    if not finite:
        right.annotate("inf (no noise)", (bars[1].get_x() + bars[1].get_width() / 2, 0), ha="center",
                       va="bottom", fontsize=9)
    right.set_ylabel(f"epsilon (record-level, delta {emp['delta']:g})")
    right.set_title(f"{100 * emp['confidence']:.0f}% lower bound vs accounted", fontsize=10)
    return _svg(fig, "empirical")
