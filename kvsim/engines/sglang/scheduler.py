"""SGLang's scheduler as a pure state machine: ``schedule(now)`` picks the next forward step,
``complete(batch, end_s)`` applies its results. No simpy, no clock: the driver owns time.

Rules modelled (SGLang ``managers/scheduler.py``, ``schedule_policy.py``, ``schedule_batch.py``):

- **Prefill first, no mixed batches.** Each step first tries to form a prefill batch from the waiting
  queue; only when none can be formed do the running requests decode.
- **Prefill adder budgets.** ``rem_total_tokens = free + evictable - reserved``, where the running
  requests reserve ``min(remaining output, 4096) * new_token_ratio`` tokens each and every admitted
  request adds its extend length plus ``min(max_new_tokens, 4096)``. A request whose extend plus output
  estimate reaches the remaining total stops admission (NO_TOKEN); one whose extend reaches the remaining
  ``max_prefill_tokens`` stops it unless it is the first (OTHER).
- **Chunked prefill.** A prompt longer than the remaining chunk budget is cut to it; the unfinished
  request (the ``chunked_req``) is inserted into the radix cache after each chunk and continues first in
  the next prefill batch. ``max_running_requests`` caps running plus admitted requests.
- **Prefix matching.** Each admission matches the prompt (all but its last token) against the radix
  cache and locks the matched path; the matched tokens are not computed again.
- **Decode and retraction.** A decode step needs one KV slot per running request. When free plus
  evictable slots fall short, requests are retracted (fewest output tokens first, ties to the longest
  prompt) until the rest fit, their KV is released and they return to the end of the waiting queue; the
  ``new_token_ratio`` is then re-estimated from decoded versus requested tokens. Otherwise the ratio
  decays each decode step towards its minimum, and resets when the server goes idle.

- **HiCache** (``--enable-hierarchical-cache``, :mod:`kvsim.engines.sglang.hicache`). The pool tracks a
  host tier; a match also returns the host-only part below the device prefix. The adder checks
  ``max_prefill_tokens`` against the extend length without that part, then (holding the prefix lock)
  loads it back and re-checks with the new extend length. Completed backups are noticed at each prefill
  attempt, and each step carries its host<->device traffic
  (:class:`~kvsim.engines.sglang.hicache.L2Transfers`).
- **L3 storage** (``--hicache-storage-backend``, :mod:`kvsim.engines.sglang.storage`). A request starts a
  prefetch from storage when it arrives; at each prefill attempt a waiting request whose prefetch the
  policy does not yet let stop is skipped (the requests behind it may still be admitted), and one whose
  prefetch stops finds the pages it brought as a host hit. Acknowledged write-through copies are also
  written to storage.

- **PD disaggregation** (SGLang's ``--disaggregation-mode``, :meth:`SGLangScheduler.configure_pd`, run by
  :mod:`kvsim.cluster.pd_fleet`). A *prefill* server schedules as above with every request's
  ``max_new_tokens`` set to 1; a request that finishes its prefill does not decode: it enters the
  inflight queue with its KV locked until :meth:`SGLangScheduler.release_transferred` (its transfer to
  the decode server is done), and occupies a request slot until then. Each finished chunk or prompt is
  reported in ``kv_ready`` for the fleet to send. A *decode* server has no radix cache and never runs a
  prefill: a request waits in the prealloc queue until its KV fits
  (:meth:`SGLangScheduler._preallocate`, SGLang's ``pop_preallocated``: free slots minus
  ``num_reserved_decode_tokens`` for every active request), then in the transfer set; once
  :meth:`SGLangScheduler.kv_arrived` says its KV landed, the next pass takes it into the running batch
  with the first token (no forward step) and it decodes. Decode-side retraction parks the victim's KV
  (SGLang offloads it to host memory) and resumes it, uncomputed, once it fits again.

Decode steps cost O(1) Python work plus the requests that finish: per-request decode positions are
derived from the step counter (``past = ctx0 + step - start``), never updated one by one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from kvsim.cache.radix import RadixNode
from kvsim.core.errors import ConfigError, UserInputError
from kvsim.engines.sglang.config import (
    CLIP_MAX_NEW_TOKENS,
    INIT_NEW_TOKEN_RATIO,
    MIN_NEW_TOKEN_RATIO_FACTOR,
    NEW_TOKEN_RATIO_DECAY_STEPS,
    RETRACT_DECODE_STEPS,
    ResolvedServer,
)
from kvsim.engines.sglang.hicache import HiCacheKVPool, L2Transfers, TransferModel
from kvsim.engines.sglang.kv_pool import KVPool
from kvsim.engines.sglang.policy import order_waiting
from kvsim.engines.sglang.storage import L3Controller, L3KVPool, TokenKeys
from kvsim.workloads.base import Request

#: What a server does: everything (the default), only prefill, or only decode (PD disaggregation).
SERVER_ROLES = ("mixed", "prefill", "decode")
#: SGLang's default ``--num-reserved-decode-tokens``: KV slots a decode server keeps per active request.
NUM_RESERVED_DECODE_TOKENS = 512


class SimulationError(UserInputError):
    """The simulated server cannot run this workload with these settings (e.g. a request that can never
    fit in the KV pool)."""


class AddResult(Enum):
    """Outcome of offering one request to the prefill adder (SGLang's ``AddReqResult``)."""

    CONTINUE = 0
    NO_TOKEN = 1
    OTHER = 2


class ReqState:
    """A request inside the server."""

    __slots__ = (
        "cached_host",
        "cached_storage",
        "cached_tokens",
        "ctx0",
        "decode_start",
        "decode_start_output",
        "extend_len",
        "fill_len",
        "finish_step",
        "first_token_s",
        "host_len",
        "host_node",
        "input_len",
        "locked_len",
        "node",
        "output_done",
        "output_len",
        "prefetch_s",
        "prefetched_ranges",
        "prefetched_tokens",
        "prefix_len",
        "req",
        "send_s",
        "token_segments",
        "tokens",
    )

    def __init__(self, req: Request, send_s: float) -> None:
        self.req = req
        self.send_s = send_s
        self.tokens = req.token_ids
        self.input_len = req.input_len
        self.output_len = req.output_len
        self.fill_len = 0  # tokens (prompt, then earlier outputs) whose KV exists
        self.locked_len = 0  # leading prompt tokens held through the locked radix node
        self.node: RadixNode | None = None
        self.prefix_len = 0  # cached tokens matched this round
        self.extend_len = 0  # tokens computed this round
        self.output_done = 0
        self.cached_tokens = -1  # prefix matched at the first admission (-1: not admitted yet)
        self.host_len = 0  # HiCache: host-only tokens matched below the device prefix this round
        self.host_node: RadixNode | None = None
        self.cached_host = 0  # HiCache: the part of cached_tokens loaded back from host
        self.cached_storage = 0  # L3: the part of cached_host this request's prefetch brought in
        self.prefetched_tokens = 0  # L3: tokens this request's prefetch brought into host memory
        self.prefetched_ranges: list[tuple[int, int]] = []  # L3: prompt ranges its prefetch put on host
        self.prefetch_s = -1.0  # L3: how long the prefetch moved data (-1: it made none)
        self.first_token_s = -1.0
        # Output-token times: floats for tokens made by prefill steps, (start, stop) decode-step ranges.
        self.token_segments: list[float | tuple[int, int]] = []
        self.ctx0 = 0
        self.decode_start = 0
        self.decode_start_output = 0
        self.finish_step = -1

    @property
    def full_len(self) -> int:
        """Tokens a prefill must cover: the prompt plus outputs made before a retraction."""
        return self.input_len + self.output_done

    @property
    def own_tokens_in_prefill(self) -> int:
        """Private KV slots while not decoding: everything computed beyond the locked prefix."""
        return self.fill_len - self.locked_len


@dataclass(slots=True)
class ScheduledBatch:
    """One forward step chosen by the scheduler."""

    kind: str  # "prefill", "decode" or "mixed" (prefill plus one decode token per running request)
    reqs: list[ReqState] = field(default_factory=list)  # prefill requests (decode: empty)
    extend: list[int] = field(default_factory=list)  # per prefill request
    past: list[int] = field(default_factory=list)
    step: int = -1  # decode step index (decode and mixed batches)
    num_decode: int = 0  # running requests decoding in this step
    num_requests: int = 0
    num_tokens: int = 0
    sum_context: int = 0  # sum(past + extend)
    attention_pairs: int = 0
    l2: L2Transfers | None = None  # HiCache traffic of the step (None without HiCache)

    def batch_list(self, running: RunningSet) -> list[list[int]]:
        """``[[extend_len, past_len], ...]``: prefill requests first, then decoding ones in slot order."""
        pairs = [[e, p] for e, p in zip(self.extend, self.past, strict=True)]
        if self.num_decode:
            pairs.extend([1, p] for p in running.pasts(self.step).tolist())
        return pairs

    def batch_json(self, running: RunningSet) -> str:
        """The same as compact JSON, rendered without the generic encoder (this runs every step)."""
        parts = [f"[{e},{p}]" for e, p in zip(self.extend, self.past, strict=True)]
        if self.num_decode:
            parts.append("[1," + "],[1,".join(map(str, running.pasts(self.step).tolist())) + "]")
        return "[" + ",".join(parts) + "]"


class RunningSet:
    """The decoding requests, with per-request decode positions in slot arrays for vectorised reads.

    Each request gets a slot; ``ctx0 - start`` is stored per slot so that every request's past length at
    decode step ``k`` is ``(ctx0 - start) + k``. Aggregates needed by the scheduler every step are kept
    as running sums, so a decode step costs no per-request Python work.
    """

    def __init__(self) -> None:
        self.reqs: dict[int, ReqState] = {}  # request_id -> state, in join order
        self.sum_ctx0_minus_start = 0
        self.sum_remaining_base = 0  # sum(output_len - decode_start_output + decode_start)
        self.long_outputs = 0  # requests whose remaining output can exceed the clip
        self._offset = np.zeros(64, dtype=np.int64)  # ctx0 - decode_start per slot
        self._active = np.zeros(64, dtype=bool)
        self._slot_of: dict[int, int] = {}
        self._free_slots: list[int] = list(range(63, -1, -1))
        self._active_idx: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.reqs)

    def add(self, state: ReqState) -> None:
        """Start decoding ``state`` (its fields ``ctx0``/``decode_start*`` already set)."""
        rid = state.req.request_id
        self.reqs[rid] = state
        self.sum_ctx0_minus_start += state.ctx0 - state.decode_start
        self.sum_remaining_base += state.output_len - state.decode_start_output + state.decode_start
        if state.output_len - state.decode_start_output > CLIP_MAX_NEW_TOKENS:
            self.long_outputs += 1
        if not self._free_slots:
            size = len(self._offset)
            self._offset = np.concatenate([self._offset, np.zeros(size, dtype=np.int64)])
            self._active = np.concatenate([self._active, np.zeros(size, dtype=bool)])
            self._free_slots = list(range(2 * size - 1, size - 1, -1))
        slot = self._free_slots.pop()
        self._slot_of[rid] = slot
        self._offset[slot] = state.ctx0 - state.decode_start
        self._active[slot] = True
        self._active_idx = None

    def remove(self, state: ReqState) -> None:
        """Stop decoding ``state``."""
        rid = state.req.request_id
        del self.reqs[rid]
        self.sum_ctx0_minus_start -= state.ctx0 - state.decode_start
        self.sum_remaining_base -= state.output_len - state.decode_start_output + state.decode_start
        if state.output_len - state.decode_start_output > CLIP_MAX_NEW_TOKENS:
            self.long_outputs -= 1
        slot = self._slot_of.pop(rid)
        self._active[slot] = False
        self._free_slots.append(slot)
        self._active_idx = None

    def sum_past(self, step: int) -> int:
        """Sum over running requests of the KV length each decodes on at ``step``."""
        return self.sum_ctx0_minus_start + len(self.reqs) * step

    def reserved_output(self, step: int) -> int:
        """Sum of ``min(remaining output, clip)`` over running requests before ``step`` runs."""
        if self.long_outputs == 0:
            return self.sum_remaining_base - len(self.reqs) * step
        return sum(
            min(s.output_len - (s.decode_start_output + step - s.decode_start), CLIP_MAX_NEW_TOKENS)
            for s in self.reqs.values()
        )

    def pasts(self, step: int) -> np.ndarray:
        """Per-request past length at ``step``, in slot order."""
        if self._active_idx is None:
            self._active_idx = np.flatnonzero(self._active)
        return self._offset[self._active_idx] + step


class SGLangScheduler:
    """The scheduling state of one simulated SGLang server (TP group)."""

    def __init__(
        self,
        server: ResolvedServer,
        rng: np.random.Generator | None = None,
        transfer: TransferModel | None = None,
        l3: L3Controller | None = None,
    ) -> None:
        """``transfer`` prices HiCache's copies; it is required when ``server.hicache`` is set. ``l3``
        runs the storage tier; it is required when the HiCache settings name a storage backend."""
        args = server.args
        self.policy = args.schedule_policy if not args.disable_radix_cache else "fcfs"
        if args.disable_radix_cache and args.schedule_policy in ("random", "lof"):
            self.policy = args.schedule_policy  # cache-agnostic policies survive a disabled cache
        self.enable_mixed_chunk = args.enable_mixed_chunk
        self.rng = rng if rng is not None else np.random.Generator(np.random.PCG64(0))
        self.server = server
        #: the HiCache pool (also ``self.pool``), or None without HiCache
        self.hicache: HiCacheKVPool | None = None
        #: the storage tier's controller, or None without one
        self.l3: L3Controller | None = None
        if server.hicache is None:
            self.pool = KVPool(server.max_total_tokens, args.page_size, not args.disable_radix_cache)
        else:
            if transfer is None:
                raise ValueError("transfer: a TransferModel is needed to simulate HiCache")
            if server.hicache.storage is None:
                self.hicache = HiCacheKVPool(
                    server.max_total_tokens, args.page_size, server.hicache, transfer
                )
            else:
                if l3 is None:
                    raise ValueError("l3: an L3Controller is needed to simulate a storage backend")
                self.l3 = l3
                self.hicache = L3KVPool(server.max_total_tokens, args.page_size, server.hicache, transfer, l3)
            self.pool = self.hicache
        self.page_size = args.page_size
        self.max_running_requests = server.max_running_requests
        self.max_prefill_tokens = args.max_prefill_tokens
        self.chunked_prefill_size = server.chunked_prefill_size
        self.init_new_token_ratio = min(INIT_NEW_TOKEN_RATIO * args.schedule_conservativeness, 1.0)
        self.min_new_token_ratio = min(self.init_new_token_ratio * MIN_NEW_TOKEN_RATIO_FACTOR, 1.0)
        self.new_token_ratio_decay = (
            self.init_new_token_ratio - self.min_new_token_ratio
        ) / NEW_TOKEN_RATIO_DECAY_STEPS
        self.new_token_ratio = self.init_new_token_ratio
        self.waiting: deque[ReqState] = deque()
        self.running = RunningSet()
        self.chunked: ReqState | None = None
        self.batch_is_full = False
        self.decode_steps = 0  # decode steps completed; the index of the next one
        self.decode_end_times: list[float] = []
        self.finish_at: dict[int, list[ReqState]] = {}
        self.num_retractions = 0
        #: ``mixed``, or a PD server's ``prefill``/``decode`` (set by :meth:`configure_pd`)
        self.role = "mixed"
        # PD prefill server: requests whose KV is still being sent (locked, holding a request slot), and
        # (request, last) for each chunk or prompt whose KV became ready in the last completed step.
        self.inflight: dict[int, ReqState] = {}
        self.kv_ready: list[tuple[ReqState, bool]] = []
        # PD decode server: the prealloc queue, requests whose KV is reserved and on its way, those
        # whose KV landed (taken in at the next pass), retracted ones waiting to fit again, and requests
        # that finished as they were taken in (a one-token output), for the driver to record.
        self.num_reserved_decode_tokens = NUM_RESERVED_DECODE_TOKENS
        self.prealloc: deque[ReqState] = deque()
        self.transferring: dict[int, ReqState] = {}
        self.landed: deque[ReqState] = deque()
        self.retracted: deque[ReqState] = deque()
        self.finished_early: list[ReqState] = []
        #: called with each request the decode server reserved KV for, and the time
        self.on_preallocated: Callable[[ReqState, float], None] | None = None
        # Request slots of a decode server (SGLang's DecodeReqToTokenPool: max_running_requests, plus
        # twice that for preallocated requests when it is at most 32).
        self.decode_slots = 0

    def configure_pd(self, role: str, num_reserved_decode_tokens: int = NUM_RESERVED_DECODE_TOKENS) -> None:
        """Make this a PD ``prefill`` or ``decode`` server (before any request arrives).

        A decode server keeps no prefix cache (SGLang forces the chunk cache on it), so its pool is
        replaced by one without a tree.

        Raises:
            ConfigError: an unknown role, a negative reservation, or HiCache on a decode server.
        """
        if role not in SERVER_ROLES:
            raise ConfigError(f"server role {role!r} is not one of {', '.join(SERVER_ROLES)}")
        if num_reserved_decode_tokens < 0:
            raise ConfigError(f"num_reserved_decode_tokens: must be >= 0, got {num_reserved_decode_tokens}")
        assert self.has_work() is False and self.pool.tree.total_size() == 0, "configure before running"
        self.role = role
        self.num_reserved_decode_tokens = num_reserved_decode_tokens
        if role == "decode":
            if self.hicache is not None:
                raise ConfigError("cluster.pd: decode instances keep no prefix cache; no HiCache there")
            self.pool = KVPool(self.server.max_total_tokens, self.page_size, enable_prefix_cache=False)
            limit = self.max_running_requests
            self.decode_slots = limit + (2 * limit if limit <= 32 else 0)

    # ---- queue ------------------------------------------------------------------------------------------
    def add_request(self, req: Request, send_s: float) -> ReqState:
        """Queue a newly received request; a prompt that can never fit the KV pool is refused.

        A PD prefill server makes one token of it, a PD decode server puts it in the prealloc queue.
        """
        # A prefill server runs every request with max_new_tokens = 1 (SGLang's bootstrap queue sets it).
        output_len = 1 if self.role == "prefill" else req.output_len
        need = req.input_len + output_len
        if self.role == "decode":
            need = max(need, req.input_len + self.num_reserved_decode_tokens)
        if need > self.pool.total_tokens:
            raise SimulationError(
                f"request {req.request_id} needs {need} KV tokens, more than the "
                f"whole pool of {self.pool.total_tokens}; raise --mem-fraction-static or shorten the workload"
            )
        state = ReqState(req, send_s)
        if self.role == "decode":
            self.prealloc.append(state)
            return state
        state.output_len = output_len
        if self.l3 is not None:
            self.l3.on_arrival(state, send_s)
        self.waiting.append(state)
        self.batch_is_full = False
        return state

    @property
    def num_waiting(self) -> int:
        """Requests queued (not counting the chunked request in progress); on a PD decode server, those
        waiting for KV room, for their KV, or to be taken in."""
        if self.role == "decode":
            return len(self.prealloc) + len(self.transferring) + len(self.landed) + len(self.retracted)
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        """Requests decoding."""
        return len(self.running)

    def has_work(self) -> bool:
        """Whether any request is queued, mid-prefill, decoding, or (PD) held for its KV transfer."""
        return (
            bool(self.waiting)
            or self.chunked is not None
            or len(self.running) > 0
            or bool(self.inflight or self.prealloc or self.transferring or self.landed or self.retracted)
        )

    # ---- scheduling -----------------------------------------------------------------------------------
    def schedule(self, now: float) -> ScheduledBatch | None:
        """Choose the next forward step, or None when there is nothing to run."""
        if self.role == "decode":
            return self._schedule_decode_server(now)
        batch = self._new_prefill_batch(now)
        if batch is None and len(self.running):
            batch = self._decode_batch()
        if batch is None:
            self.new_token_ratio = self.init_new_token_ratio
        elif self.hicache is not None:
            batch.l2 = self.hicache.take_transfers()
        return batch

    def _new_prefill_batch(self, now: float) -> ScheduledBatch | None:
        if (self.batch_is_full or not self.waiting) and self.chunked is None:
            return None
        running_bs = len(self.running)
        # A PD prefill server's inflight requests still hold their request slots.
        occupied = running_bs + len(self.inflight)
        if occupied >= self.max_running_requests:
            self.batch_is_full = True
            return None
        pool = self.pool
        if self.hicache is not None:
            self.hicache.check_events(now)
        if len(self.waiting) > 1 and self.policy != "fcfs":
            self.waiting = deque(order_waiting(self.policy, list(self.waiting), pool, self.rng, now))
        reserved = self.running.reserved_output(self.decode_steps) * self.new_token_ratio
        # rem_total_tokens is recomputed from live sizes, as SGLang's property is: locking a prefix
        # shrinks the evictable part.
        offset = reserved
        # With mixed chunks the running requests' decode tokens share the step's token budgets.
        mixed_tokens = running_bs if self.enable_mixed_chunk else 0
        rem_input = self.max_prefill_tokens - mixed_tokens
        rem_chunk = None if self.chunked_prefill_size is None else self.chunked_prefill_size - mixed_tokens
        admitted: list[ReqState] = []
        new_chunked: ReqState | None = None

        def rem_total() -> float:
            return pool.available_tokens - offset

        if self.chunked is not None:
            state = self.chunked
            self._match(state, now)
            extend = state.full_len - state.fill_len
            truncated = rem_chunk is not None and extend > rem_chunk
            if rem_chunk is not None:
                extend = min(extend, rem_chunk)
            state.extend_len = extend
            admitted.append(state)
            offset += extend + (
                0 if truncated else min(state.output_len - state.output_done, CLIP_MAX_NEW_TOKENS)
            )
            rem_input -= extend
            if rem_chunk is not None:
                rem_chunk -= extend
            new_chunked = state if truncated else None

        taken = 0
        skipped = False
        l3 = self.l3
        for state in self.waiting:
            if occupied + len(admitted) >= self.max_running_requests:
                self.batch_is_full = True
                break
            if l3 is not None and not l3.prefetch_done(state, now):
                skipped = True  # its prefetch may not stop yet: try the requests behind it
                continue
            self._match(state, now)
            extend = state.full_len - state.prefix_len
            output_estimate = min(state.output_len - state.output_done, CLIP_MAX_NEW_TOKENS)
            # A HiCache host hit is not computed: it does not count against max_prefill_tokens.
            input_tokens = -(-(extend - state.host_len) // self.page_size) * self.page_size
            if extend + output_estimate >= rem_total():
                self.batch_is_full = self._full_after_no_token(admitted, running_bs)
                break
            if input_tokens >= rem_input and admitted:
                break
            pool.lock(state.node)
            if extend + output_estimate > rem_total():
                pool.unlock(state.node)
                self.batch_is_full = self._full_after_no_token(admitted, running_bs)
                break
            if state.host_len:
                self._load_back(state)
                extend = state.full_len - state.prefix_len
                input_tokens = -(-extend // self.page_size) * self.page_size
                if input_tokens >= rem_input and admitted:
                    pool.unlock(state.node)
                    break
            if rem_chunk is None or input_tokens <= rem_chunk:
                state.extend_len = extend
                offset += input_tokens + output_estimate
                rem_input -= input_tokens
                if rem_chunk is not None:
                    rem_chunk -= input_tokens
            else:
                trunc = rem_chunk - rem_chunk % self.page_size
                if trunc <= 0:
                    pool.unlock(state.node)
                    break
                state.extend_len = trunc
                new_chunked = state
                offset += trunc
                rem_input -= trunc
                rem_chunk -= trunc
            self._admit(state)
            admitted.append(state)
            taken += 1
            if rem_total() <= 0:
                self.batch_is_full = True
                break
            if rem_input <= 0 or (rem_chunk is not None and rem_chunk <= 0):
                break

        if not admitted:
            return None
        if skipped:
            chosen = {id(state) for state in admitted}
            self.waiting = deque(state for state in self.waiting if id(state) not in chosen)
        else:
            for _ in range(taken):
                self.waiting.popleft()
        self.chunked = new_chunked
        batch = self._build_prefill(admitted)
        if mixed_tokens and self.pool.allocate(mixed_tokens):
            self._add_decode_part(batch)
        return batch

    def _full_after_no_token(self, admitted: list[ReqState], running_bs: int) -> bool:
        """Whether a request refused for lack of KV marks the batch full.

        SGLang marks it unconditionally, except with HiCache: then only when something can be served (a
        request admitted in this batch, or running ones), since cache locked by in-flight copies frees
        itself without any request finishing.
        """
        return self.hicache is None or bool(admitted) or running_bs > 0

    def next_wakeup_s(self, now: float) -> float | None:
        """When, after ``now``, a batch could form with no new request and none finishing, or None.

        Only HiCache has such events: a backup completing unlocks the cache it held.
        """
        if self.hicache is None or not (self.waiting or self.chunked is not None):
            return None
        return self.hicache.next_write_done_s(now)

    def _match(self, state: ReqState, now: float) -> None:
        """SGLang's ``init_next_round_input``: match the prompt (never its last token) in the cache."""
        if state.fill_len > 0:
            # A chunked request continues from what it already computed and locked.
            state.prefix_len = state.fill_len
            return
        max_len = min(state.input_len, state.full_len - 1)
        if self.hicache is None:
            length, node = self.pool.match(state.tokens, max_len, now)
        else:
            length, node, state.host_len, state.host_node = self.hicache.match_tiers(
                state.tokens, max_len, now
            )
        state.prefix_len = length
        state.node = node

    def _load_back(self, state: ReqState) -> None:
        """HiCache's ``init_load_back``: bring the host hit to device; the lock moves to its last node."""
        assert self.hicache is not None and state.host_node is not None
        host_node, state.host_node = state.host_node, None
        loaded = self.hicache.load_back(host_node, state.host_len)
        state.host_len = 0
        if not loaded:
            return  # too short, or no device room: the host part is recomputed
        self.pool.lock(host_node)
        self.pool.unlock(state.node)
        state.node = host_node
        if state.cached_tokens < 0:
            state.cached_host = loaded
            # The part of the load that this request's own prefetch brought from storage.
            lo, hi = state.prefix_len, state.prefix_len + loaded
            state.cached_storage = sum(
                max(min(hi, end) - max(lo, start), 0) for start, end in state.prefetched_ranges
            )
        state.prefix_len += loaded

    def _admit(self, state: ReqState) -> None:
        """A waiting request enters a prefill batch: its matched prefix is locked and counts as filled."""
        state.locked_len = state.prefix_len
        state.fill_len = state.prefix_len
        if state.cached_tokens < 0:
            state.cached_tokens = state.prefix_len

    def _build_prefill(self, admitted: list[ReqState]) -> ScheduledBatch:
        batch = ScheduledBatch(kind="prefill", reqs=admitted)
        tokens = context = pairs = 0
        for state in admitted:
            extend, past = state.extend_len, state.fill_len
            if not self.pool.allocate(extend):
                raise SimulationError(
                    f"KV pool of {self.pool.total_tokens} tokens ran out admitting request "
                    f"{state.req.request_id}; this is a scheduler accounting error"
                )
            batch.extend.append(extend)
            batch.past.append(past)
            tokens += extend
            context += past + extend
            pairs += extend * past + extend * (extend + 1) // 2
        batch.num_requests = len(admitted)
        batch.num_tokens = tokens
        batch.sum_context = context
        batch.attention_pairs = pairs
        return batch

    def _decode_batch(self) -> ScheduledBatch:
        step = self.decode_steps
        bs = len(self.running)
        if self.pool.available_tokens < bs:
            self._retract(step)
            bs = len(self.running)
        else:
            self.new_token_ratio = max(
                self.new_token_ratio - self.new_token_ratio_decay, self.min_new_token_ratio
            )
        allocated = self.pool.allocate(bs)
        assert allocated, "retraction left too little KV for one decode step"
        batch = ScheduledBatch(kind="decode")
        self._add_decode_part(batch)
        return batch

    def _add_decode_part(self, batch: ScheduledBatch) -> None:
        """Add one decode token per running request (KV already allocated) to ``batch``."""
        step = self.decode_steps
        bs = len(self.running)
        sum_past = self.running.sum_past(step)
        batch.step = step
        batch.num_decode = bs
        batch.num_requests += bs
        batch.num_tokens += bs
        batch.sum_context += sum_past + bs
        batch.attention_pairs += sum_past + bs
        if batch.kind == "prefill":
            batch.kind = "mixed"

    def _retract(self, step: int) -> None:
        """Retract decoding requests until the rest can take one more token each (SGLang's order)."""
        states = list(self.running.reqs.values())
        # Sort descending by (outputs so far, -prompt length); victims are popped from the end.
        order = sorted(
            states,
            key=lambda s: (s.decode_start_output + step - s.decode_start, -s.input_len),
            reverse=True,
        )
        retracted: list[ReqState] = []
        while True:
            remaining = len(order)
            if retracted and self.pool.available_tokens >= remaining:
                break
            if remaining == 1:
                if self.pool.available_tokens >= 1:
                    break
                raise SimulationError(
                    f"KV pool of {self.pool.total_tokens} tokens cannot hold one decoding request; "
                    "raise --mem-fraction-static or --max-total-tokens"
                )
            victim = order.pop()
            self._release_decoding(victim, step)
            retracted.append(victim)
        self.num_retractions += len(retracted)
        for victim in retracted:
            if self.role == "decode":
                # A decode server cannot recompute: the victim's KV waits in host memory to come back.
                victim.node = None
                self.retracted.append(victim)
                continue
            victim.fill_len = 0
            victim.locked_len = 0
            victim.node = None
            self.waiting.append(victim)
        remaining_states = list(self.running.reqs.values())
        decoded = sum(s.decode_start_output + step - s.decode_start for s in remaining_states)
        requested = sum(s.output_len for s in remaining_states)
        if requested > 0:
            self.new_token_ratio = min(
                1.0, (decoded + RETRACT_DECODE_STEPS * len(remaining_states)) / requested
            )
        self.batch_is_full = False

    def _release_decoding(self, state: ReqState, step: int) -> None:
        """Stop decoding ``state`` after ``step`` decode steps: free its private KV, unlock its prefix."""
        steps_done = step - state.decode_start
        if steps_done > 0:
            state.token_segments.append((state.decode_start, step))
        state.output_done = state.decode_start_output + steps_done
        self.running.remove(state)
        if state.finish_step >= 0:
            self.finish_at[state.finish_step].remove(state)
            state.finish_step = -1
        own = state.fill_len - state.locked_len + steps_done
        self.pool.release(own)
        self.pool.unlock(state.node)
        state.fill_len += steps_done

    # ---- PD disaggregation ------------------------------------------------------------------------------
    def take_kv_ready(self) -> list[tuple[ReqState, bool]]:
        """A prefill server's ``(request, last)`` pairs whose KV (a chunk, or the whole prompt when
        ``last``) became ready since the last call, in batch order."""
        ready, self.kv_ready = self.kv_ready, []
        return ready

    def release_transferred(self, state: ReqState, now: float) -> None:
        """A prefill server's request has sent all its KV: unlock it (it stays in the tree as cache) and
        free its request slot (SGLang's ``process_disagg_prefill_inflight_queue``)."""
        del self.inflight[state.req.request_id]
        self._finish_idle(state, now)

    def kv_arrived(self, state: ReqState) -> None:
        """A decode server's request has all its KV: the next pass takes it into the running batch."""
        del self.transferring[state.req.request_id]
        self.landed.append(state)

    def take_finished_early(self) -> list[ReqState]:
        """Requests a decode server finished while taking them in (their only token came with the KV)."""
        finished, self.finished_early = self.finished_early, []
        return finished

    def _schedule_decode_server(self, now: float) -> ScheduledBatch | None:
        """One pass of a PD decode server: resume retracted requests, preallocate from the prealloc
        queue, take landed requests in, then a decode step of the running batch (SGLang's
        ``process_decode_queue`` then ``get_next_disagg_decode_batch_to_run``)."""
        if self.retracted:
            self._resume_retracted()
        if self.prealloc:
            self._preallocate(now)
        if self.landed:
            self._take_in(now)
        if not len(self.running):
            self.new_token_ratio = self.init_new_token_ratio
            return None
        return self._decode_batch()

    def _active_decode_requests(self) -> int:
        """Requests holding a decode server's request slot: running, awaiting their KV, or landed."""
        return len(self.running) + len(self.transferring) + len(self.landed)

    def _resume_retracted(self) -> None:
        """Bring retracted requests back, oldest first, while their KV plus the reservation fits
        (SGLang's ``resume_retracted_reqs``; the copy back from host memory is not timed)."""
        reserved = self.num_reserved_decode_tokens
        budget = self.pool.available_tokens - reserved * self._active_decode_requests()
        while self.retracted and self._active_decode_requests() < self.decode_slots:
            state = self.retracted[0]
            required = state.fill_len + reserved
            # Alone on the server a request comes back once its KV fits, reservation or not: nothing
            # else would ever free the room it waits for.
            alone = self._active_decode_requests() == 0 and state.fill_len <= self.pool.available_tokens
            if required > budget and not alone:
                break
            self.retracted.popleft()
            allocated = self.pool.allocate(state.fill_len)
            assert allocated, "resume budget exceeded the pool"
            budget -= required
            self.landed.append(state)

    def _preallocate(self, now: float) -> None:
        """Reserve KV for the head of the prealloc queue while it fits (FIFO: the head blocks).

        SGLang's ``pop_preallocated``: the budget is the pool's available slots less the larger of
        ``num_reserved_decode_tokens`` per active request and the room the largest running request could
        still need beyond what retracting every running request frees, less what retracted requests
        need back. The head needs its prompt plus the reservation, and at least its prompt plus its
        clipped output beyond what retraction could free.
        """
        reserved = self.num_reserved_decode_tokens
        running = self.running.reqs.values()
        step = self.decode_steps
        retractable = sum(s.input_len + s.decode_start_output + step - s.decode_start for s in running)
        need_single = (
            max(min(s.output_len, CLIP_MAX_NEW_TOKENS) + s.input_len for s in running) - retractable
            if running
            else 0
        )
        owed = sum(s.fill_len + reserved for s in self.retracted)
        while self.prealloc and self._active_decode_requests() < self.decode_slots:
            state = self.prealloc[0]
            budget = (
                self.pool.available_tokens
                - max(reserved * self._active_decode_requests(), need_single)
                - owed
            )
            output_estimate = min(state.output_len, CLIP_MAX_NEW_TOKENS)
            if max(state.input_len + reserved, state.input_len + output_estimate - retractable) > budget:
                break
            self.prealloc.popleft()
            allocated = self.pool.allocate(state.input_len)
            assert allocated, "prealloc budget exceeded the pool"
            state.fill_len = state.input_len
            self.transferring[state.req.request_id] = state
            if self.on_preallocated is not None:
                self.on_preallocated(state, now)

    def _take_in(self, now: float) -> None:
        """Landed requests join the running batch, up to ``max_running_requests``; a new one streams its
        first token (made by the prefill server) now, with no forward step."""
        room = self.max_running_requests - len(self.running)
        while self.landed and room > 0:
            state = self.landed.popleft()
            room -= 1
            if state.first_token_s < 0:
                state.output_done = 1
                state.token_segments.append(now)
                state.first_token_s = now
                if state.output_done >= state.output_len:
                    self.pool.release(state.fill_len)
                    self.finished_early.append(state)
                    continue
            self._start_decoding(state)

    # ---- results ----------------------------------------------------------------------------------------
    def complete(self, batch: ScheduledBatch, end_s: float) -> list[ReqState]:
        """Apply a finished step at ``end_s``; returns the requests that finished in it."""
        # Decode first: requests that finish their prefill in a mixed step join the running set only
        # after this step's decode tokens are accounted for.
        finished = self._complete_decode(batch, end_s) if batch.num_decode else []
        if batch.reqs:
            finished.extend(self._complete_prefill(batch, end_s))
        return finished

    def _complete_prefill(self, batch: ScheduledBatch, end_s: float) -> list[ReqState]:
        finished: list[ReqState] = []
        pool = self.pool
        for state in batch.reqs:
            state.fill_len += state.extend_len
            # Cache the computed prompt (SGLang's cache_unfinished_req); outputs are not inserted.
            prompt_done = min(state.fill_len, state.input_len)
            node, locked = pool.insert(
                state.tokens[:prompt_done],
                end_s,
                state.locked_len,
                state is self.chunked,
                value=None if self.l3 is None else self._token_keys(state, prompt_done),
            )
            if node is not None:
                pool.lock(node)
                pool.unlock(state.node)
                state.node = node
                state.locked_len = locked
            if state is self.chunked:
                if self.role == "prefill":
                    self.kv_ready.append((state, False))  # SGLang sends each finished chunk's KV
                continue
            # The prompt is complete: this step sampled the next token.
            state.output_done += 1
            state.token_segments.append(end_s)
            if state.first_token_s < 0:
                state.first_token_s = end_s
            if self.role == "prefill":
                # Its KV stays locked until the decode server has it (the inflight queue).
                self.inflight[state.req.request_id] = state
                self.kv_ready.append((state, True))
                continue
            if state.output_done >= state.output_len:
                self._finish_idle(state, end_s)
                finished.append(state)
                continue
            self._start_decoding(state)
        return finished

    def _start_decoding(self, state: ReqState) -> None:
        """``state`` (its KV filled up to ``fill_len``) joins the running batch at the next decode step."""
        state.ctx0 = state.fill_len
        state.decode_start = self.decode_steps
        state.decode_start_output = state.output_done
        state.finish_step = self.decode_steps + state.output_len - state.output_done - 1
        self.finish_at.setdefault(state.finish_step, []).append(state)
        self.running.add(state)

    def _token_keys(self, state: ReqState, length: int) -> TokenKeys:
        """The page keys the radix nodes of ``state``'s first ``length`` tokens carry (L3 only)."""
        assert self.l3 is not None
        return self.l3.token_keys(state, length)

    def _finish_idle(self, state: ReqState, end_s: float) -> None:
        """Finish a request that is not decoding (its only output came from prefill)."""
        self.pool.release(state.own_tokens_in_prefill)
        if self.hicache is not None:
            self.hicache.on_finish(state.node, end_s)
        self.pool.unlock(state.node)
        state.node = None
        self.batch_is_full = False

    def _complete_decode(self, batch: ScheduledBatch, end_s: float) -> list[ReqState]:
        step = batch.step
        self.decode_end_times.append(end_s)
        self.decode_steps = step + 1
        finished = self.finish_at.pop(step, [])
        for state in finished:
            steps_done = step + 1 - state.decode_start
            state.token_segments.append((state.decode_start, step + 1))
            state.output_done = state.decode_start_output + steps_done
            self.running.remove(state)
            self.pool.release(state.fill_len - state.locked_len + steps_done)
            if self.hicache is not None:
                self.hicache.on_finish(state.node, end_s)
            self.pool.unlock(state.node)
            state.node = None
            state.finish_step = -1
        if finished:
            self.batch_is_full = False
        return finished

    def token_times(self, state: ReqState) -> np.ndarray:
        """Times at which ``state``'s output tokens reached the client, in order."""
        ends = self.decode_end_times
        parts: list[np.ndarray] = []
        for segment in state.token_segments:
            if isinstance(segment, tuple):
                parts.append(np.asarray(ends[segment[0] : segment[1]], dtype=np.float64))
            else:
                parts.append(np.array([segment], dtype=np.float64))
        return np.concatenate(parts) if parts else np.zeros(0)
