"""The pages' one stylesheet and document head.

Light and dark palettes (``prefers-color-scheme``) chosen for WCAG AA contrast
(4.5:1 for text, badges included); below 960 px every table turns into stacked
cards whose cells carry their column name, so nothing is off-screen on a phone;
print drops the colours' backgrounds and the auto-refresh has no effect on paper.
"""

from __future__ import annotations

CSS = """
:root{--bg:#fff;--fg:#1b1b1b;--muted:#555b63;--line:#c9ced4;--head:#eef0f3;--crit:#b3261e;--warn:#8a4b00;
--ok:#176c2f;--info:#1f4f99;--quiet:#5b6470;--onfill:#fff;--band:#f6f7f9}
@media (prefers-color-scheme:dark){:root{--bg:#121417;--fg:#e8e9eb;--muted:#a7adb5;--line:#3a3f46;--head:#1d2126;
--crit:#ff8a80;--warn:#ffb74d;--ok:#81c995;--info:#8ab4f8;--quiet:#a7adb5;--onfill:#121417;--band:#1a1d21}}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:1rem;background:var(--bg);color:var(--fg);
line-height:1.4;font-size:15px}
a{color:var(--info)} h1{font-size:1.3rem;margin:.2rem 0} h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
small,.muted{color:var(--muted)}
table{border-collapse:collapse;width:100%;margin-bottom:1rem}
th,td{border:1px solid var(--line);padding:.3rem .5rem;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:var(--head)} td.text{overflow-wrap:anywhere;min-width:6rem} table{font-size:14px} td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.banner{border:2px solid var(--ok);border-left-width:.6rem;padding:.6rem .8rem;margin:.6rem 0 1rem;background:var(--band)}
.banner.crit{border-color:var(--crit)} .banner.warn{border-color:var(--warn)} .banner.quiet{border-color:var(--quiet)}
.banner .verdict{font-size:1.15rem;font-weight:700} .banner.crit .verdict{color:var(--crit)}
.banner.warn .verdict{color:var(--warn)} .banner.ok .verdict{color:var(--ok)}
.counts{display:flex;flex-wrap:wrap;gap:.4rem 1rem;margin:.4rem 0 0;padding:0;list-style:none}
.counts b{font-size:1.1rem}
.badge{display:inline-block;padding:0 .4rem;border:2px solid currentColor;border-radius:.3rem;white-space:nowrap}
.s-firing,.s-down{background:var(--crit);border-color:var(--crit);color:var(--onfill);font-weight:700;text-transform:uppercase}
.s-firing.sev-warning{background:var(--warn);border-color:var(--warn)}
.s-pending{border-style:dashed;color:var(--warn)}
.s-flapping{border-style:dotted;color:var(--warn);font-style:italic}
.s-silenced{color:var(--quiet);text-decoration:line-through}
.s-resolved,.s-ok,.s-inactive{color:var(--ok);border-color:transparent}
.s-standby,.s-unknown,.s-fired{color:var(--quiet);border-style:dashed}
.never,.bad{color:var(--crit);font-weight:700} .good{color:var(--ok)}
svg.spark{vertical-align:middle} svg.spark polyline{fill:none;stroke:var(--info);stroke-width:1.5}
svg.spark line{stroke:var(--crit);stroke-width:1;stroke-dasharray:3 2}
footer{margin-top:1.5rem} nav a{margin-right:.8rem}
.runbook{max-width:60rem} .runbook pre{overflow-x:auto;background:var(--head);padding:.5rem}
.runbook code{overflow-wrap:anywhere} details{margin-top:.3rem} details pre{white-space:pre-wrap;margin:.2rem 0}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
@media (max-width:960px){body{padding:.5rem}
table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;width:100%}
table.cards thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
table.cards tr{border:1px solid var(--line);margin-bottom:.6rem} table.cards td{border:0;border-bottom:1px solid var(--line)}
table.cards td::before{content:attr(data-label) ": ";font-weight:600;color:var(--muted)}
table.cards td.num{white-space:normal}}
@media print{body{background:#fff;color:#000;font-size:11pt} .banner{background:#fff}
a{color:#000} nav,.silence{display:none} .s-firing,.s-down{background:#fff;color:#000}}
"""


def page_head(title: str, refresh: int | None) -> str:
    """``<!doctype html>`` through ``</head>``; ``refresh`` seconds adds the auto-refresh meta. ``title`` is escaped HTML."""
    meta_refresh = f"<meta http-equiv='refresh' content='{int(refresh)}'>" if refresh else ""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<meta name='color-scheme' content='light dark'>{meta_refresh}<title>{title}</title>"
            f"<style>{CSS}</style></head>")
