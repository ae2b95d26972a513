"""vLLM KV connector (``KVConnectorBase_V1``) on a KVCM server: the logic, without importing vLLM.

vLLM loads :class:`kvsim.connectors.vllm_connector.KvsimConnector`, which adds vLLM's base classes to
:class:`KvsimVllmConnector` (this module)::

    --kv-transfer-config '{"kv_connector": "KvsimConnector", "kv_role": "kv_both",
        "kv_connector_module_path": "kvsim.connectors.vllm_connector",
        "kv_connector_extra_config": {"manager_address": "http://127.0.0.1:6382"}}'

Keys are derived by the server: the connector sends token ids and KVCM applies its chained hash with
the registered block size (``manager_block_size``, default vLLM's block size; it must be a multiple of it).

Scheduler side (one process):

* ``get_num_new_matched_tokens``: a prefix match of the prompt (all but its last token, which vLLM must
  compute) past the tokens vLLM already has, returned as a synchronous load (no async flag).
* ``update_state_after_alloc``: remembers which matched blocks get loaded.
* ``build_connector_meta``: the loads of newly scheduled requests, and the saves of this step: for each
  request, the prompt blocks that are full once this step has run are sent to StartWriteCache (the server
  says which it already has); the workers get the locations and the vLLM block ids to save.
* ``update_connector_output``: the workers' per-block results arrive as worker metadata (one report per
  TP rank, merged by vLLM with :meth:`KvsimWorkerMetadata.aggregate`); once every rank has reported,
  FinishWriteCache gets the AND of their results, so a block counts only when every rank saved it. A
  session no rank reports on is left to expire on the server.

Worker side (one per TP rank), synchronous: ``start_load_kv`` reads the blocks of this rank's spec
(``tp<rank>``) and copies them into the paged KV cache before the forward; ``wait_for_save`` copies the
blocks out after it and writes them. A manager block's bytes are, layer by layer (layers sorted by name),
the layer's ``manager_block_size / block_size`` vLLM blocks; its size must equal the registered spec size.
Blocks that fail to load are reported by ``get_block_ids_with_load_errors`` and vLLM recomputes them.

Only the first KV-cache group is handled (no hybrid allocator), prompt tokens only, pipeline size 1.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvsim.cache import CacheLocation, ModelDeployment
from kvsim.connectors.config import ConnectorConfig
from kvsim.connectors.errors import ConnectorError
from kvsim.connectors.lifecycle import KvcmScheduler, RankMasks, WritePlan, make_registration, spec_uris
from kvsim.connectors.transfer import TransferClient

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- metadata


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Load ``locations`` into the vLLM blocks ``block_ids`` (``k`` per location, in order)."""

    req_id: str
    locations: tuple[CacheLocation, ...]
    block_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SaveSpec:
    """Save the vLLM blocks ``block_ids`` (``k`` per location) to ``locations`` of write ``session_id``."""

    req_id: str
    session_id: str
    locations: tuple[CacheLocation, ...]
    block_ids: tuple[int, ...]


@dataclass
class KvsimConnectorMetadata:
    """Scheduler -> workers, once per step: what to load before and save after the forward."""

    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)


@dataclass
class KvsimWorkerMetadata:
    """Workers -> scheduler, once per step: per write session, per rank, which locations were saved."""

    reports: dict[str, dict[int, tuple[bool, ...]]] = field(default_factory=dict)

    def aggregate(self, other: KvsimWorkerMetadata) -> KvsimWorkerMetadata:
        """Merge the reports of two workers (vLLM folds every rank's metadata with this)."""
        merged = {session: dict(ranks) for session, ranks in self.reports.items()}
        for session, ranks in other.reports.items():
            merged.setdefault(session, {}).update(ranks)
        return type(self)(merged)


@dataclass
class _Request:
    tokens: list[int]
    block_ids: list[int]
    planned: int = 0  # manager blocks already sent to StartWriteCache


@dataclass
class _Session:
    plan: WritePlan
    masks: RankMasks


@dataclass(frozen=True, slots=True)
class _Layer:
    name: str
    tensor: Any
    dim: int  # the block dimension
    block_shape: tuple[int, ...]
    block_bytes: int  # bytes of one vLLM block of this layer
    offset: int  # where this layer's bytes start in a manager block


def _safe_id(text: str) -> str:
    # Instance ids name directories on the storage: keep them to a portable character set.
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def _is_scheduler(role: Any) -> bool:
    name = getattr(role, "name", role)
    if name in ("SCHEDULER", 0, "scheduler"):
        return True
    if name in ("WORKER", 1, "worker"):
        return False
    raise ConnectorError(f"role: expected SCHEDULER or WORKER, got {role!r}")


def estimate_spec_size(vllm_config: Any, manager_block: int) -> int:
    """Bytes of one manager block of one TP rank, from the model config (what the reference registers):
    ``layers x (1 if MLA else 2) x tokens x KV heads per rank x head size x bytes per element``.

    Raises:
        ConnectorError: the config lacks what is needed (give ``spec_size`` in the extra config).
    """
    model, parallel, cache = vllm_config.model_config, vllm_config.parallel_config, vllm_config.cache_config
    try:
        layers = int(model.get_num_layers(parallel))
        heads = int(model.get_num_kv_heads(parallel))
        head_size = int(model.get_head_size())
        mla = bool(getattr(model, "use_mla", False))
        cache_dtype = str(getattr(cache, "cache_dtype", "auto"))
        itemsize = 1 if cache_dtype.startswith("fp8") else int(model.dtype.itemsize)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConnectorError(
            f"cannot size a block from the model config ({exc}); set spec_size in kv_connector_extra_config"
        ) from None
    return layers * (1 if mla else 2) * manager_block * heads * head_size * itemsize


class KvsimVllmConnector:
    """The KV connector's logic for both roles (see the module docstring).

    Args:
        vllm_config: vLLM's config (``kv_transfer_config``, ``cache_config``, ``model_config``,
            ``parallel_config``).
        role: ``KVConnectorRole.SCHEDULER`` or ``WORKER`` (or their names).
        kv_cache_config: vLLM's ``KVCacheConfig`` (its ``num_blocks`` finds the block dimension).
        tp_rank: this worker's TP rank (workers only).
        client_factory: passed to :class:`ManagerConnection` (tests).
        transfer_factory: ``storage_configs -> TransferClient`` (tests).
        clock: monotonic seconds, for dropping sessions no worker reported.

    Raises:
        ConnectorError: a bad extra config, pipeline parallelism, or a manager block size that is not a
            multiple of vLLM's block size.
    """

    metadata_cls: type[KvsimConnectorMetadata] = KvsimConnectorMetadata
    worker_metadata_cls: type[KvsimWorkerMetadata] = KvsimWorkerMetadata

    def __init__(
        self,
        vllm_config: Any,
        role: Any,
        kv_cache_config: Any = None,
        *,
        tp_rank: int = 0,
        client_factory: Callable[..., Any] | None = None,
        transfer_factory: Callable[[str], TransferClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        transfer_config = vllm_config.kv_transfer_config
        extra: Mapping[str, Any] = getattr(transfer_config, "kv_connector_extra_config", None) or {}
        self.config = ConnectorConfig.from_extra(extra)
        self.is_scheduler = _is_scheduler(role)
        self.block_size = int(vllm_config.cache_config.block_size)
        manager_block = int(extra.get("manager_block_size", self.block_size))
        if manager_block <= 0 or manager_block % self.block_size:
            raise ConnectorError(
                f"manager_block_size {manager_block} must be a positive multiple of vLLM's block size "
                f"{self.block_size}"
            )
        self.manager_block = manager_block
        self.per_block = manager_block // self.block_size  # vLLM blocks per manager block
        parallel = vllm_config.parallel_config
        self.tp_size = int(getattr(parallel, "tensor_parallel_size", 1))
        if int(getattr(parallel, "pipeline_parallel_size", 1)) != 1:
            raise ConnectorError("the kvsim connector supports pipeline_parallel_size 1 only")
        self.tp_rank = tp_rank
        self.spec_name = f"tp{tp_rank}"
        model = vllm_config.model_config
        if "spec_size" in extra:
            self.spec_size = int(extra["spec_size"])
        else:
            self.spec_size = estimate_spec_size(vllm_config, manager_block)
        model_name = str(getattr(model, "served_model_name", None) or getattr(model, "model", "") or "model")
        instance_id = self.config.instance_id or f"vllm-{_safe_id(model_name)}"
        registration = make_registration(
            instance_id,
            manager_block,
            [(f"tp{r}", self.spec_size) for r in range(self.tp_size)],
            instance_group=self.config.instance_group,
            model=ModelDeployment(
                model_name=model_name,
                dtype=str(getattr(model, "dtype", "")),
                use_mla=bool(getattr(model, "use_mla", False)),
                tp_size=self.tp_size,
                dp_size=int(getattr(parallel, "data_parallel_size", 1)),
                pp_size=1,
            ),
        )
        kwargs = {"client_factory": client_factory} if client_factory else {}
        self.connection = self.config.connection(registration, **kwargs)
        self.scheduler = KvcmScheduler(
            self.connection, write_timeout_s=self.config.write_timeout_s, clock=clock
        )
        self._transfer_factory = transfer_factory or self.config.transfer
        self._transfer: TransferClient | None = None
        self._clock = clock
        self._num_blocks = int(getattr(kv_cache_config, "num_blocks", 0) or 0)
        self._block_dim = extra.get("kv_block_dim")
        self._connector_metadata: Any = None
        # scheduler side
        self._pending_loads: dict[str, tuple[int, tuple[CacheLocation, ...]]] = {}
        self._requests: dict[str, _Request] = {}
        self._sessions: dict[str, _Session] = {}
        # worker side
        self._layers: list[_Layer] = []
        self._reports: dict[str, dict[int, tuple[bool, ...]]] = {}
        self._load_errors: set[int] = set()
        self.stats: dict[str, int] = {
            "blocks_matched": 0,
            "blocks_loaded": 0,
            "blocks_load_failed": 0,
            "blocks_saved": 0,
            "blocks_save_failed": 0,
            "blocks_stored": 0,
            "errors": 0,
        }

    # ------------------------------------------------------------------------------ shared

    def bind_connector_metadata(self, connector_metadata: Any) -> None:
        """Set this step's metadata (vLLM calls it before the forward)."""
        self._connector_metadata = connector_metadata

    def clear_connector_metadata(self) -> None:
        """Drop this step's metadata (after the forward)."""
        self._connector_metadata = None

    def _warn(self, what: str, exc: Exception) -> None:
        self.stats["errors"] += 1
        logger.warning("kvsim connector %s (%s): %s", what, self.connection.instance_id, exc)

    def shutdown(self) -> None:
        """Release the transfer threads and the connections."""
        if self._transfer is not None:
            self._transfer.close()
        self.connection.close()

    # ------------------------------------------------------------------------------ scheduler side

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        """Tokens past ``num_computed_tokens`` that KVCM holds (whole manager blocks); a synchronous load."""
        tokens = list(getattr(request, "prompt_token_ids", None) or [])
        mb = self.manager_block
        held, partial = divmod(num_computed_tokens, mb)
        limit = (len(tokens) - 1) // mb  # vLLM must compute at least the last prompt token itself
        if partial or limit <= held:
            self._pending_loads.pop(request.request_id, None)
            return 0, False
        try:
            match = self.scheduler.match(token_ids=tokens[: limit * mb], held=held)
        except ConnectorError as exc:
            self._warn("lookup", exc)
            return 0, False
        if not match.locations:
            self._pending_loads.pop(request.request_id, None)
            return 0, False
        self._pending_loads[request.request_id] = (held, match.locations)
        self.stats["blocks_matched"] += match.num_blocks
        return match.num_blocks * mb, False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        """Keep the load of ``num_external_tokens`` tokens (0: drop the pending load)."""
        pending = self._pending_loads.get(request.request_id)
        if pending is None:
            return
        if num_external_tokens <= 0:
            del self._pending_loads[request.request_id]
            return
        held, locations = pending
        keep = num_external_tokens // self.manager_block
        self._pending_loads[request.request_id] = (held, locations[:keep])

    def build_connector_meta(self, scheduler_output: Any) -> KvsimConnectorMetadata:
        """This step's loads (newly scheduled requests) and saves (prompt blocks full after this step)."""
        meta = self.metadata_cls()
        scheduled = getattr(scheduler_output, "num_scheduled_tokens", {}) or {}
        for new in getattr(scheduler_output, "scheduled_new_reqs", ()) or ():
            blocks = list(new.block_ids[0]) if new.block_ids else []
            state = _Request(list(new.prompt_token_ids or []), blocks)
            self._requests[new.req_id] = state
            self._plan_load(meta, new.req_id, state)
            self._plan_save(meta, new.req_id, state, new.num_computed_tokens + scheduled.get(new.req_id, 0))
        cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
        if cached is not None:
            resumed = set(getattr(cached, "resumed_req_ids", ()) or ())
            for i, req_id in enumerate(cached.req_ids):
                known = self._requests.get(req_id)
                if known is None:
                    continue
                state = known
                new_ids = cached.new_block_ids[i]
                if new_ids is not None:
                    # A resumed request gets its whole block list again; others get the new blocks.
                    state.block_ids = (
                        list(new_ids[0]) if req_id in resumed else state.block_ids + list(new_ids[0])
                    )
                self._plan_load(meta, req_id, state)
                computed = cached.num_computed_tokens[i] + scheduled.get(req_id, 0)
                self._plan_save(meta, req_id, state, computed)
        self._drop_stale_sessions()
        return meta

    def _plan_load(self, meta: KvsimConnectorMetadata, req_id: str, state: _Request) -> None:
        pending = self._pending_loads.pop(req_id, None)
        if pending is None:
            return
        held, locations = pending
        k = self.per_block
        block_ids = tuple(state.block_ids[held * k : (held + len(locations)) * k])
        if len(block_ids) != len(locations) * k:
            logger.warning("kvsim connector: request %s has too few blocks for its load; skipped", req_id)
            return
        meta.loads.append(LoadSpec(req_id, locations, block_ids))
        # Loaded blocks are in KVCM already: no need to offer them to StartWriteCache again.
        state.planned = max(state.planned, held + len(locations))

    def _plan_save(self, meta: KvsimConnectorMetadata, req_id: str, state: _Request, computed: int) -> None:
        full = min(len(state.tokens), computed) // self.manager_block
        full = min(full, len(state.block_ids) // self.per_block)
        if full <= state.planned:
            return
        state.planned = full
        try:
            plan = self.scheduler.start_write(token_ids=state.tokens[: full * self.manager_block])
        except ConnectorError as exc:
            self._warn("start write", exc)
            return
        if not plan.locations:
            try:
                self.scheduler.finish_write(plan, [])
            except ConnectorError as exc:
                self._warn("finish write", exc)
            return
        k = self.per_block
        block_ids = tuple(state.block_ids[i * k + s] for i in plan.indices for s in range(k))
        meta.saves.append(SaveSpec(req_id, plan.session_id, plan.locations, block_ids))
        self._sessions[plan.session_id] = _Session(plan, RankMasks(len(plan.locations), self.tp_size))

    def update_connector_output(self, connector_output: Any) -> None:
        """Collect the workers' save results; finish every write all ranks have reported on."""
        meta = getattr(connector_output, "kv_connector_worker_meta", None)
        if meta is None:
            return
        for session_id, ranks in meta.reports.items():
            session = self._sessions.get(session_id)
            if session is None:
                continue
            for rank, ok in ranks.items():
                session.masks.report(rank, ok)
            if session.masks.complete:
                del self._sessions[session_id]
                self._finish(session)

    def _finish(self, session: _Session) -> None:
        try:
            outcome = self.scheduler.finish_write(session.plan, session.masks.mask())
        except ConnectorError as exc:
            self._warn("finish write", exc)
            return
        self.stats["blocks_stored"] += sum(outcome.stored[i] for i in session.plan.indices)

    def _drop_stale_sessions(self) -> None:
        now = self._clock()
        for session_id, session in list(self._sessions.items()):
            if now > session.plan.deadline:
                del self._sessions[session_id]
                logger.warning(
                    "kvsim connector: write %s expired waiting for ranks %s (does this vLLM return "
                    "kv_connector_worker_meta?); its blocks are not stored",
                    session_id,
                    session.masks.missing,
                )

    def request_finished(self, request: Any, block_ids: Sequence[int]) -> tuple[bool, dict[str, Any] | None]:
        """Forget the request; saves are synchronous, so its blocks may be freed at once."""
        self._requests.pop(request.request_id, None)
        self._pending_loads.pop(request.request_id, None)
        return False, None

    # ------------------------------------------------------------------------------ worker side

    def _transfer_client(self) -> TransferClient:
        if self._transfer is None:
            configs = self.connection.storage_configs or self.connection.register()
            self._transfer = self._transfer_factory(configs)
        return self._transfer

    def _find_block_dim(self, name: str, shape: tuple[int, ...]) -> int:
        if self._block_dim is not None:
            return int(self._block_dim)
        n = self._num_blocks
        if n and len(shape) > 1 and shape[0] == 2 and shape[1] == n:
            return 1  # FlashAttention-style (2, num_blocks, block_size, heads, head_size)
        if n and shape and shape[0] == n:
            return 0  # MLA or FlashInfer-style (num_blocks, ...)
        if not n and len(shape) == 5 and shape[0] == 2:
            return 1
        if not n:
            return 0
        raise ConnectorError(f"layer {name}: no dimension of {shape} has num_blocks={n}; set kv_block_dim")

    def register_kv_caches(self, kv_caches: Mapping[str, Any]) -> None:
        """Remember the paged KV tensors and check that a manager block matches the registered spec size.

        Raises:
            ConnectorError: the layers' bytes per manager block differ from ``spec_size``.
        """
        layers: list[_Layer] = []
        offset = 0
        for name in sorted(kv_caches):
            tensor = kv_caches[name]
            shape = tuple(int(d) for d in tensor.shape)
            dim = self._find_block_dim(name, shape)
            block_shape = shape[:dim] + shape[dim + 1 :]
            block_bytes = tensor.element_size()
            for d in block_shape:
                block_bytes *= d
            layers.append(_Layer(name, tensor, dim, block_shape, block_bytes, offset))
            offset += block_bytes * self.per_block
        if offset != self.spec_size:
            raise ConnectorError(
                f"a manager block of this worker's KV cache is {offset} bytes but {self.spec_size} were "
                "registered; set spec_size (or kv_block_dim) in kv_connector_extra_config"
            )
        self._layers = layers

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        """Load this step's blocks into the paged KV cache (synchronously, before the forward)."""
        meta = self._connector_metadata
        if meta is None:
            return
        for load in meta.loads:
            self._load(load)

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Nothing to wait for: loads finish in :meth:`start_load_kv`."""
        return

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        """Nothing per layer: every layer is saved in :meth:`wait_for_save`."""
        return

    def wait_for_save(self) -> None:
        """Save this step's blocks (after the forward wrote their KV)."""
        meta = self._connector_metadata
        if meta is None:
            return
        for save in meta.saves:
            self._save(save)

    def build_connector_worker_meta(self) -> KvsimWorkerMetadata | None:
        """This step's save results for the scheduler (None when nothing was saved)."""
        if not self._reports:
            return None
        reports, self._reports = self._reports, {}
        return self.worker_metadata_cls(reports)

    def get_block_ids_with_load_errors(self) -> set[int]:
        """vLLM blocks whose load failed since the last call (vLLM recomputes them)."""
        errors, self._load_errors = self._load_errors, set()
        return errors

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        """Nothing is asynchronous: no request waits for a transfer."""
        return None, None

    def _stage(self, rows: int) -> Any:
        import torch

        return torch.empty((rows, self.spec_size), dtype=torch.uint8)

    def _load(self, load: LoadSpec) -> None:
        import torch

        n, k = len(load.locations), self.per_block
        if not self._layers:
            raise ConnectorError("register_kv_caches was not called before a load")
        stage = self._stage(n)
        try:
            result = self._transfer_client().load(
                spec_uris(load.locations, self.spec_name), [stage[j] for j in range(n)]
            )
            ok = list(result.ok)
        except ConnectorError as exc:
            self._warn("load", exc)
            ok = [False] * n
        good = [j for j in range(n) if ok[j]]
        self._load_errors.update(load.block_ids[j * k + s] for j in range(n) if not ok[j] for s in range(k))
        self.stats["blocks_loaded"] += len(good)
        self.stats["blocks_load_failed"] += n - len(good)
        if not good:
            return
        rows = stage[torch.tensor(good, dtype=torch.long)]
        ids = [load.block_ids[j * k + s] for j in good for s in range(k)]
        for layer in self._layers:
            t = layer.tensor
            part = rows[:, layer.offset : layer.offset + k * layer.block_bytes].contiguous()
            data = part.view(t.dtype).reshape(len(ids), *layer.block_shape).movedim(0, layer.dim)
            index = torch.tensor(ids, dtype=torch.long, device=t.device)
            t.index_copy_(layer.dim, index, data.to(t.device))

    def _save(self, save: SaveSpec) -> None:
        import torch

        n, k = len(save.locations), self.per_block
        if not self._layers:
            raise ConnectorError("register_kv_caches was not called before a save")
        stage = self._stage(n)
        for layer in self._layers:
            t = layer.tensor
            index = torch.tensor(save.block_ids, dtype=torch.long, device=t.device)
            blocks = t.index_select(layer.dim, index).movedim(layer.dim, 0).contiguous()
            data = blocks.view(torch.uint8).reshape(n, k * layer.block_bytes)
            stage[:, layer.offset : layer.offset + k * layer.block_bytes] = data.to("cpu")
        try:
            result = self._transfer_client().save(
                spec_uris(save.locations, self.spec_name), [stage[j] for j in range(n)]
            )
            ok = tuple(result.ok)
            if not result.all_ok:
                failed = n - result.num_ok
                logger.warning("kvsim connector: %d block(s) not saved: %s", failed, result.first_error)
        except ConnectorError as exc:
            self._warn("save", exc)
            ok = (False,) * n
        self.stats["blocks_saved"] += sum(ok)
        self.stats["blocks_save_failed"] += n - sum(ok)
        self._reports.setdefault(save.session_id, {})[self.tp_rank] = ok


__all__ = [
    "KvsimConnectorMetadata",
    "KvsimVllmConnector",
    "KvsimWorkerMetadata",
    "LoadSpec",
    "SaveSpec",
    "estimate_spec_size",
]
