"""Tests of kvsim.workloads."""
