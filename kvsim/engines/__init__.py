"""Serving engines as pure scheduler state machines plus a thin simpy driver (SGLang first)."""
