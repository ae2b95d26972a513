"""KVCM protos (meta, admin, debug) and the modules generated from them by ``scripts/gen_protos.py``."""
