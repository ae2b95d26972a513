"""The L3 storage tier on hand-built sequences: a KVCM round trip, quota-driven reclaim, prefetch policies.

The setup is test_hicache's toy server (4 layers, 4000 KV bytes per token, copies priced at 1 ms per run
plus 1 ns per byte) with 4-token pages, behind KVCM on a toy storage tier: 1 GB/s each way, 1 ms latency
per operation, and 1 ms per KVCM call. A page is 16,000 bytes, so a batch of 128 pages takes
1 ms + 2.048 ms and the 22 pages left of a 600-token prompt 1 ms + 0.352 ms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kvsim.cache import GetCacheMetaRequest, block_keys
from kvsim.cache.events import MemorySink
from kvsim.core.rng import spawn_rng
from kvsim.engines.sglang.config import HiCacheSettings, ResolvedServer, ServerArgs, StorageSettings
from kvsim.engines.sglang.hicache import TransferModel
from kvsim.engines.sglang.kvcm_store import KvcmStore, parse_kvcm_section
from kvsim.engines.sglang.page_keys import PageKeyCache
from kvsim.engines.sglang.scheduler import ScheduledBatch, SGLangScheduler
from kvsim.engines.sglang.storage import L3Controller, PlainStore
from kvsim.hardware.storage import load_storage_tier
from kvsim.workloads.base import Request

LAYERS = 4
KV_BYTES_PER_TOKEN = 4000
PAGE = 4
PAGE_BYTES = PAGE * KV_BYTES_PER_TOKEN  # 16,000
TOY_TIER = {
    "name": "toy",
    "read_bandwidth": "1 GB/s",
    "write_bandwidth": "1 GB/s",
    "read_latency": "1 ms",
    "write_latency": "1 ms",
    "capacity": "unlimited",
}
RPC_S = 1e-3
PROMPT_A = np.arange(10_000, 10_600)  # 600 tokens = 150 pages
PROMPT_B = np.arange(50_000, 50_700)  # 700 tokens
PROMPT_D = np.arange(70_000, 70_700)  # 700 tokens
PROMPT_C = np.concatenate([PROMPT_A, np.arange(90_000, 90_050)])  # A's 600 tokens + 50 new


def toy_copy(direction: str, nbytes: float, chunks: int) -> float:
    """1 ms per contiguous run plus 1 ns per byte, in both directions."""
    return chunks * 1e-3 + nbytes * 1e-9


def batch_s(pages: int) -> float:
    """One storage batch of ``pages`` pages on the toy tier, alone on its channel."""
    return 1e-3 + pages * PAGE_BYTES / 1e9


def req(rid: int, tokens: np.ndarray, output_len: int = 1, arrival: float = 0.0) -> Request:
    return Request(rid, arrival, len(tokens), output_len, np.asarray(tokens, dtype=np.int64))


def kvcm_section(**overrides: Any) -> Any:
    data: dict[str, Any] = {
        "storages": [{"name": "nfs_01", "type": "nfs", "tier": TOY_TIER}],
        "quota": "1 TB",
        "type_quotas": {},
        "rpc_latency": "1 ms",
    }
    data.update(overrides)
    return parse_kvcm_section(data)


def l3_scheduler(
    requests: list[Request],
    policy: str = "best_effort",
    *,
    pool: int = 1000,
    host: int = 1500,
    timeout_base_s: float = 1.0,
    timeout_per_page_s: float = 0.0,
    section: Any = None,
    plain: bool = False,
) -> tuple[SGLangScheduler, L3Controller, MemorySink]:
    """A write-through HiCache server with an L3 tier behind KVCM (or a plain ``file`` store)."""
    args = ServerArgs(page_size=PAGE, enable_hierarchical_cache=True)
    storage = StorageSettings(
        backend="file" if plain else "kvcm",
        prefetch_policy=policy,
        prefetch_threshold=256,
        prefetch_timeout_base_s=timeout_base_s,
        prefetch_timeout_per_page_s=timeout_per_page_s,
        prefetch_capacity_tokens=int(0.8 * (host - pool)),
        tier=None,
        extra_config={},
    )
    settings = HiCacheSettings(host, "write_through", "kernel", "layer_first", storage)
    server = ResolvedServer(args, pool, 64, None, 0.88, 40960, hicache=settings)
    transfer = TransferModel(LAYERS, KV_BYTES_PER_TOKEN, toy_copy, "layer_first", PAGE)
    sink = MemorySink()
    if plain:
        store: Any = PlainStore("file", load_storage_tier(TOY_TIER), PAGE_BYTES)
    else:
        store = KvcmStore(
            section or kvcm_section(), PAGE, PAGE_BYTES, 1, ("toy", "bfloat16"), spawn_rng(0, "kvcm"), sink
        )
    keys = PageKeyCache({r.request_id: r.token_ids for r in requests}, PAGE)
    l3 = L3Controller(storage, store, keys, PAGE_BYTES)
    return SGLangScheduler(server, transfer=transfer, l3=l3), l3, sink


def step(sched: SGLangScheduler, now: float, end: float) -> ScheduledBatch:
    batch = sched.schedule(now)
    assert batch is not None
    sched.complete(batch, end)
    return batch


def tiers(sched: SGLangScheduler, tokens: np.ndarray) -> tuple[str, ...]:
    tree = sched.pool.tree
    result = tree.match_prefix(tokens, None)
    if result.length != len(tokens):
        return ()
    return tree.tiers_of(result.last_node)


def kvcm_statuses(store: KvcmStore, tokens: np.ndarray) -> list[str]:
    """KVCM's status of every page key of ``tokens`` (CLS_SERVING, CLS_NOT_FOUND, ...)."""
    meta = store.manager.get_cache_meta(
        GetCacheMetaRequest(instance_id=store.instance_id, block_keys=block_keys(tokens, PAGE))
    )
    return [m.split('"status":"')[1].split('"')[0] for m in meta.metas]


def events_of(store: Any, sink: MemorySink, kind: str) -> list[dict[str, Any]]:
    """KVCM's events of ``kind`` so far (the log buffers records until a flush)."""
    store.events.flush()
    return [r for r in sink.records if r["type"] == kind]


def test_round_trip_write_through_evict_prefetch_back_hit() -> None:
    requests = [req(0, PROMPT_A), req(1, PROMPT_B), req(2, PROMPT_D), req(3, PROMPT_C)]
    sched, l3, sink = l3_scheduler(requests, "wait_complete")
    store = l3.store
    assert isinstance(store, KvcmStore)
    hicache = sched.hicache
    assert hicache is not None

    # A: KVCM has nothing; the 600-token prefetch is asked for and revoked when the empty answer comes.
    sched.add_request(requests[0], 0.0)
    assert sched.schedule(0.0) is None  # wait_complete: the answer (after 1 ms) is not in yet
    assert sched.next_wakeup_s(0.0) == pytest.approx(RPC_S)
    first = step(sched, RPC_S, 1.0)
    assert first.extend == [600]
    assert l3.prefetches_revoked == 1

    # A is written through to host (done at 1 s + 1 ms + 2.4 ms); when that is acknowledged (at the
    # prefill attempt after B arrives), its 150 pages go to KVCM: StartWriteCache at 1.01 s, two batches,
    # FinishWriteCache. B itself waits for KVCM's answer about its own prompt.
    sched.add_request(requests[1], 1.01)
    assert sched.schedule(1.01) is None
    step(sched, 1.01 + RPC_S, 2.0)
    l3.advance(2.0)  # storage time passes at the scheduler's passes; move it on by hand here
    (start,) = events_of(store, sink, "StartWriteCache")
    (finish,) = events_of(store, sink, "FinishWriteCache")
    assert (start["trigger_time_us"], start["block_mask"], len(start["keys"])) == (1_010_000, 0, 150)
    finish_s = 1.01 + RPC_S + batch_s(128) + batch_s(22)
    assert finish["trigger_time_us"] == round(finish_s * 1e6)
    assert finish["success_block"] == 150
    assert kvcm_statuses(store, PROMPT_A) == ["CLS_SERVING"] * 150
    assert (l3.written_pages, l3.backed_up_tokens) == (150, 600)

    # D evicts B from device; backing D up to host (host 1500, holding A and B: SGLang evicts D's 700
    # tokens' worth of host-only leaves, LRU first) drops A and B from host: A now lives only in KVCM.
    sched.add_request(requests[2], 3.0)
    step(sched, 3.0 + RPC_S, 4.0)
    assert tiers(sched, PROMPT_A) == ()
    assert hicache.tree.match_prefix(PROMPT_A, None).length == 0

    # C shares A's 600 tokens: its 648-token prefetch (whole pages of 650) finds A's 150 pages in KVCM.
    state = sched.add_request(requests[3], 5.0)
    op = l3.prefetches[3]
    assert (op.start, op.length, op.hit_tokens) == (0, 648, 600)
    # wait_complete: C is not offered to the adder before every hit page is in host memory. The driver
    # wakes at each storage event: KVCM's answer, batch 1 joining the tier after its 1 ms latency, batch
    # 1 landing (512 tokens done), batch 2 joining, batch 2 landing; each try before the last fails.
    tries: list[tuple[float, int]] = []
    now = 5.0
    while (batch := sched.schedule(now)) is None:
        tries.append((now, op.completed_tokens))
        now = sched.next_wakeup_s(now)
        assert now is not None
    query_s = 5.0 + RPC_S
    batch1_s = query_s + batch_s(128)
    done_s = batch1_s + batch_s(22)
    assert [tokens for _, tokens in tries] == [0, 0, 0, 512, 512]
    assert [t for t, _ in tries] == pytest.approx([5.0, query_s, query_s + 1e-3, batch1_s, batch1_s + 1e-3])
    assert now == pytest.approx(done_s)
    sched.complete(batch, 6.0)
    # The 600 prefetched tokens became a host node, loaded back to device: C computes its last 50.
    assert (batch.extend, batch.past) == ([50], [600])
    assert batch.l2 is not None and batch.l2.load_tokens == 600
    assert (state.cached_tokens, state.cached_host, state.cached_storage) == (600, 600, 600)
    assert state.prefetched_tokens == 600
    assert state.prefetch_s == pytest.approx(done_s - 5.0)
    assert tiers(sched, PROMPT_A) == ("device", "host")
    gets = events_of(store, sink, "GetCacheLocation")
    assert [len(g["keys"]) for g in gets] == [150, 175, 175, 162]
    assert hicache.reserved_host_tokens == 0 and l3.occupied_tokens == 0
    hicache.tree.check_invariants()


PROMPT_E = np.arange(80_000, 80_700)  # 700 tokens


def test_a_small_quota_makes_kvcm_reclaim_refuse_and_later_miss() -> None:
    """Group quota 200 pages, water level 80 %, reclaimed pages deleted after 1 s, a reclaim round at
    every scheduler pass (interval 0): KVCM takes A's older pages first, refuses writes while the
    reclaimed pages still count, and a later request sharing A's prompt finds nothing."""
    requests = [req(0, PROMPT_A), req(1, PROMPT_B), req(2, PROMPT_D), req(3, PROMPT_E), req(4, PROMPT_C)]
    section = kvcm_section(
        quota=200 * PAGE_BYTES, water_level=0.8, delay_before_delete_ms=1000, reclaimer_interval="0 s"
    )
    sched, l3, sink = l3_scheduler(requests, "wait_complete", section=section)
    store = l3.store
    assert isinstance(store, KvcmStore)
    sched.add_request(requests[0], 0.0)
    step(sched, RPC_S, 1.0)
    sched.add_request(requests[1], 1.01)  # A's 150 pages are written (150 < 200: KVCM takes them)
    assert sched.schedule(1.01) is None
    step(sched, 1.01 + RPC_S, 2.0)
    sched.add_request(requests[2], 3.0)  # B's 175 pages: the group held 150 < 200 when it asked
    assert sched.schedule(3.0) is None
    # KVCM counts pages being written: at the next pass the group holds 325 pages, over the 160-page
    # water level, and a reclaim round takes at most 100 victims per instance, least recently used
    # first (A's pages were written before B's). They are deleted 1 s later.
    step(sched, 3.0 + RPC_S, 4.0)
    assert store.reclaimed_locations == 100
    assert kvcm_statuses(store, PROMPT_A).count("CLS_DELETING") == 100
    # By 4.5 s B's write has finished, and another round took the rest of A and 16 of B's pages: 159
    # pages will be left, under the level.
    l3.advance(4.5)
    assert (l3.written_pages, l3.refused_pages) == (325, 0)
    assert store.reclaimed_locations == 166
    statuses_b = kvcm_statuses(store, PROMPT_B)
    assert (statuses_b.count("CLS_SERVING"), statuses_b.count("CLS_DELETING")) == (159, 16)
    # D's write (its copy to host is acknowledged at the pass at 5 s) is refused: the group still holds
    # 225 pages, over its 200-page quota (the second round's pages are deleted only at 5.5 s).
    sched.add_request(requests[3], 5.0)
    assert sched.schedule(5.0) is None
    step(sched, 5.0 + RPC_S, 6.0)
    assert l3.refused_pages == 175
    assert store.refusals == {"INTERNAL_ERROR": 175}
    # Two seconds later A's pages are gone: C, sharing A's prompt, gets no hit and computes it all.
    state = sched.add_request(requests[4], 7.0)
    assert kvcm_statuses(store, PROMPT_A) == ["CLS_NOT_FOUND"] * 150
    assert sched.schedule(7.0) is None  # wait_complete waits for KVCM's (empty) answer
    batch = step(sched, 7.0 + RPC_S, 8.0)
    assert (batch.extend, state.cached_tokens, state.prefetched_tokens) == ([650], 0, 0)
    assert l3.prefetches_revoked == 5
    # E's write at 7 s was taken (159 pages < 200) and put the group over its level again.
    reclaims = events_of(store, sink, "CacheReclaimSubmit")
    assert [(r["trigger_time_us"], len(r["block_keys"])) for r in reclaims] == [
        (3_001_000, 100),
        (4_500_000, 66),
        (7_001_000, 100),
    ]
    assert {r["delay_us"] for r in reclaims} == {1_000_000}


def run_until_admitted(sched: SGLangScheduler, now: float) -> tuple[float, ScheduledBatch]:
    """What the driver does: try a prefill; when none forms, wake at the next storage event."""
    while (batch := sched.schedule(now)) is None:
        wake = sched.next_wakeup_s(now)
        assert wake is not None
        now = wake
    return now, batch


def seeded_kvcm(requests: list[Request], policy: str, **kwargs: Any) -> tuple[SGLangScheduler, L3Controller]:
    """A server whose KVCM already holds A's 150 pages (written at time 0)."""
    sched, l3, _ = l3_scheduler(requests, policy, **kwargs)
    ticket = l3.store.start_write(np.asarray(block_keys(PROMPT_A, PAGE), dtype=np.int64), 0.0)
    assert l3.store.finish_write(ticket, 0.0) == 150
    return sched, l3


QUERY_S = 1.0 + RPC_S
BATCH1_S = QUERY_S + batch_s(128)
DONE_S = BATCH1_S + batch_s(22)


@pytest.mark.parametrize(
    ("policy", "first_check_s", "admitted_s", "extend", "from_storage"),
    [
        # best_effort stops the prefetch at the first prefill attempt, whatever has arrived by then.
        ("best_effort", 1.0, 1.0, 650, 0),
        ("best_effort", BATCH1_S + 1e-4, BATCH1_S + 1e-4, 138, 512),
        # wait_complete waits for every hit page.
        ("wait_complete", 1.0, DONE_S, 50, 600),
        # timeout waits at most 2 ms + 150 pages x 15 us after the arrival (1 s + 4.25 ms): batch 1 is in.
        ("timeout", 1.0, 1.0 + 0.002 + 150 * 15e-6, 138, 512),
    ],
)
def test_prefetch_policy_decides_when_a_request_starts(
    policy: str, first_check_s: float, admitted_s: float, extend: int, from_storage: int
) -> None:
    requests = [req(0, PROMPT_C, arrival=1.0)]
    sched, l3 = seeded_kvcm(requests, policy, timeout_base_s=0.002, timeout_per_page_s=15e-6)
    state = sched.add_request(requests[0], 1.0)
    start_s, batch = run_until_admitted(sched, first_check_s)
    assert start_s == pytest.approx(admitted_s)
    assert batch.extend == [extend]
    assert (state.cached_tokens, state.cached_storage, state.prefetched_tokens) == (
        from_storage,
        from_storage,
        from_storage,
    )
    assert state.prefetch_s == pytest.approx(admitted_s - 1.0)
    assert l3.occupied_tokens == 0 and sched.hicache is not None and sched.hicache.reserved_host_tokens == 0


def test_a_waiting_prefetch_lets_the_requests_behind_it_in() -> None:
    """SGLang skips a request whose prefetch may not stop yet and admits the ones behind it."""
    other = np.arange(200_000, 200_100)  # 100 tokens: below the 256-token threshold, no prefetch
    requests = [req(0, PROMPT_C, arrival=1.0), req(1, other, arrival=1.0)]
    sched, _ = seeded_kvcm(requests, "wait_complete")
    sched.add_request(requests[0], 1.0)
    sched.add_request(requests[1], 1.0)
    batch = step(sched, 1.0, 1.5)
    assert [s.req.request_id for s in batch.reqs] == [1]
    assert [s.req.request_id for s in sched.waiting] == [0]


def test_concurrent_reads_share_the_tier() -> None:
    """Two requests prefetching A's 600 tokens at once: each batch moves at half the bandwidth."""
    prompt_f = np.concatenate([PROMPT_A, np.arange(95_000, 95_050)])
    requests = [req(0, PROMPT_C, arrival=1.0), req(1, prompt_f, arrival=1.0)]
    sched, l3 = seeded_kvcm(requests, "wait_complete", host=3000)
    sched.add_request(requests[0], 1.0)
    sched.add_request(requests[1], 1.0)
    start_s, batch = run_until_admitted(sched, 1.0)
    shared_1 = 1e-3 + 2 * 128 * PAGE_BYTES / 1e9
    shared_2 = 1e-3 + 2 * 22 * PAGE_BYTES / 1e9
    assert start_s == pytest.approx(QUERY_S + shared_1 + shared_2)
    assert [s.req.request_id for s in batch.reqs] == [0, 1]
    # The tier was busy exactly as long as moving both prompts' pages at full rate takes.
    assert l3.io.busy_seconds("read") == pytest.approx(2 * (128 + 22) * PAGE_BYTES / 1e9)


def test_plain_file_store_round_trip() -> None:
    """SGLang's file backend without KVCM: the same write-through, eviction and prefetch back."""
    requests = [req(0, PROMPT_A), req(1, PROMPT_B), req(2, PROMPT_D), req(3, PROMPT_C)]
    sched, l3, _ = l3_scheduler(requests, "wait_complete", plain=True)
    store = l3.store
    assert isinstance(store, PlainStore)
    now = 0.0
    for request in requests[:3]:
        sched.add_request(request, now)
        now, batch = run_until_admitted(sched, now)
        sched.complete(batch, now + 1.0)
        now += 2.0
    l3.advance(now)
    assert store.metrics()["l3_stored_blocks"] == 150 + 175  # A and B; D's copy to host is not acked yet
    state = sched.add_request(requests[3], now)
    _, batch = run_until_admitted(sched, now)
    assert batch.extend == [50]
    assert (state.cached_storage, state.prefetched_tokens) == (600, 600)
    assert store.hit_pages == 150


def test_plain_stores_when_full() -> None:
    """``file`` refuses pages once full (it never deletes); ``mooncake`` evicts the least recently used."""
    tier = load_storage_tier({**TOY_TIER, "capacity": f"{3 * PAGE_BYTES} B"})
    keys = np.arange(1, 6, dtype=np.int64)
    for backend, stored, held in (("file", 3, [1, 2, 3]), ("mooncake", 5, [3, 4, 5])):
        store = PlainStore(backend, tier, PAGE_BYTES)
        assert store.finish_write(store.start_write(keys, 0.0), 0.0) == stored
        assert [k for k in range(1, 6) if store.query(np.asarray([k]), 0, 0.0)] == held
    mooncake = PlainStore("mooncake", tier, PAGE_BYTES)
    mooncake.finish_write(mooncake.start_write(keys[:3], 0.0), 0.0)
    assert mooncake.query(keys[:1], 0, 1.0) == [(tier, 1)]  # page 1 is now the most recently used
    mooncake.finish_write(mooncake.start_write(keys[3:4], 0.0), 2.0)
    assert [k for k in range(1, 5) if mooncake.query(np.asarray([k]), 0, 3.0)] == [1, 3, 4]


def test_pages_are_read_from_the_storage_their_location_names() -> None:
    """Two NFS storages on different tiers: KVCM writes to the first candidate (no 3FS to prefer), and a
    read finds the tier from each location's URI (the storage name is its host)."""
    slow = {**TOY_TIER, "name": "slow", "read_bandwidth": "0.5 GB/s"}
    section = kvcm_section(
        storages=[
            {"name": "nfs_a", "type": "nfs", "tier": slow},
            {"name": "nfs_b", "type": "nfs", "tier": TOY_TIER},
        ],
    )
    requests = [req(0, PROMPT_C, arrival=1.0)]
    sched, l3, _ = l3_scheduler(requests, "wait_complete", section=section)
    store = l3.store
    keys = np.asarray(block_keys(PROMPT_A, PAGE), dtype=np.int64)
    ticket = store.start_write(keys, 0.0)
    assert ticket.tier is not None and ticket.tier.name == "slow"
    store.finish_write(ticket, 0.0)
    runs = store.query(keys, 0, 0.5)
    assert [(tier.name, pages) for tier, pages in runs] == [("slow", 150)]
    sched.add_request(requests[0], 1.0)
    start_s, _ = run_until_admitted(sched, 1.0)
    slow_batch = [1e-3 + pages * PAGE_BYTES / 0.5e9 for pages in (128, 22)]
    assert start_s == pytest.approx(QUERY_S + sum(slow_batch))


def test_kvcm_mask_spares_pages_it_already_holds() -> None:
    """A prompt computed again after leaving L1 and L2 is written through again; KVCM answers that it holds
    every page (mask offset 150), so no byte moves and the session is finished empty."""
    requests = [req(0, PROMPT_A), req(1, PROMPT_B), req(2, PROMPT_D), req(3, PROMPT_A)]
    short = req(4, np.arange(300_000, 300_100))  # below the threshold: no prefetch of its own
    sched, l3, sink = l3_scheduler([*requests, short], "best_effort")
    store = l3.store
    now = 0.0
    for request in requests:
        sched.add_request(request, now)
        batch = step(sched, now, now + 1.0)  # best_effort: A's prefetch stops at once, A is recomputed
        assert batch.extend == [request.input_len]
        now += 2.0
    sched.add_request(short, now)  # its prefill attempt acknowledges A's second copy to host
    step(sched, now, now + 1.0)
    l3.advance(now + 1.0)
    starts = events_of(store, sink, "StartWriteCache")
    assert [(len(s["keys"]), s["block_mask"]) for s in starts] == [(150, 0), (175, 0), (175, 0), (150, 150)]
    assert (l3.written_pages, l3.cached_pages) == (500, 150)
    assert l3.io.moved_bytes("write") == pytest.approx(500 * PAGE_BYTES)
