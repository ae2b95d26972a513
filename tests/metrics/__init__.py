"""Tests of kvsim.metrics."""
