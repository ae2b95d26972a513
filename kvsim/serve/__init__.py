"""kvsim.serve: the KVCM wire API (gRPC + HTTP) over :mod:`kvsim.cache`, and its Python client.

Modules (import the one you need; this package imports nothing so that a client pays for neither grpc
nor aiohttp unless it uses them):

* ``proto/`` — the meta, admin and debug ``.proto`` files (the reference's names and field numbers) and the
  modules generated from them by ``scripts/gen_protos.py``;
* :mod:`~kvsim.serve.catalog` — every RPC with its message types and gRPC/HTTP paths, read from the protos;
* :mod:`~kvsim.serve.convert` — wire message <-> ``kvsim.cache`` dataclass, field by field;
* :mod:`~kvsim.serve.handlers` — one converter per RPC; :mod:`~kvsim.serve.service` — dispatch and the one
  place that maps ``CacheError`` to ``header.status``;
* :mod:`~kvsim.serve.grpc_server`, :mod:`~kvsim.serve.http_server` — the transports;
  :mod:`~kvsim.serve.server` — listeners, the periodic poll, shutdown and the ``kvsim serve`` main;
* :mod:`~kvsim.serve.auth`, :mod:`~kvsim.serve.tls`, :mod:`~kvsim.serve.limits` — the admin token, TLS and
  request limits; :mod:`~kvsim.serve.prometheus` — GetMetrics' samples and ``GET /metrics``;
  :mod:`~kvsim.serve.jsonprint` — the fast JSON print of HTTP responses;
* :mod:`~kvsim.serve.config`, :mod:`~kvsim.serve.startup` — settings precedence and the startup config;
* :mod:`~kvsim.serve.client` — ``CacheClient``, the one client of the service, with ``CacheManager``'s API.

See ``docs/serve.md``.
"""
