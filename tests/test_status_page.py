"""The status page as an on-call engineer sees it, in a real browser (headless Chromium through Playwright).

The page is served by the real HTTP server from a hand-made view (eight alerts, a down target, a failing
sink, a failed backup run), so each test knows exactly what the page must say.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from opsagent.alerts.history import AlertEvent
from opsagent.notify.stats import SinkStats
from opsagent.web.app import App
from opsagent.web.ports import AlertRow, CheckRow, Health, MetricsBody, PageSettings, TrendPoint, TriggerResult
from opsagent.web.server import HttpServer, serve

NOW = 1_764_633_600.0  # 2025-12-02 00:00 UTC: the view's and the page's "now"


def _alert(name: str, state: str, severity: str, check: str, target: str, since_ago: float,
           value: float | None = None, threshold: float | None = None) -> AlertRow:
    return AlertRow(alertname=name, state=state, severity=severity, check=check, target=target, value=value,
                    threshold=threshold, since=NOW - since_ago, fingerprint=f"fp-{name}-{target}",
                    summary=f"{name} on {target}", description=f"{name} on {target} since a while",
                    document={"alertname": name, "state": state})


def _trend(values: list[float | None]) -> tuple[TrendPoint, ...]:
    return tuple(TrendPoint(at=NOW - 60 * (len(values) - i), value=v) for i, v in enumerate(values))


INCIDENT_ALERTS = [
    _alert("BackupFailed", "firing", "warning", "backup_run", "main", 600, 1.0, 0.0),
    _alert("TargetDown", "firing", "critical", "redis", "sessions", 300),
    _alert("HighMemory", "firing", "critical", "memory", "task", 900, 0.95, 0.9),
    _alert("RedisMemoryHigh", "firing", "warning", "redis", "cache", 1200, 0.0000501, 0.00005),
    _alert("HighCPU", "pending", "warning", "cpu", "task", 60, 0.85, 0.8),
    _alert("PostgresConnectionsExhausted", "pending", "critical", "postgres", "main", 30, 0.91, 0.9),
    _alert("PgBouncerClientsWaiting", "flapping", "warning", "pgbouncer", "pool", 400, 3.0, 0.0),
    _alert("HighErrorRate", "silenced", "critical", "error_rate", "api", 2000, 0.05, 0.01),
]

INCIDENT_CHECKS = [
    CheckRow("cpu", "task", 15, "pending", up=True, value=0.85, threshold=0.8, alert="HighCPU", last_run=NOW - 5,
             source="cgroup", trend=_trend([0.3, 0.4, 0.5, 0.7, 0.85, 0.86])),
    CheckRow("memory", "task", 15, "firing", up=True, value=0.95, threshold=0.9, alert="HighMemory",
             last_run=NOW - 5, source="cgroup", trend=_trend([0.8, 0.85, 0.9, 0.93, 0.95])),
    CheckRow("postgres", "main", 15, "inactive", up=True, value=0.2, threshold=0.9,
             alert="PostgresConnectionsExhausted", last_run=NOW - 3, source="pg_stat_activity",
             trend=_trend([0.2, 0.21, 0.2, 0.22])),
    CheckRow("redis", "sessions", 15, "firing", up=False, value=None, threshold=0.75, alert="TargetDown",
             last_run=NOW - 2, error="ConnectionError: Error 111 connecting to 127.0.0.1:1. Connection refused.",
             last_ok_at=NOW - 330, trend=_trend([0.1, 0.1, None, None])),
    CheckRow("redis", "cache", 15, "firing", up=True, value=0.0000501, threshold=0.00005, alert="RedisMemoryHigh",
             last_run=NOW - 4, source="INFO", trend=_trend([0.00004, 0.00005, 0.0000501])),
    CheckRow("pgbouncer", "pool", 15, "flapping", up=True, value=3.0, threshold=0.0, alert="PgBouncerClientsWaiting",
             last_run=NOW - 4, source="SHOW POOLS", trend=_trend([0, 3, 0, 4, 0, 3])),
    CheckRow("error_rate", "api", 15, "silenced", up=True, value=0.05, threshold=0.01, alert="HighErrorRate",
             last_run=NOW - 4, source="prometheus", trend=_trend([0.01, 0.03, 0.05])),
    CheckRow("sqs", "jobs", 15, "standby"),
]

INCIDENT_BACKUPS: dict[str, Any] = {
    "rpo_target_seconds": 3600.0, "rpo_achieved_seconds": None, "rto_target_seconds": 7200.0,
    "rto_achieved_seconds": 640.0, "replica": "file:///dr",
    "targets": [
        {"kind": "postgres", "target": "main", "rpo_seconds": 1800.0, "region": "eu-west-1",
         "newest_backup": {"id": "postgres-main-20251201T233000Z", "timestamp": NOW - 1800, "size": 2048},
         "newest_replica": {"id": "postgres-main-20251201T233000Z", "timestamp": NOW - 1700}},
        {"kind": "postgres", "target": "orders", "rpo_seconds": None, "region": "eu-west-1",
         "newest_backup": None, "newest_replica": None},
    ],
    "last_run": {"ok": False, "trigger": "schedule", "finished_at": "2025-12-01T23:59:00Z", "error": None,
                 "outcomes": [
                     {"kind": "postgres", "target": "main", "ok": True, "backup_id": "postgres-main-x",
                      "replica_ok": False, "replica_error": "replica repository is read-only"},
                     {"kind": "postgres", "target": "orders", "ok": False,
                      "error": "pg_dump: connection to server failed: Connection refused"}]},
    "last_drill": {"passed": True, "finished_at": "2025-12-01T03:40:00Z"},
    "next_run_at": NOW + 1200, "next_drill_at": NOW + 12600,
}

INCIDENT_DELIVERY = [
    SinkStats("alertmanager", queued=0, sent=12, failed=0, last_sent_at=NOW - 30),
    SinkStats("slack", queued=4, sent=3, failed=9, last_error="HTTPError: 503 Service Unavailable"),
]

INCIDENT_HISTORY = [
    AlertEvent(at=NOW - 60 * i, kind="resolved" if i % 3 == 0 else "fired", alertname="HighCPU", check="cpu",
               target="task", severity="warning", duration_seconds=300.0 if i % 3 == 0 else None,
               description=f"event {i}")
    for i in range(100)
]


SETTINGS = PageSettings(agent_name="api-sidecar", version="2.0.0", runbook_base_url="/runbooks/",
                        alertmanager_url="http://alertmanager.example:9093")


@dataclass
class FakeView:
    """An AgentView with fixed contents."""

    checks_: list[CheckRow] = field(default_factory=lambda: list(INCIDENT_CHECKS))
    alerts_: list[AlertRow] = field(default_factory=lambda: list(INCIDENT_ALERTS))
    backups_: dict[str, Any] | None = field(default_factory=lambda: dict(INCIDENT_BACKUPS))
    delivery_: list[SinkStats] = field(default_factory=lambda: list(INCIDENT_DELIVERY))
    history_: list[AlertEvent] = field(default_factory=lambda: list(INCIDENT_HISTORY))
    quality_: dict[str, Any] = field(default_factory=dict)
    settings: PageSettings = field(default_factory=lambda: SETTINGS)

    def page_settings(self) -> PageSettings:
        return self.settings

    def health(self) -> Health:
        return Health(healthy=True, reason="ok", ready=True, started_at=NOW - 3600)

    def metrics(self, accept: str, gzip_ok: bool) -> MetricsBody:
        return MetricsBody(b"# no metrics\n", "text/plain; version=0.0.4")

    def checks(self) -> list[CheckRow]:
        return self.checks_

    def alerts(self) -> list[AlertRow]:
        return self.alerts_

    def backups(self) -> dict[str, Any] | None:
        return self.backups_

    def history(self, limit: int) -> list[AlertEvent]:
        return self.history_[:limit]

    def quality(self) -> dict[str, Any]:
        return self.quality_

    def delivery(self) -> list[SinkStats]:
        return self.delivery_

    def trigger_backup(self) -> TriggerResult:
        return "unconfigured"


@pytest.fixture
def serve_view() -> Iterator[Any]:
    """``serve_view(view)`` serves the page of ``view`` on a free loopback port and returns its base URL."""
    servers: list[HttpServer] = []

    def start(view: FakeView) -> str:
        server = serve(App(view, clock=lambda: NOW), "127.0.0.1", 0)
        servers.append(server)
        return f"http://{server.address}"

    yield start
    for server in servers:
        server.close()


def _column(page: Any, table: str, label: str) -> list[str]:
    return [text.strip() for text in page.locator(f"table.{table} td[data-label='{label}']").all_inner_texts()]


def test_banner_counts_alerts_by_severity_and_state_in_the_worst_colour(serve_view: Any, new_page: Any,
                                                                       tmp_path: Path) -> None:
    """The banner says how many alerts fire (critical, warning), pend, flap and are silenced, in the critical colour."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    banner = page.get_by_role("status")
    counts = {n: banner.locator(f"li[data-count='{n}'] b").inner_text()
              for n in ("firing critical", "firing warning", "pending", "flapping", "silenced", "checks down")}
    assert counts == {"firing critical": "2", "firing warning": "2", "pending": "2", "flapping": "1",
                      "silenced": "1", "checks down": "1"}
    assert "Critical alerts firing" in banner.inner_text()
    crit = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--crit').trim()")
    border = banner.evaluate("el => getComputedStyle(el).borderTopColor")
    assert _rgb(border) == _rgb(crit)
    page.screenshot(path=str(tmp_path / "incident.png"), full_page=True)


def test_all_clear_banner_is_green_and_says_so(serve_view: Any, new_page: Any) -> None:
    """With nothing wrong the banner reads "All clear" in the OK colour with every count at zero."""
    view = FakeView(alerts_=[], checks_=[replace(INCIDENT_CHECKS[2])], backups_=None, history_=[])
    page = new_page()
    page.goto(serve_view(view) + "/")
    banner = page.get_by_role("status")
    assert "All clear" in banner.inner_text()
    assert set(banner.locator("li b").all_inner_texts()) == {"0"}
    ok = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--ok').trim()")
    assert _rgb(banner.evaluate("el => getComputedStyle(el).borderTopColor")) == _rgb(ok)


def test_a_starting_agent_does_not_claim_all_clear(serve_view: Any, new_page: Any) -> None:
    """Before the first round of checks has run the banner says the agent is starting, not that all is clear."""

    class Starting(FakeView):
        def health(self) -> Health:
            return replace(super().health(), ready=False)

    page = new_page()
    page.goto(serve_view(Starting(alerts_=[], checks_=[CheckRow("cpu", "task", 15, "pending")])) + "/")
    banner = page.get_by_role("status").inner_text()
    assert "Starting" in banner and "All clear" not in banner


def test_alerts_are_ordered_by_severity_then_age(serve_view: Any, new_page: Any) -> None:
    """Critical alerts come first, the longest-running first within a severity; silenced ones last."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    names = [t.split()[0] for t in _column(page, "alerts", "alert")]
    assert names == ["HighMemory", "TargetDown", "PostgresConnectionsExhausted", "RedisMemoryHigh", "BackupFailed",
                     "PgBouncerClientsWaiting", "HighCPU", "HighErrorRate"]


def test_checks_with_problems_come_before_healthy_ones(serve_view: Any, new_page: Any) -> None:
    """The down target leads the checks table and the healthy and standby rows come last."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    states = page.locator("table.checks tbody tr").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert states == ["down", "firing", "firing", "flapping", "pending", "silenced", "standby", "inactive"]
    assert "last OK: 6m ago" in page.locator("tr[data-check='redis/sessions']").inner_text()


def test_pending_firing_resolved_and_silenced_look_different_without_colour(serve_view: Any, new_page: Any) -> None:
    """Each state has its own word and its own shape (fill, border style, weight, strike-through), not just a hue."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")

    def look(selector: str) -> tuple[str, ...]:
        el = page.locator(selector).first
        text = el.inner_text().strip().lower()
        style = el.evaluate("e => { const s = getComputedStyle(e); return [s.borderTopStyle, s.fontWeight, "
                            "s.textDecorationLine, s.fontStyle, s.backgroundColor === 'rgba(0, 0, 0, 0)'] }")
        return (text.split()[-1], *map(str, style))

    looks = {state: look(f"table.alerts tr[data-state='{state}'] .badge")
             for state in ("firing", "pending", "flapping", "silenced")}
    looks["resolved"] = look("table.history tr[data-event='resolved'] .badge")
    words = {v[0] for v in looks.values()}
    shapes = {v[1:] for v in looks.values()}
    assert len(words) == 5 and len(shapes) == 5, looks


def test_values_show_the_precision_their_threshold_needs(serve_view: Any, new_page: Any) -> None:
    """A firing Redis alert at 0.00501 % against 0.005 % never reads as 0.00 % against 0.00 %."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    row = page.locator("table.alerts tr[data-alert='RedisMemoryHigh']")
    value = row.locator("td[data-label='value']").inner_text()
    threshold = row.locator("td[data-label='threshold']").inner_text()
    assert value != threshold and float(value.rstrip(" %")) > float(threshold.rstrip(" %"))
    assert (value, threshold) == ("0.00501 %", "0.005 %")


def test_each_check_draws_a_sparkline_of_its_last_hour(serve_view: Any, new_page: Any) -> None:
    """A check with recent values shows a drawn trend line; the down target's line breaks where it was down."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    cpu = page.locator("tr[data-check='cpu/task'] svg.spark")
    box = cpu.bounding_box()
    assert box is not None and box["width"] > 50 and box["height"] > 10
    points = cpu.locator("polyline").get_attribute("points") or ""
    ys = [float(p.split(",")[1]) for p in points.split()]
    assert len(ys) == 6 and ys[0] > ys[-1]  # rising values are drawn rising (SVG y grows downwards)
    assert page.locator("tr[data-check='sqs/jobs'] svg.spark").count() == 0


def test_page_fits_400_px_without_horizontal_scrolling(serve_view: Any, new_page: Any, tmp_path: Path) -> None:
    """At 400 px the page does not scroll sideways and every alert's state and description are on screen."""
    page = new_page(width=400, height=800)
    page.goto(serve_view(FakeView()) + "/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    for cell in ("state", "description"):
        for i in range(page.locator(f"table.alerts td[data-label='{cell}']").count()):
            box = page.locator(f"table.alerts td[data-label='{cell}']").nth(i).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 400, (cell, box)
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)


def test_delivery_per_sink_shows_queue_sent_failures_and_last_error(serve_view: Any, new_page: Any) -> None:
    """The delivery table says which sink is failing, how many pages wait and why."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    slack = page.locator("tr[data-sink='slack']").inner_text()
    assert "failing" in slack and "503 Service Unavailable" in slack
    assert _column(page, "notify", "queued") == ["0", "4"]
    assert "delivering" in page.locator("tr[data-sink='alertmanager']").inner_text()


def test_dr_section_shows_never_outcomes_next_runs_and_the_runbook(serve_view: Any, new_page: Any) -> None:
    """A target never backed up reads "never" in the alarm colour, each target shows its last outcome, next runs and the DR runbook link."""
    page = new_page()
    url = serve_view(FakeView())
    page.goto(url + "/")
    orders = page.locator("tr[data-target='postgres/orders']")
    never = orders.locator("td[data-label='newest backup'] .never")
    assert never.inner_text().strip().endswith("never")
    crit = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--crit').trim()")
    assert _rgb(never.evaluate("e => getComputedStyle(e).color")) == _rgb(crit)
    assert "Connection refused" in orders.locator("td[data-label='last run']").inner_text()
    main = page.locator("tr[data-target='postgres/main'] td[data-label='last run']").inner_text()
    assert "replication failed" in main and "read-only" in main
    assert "see outcomes" not in page.content()
    text = page.locator("#h-dr").locator("xpath=..").inner_text()
    assert "next backup in 20m" in text and "next drill in 3.5h" in text
    assert "never: no complete backup" in text
    page.get_by_role("link", name="Disaster-recovery runbook").click()
    assert page.locator("main h1").first.inner_text().strip() != ""
    assert page.url.endswith("/runbooks/DisasterRecovery")


def test_history_lists_the_last_hundred_transitions(serve_view: Any, new_page: Any) -> None:
    """The history table shows 100 transitions, newest first, with how long resolved alerts lasted."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    rows = page.locator("table.history tbody tr")
    assert rows.count() == 100
    assert rows.first.locator("td[data-label='description']").inner_text() == "event 0"
    assert rows.first.locator("td[data-label='lasted']").inner_text() == "5m"


def test_every_alert_links_to_an_alertmanager_silence(serve_view: Any, new_page: Any) -> None:
    """With notify.alertmanager_url set each alert has a link to a new silence matching its labels; without it, none."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    links = page.locator("table.alerts a.silence")
    assert links.count() == len(INCIDENT_ALERTS)
    href = page.locator("tr[data-alert='TargetDown'] a.silence").get_attribute("href") or ""
    assert href.startswith("http://alertmanager.example:9093/#/silences/new?filter=")
    assert "alertname%3D%22TargetDown%22" in href and "target%3D%22sessions%22" in href
    bare = FakeView(settings=replace(SETTINGS, alertmanager_url=None))
    page.goto(serve_view(bare) + "/")
    assert page.locator("a.silence").count() == 0


def test_runbooks_render_as_html_and_keep_their_markdown(serve_view: Any, new_page: Any) -> None:
    """/runbooks/TargetDown is a readable HTML page with headings; /runbooks/TargetDown.md stays Markdown."""
    url = serve_view(FakeView())
    page = new_page()
    page.goto(url + "/runbooks/TargetDown")
    assert "TargetDown" in page.locator("main h1").first.inner_text()
    assert page.locator("main h2").count() >= 1 and "#" not in page.locator("main h2").first.inner_text()
    raw = requests.get(url + "/runbooks/TargetDown.md", timeout=5)
    assert raw.headers["Content-Type"].startswith("text/markdown") and raw.text.lstrip().startswith("#")
    assert requests.get(url + "/runbooks/NoSuchAlert", timeout=5).status_code == 404


def test_page_refreshes_itself_and_is_built_for_phones_and_screen_readers(serve_view: Any, new_page: Any) -> None:
    """The page carries auto-refresh and viewport metas, landmarks and column headers."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    assert page.locator("meta[http-equiv='refresh']").get_attribute("content") == "30"
    assert "width=device-width" in (page.locator("meta[name='viewport']").get_attribute("content") or "")
    for role in ("banner", "main", "contentinfo"):
        assert page.get_by_role(role).count() == 1, role
    for table in page.locator("table").all():
        assert table.locator("thead th[scope='col']").count() >= 2


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_text_meets_aa_contrast_in_light_and_dark_mode(serve_view: Any, new_page: Any, dark: bool) -> None:
    """Every badge, link and coloured word has at least 4.5:1 contrast against what is behind it, in both schemes."""
    page = new_page(dark=dark)
    page.goto(serve_view(FakeView()) + "/")
    background = _rgb(page.evaluate("getComputedStyle(document.body).backgroundColor"))
    assert (sum(background) < 100) is dark  # the scheme really switched
    pairs = page.locator(".badge, a, .bad, .good, .never, .muted, small, .verdict").evaluate_all("""els => els.map(e => {
        let bg = 'rgba(0, 0, 0, 0)', n = e;
        while (n && (bg === 'rgba(0, 0, 0, 0)' || bg === 'transparent')) { bg = getComputedStyle(n).backgroundColor; n = n.parentElement; }
        return [getComputedStyle(e).color, bg, e.className + ' ' + e.textContent.slice(0, 30)];
    })""")
    worst = min(pairs, key=lambda p: _contrast(_rgb(p[0]), _rgb(p[1])))
    assert _contrast(_rgb(worst[0]), _rgb(worst[1])) >= 4.5, worst


def test_page_prints_without_coloured_backgrounds(serve_view: Any, new_page: Any) -> None:
    """In print media the firing badge is black on white and the navigation is hidden."""
    page = new_page()
    page.goto(serve_view(FakeView()) + "/")
    page.emulate_media(media="print")
    badge = page.locator("table.alerts tr[data-state='firing'] .badge").first
    assert _rgb(badge.evaluate("e => getComputedStyle(e).backgroundColor")) == (255, 255, 255)
    assert not page.locator("footer nav").is_visible()


# -- colour arithmetic (WCAG 2.x) ----------------------------------------------------------------

def _rgb(css: str) -> tuple[int, int, int]:
    css = css.strip()
    if css.startswith("#"):
        return int(css[1:3], 16), int(css[3:5], 16), int(css[5:7], 16)
    nums = re.findall(r"[\d.]+", css)
    return int(float(nums[0])), int(float(nums[1])), int(float(nums[2]))


def _luminance(rgb: tuple[int, int, int]) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_a_real_agent_page_leads_with_its_down_target_on_a_phone(start_agent: Any, new_page: Any,
                                                                 tmp_path: Path) -> None:
    """A running agent with an unreachable Redis shows it first, as down, on a 400 px screen without sideways scrolling."""
    from opsagent_testing.servers import closed_port
    from tests.fixtures.agent import poll

    a = start_agent({"checks": {"redis": [{"name": "gone", "url": f"redis://127.0.0.1:{closed_port()}/0",
                                           "interval": "1s"}]}})
    poll(lambda: a.get("/readyz").status_code == 200)
    page = new_page(width=400, height=800)
    page.goto(a.url + "/")
    first = page.locator("table.checks tbody tr").first
    assert first.get_attribute("data-check") == "redis/gone" and first.get_attribute("data-state") == "down"
    assert "last OK: never" in first.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    page.screenshot(path=str(tmp_path / "agent.png"), full_page=True)
