"""Reads the per-site rows of an audit.html (shared by the audit tests)."""

from __future__ import annotations

from html.parser import HTMLParser


class _Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "site-row" in (a.get("class") or "").split():
            self.sites.append(a["data-site"])


def site_rows(html: str) -> list[str]:
    """The `data-site` of every `<tr class="site-row">`, in page order."""
    p = _Rows()
    p.feed(html)
    return p.sites
