"""The registry: storages, instance groups, instances and accounts, persisted through a store.

The registry keeps decoded objects in memory for fast lookups and writes every change through to its
:class:`~kvsim.cache.store.RegistryStore` *before* changing memory, so a failed store write leaves both
unchanged. Validation and the rules of each admin operation live in the manager; this class only keeps
the maps consistent (including the group -> instances index) and counts changes of storages, groups
and instances in ``epoch`` so callers can cache values derived from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kvsim.cache import codec
from kvsim.cache.accounts import AccountRecord
from kvsim.cache.store.base import REGISTRY_KINDS, RegistryStore, StoreError
from kvsim.cache.types import InstanceGroup, InstanceInfo, StorageConfig

_KIND_CLASS: dict[str, type] = {
    "storage": StorageConfig,
    "instance_group": InstanceGroup,
    "instance": InstanceInfo,
    "account": AccountRecord,
}


def _name_of(kind: str, obj: Any) -> str:
    if kind == "storage":
        return str(obj.global_unique_name)
    if kind == "instance_group":
        return str(obj.name)
    if kind == "instance":
        return str(obj.instance_id)
    return str(obj.user_name)


class Registry:
    """In-memory view of the registry documents of a store.

    Args:
        store: where the documents are persisted; loaded at construction.
    """

    def __init__(self, store: RegistryStore) -> None:
        self._store = store
        self.epoch = 0
        self.storages: dict[str, StorageConfig] = {}
        self.groups: dict[str, InstanceGroup] = {}
        self.instances: dict[str, InstanceInfo] = {}
        self.accounts: dict[str, AccountRecord] = {}
        self._by_group: dict[str, set[str]] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read every document from the store.

        Raises:
            StoreError: a document does not decode.
        """
        docs = self._store.registry_load()
        decoded = {kind: self.decode_kind(kind, docs.get(kind, {})) for kind in REGISTRY_KINDS}
        self._install(decoded)

    @staticmethod
    def decode_kind(kind: str, docs: Mapping[str, str]) -> dict[str, Any]:
        """Decode the documents of one kind (``name -> json``) into objects, checking names match."""
        out: dict[str, Any] = {}
        for name, text in docs.items():
            try:
                obj: Any = codec.loads(_KIND_CLASS[kind], text)
            except ValueError as exc:
                raise StoreError(f"registry {kind} {name!r} does not decode: {exc}") from None
            if _name_of(kind, obj) != name:
                raise StoreError(f"registry {kind} {name!r} holds an object named {_name_of(kind, obj)!r}")
            out[name] = obj
        return out

    def _install(self, decoded: Mapping[str, Mapping[str, Any]]) -> None:
        self.storages = dict(decoded["storage"])
        self.groups = dict(decoded["instance_group"])
        self.instances = dict(decoded["instance"])
        self.accounts = dict(decoded["account"])
        self._by_group = {}
        for info in self.instances.values():
            self._by_group.setdefault(info.instance_group_name, set()).add(info.instance_id)
        self.epoch += 1

    # ------------------------------------------------------------------ writes

    def _write(self, kind: str, puts: Iterable[Any] = (), deletes: Iterable[str] = ()) -> None:
        self._store.registry_write(kind, {_name_of(kind, o): codec.dumps(o) for o in puts}, list(deletes))

    def put_storage(self, config: StorageConfig) -> None:
        """Add or replace a storage."""
        self._write("storage", [config])
        self.storages[config.global_unique_name] = config
        self.epoch += 1

    def delete_storage(self, name: str) -> None:
        """Remove a storage."""
        self._write("storage", deletes=[name])
        self.storages.pop(name, None)
        self.epoch += 1

    def put_group(self, group: InstanceGroup) -> None:
        """Add or replace an instance group."""
        self._write("instance_group", [group])
        self.groups[group.name] = group
        self.epoch += 1

    def delete_group(self, name: str) -> None:
        """Remove an instance group (its instances stay registered)."""
        self._write("instance_group", deletes=[name])
        self.groups.pop(name, None)
        self.epoch += 1

    def put_instance(self, info: InstanceInfo) -> None:
        """Add or replace an instance."""
        self._write("instance", [info])
        old = self.instances.get(info.instance_id)
        if old is not None:
            self._by_group.get(old.instance_group_name, set()).discard(info.instance_id)
        self.instances[info.instance_id] = info
        self._by_group.setdefault(info.instance_group_name, set()).add(info.instance_id)
        self.epoch += 1

    def delete_instance(self, instance_id: str) -> None:
        """Remove an instance."""
        self._write("instance", deletes=[instance_id])
        old = self.instances.pop(instance_id, None)
        if old is not None:
            self._by_group.get(old.instance_group_name, set()).discard(instance_id)
        self.epoch += 1

    def put_account(self, account: AccountRecord) -> None:
        """Add or replace an account."""
        self._write("account", [account])
        self.accounts[account.user_name] = account

    def delete_account(self, user_name: str) -> None:
        """Remove an account."""
        self._write("account", deletes=[user_name])
        self.accounts.pop(user_name, None)

    def replace(self, decoded: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace everything by ``{kind: {name: object}}`` (one atomic store call)."""
        docs = {
            kind: {name: codec.dumps(obj) for name, obj in decoded.get(kind, {}).items()}
            for kind in REGISTRY_KINDS
        }
        self._store.registry_replace(docs)
        self._install({kind: decoded.get(kind, {}) for kind in REGISTRY_KINDS})

    # ------------------------------------------------------------------ reads

    def instance_ids_of_group(self, group_name: str) -> list[str]:
        """Ids of the instances registered in ``group_name``, sorted."""
        return sorted(self._by_group.get(group_name, ()))
