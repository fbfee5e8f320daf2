from __future__ import annotations

from bridge.ids import UlidFactory, ulid_timestamp_ms


def test_ids_sort_in_minting_order_within_one_millisecond() -> None:
    factory = UlidFactory()
    ids = [factory.new(at_ms=1_700_000_000_000) for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000
    assert all(len(i) == 26 for i in ids)


def test_clock_going_backwards_keeps_order() -> None:
    factory = UlidFactory()
    first = factory.new(at_ms=2_000)
    second = factory.new(at_ms=1_000)
    assert second > first


def test_timestamp_round_trip() -> None:
    assert ulid_timestamp_ms(UlidFactory().new(at_ms=1_234_567)) == 1_234_567
