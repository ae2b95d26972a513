"""SGLang's hierarchical KV cache (HiCache): a host-memory (L2) tier behind the device (L1) pool.

kvsim models what SGLang's ``HiRadixCache`` (``mem_cache/hiradix_cache.py``), ``HiCacheController``
(``managers/cache_controller.py``) and ``HostKVCache`` (``mem_cache/memory_pool_host.py``) do, on one
:class:`~kvsim.cache.radix.RadixTree` whose nodes carry the tiers ``device`` and ``host``: a node is on
device only, on host only (SGLang's "evicted" node) or on both ("backuped").

Tier transitions
    - **Backup (L1 -> L2).** ``write_through`` copies a node to host the first time an insert passes it,
      ``write_through_selective`` the second time (SGLang's ``write_through_threshold`` 1 and 2; inserts of
      an unfinished chunk do not count, and SGLang's insert at request finish does). The copy runs on a
      separate stream, off the critical path; the node stays locked until it completes and the scheduler
      notices (``check_hicache_events`` at the next prefill attempt). ``write_back`` copies nothing on
      insert: a device victim without a host copy is copied during the eviction and the scheduler waits
      for it (``writing_check(write_back=True)``), so that copy is on the critical path.
    - **L1 eviction** clears the device tier from unlocked device leaves (LRU). A victim with a host copy
      becomes host-only; one without (write-through policies) is dropped.
    - **L2 eviction** (when a backup finds the host pool full) frees host copies only of host-only leaves,
      LRU first, never of nodes still on device (SGLang's ``evict_host``); it frees the whole size of the
      node being written, as SGLang does.
    - **Match** returns the device prefix and, below it, the host-only part (``host_hit_length``).
    - **Load-back (L2 -> L1)** when the prefill adder admits a request with a host hit of at least 10
      tokens (``load_back_threshold``): device slots are allocated for the whole host part (evicting that
      many device tokens when short) and the nodes are on both tiers again. The copy runs layer by layer
      on a load stream and each layer's attention waits for its layer (``LayerDoneCounter``); the driver
      turns the per-layer time into the step's extra time.
    - **Insert** of tokens a request recomputed over host-only nodes gives those nodes their device tier
      back (SGLang re-attaches the new KV to an evicted node).

Copy costs come from :class:`TransferModel`: bytes per layer (loads, one copy per layer) or for all
layers (backups), in one contiguous run per radix node (``layer_first``) or one run per page
(``page_first`` layouts, where a page's layers are interleaved), priced by :func:`host_copy_function`.
kvsim counts slots and does not place them, so fragmentation of the device pool adds no runs here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kvsim.cache.radix import RadixNode, RadixTree
from kvsim.engines.sglang.config import HiCacheSettings
from kvsim.engines.sglang.kv_pool import KVPool

if TYPE_CHECKING:
    from kvsim.hardware.profile import GpuProfile
    from kvsim.perf.predictor import Deployment

#: Host hits shorter than this are recomputed rather than loaded (``HiRadixCache.load_back_threshold``).
LOAD_BACK_THRESHOLD = 10
#: Insert hits after which a node is copied to host (``HiRadixCache.write_through_threshold``).
WRITE_THROUGH_THRESHOLD = {"write_through": 1, "write_through_selective": 2}
#: HiSim's L2 transfer model (its ``load_to_device_per_layer`` / ``backup_from_device_all_layer`` hooks):
#: ``t0 + bytes / (efficiency x PCIe bandwidth)`` per contiguous run.
HISIM_H2D_LATENCY_S = 6.67e-6
HISIM_D2H_LATENCY_S = 4.0e-6
HISIM_PCIE_EFFICIENCY = 0.85

#: ``copy(direction, nbytes, chunks) -> seconds`` for ``h2d``/``d2h``: ``nbytes`` in ``chunks`` runs.
CopyFunction = Callable[[str, float, int], float]


def hisim_copy_seconds(direction: str, nbytes: float, chunks: int, pcie_bandwidth: float) -> float:
    """HiSim's copy time: per run ``t0`` (6.67 us host-to-device, 4 us device-to-host) plus the bytes at
    85% of the PCIe bandwidth."""
    t0 = HISIM_H2D_LATENCY_S if direction == "h2d" else HISIM_D2H_LATENCY_S
    return chunks * t0 + nbytes / (HISIM_PCIE_EFFICIENCY * pcie_bandwidth)


def host_copy_function(gpu: GpuProfile) -> tuple[CopyFunction, str]:
    """The host<->device copy-time function for ``gpu`` and a label of where its numbers come from.

    A profile with a measured copy table (``copy.csv``) is served through the predictor's copy API
    (:class:`kvsim.perf.copies.HostCopyModel`: contiguous copies and page-by-page gathers interpolated from
    the table); any other profile falls back to HiSim's model with the profile's PCIe bandwidth.
    """
    tables = getattr(gpu, "tables", None) or {}
    if "host_copy" in tables:
        # Imported here so that profiles without copy tables never need the table machinery.
        from kvsim.perf.copies import HostCopyModel

        model = HostCopyModel(gpu)
        return model.seconds, f"{gpu.name} copy table"
    bandwidth = gpu.pcie_bandwidth

    def copy(direction: str, nbytes: float, chunks: int) -> float:
        return hisim_copy_seconds(direction, nbytes, chunks, bandwidth)

    return copy, f"HiSim t0 + bytes / (0.85 x {bandwidth / 1e9:g} GB/s)"


class TransferModel:
    """Times of HiCache's copies for one deployment: load-backs per layer, backups over all layers.

    Args:
        num_layers: transformer layers (a load-back copies one layer at a time).
        kv_bytes_per_token: KV bytes of one token on one GPU, all layers.
        copy: the copy-time function (see :func:`host_copy_function`).
        mem_layout: the host pool layout; ``layer_first`` keeps a node's tokens contiguous per layer, the
            ``page_first`` layouts keep each page's layers together, so a layer's slice of a transfer is
            one run per page.
        page_size: tokens per page.
        source: where the copy times come from (for reports).
    """

    def __init__(
        self,
        num_layers: int,
        kv_bytes_per_token: int,
        copy: CopyFunction,
        mem_layout: str = "layer_first",
        page_size: int = 1,
        source: str = "",
    ) -> None:
        self.num_layers = num_layers
        self.kv_bytes_per_token = kv_bytes_per_token
        self.kv_bytes_per_layer = kv_bytes_per_token / num_layers
        self.copy = copy
        self.per_page = mem_layout != "layer_first"
        self.page_size = page_size
        self.source = source
        self._memo: dict[tuple[str, int, int], float] = {}

    @classmethod
    def for_deployment(
        cls, deployment: Deployment, settings: HiCacheSettings, page_size: int
    ) -> TransferModel:
        """The transfer model of ``deployment``'s model and GPU profile under ``settings``."""
        copy, source = host_copy_function(deployment.gpu)
        return cls(
            deployment.model.num_layers,
            deployment.kv_bytes_per_token,
            copy,
            settings.mem_layout,
            page_size,
            source,
        )

    def runs(self, num_nodes: int, tokens: int) -> int:
        """Contiguous runs of a transfer of ``tokens`` held by ``num_nodes`` radix nodes."""
        if self.per_page:
            return max(num_nodes, -(-tokens // self.page_size))
        return num_nodes

    def _seconds(self, direction: str, nbytes: float, tokens: int, runs: int) -> float:
        key = (direction, tokens, runs)
        seconds = self._memo.get(key)
        if seconds is None:
            seconds = self._memo[key] = float(self.copy(direction, nbytes, runs))
        return seconds

    def load_layer_s(self, tokens: int, runs: int) -> float:
        """Host-to-device time of one layer of a load-back of ``tokens`` in ``runs`` runs."""
        return self._seconds("h2d", tokens * self.kv_bytes_per_layer, tokens, runs)

    def backup_s(self, tokens: int, runs: int) -> float:
        """Device-to-host time of backing up ``tokens`` (all layers) in ``runs`` runs."""
        return self._seconds("d2h", tokens * self.kv_bytes_per_token, tokens, runs)


@dataclass(frozen=True, slots=True)
class L2Transfers:
    """The host<->device traffic one step carries.

    Attributes:
        load_tokens: tokens loaded back from host for the requests admitted in this step.
        load_layer_s: host-to-device time of one layer of that load (the step's layers wait on it).
        load_s: the whole load, every layer.
        backup_tokens: tokens copied to host since the previous step.
        backup_s: device-to-host time of those copies.
        blocking_s: the part of ``backup_s`` the scheduler waited for (write-back evictions).
    """

    load_tokens: int = 0
    load_layer_s: float = 0.0
    load_s: float = 0.0
    backup_tokens: int = 0
    backup_s: float = 0.0
    blocking_s: float = 0.0


NO_TRANSFERS = L2Transfers()


class HiCacheKVPool(KVPool):
    """The device pool of a server with HiCache: the radix tree tracks device and host copies per node.

    Device usage is the ``device`` tier plus the requests' private KV, host usage the ``host`` tier. The
    scheduler calls :meth:`check_events` at each prefill attempt, :meth:`match_tiers` and
    :meth:`load_back` when admitting, :meth:`insert` after each prefill step, :meth:`on_finish` when a
    request finishes, and :meth:`take_transfers` once per scheduled step.
    """

    def __init__(
        self, total_tokens: int, page_size: int, settings: HiCacheSettings, transfer: TransferModel
    ) -> None:
        super().__init__(total_tokens, page_size, enable_prefix_cache=True)
        self.tree = RadixTree(tiers=("device", "host"), policy="lru")
        self._device = self.tree.tier_mask("device")
        self._host = self.tree.tier_mask("host")
        self.settings = settings
        self.transfer = transfer
        self.host_tokens = settings.host_tokens
        self.write_back = settings.write_policy == "write_back"
        self.write_threshold = WRITE_THROUGH_THRESHOLD.get(settings.write_policy, 0)
        # Write-through copies in flight: (completion time, node), in issue order on one write stream.
        self._writes: deque[tuple[float, RadixNode]] = deque()
        self._write_stream_free_s = 0.0
        # Traffic since the last take_transfers().
        self._load_tokens = 0
        self._load_runs = 0
        self._backup_tokens = 0
        self._backup_s = 0.0
        self._blocking_s = 0.0
        # Run totals.
        self.loaded_tokens = 0
        self.backed_up_tokens = 0
        self.host_evicted_tokens = 0

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def free_tokens(self) -> int:
        """Device slots nobody holds."""
        return self.total_tokens - self.tree.tier_size("device") - self.private_tokens

    @property
    def evictable_tokens(self) -> int:
        """Device slots held by the cache but by no running request or copy in flight."""
        return self.tree.tier_size("device", evictable_only=True)

    @property
    def available_tokens(self) -> int:
        """Device slots an allocation could get, evicting cache if needed."""
        return self.free_tokens + self.tree.tier_size("device", evictable_only=True)

    @property
    def host_free_tokens(self) -> int:
        """Host slots holding no copy."""
        return self.host_tokens - self.tree.tier_size("host")

    # ---- device allocation and eviction ------------------------------------------------------------------
    def allocate(self, num_tokens: int) -> bool:
        """Take ``num_tokens`` private device slots, evicting unlocked device copies (LRU) when short."""
        shortfall = num_tokens - self.free_tokens
        if shortfall > 0:
            if shortfall > self.evictable_tokens:
                return False
            self._evict_device(shortfall)
        self.private_tokens += num_tokens
        return True

    def _evict_device(self, num_tokens: int) -> None:
        on_victim = self._write_back_victim if self.write_back else None
        self.evicted_tokens += self.tree.evict(num_tokens, tier="device", on_victim=on_victim).num_blocks

    def _write_back_victim(self, node: RadixNode) -> None:
        """Write-back: copy a device victim to host before its device copy goes (the scheduler waits)."""
        if node.tiers & self._host:
            return
        size = len(node.key)
        if not self._reserve_host(size):
            return  # no host room even after evicting host copies: the victim is dropped
        self.tree.add_tier(node, "host")
        seconds = self.transfer.backup_s(size, self.transfer.runs(1, size))
        self._backup_tokens += size
        self._backup_s += seconds
        self._blocking_s += seconds
        self.backed_up_tokens += size

    def _reserve_host(self, size: int) -> bool:
        """Make room for ``size`` host slots; False when even evicting host copies cannot."""
        if self.host_free_tokens < size:
            # SGLang's evict_host(len(node.value)): the whole size, host-only leaves only.
            freed = self.tree.evict(size, tier="host", exclude_tiers=("device",)).num_blocks
            self.host_evicted_tokens += freed
        return self.host_free_tokens >= size

    # ---- backups -----------------------------------------------------------------------------------------
    def _write_backup(self, node: RadixNode, now: float) -> None:
        """Start a write-through copy of ``node`` to host; it stays locked until the copy completes."""
        size = len(node.key)
        if not self._reserve_host(size):
            return
        self.tree.add_tier(node, "host")
        self.tree.inc_lock(node)
        seconds = self.transfer.backup_s(size, self.transfer.runs(1, size))
        done = max(now, self._write_stream_free_s) + seconds
        self._write_stream_free_s = done
        self._writes.append((done, node))
        self._backup_tokens += size
        self._backup_s += seconds
        self.backed_up_tokens += size

    def _count_hits(self, node: RadixNode, now: float) -> None:
        """One insert pass over the path to ``node``: count a hit per node, back up those at the threshold."""
        if self.write_back:
            return
        tree = self.tree
        tree.touch(node, now, hit=True)
        due: list[RadixNode] = []
        root, host, threshold = tree.root, self._host, self.write_threshold
        while node is not root:
            if not node.tiers & host and node.hit_count >= threshold:
                due.append(node)
            node = node.parent  # type: ignore[assignment]
        for path_node in reversed(due):  # root first, as SGLang's insert walks
            self._write_backup(path_node, now)

    def next_write_done_s(self, now: float) -> float | None:
        """Completion time of the first write-through copy still in flight after ``now``, or None."""
        for done, _ in self._writes:
            if done > now:
                return done
        return None

    def check_events(self, now: float) -> None:
        """Unlock nodes whose write-through copy has completed by ``now`` (SGLang's ``writing_check``)."""
        writes = self._writes
        while writes and writes[0][0] <= now:
            self.tree.dec_lock(writes.popleft()[1])

    # ---- prefix cache ------------------------------------------------------------------------------------
    def match(self, tokens: np.ndarray, max_len: int, now: float) -> tuple[int, RadixNode | None]:
        """Longest device-resident prefix of ``tokens[:max_len]`` in whole pages (what policies see)."""
        length, node, _, _ = self.match_tiers(tokens, max_len, now)
        return length, node

    def match_tiers(
        self, tokens: np.ndarray, max_len: int, now: float
    ) -> tuple[int, RadixNode | None, int, RadixNode | None]:
        """SGLang's ``HiRadixCache.match_prefix`` on ``tokens[:max_len]`` in whole pages.

        Returns the device prefix length and its last node, then the length of the host-only part that
        follows it and that part's last node (0 and None when there is none).
        """
        if max_len <= 0:
            return 0, None, 0, None
        page = self.page_size
        max_len -= max_len % page
        tree = self.tree
        result = tree.match_prefix(tokens[:max_len], None)
        if result.length == 0:
            return 0, None, 0, None
        # Every matched node counts as accessed; hits are left for the insert passes (write-through).
        tree.touch(result.last_node, now, hit=False)
        device, host = self._device, self._host
        below: list[RadixNode] = []
        node = result.last_node
        root = tree.root
        while node is not root and not node.tiers & device:
            below.append(node)
            node = node.parent  # type: ignore[assignment]
        device_node = node
        host_node = node
        for candidate in reversed(below):
            if not candidate.tiers & host:
                break  # a node dropped from both tiers: nothing below it is usable
            host_node = candidate
        device_len = device_node.depth
        host_end = host_node.depth
        if page > 1:
            # Node boundaries need not fall on pages (splits follow token divergence): cut at pages.
            if device_len % page:
                device_len -= device_len % page
                device_node = tree.match_prefix(tokens[:device_len], None).last_node
            if host_end % page:
                host_end -= host_end % page
                host_node = tree.match_prefix(tokens[:host_end], None).last_node
            if host_end <= device_len:
                host_end, host_node = device_len, device_node
        host_len = host_end - device_len
        return (
            device_len,
            device_node if device_len > 0 else None,
            host_len,
            host_node if host_len > 0 else None,
        )

    def load_back(self, host_node: RadixNode, host_len: int) -> int:
        """Bring the host-only chain ending at ``host_node`` (``host_len`` tokens) back to device.

        Returns the tokens loaded, 0 when the hit is below the threshold or the device pool cannot make
        room (the tokens are then recomputed). The caller holds a lock on the device prefix above it.
        """
        if host_len < LOAD_BACK_THRESHOLD:
            return 0
        tree = self.tree
        if self.free_tokens < host_len:
            # Keep the chain's host copies out of any host eviction the device eviction may cause.
            tree.inc_lock(host_node)
            self._evict_device(host_len)  # SGLang evicts the whole load's size when the allocation fails
            tree.dec_lock(host_node)
            if self.free_tokens < host_len:
                return 0
        nodes = 0
        node = host_node
        while node is not tree.root and not node.tiers & self._device:
            tree.add_tier(node, "device")
            nodes += 1
            node = node.parent  # type: ignore[assignment]
        self._load_tokens += host_len
        self._load_runs += self.transfer.runs(nodes, host_len)
        self.loaded_tokens += host_len
        return host_len

    def insert(
        self,
        tokens: np.ndarray,
        now: float,
        locked_len: int,
        chunked: bool = False,
        value: Sequence[Any] | None = None,
    ) -> tuple[RadixNode | None, int]:
        """Move a request's computed prefix into the cache (see :meth:`KVPool.insert`).

        The new part is on device; nodes of it that were host-only (the request recomputed them) get their
        device tier back. Unless ``chunked`` (an unfinished chunk), the pass counts as a hit on every node
        of the path and write-through backups start for nodes at the threshold. New nodes keep their part
        of ``value`` (aligned with ``tokens``) when one is given.
        """
        length = len(tokens) - len(tokens) % self.page_size
        if length <= locked_len:
            return None, locked_len
        tree = self.tree
        last = tree.insert(
            tokens[:length], now, value=None if value is None else value[:length], tier="device"
        ).last_node
        node = last
        while node.depth > locked_len:
            if not node.tiers & self._device:
                tree.add_tier(node, "device")
            node = node.parent  # type: ignore[assignment]
        self.private_tokens -= length - locked_len
        if not chunked:
            self._count_hits(last, now)
        return last, length

    def on_finish(self, node: RadixNode | None, now: float) -> None:
        """A request finished: SGLang's insert of its sequence passes (and counts a hit on) its path."""
        if node is not None:
            self._count_hits(node, now)

    # ---- per-step traffic --------------------------------------------------------------------------------
    def take_transfers(self) -> L2Transfers:
        """The traffic since the previous call: this step's load-back, the backups started since then."""
        if not (self._load_tokens or self._backup_tokens):
            return NO_TRANSFERS
        layer_s = self.transfer.load_layer_s(self._load_tokens, self._load_runs) if self._load_tokens else 0.0
        transfers = L2Transfers(
            load_tokens=self._load_tokens,
            load_layer_s=layer_s,
            load_s=layer_s * self.transfer.num_layers,
            backup_tokens=self._backup_tokens,
            backup_s=self._backup_s,
            blocking_s=self._blocking_s,
        )
        self._load_tokens = self._load_runs = self._backup_tokens = 0
        self._backup_s = self._blocking_s = 0.0
        return transfers


__all__ = [
    "HISIM_D2H_LATENCY_S",
    "HISIM_H2D_LATENCY_S",
    "HISIM_PCIE_EFFICIENCY",
    "LOAD_BACK_THRESHOLD",
    "NO_TRANSFERS",
    "WRITE_THROUGH_THRESHOLD",
    "CopyFunction",
    "HiCacheKVPool",
    "L2Transfers",
    "TransferModel",
    "hisim_copy_seconds",
    "host_copy_function",
]
