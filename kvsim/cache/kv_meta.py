"""The string-key KV meta API (KVCM's ``kv_meta`` package) over the block-key :class:`CacheManager`.

The reference defines a second ``MetaService`` whose keys are strings instead of int64 block keys, but
never serves it. :class:`KvMetaManager` serves it by mapping every call onto the block-key API of one
``CacheManager``, so KV values share the storages, quotas, reclaimer, write sessions and deletion queue
of the KV-cache blocks:

* **Keys.** A string key becomes the block key :func:`string_key`: the first 8 bytes of the SHA-256 of
  its UTF-8 bytes, read big-endian as a signed int64 (the scheme SGLang's KVCM connector uses for page
  hashes). Two different strings share a block key with probability about ``n**2 / 2**65`` among ``n``
  keys of one instance (the birthday bound over 2**64 values): 3e-8 for a million keys, 3e-2 for a
  billion. Such a pair would share one value; a request that names both is refused (INVALID_ARGUMENT).
  Empty keys are refused.
* **Instances.** :meth:`KvMetaManager.register_instance` registers an ordinary cache instance with
  ``block_size`` 1, the model deployment ``{model_name: "kv_meta", dtype: "bytes"}`` and one location
  spec ``"value"``. The spec's size (the bytes reserved per value) is ``value_size_bytes`` from
  ``user_data`` when that is a JSON object naming it, else the manager's default. Any other ``user_data``
  is kept as opaque text (in the model deployment's ``user_data``, which re-registrations do not compare).
* **Reads.** :meth:`~KvMetaManager.get` is the manager's QT_BATCH_GET: one location per key, in order,
  and an empty location for a key that is not readable (absent, or still being written).
* **Writes.** :meth:`~KvMetaManager.put_start` opens a write session. Its ``key_mask`` has one bool per
  key, true for a key that is skipped because it is stored already or being written by another session
  (the manager's rule: any WRITING, SERVING or DELETING location); ``locations`` are for the other keys,
  in order. A key may appear only once per PutStart. :meth:`~KvMetaManager.put_finish` takes an optional
  ``success_mask`` over those locations (kvsim extension; absent means every value was written, the
  reference's all-or-nothing finish): written values become readable, the others are deleted.
* **Removal.** :meth:`~KvMetaManager.remove` deletes keys; :meth:`~KvMetaManager.trim` runs the
  manager's TrimCache with the same strategies (TS_REMOVE_ALL_CACHE, and kvsim's TS_REMOVE_ALL_META and
  TS_TIMESTAMP).

Errors are the manager's ``CacheError``s, with KV field names (``keys[2]: ...``) for what is checked
here. The manager remembers the location count of each open write session (in memory, like the sessions
themselves, and only until their deadline) so that a finish without a mask can mean "all of them".
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from kvsim.cache.errors import CacheError, ErrorCode, invalid
from kvsim.cache.keys import INT64_MAX
from kvsim.cache.manager import DEFAULT_MAX_KEYS_PER_REQUEST, CacheManager
from kvsim.cache.types import (
    EMPTY_LOCATION,
    BlockMask,
    CacheLocation,
    FinishWriteCacheRequest,
    FinishWriteCacheResult,
    GetCacheLocationRequest,
    GetInstanceInfoRequest,
    LocationSpecInfo,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    RegisterInstanceResult,
    RemoveCacheRequest,
    RemoveCacheResult,
    StartWriteCacheRequest,
    TrimCacheRequest,
    TrimCacheResult,
    TrimStrategy,
)
from kvsim.cache.validation import require_str

#: The model deployment that marks an instance registered through the KV API.
KV_MODEL_NAME = "kv_meta"
KV_DTYPE = "bytes"
#: The one location spec of a KV instance: where a value lives.
KV_SPEC_NAME = "value"
#: Bytes reserved per value when ``user_data`` names no size (serve setting ``kvsim.kv_value_size_bytes``).
DEFAULT_VALUE_SIZE_BYTES = 1 << 20
#: The ``user_data`` JSON member that sets an instance's value size.
VALUE_SIZE_FIELD = "value_size_bytes"


def string_key(key: str) -> int:
    """The signed int64 block key of a string key: the first 8 bytes of SHA-256(UTF-8), big-endian."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big", signed=True)


# ---------------------------------------------------------------------------------------------- types
# Field names follow kv_meta_service.proto, so kvsim.serve converts them by name like the block-key types.


class KvQueryType(IntEnum):
    """How Get matches keys (the kv_meta ``QueryType``): batch get is the only query."""

    QT_UNSPECIFIED = 0
    QT_BATCH_GET = 1


@dataclass(frozen=True, slots=True)
class KeyMask:
    """One bool per key (PutStart: true = skipped; PutFinish: true = written)."""

    values: tuple[bool, ...] = ()


@dataclass(frozen=True, slots=True)
class KvRegisterInstanceRequest:
    """Register a KV instance; ``user_data`` may be ``{"value_size_bytes": N}`` or any text."""

    trace_id: str = ""
    instance_group: str = ""
    instance_id: str = ""
    user_data: str = ""


@dataclass(frozen=True, slots=True)
class KvGetInstanceInfoRequest:
    """Look up an instance."""

    trace_id: str = ""
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class KvGetRequest:
    """Locate the values of ``keys`` (the wire's ``metas`` field is accepted and ignored)."""

    trace_id: str = ""
    instance_id: str = ""
    query_type: KvQueryType = KvQueryType.QT_UNSPECIFIED
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KvPutStartRequest:
    """Phase 1 of a write: locations for the keys that are neither stored nor being written."""

    trace_id: str = ""
    instance_id: str = ""
    keys: tuple[str, ...] = ()
    write_timeout_seconds: int = 0


@dataclass(frozen=True, slots=True)
class KvPutFinishRequest:
    """Phase 2 of a write. ``success_mask`` (kvsim extension) covers the locations PutStart returned;
    None means all were written. The wire's ``locations`` field is accepted and ignored."""

    trace_id: str = ""
    instance_id: str = ""
    write_session_id: str = ""
    success_mask: KeyMask | None = None


@dataclass(frozen=True, slots=True)
class KvRemoveRequest:
    """Delete keys (unknown keys are fine)."""

    trace_id: str = ""
    instance_id: str = ""
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KvTrimRequest:
    """Remove an instance's values by strategy (as TrimCache; timestamps in epoch seconds)."""

    trace_id: str = ""
    instance_id: str = ""
    strategy: TrimStrategy = TrimStrategy.TS_UNSPECIFIED
    begin_timestamp: int = 0
    end_timestamp: int = 0


@dataclass(frozen=True, slots=True)
class KvInstanceInfo:
    """What the kv_meta ``InstanceInfo`` reports of an instance."""

    quota_group_name: str = ""
    instance_group_name: str = ""
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class KvGetInstanceInfoResult:
    """The instance's group name and its info."""

    instance_group: str
    instance_info: KvInstanceInfo


@dataclass(frozen=True, slots=True)
class KvGetResult:
    """One location per requested key, in order; an empty location for a key that is not readable."""

    locations: tuple[CacheLocation, ...]


@dataclass(frozen=True, slots=True)
class KvPutStartResult:
    """The session, which keys are skipped (``key_mask``) and where to write the others, in order."""

    write_session_id: str
    key_mask: KeyMask
    locations: tuple[CacheLocation, ...]


# ---------------------------------------------------------------------------------------------- manager


def _readable(location: CacheLocation) -> bool:
    # The manager answers a batch-get miss with a placeholder whose URIs are all empty.
    return any(spec.uri for spec in location.location_specs)


class KvMetaManager:
    """The string-key KV meta API over one :class:`CacheManager` (see the module docstring).

    Not thread-safe, like the manager it wraps.

    Args:
        cache: the manager that stores everything.
        default_value_size_bytes: bytes per value of an instance whose ``user_data`` names no size.
        max_keys_per_request: requests with more keys are refused (INVALID_ARGUMENT) before any hashing.
        key_hash: string key -> int64 block key; :func:`string_key` unless a test needs collisions.
    """

    def __init__(
        self,
        cache: CacheManager,
        *,
        default_value_size_bytes: int = DEFAULT_VALUE_SIZE_BYTES,
        max_keys_per_request: int = DEFAULT_MAX_KEYS_PER_REQUEST,
        key_hash: Callable[[str], int] = string_key,
    ) -> None:
        if isinstance(default_value_size_bytes, bool) or not 1 <= default_value_size_bytes <= INT64_MAX:
            raise ValueError(f"default_value_size_bytes: must be > 0, got {default_value_size_bytes}")
        if max_keys_per_request <= 0:
            raise ValueError(f"max_keys_per_request: must be > 0, got {max_keys_per_request}")
        self.cache = cache
        self.default_value_size_bytes = default_value_size_bytes
        self.max_keys_per_request = max_keys_per_request
        self._key_hash = key_hash
        # Open write sessions started here: id -> (locations handed out, deadline), and a heap of
        # (deadline, id) to forget them once the manager has surely expired them.
        self._sessions: dict[str, tuple[int, float]] = {}
        self._deadlines: list[tuple[float, str]] = []

    @property
    def num_tracked_sessions(self) -> int:
        """Write sessions whose location count is remembered (open, and not yet past their deadline)."""
        return len(self._sessions)

    # ------------------------------------------------------------------------------ instances

    def register_instance(self, request: KvRegisterInstanceRequest) -> RegisterInstanceResult:
        """Register a KV instance (idempotent for the same group, id and value size).

        Returns:
            ``storage_configs``: the JSON array of the group's storages, as RegisterInstance gives.

        Raises:
            CacheError: INVALID_ARGUMENT for a missing group or id, or a ``value_size_bytes`` in
                ``user_data`` that is not an integer in [1, 2**63 - 1]; DUPLICATE_ENTITY when the id is
                registered with another value size or as a block-key instance; INTERNAL_ERROR for an
                unknown group.
        """
        user_data = request.user_data
        if not isinstance(user_data, str):
            raise invalid("user_data", f"must be a string, got {type(user_data).__name__}")
        size = self._value_size(user_data)
        return self.cache.register_instance(
            RegisterInstanceRequest(
                trace_id=request.trace_id,
                instance_group=request.instance_group,
                instance_id=request.instance_id,
                block_size=1,
                location_spec_infos=(LocationSpecInfo(KV_SPEC_NAME, size),),
                model_deployment=ModelDeployment(
                    model_name=KV_MODEL_NAME, dtype=KV_DTYPE, user_data=user_data
                ),
            )
        )

    def _value_size(self, user_data: str) -> int:
        """``value_size_bytes`` of a JSON-object ``user_data``; the default for anything else."""
        try:
            document = json.loads(user_data)
        except ValueError:  # not JSON: opaque text
            return self.default_value_size_bytes
        if not isinstance(document, dict) or VALUE_SIZE_FIELD not in document:
            return self.default_value_size_bytes
        size = document[VALUE_SIZE_FIELD]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= INT64_MAX:
            raise invalid(
                f"user_data.{VALUE_SIZE_FIELD}", f"must be an integer in [1, 2**63 - 1], got {size!r}"
            )
        return size

    def get_instance_info(self, request: KvGetInstanceInfoRequest) -> KvGetInstanceInfoResult:
        """The instance's group and names.

        Raises:
            CacheError: INVALID_ARGUMENT for an empty id; INSTANCE_NOT_EXIST for an unknown one.
        """
        result = self.cache.get_instance_info(
            GetInstanceInfoRequest(trace_id=request.trace_id, instance_id=request.instance_id)
        )
        info = result.instance_info
        return KvGetInstanceInfoResult(
            result.instance_group,
            KvInstanceInfo(info.quota_group_name, info.instance_group_name, info.instance_id),
        )

    # ------------------------------------------------------------------------------ keys

    def _block_keys(self, keys: Sequence[str], *, unique: bool) -> list[int]:
        """The block keys of ``keys``, in order.

        Raises:
            CacheError: INVALID_ARGUMENT for no keys, too many, a key that is not a non-empty string of
                valid Unicode, two different keys with one block key, or (``unique``) a key given twice.
        """
        if isinstance(keys, str):
            raise invalid("keys", "must be a list of keys, not a string")
        keys = tuple(keys)
        if not keys:
            raise invalid("keys", "needs at least one key")
        limit = self.max_keys_per_request
        if len(keys) > limit:
            raise invalid("keys", f"{len(keys)} keys exceed the per-request limit of {limit}")
        key_hash = self._key_hash
        out: list[int] = []
        first: dict[int, int] = {}  # block key -> index of its first key
        for i, key in enumerate(keys):
            require_str(f"keys[{i}]", key)
            try:
                block_key = key_hash(key)
            except UnicodeEncodeError:  # a lone surrogate: Python strings allow it, UTF-8 does not
                raise invalid(f"keys[{i}]", "is not valid Unicode text (it has a lone surrogate)") from None
            j = first.setdefault(block_key, i)
            if j != i:
                if keys[j] != key:
                    raise invalid(
                        f"keys[{i}]",
                        f"{key!r} and keys[{j}] {keys[j]!r} map to the same block key {block_key}",
                    )
                if unique:
                    raise invalid(f"keys[{i}]", f"{key!r} repeats keys[{j}]: a PutStart names each key once")
            out.append(block_key)
        return out

    # ------------------------------------------------------------------------------ reads

    def get(self, request: KvGetRequest) -> KvGetResult:
        """Locate values: QT_BATCH_GET over the keys' block keys (hits count as accesses).

        Raises:
            CacheError: INVALID_ARGUMENT for a query type other than QT_BATCH_GET or bad keys;
                INSTANCE_NOT_EXIST.
        """
        if request.query_type != KvQueryType.QT_BATCH_GET:
            raise invalid(
                "query_type",
                f"must be QT_BATCH_GET (the only KV query), got {_enum_name(request.query_type)}",
            )
        block_keys = self._block_keys(request.keys, unique=False)
        result = self.cache.get_cache_location(
            GetCacheLocationRequest(
                trace_id=request.trace_id,
                instance_id=request.instance_id,
                query_type=QueryType.QT_BATCH_GET,
                block_keys=block_keys,
            )
        )
        return KvGetResult(tuple(loc if _readable(loc) else EMPTY_LOCATION for loc in result.locations))

    # ------------------------------------------------------------------------------ writes

    def put_start(self, request: KvPutStartRequest) -> KvPutStartResult:
        """Phase 1 of a write (the manager's StartWriteCache over the keys' block keys).

        Raises:
            CacheError: INVALID_ARGUMENT for bad or repeated keys or a negative timeout;
                INSTANCE_NOT_EXIST; INTERNAL_ERROR when no storage can take the values.
        """
        block_keys = self._block_keys(request.keys, unique=True)
        result = self.cache.start_write_cache(
            StartWriteCacheRequest(
                trace_id=request.trace_id,
                instance_id=request.instance_id,
                block_keys=block_keys,
                write_timeout_seconds=request.write_timeout_seconds,
            )
        )
        now = self.cache.clock.now()
        self._forget_expired(now)
        count = len(result.locations)
        if count:
            # A session with nothing to write needs no entry: "all of none" is the empty bool mask.
            deadline = now + request.write_timeout_seconds  # the manager's deadline, or just after it
            self._sessions[result.write_session_id] = (count, deadline)
            heapq.heappush(self._deadlines, (deadline, result.write_session_id))
        mask = KeyMask(tuple(result.block_mask.to_bools(len(block_keys))))
        return KvPutStartResult(result.write_session_id, mask, result.locations)

    def _forget_expired(self, now: float) -> None:
        """Drop the entries of sessions past their deadline (the manager refuses to finish those)."""
        heap = self._deadlines
        while heap and heap[0][0] < now:
            deadline, session_id = heapq.heappop(heap)
            entry = self._sessions.get(session_id)
            if entry is not None and entry[1] == deadline:
                del self._sessions[session_id]

    def put_finish(self, request: KvPutFinishRequest) -> FinishWriteCacheResult:
        """Phase 2 of a write: values marked written (all when ``success_mask`` is None) become
        readable, the others are deleted.

        Raises:
            CacheError: INVALID_ARGUMENT for a missing session id or a mask whose length is not the
                number of locations PutStart returned (the session then stays open); INSTANCE_NOT_EXIST;
                INTERNAL_ERROR for an unknown, finished or expired session.
        """
        session_id = request.write_session_id
        mask = request.success_mask
        if mask is not None and not isinstance(mask, KeyMask):
            raise invalid("success_mask", f"must be a KeyMask, got {type(mask).__name__}")

        def finish(success: BlockMask) -> FinishWriteCacheResult:
            return self.cache.finish_write_cache(
                FinishWriteCacheRequest(
                    trace_id=request.trace_id,
                    instance_id=request.instance_id,
                    write_session_id=session_id,
                    success_blocks=success,
                )
            )

        self._forget_expired(self.cache.clock.now())
        entry = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if entry is not None:
            count = entry[0]
            if mask is None:
                success = BlockMask(offset=count)
            elif len(mask.values) != count:
                raise invalid(
                    "success_mask.values",
                    f"has {len(mask.values)} values, PutStart returned {count} locations",
                )
            else:
                success = BlockMask(bool_masks=tuple(mask.values))
            result = finish(success)
            del self._sessions[session_id]
            return result
        # Not a session with locations started here: either one with nothing to write (for which the empty
        # mask is "all of none"), or one the manager reports as unknown, finished or expired.
        try:
            return finish(BlockMask(bool_masks=tuple(mask.values) if mask is not None else ()))
        except CacheError as exc:
            if exc.code != ErrorCode.INVALID_ARGUMENT or not exc.message.startswith("success_blocks"):
                raise
            # A block-key session (StartWriteCache) finished through the KV API; say it in KV terms.
            if mask is None:
                raise invalid(
                    "success_mask", f"is required for session {session_id!r}, which PutStart did not open"
                ) from None
            raise invalid("success_mask.values", exc.message.partition(": ")[2]) from None

    # ------------------------------------------------------------------------------ removal

    def remove(self, request: KvRemoveRequest) -> RemoveCacheResult:
        """Delete keys: their values are deleted at the manager's next poll.

        Raises:
            CacheError: INVALID_ARGUMENT for bad keys; INSTANCE_NOT_EXIST.
        """
        block_keys = self._block_keys(request.keys, unique=False)
        return self.cache.remove_cache(
            RemoveCacheRequest(
                trace_id=request.trace_id, instance_id=request.instance_id, block_keys=block_keys
            )
        )

    def trim(self, request: KvTrimRequest) -> TrimCacheResult:
        """Remove an instance's values by strategy (the manager's TrimCache, every strategy it has).

        Raises:
            CacheError: INVALID_ARGUMENT for TS_UNSPECIFIED or ``begin > end``; INSTANCE_NOT_EXIST.
        """
        return self.cache.trim_cache(
            TrimCacheRequest(
                trace_id=request.trace_id,
                instance_id=request.instance_id,
                strategy=request.strategy,
                begin_timestamp=request.begin_timestamp,
                end_timestamp=request.end_timestamp,
            )
        )


def _enum_name(value: object) -> str:
    return value.name if isinstance(value, IntEnum) else repr(value)
