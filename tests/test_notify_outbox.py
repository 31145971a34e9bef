"""The durable outbox: ordered, crash-safe, survives a restart."""

from __future__ import annotations

from pathlib import Path

from opsagent.notify.outbox import Outbox


def test_outbox_keeps_order_across_a_restart(tmp_path: Path) -> None:
    """Messages queued before a restart come out in the same order afterwards, and acked ones never again."""
    box = Outbox(tmp_path / "slack")
    for i in range(5):
        box.put({"n": i})
    seq, _ = box.peek()  # type: ignore[misc]
    box.ack(seq)
    reopened = Outbox(tmp_path / "slack")
    assert [m["n"] for m in reopened.pending()] == [1, 2, 3, 4]
    assert reopened.put({"n": 5}) > seq + 4  # sequence numbers keep growing after a restart
    assert [m["n"] for m in reopened.pending()] == [1, 2, 3, 4, 5]


def test_half_written_and_damaged_messages_do_not_wedge_the_queue(tmp_path: Path) -> None:
    """A temp file left by a crash is discarded and an unreadable message is skipped, not retried forever."""
    directory = tmp_path / "pd"
    directory.mkdir()
    (directory / ".00000000000000000001.json.123.4.tmp").write_text('{"n": ')
    (directory / "00000000000000000001.json").write_text("{not json")
    (directory / "00000000000000000002.json").write_text('{"n": 2}')
    box = Outbox(directory)
    assert not list(directory.glob(".*.tmp"))
    item = box.peek()
    assert item is not None and item[1] == {"n": 2}
    assert len(box) == 1


def test_peek_waits_for_a_message_until_its_timeout(tmp_path: Path) -> None:
    """An empty outbox returns nothing after the wait; a queued message is returned at once."""
    box = Outbox(tmp_path / "am")
    assert box.peek(timeout=0.05) is None
    box.put({"n": 1})
    assert box.peek(timeout=5) is not None
