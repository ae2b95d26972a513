"""The memory store passes the store contract; the store registry builds it by name."""

from __future__ import annotations

import pytest

from kvsim.cache.store import MemoryStore, make_store

from .store_contract import StoreContract, StoreFactory


class TestMemoryStore(StoreContract):
    """The contract against :class:`MemoryStore`."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        return MemoryStore


def test_make_store_by_name() -> None:
    assert isinstance(make_store("memory"), MemoryStore)
    with pytest.raises(ValueError, match="unknown store 'nope'"):
        make_store("nope")
