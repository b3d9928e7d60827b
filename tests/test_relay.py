"""The relay's mailbox while nothing drains it: bounded by bytes, older grids dropped first,
then the oldest log lines, while each name's newest grid, metrics and checkpoints are kept."""

from __future__ import annotations

from cluster.relay import Mailbox
from jobs.messages import Checkpoint, Image, Log, Metrics, message_bytes

PNG = b"\x89PNG\r\n\x1a\n" + bytes(992)  # 1000 bytes
GRID = message_bytes(Image("samples", 1, PNG))
LINE = message_bytes(Log("x" * 400))


def test_a_mailbox_over_its_bound_drops_older_grids_and_keeps_everything_else() -> None:
    mailbox = Mailbox(bytes_kept=3 * GRID)
    for epoch in range(1, 11):
        mailbox.put(Metrics({"epoch": epoch}))
        mailbox.put(Image("samples", epoch, PNG))
        mailbox.put(Checkpoint(epoch, f"/storage/job/epoch-{epoch}"))

    told, *rest = mailbox.drain(1000)

    # Past 3 grids, room is made down to 90% of the bound: 2 grids.
    assert "dropped 8 image grids and 0 log lines, the oldest" in told.line
    assert [m.epoch for m in rest if isinstance(m, Image)] == [9, 10]
    assert [m.metrics["epoch"] for m in rest if isinstance(m, Metrics)] == list(range(1, 11))
    assert [m.epoch for m in rest if isinstance(m, Checkpoint)] == list(range(1, 11))
    assert mailbox.drain(1000) == []  # the drop is told once


def test_log_lines_go_before_the_newest_grid_and_a_newer_grid_replaces_it() -> None:
    mailbox = Mailbox(bytes_kept=GRID + 4 * LINE + 100)
    mailbox.put(Image("samples", 1, PNG))
    for number in range(1, 11):
        mailbox.put(Log(f"{number:04d}" * 100))
        mailbox.put(Metrics({"step": number}))
    mailbox.put(Image("samples", 2, PNG))

    told, *rest = mailbox.drain(1000)

    assert "dropped 1 image grids and 7 log lines" in told.line
    assert [m.epoch for m in rest if isinstance(m, Image)] == [2]
    assert [m.line[:4] for m in rest if isinstance(m, Log)] == ["0008", "0009", "0010"]
    assert [m.metrics["step"] for m in rest if isinstance(m, Metrics)] == list(range(1, 11))


def test_a_drain_hands_out_messages_in_order_and_frees_their_bytes() -> None:
    mailbox = Mailbox(bytes_kept=2 * GRID)
    mailbox.put(Image("samples", 1, PNG))
    mailbox.put(Image("samples", 2, PNG))
    assert [m.epoch for m in mailbox.drain(1)] == [1]
    mailbox.put(Image("samples", 3, PNG))  # two grids wait: within the bound

    assert [m.epoch for m in mailbox.drain(10)] == [2, 3]
