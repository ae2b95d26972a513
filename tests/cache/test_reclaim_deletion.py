"""The deletion queue and executor: due times, merging, retries of failed storage deletes (reported in
metrics, never dropped), removed storages, and a store failure between the storage delete and the index
update (no block released twice)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import pytest

from kvsim.cache import (
    BlockMask,
    CacheManager,
    NfsStorageSpec,
    RemoveCacheRequest,
    SimulatedBackend,
    StorageConfig,
)
from kvsim.cache.backends import BackendError
from kvsim.cache.deletion import DeletionQueue, Pending, retry_delay
from kvsim.cache.store import KeyRecord, MemoryStore, StoreError
from kvsim.core import ManualClock

from .conftest import T0, finish, make_manager, register, start, write
from .test_reclaim import pressured


def test_queue_orders_by_due_time_and_merges_keys() -> None:
    q = DeletionQueue()
    q.submit("a", {1: ["x"], 2: ["y"]}, due=5.0)
    q.submit("b", {1: ["z"]}, due=3.0)
    q.submit("a", {1: ["w"]}, due=4.0)  # merged into key 1's entry, which moves earlier
    assert len(q) == 4 and q.next_due() == 3.0
    assert q.pop_due(2.9) == {}
    assert {i: {k: e.location_ids for k, e in t.items()} for i, t in q.pop_due(4.0).items()} == {
        "b": {1: {"z"}},
        "a": {1: {"x", "w"}},
    }
    assert len(q) == 1 and q.next_due() == 5.0
    assert q.drop_instance("a") == 1
    assert len(q) == 0 and q.next_due() is None


def test_requeue_keeps_released_uris_and_attempts() -> None:
    q = DeletionQueue()
    q.submit("a", {1: ["x"]}, due=1.0, reclaimed=True)
    entry = q.pop_due(1.0)["a"][1]
    entry.released["x"] = {"u1"}
    entry.attempts = 2
    entry.due = 9.0
    q.submit("a", {1: ["y"]}, due=20.0)  # submitted meanwhile
    q.requeue("a", 1, entry)
    merged = q.of_instance("a")[1]
    assert (merged.location_ids, merged.due, merged.attempts, merged.released, merged.reclaimed) == (
        {"x", "y"},
        9.0,
        2,
        {"x": {"u1"}},
        {"x"},
    )
    assert len(q) == 2
    q.requeue("a", 2, Pending(set(), 1.0))  # nothing to do
    assert len(q) == 2


def test_retry_backoff() -> None:
    assert [retry_delay(n) for n in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert retry_delay(3, base=0.5, cap=1.5) == 1.5


class FlakyBackend(SimulatedBackend):
    """A simulated backend whose deletes of URIs in ``refuse`` fail (the others succeed)."""

    def __init__(self, config: StorageConfig) -> None:
        super().__init__(config)
        self.refuse: set[str] = set()
        self.deleted: list[str] = []

    def delete(self, uris: Sequence[str]) -> None:
        bad = [u for u in uris if u in self.refuse]
        good = [u for u in uris if u not in self.refuse]
        super().delete(good)
        self.deleted.extend(good)
        if bad:
            raise BackendError(f"storage {self.name!r}: disk on fire", bad)


def flaky_manager(clock: ManualClock, store: MemoryStore | None = None) -> tuple[CacheManager, FlakyBackend]:
    """A manager on flaky simulated backends (retry back-off 2 s) with instance ``i1`` (two specs)."""
    backends: list[FlakyBackend] = []

    def factory(config: StorageConfig) -> FlakyBackend:
        backends.append(FlakyBackend(config))
        return backends[-1]

    mgr = make_manager(clock, backend_factory=factory, store=store, deletion_retry_s=2.0)
    register(mgr, specs=[("tp0", 16), ("tp1", 16)])
    return mgr, backends[-1]


def test_a_failed_storage_delete_is_retried_with_backoff_and_reported(clock: ManualClock) -> None:
    mgr, backend = flaky_manager(clock)
    res = write(mgr, [1, 2])
    tp1_of_1 = res.locations[0].location_specs[1].uri
    backend.refuse.add(tp1_of_1)
    mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1, 2]))
    poll = mgr.poll()
    assert (poll.deleted_locations, poll.deleted_keys, poll.failed_deletions) == (1, 1, 1)
    assert mgr.num_pending_deletions() == 1 and mgr.next_deadline() == T0 + 2.0
    assert mgr.deletion_errors == {"nfs_01": "storage 'nfs_01': disk on fire"}
    m = mgr.metrics()
    assert m.value("data_storage.delete_error_counter", type="file", unique_name="nfs_01") == 1
    assert m.value("schedule_plan_executor.delete_retry_count") == 1
    # Key 1 stays DELETING (never handed out) until its storage is really released.
    assert mgr.store.meta_get("i1", [1])[0].locations[0].status.name == "CLS_DELETING"  # type: ignore[union-attr]
    clock.advance(1.9)
    assert mgr.poll().deleted_locations == 0  # backing off
    clock.advance(0.1)
    assert mgr.poll().failed_deletions == 1  # still failing: the next wait doubles
    assert mgr.next_deadline() == T0 + 2.0 + 4.0
    backend.refuse.clear()
    clock.advance(4.0)
    assert mgr.poll().deleted_keys == 1
    # tp0 of key 1 was released at the first attempt and never again.
    assert backend.deleted.count(res.locations[0].location_specs[0].uri) == 1
    assert backend.deleted.count(tp1_of_1) == 1
    assert backend.used_bytes == 0 and mgr.num_pending_deletions() == 0


def test_a_store_failure_after_the_storage_delete_does_not_release_twice(clock: ManualClock) -> None:
    class FailingStore(MemoryStore):
        fail = False

        def meta_write(
            self, instance_id: str, upserts: Mapping[int, KeyRecord], deletes: Collection[int] = ()
        ) -> None:
            if self.fail:
                raise StoreError("connection lost")
            super().meta_write(instance_id, upserts, deletes)

    store = FailingStore()
    mgr, backend = flaky_manager(clock, store)
    write(mgr, [1])
    mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))
    store.fail = True
    assert mgr.poll().deleted_locations == 0
    assert len(backend.deleted) == 2 and backend.used_bytes == 0  # storage released, index unchanged
    store.fail = False
    clock.advance(2.0)
    assert mgr.poll().deleted_keys == 1
    assert len(backend.deleted) == 2  # not released again


def test_blocks_of_a_removed_storage_are_dropped_and_counted(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    mgr.add_storage(StorageConfig("other", NfsStorageSpec("/o/", 1)))
    register(mgr)
    write(mgr, [1])
    mgr.remove_storage("nfs_01")
    mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))
    assert mgr.poll().deleted_keys == 1
    assert mgr.metrics().value("data_storage.delete_orphan_counter", type="", unique_name="nfs_01") == 1


def test_a_storage_whose_backend_failed_to_open_is_retried(clock: ManualClock) -> None:
    store = MemoryStore()
    first = make_manager(clock, store=store)
    register(first)
    write(first, [1])
    first.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))

    def broken(config: StorageConfig) -> SimulatedBackend:
        raise BackendError("mount is gone")

    second = make_manager(clock, store=store, backend_factory=broken, defaults=False, deletion_retry_s=1.0)
    assert second.backend_open_errors == {"nfs_01": "mount is gone"}
    assert second.poll().failed_deletions == 1
    assert second.deletion_errors == {"nfs_01": "storage 'nfs_01': mount is gone"}
    assert second.num_pending_deletions() == 1


def test_failed_write_blocks_are_deleted_at_the_next_poll(clock: ManualClock) -> None:
    """Failed and expired writes have no delay, as the reference (only the reclaimer waits)."""
    mgr = make_manager(clock)
    register(mgr)
    res = start(mgr, [1, 2])
    finish(mgr, res.write_session_id, BlockMask(bool_masks=(True, False)))
    assert mgr.next_deadline() == T0
    assert mgr.poll().deleted_keys == 1


@pytest.mark.parametrize("delay_ms", [0, 250])
def test_every_deleting_location_is_gone_after_its_delay(clock: ManualClock, delay_ms: int) -> None:
    mgr = pressured(clock, capacity_keys=4, threshold=0.5, delay_ms=delay_ms)
    register(mgr)
    write(mgr, [1, 2, 3])
    assert mgr.poll().reclaimed_locations == 2
    clock.advance(delay_ms / 1000)
    mgr.poll()
    assert mgr.num_pending_deletions() == 0
    records = [r for r in mgr.store.meta_get("i1", [1, 2, 3]) if r is not None]
    assert [loc.status.name for r in records for loc in r.locations] == ["CLS_SERVING"]
