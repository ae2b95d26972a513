"""KVCM protos (meta, admin, debug, and the string-key kv_meta) and the modules generated from them by
``scripts/gen_protos.py``."""
