"""The relay's mailbox while nothing drains it: bounded, oldest image grids dropped first."""

from __future__ import annotations

from cluster.relay import Mailbox
from jobs.messages import Checkpoint, Image, Log, Metrics

PNG = b"\x89PNG\r\n\x1a\n" + bytes(992)  # 1000 bytes


def test_a_mailbox_over_its_bound_drops_the_oldest_images_and_keeps_everything_else() -> None:
    mailbox = Mailbox(image_bytes_kept=3000)
    for epoch in range(1, 11):
        mailbox.put(Metrics({"epoch": epoch}))
        mailbox.put(Image("samples", epoch, PNG))
        mailbox.put(Checkpoint(epoch, f"/storage/job/epoch-{epoch}"))

    drained = mailbox.drain(1000)

    assert isinstance(drained[0], Log) and "dropped 7 image grids" in drained[0].line
    assert [m.epoch for m in drained if isinstance(m, Image)] == [8, 9, 10]
    assert [m.metrics["epoch"] for m in drained if isinstance(m, Metrics)] == list(range(1, 11))
    assert [m.epoch for m in drained if isinstance(m, Checkpoint)] == list(range(1, 11))
    assert mailbox.drain(1000) == []  # the drop is told once


def test_a_drain_hands_out_messages_in_order_and_frees_their_bytes() -> None:
    mailbox = Mailbox(image_bytes_kept=2000)
    mailbox.put(Image("samples", 1, PNG))
    mailbox.put(Image("samples", 2, PNG))
    assert [m.epoch for m in mailbox.drain(1)] == [1]
    mailbox.put(Image("samples", 3, PNG))  # 2000 bytes wait: within the bound

    assert [m.epoch for m in mailbox.drain(10)] == [2, 3]
