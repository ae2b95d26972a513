"""Tests of kvsim.cache (a package so that test modules can import the store contract suite)."""
