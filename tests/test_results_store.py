"""The result store's listener dispatch."""

from __future__ import annotations

from structlog.testing import capture_logs

from opsagent.runtime.results import CheckResult, ResultStore


def test_a_raising_listener_is_logged_and_the_next_listener_still_gets_the_result() -> None:
    """One listener that raises does not make the listeners after it miss the result; the failure is logged."""
    store = ResultStore()
    heard: list[CheckResult] = []

    def broken(result: CheckResult) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)
    store.subscribe(heard.append)
    result = CheckResult("cpu", "task", True, 0.5, 1.0, 0.01)
    with capture_logs() as logs:
        store.record(result)
    assert heard == [result]
    assert store.get("cpu", "task") == result
    [event] = [e for e in logs if e["event"] == "result_listener_failed"]
    assert event["check"] == "cpu" and "listener bug" in event["error"]


def test_a_listener_that_subscribes_another_during_dispatch_does_not_break_the_round() -> None:
    """Subscribing from inside a listener is safe: the new listener hears the next result, not a half-iterated list."""
    store = ResultStore()
    late: list[str] = []

    def subscriber(result: CheckResult) -> None:
        store.subscribe(lambda r: late.append(r.target))

    store.subscribe(subscriber)
    store.record(CheckResult("cpu", "a", True, 0.1, 1.0, 0.01))
    assert late == []
    store.record(CheckResult("cpu", "b", True, 0.1, 2.0, 0.01))
    assert late == ["b"]
