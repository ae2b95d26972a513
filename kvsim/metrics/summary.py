"""``bench_serving``-compatible run summary: the numbers ``sglang.bench_serving`` prints and saves.

Names and definitions follow ``bench_serving.calculate_metrics``:

- ``completed``: finished requests (every record is one).
- ``total_input_tokens`` / ``total_output_tokens``: sums of prompt and generated lengths.
- ``duration``: from the benchmark start to the last finish. ``bench_serving`` starts its timer just
  before it dispatches the first request, which goes out at once, and stops it when every response is
  in; kvsim takes the start as the earliest ``send_s`` (0 for a run whose first request arrives at
  t = 0, as every kvsim workload's does) unless ``start_s`` is given, and the end as the latest
  ``finish_s``.
- ``request_throughput``, ``input_throughput``, ``output_throughput``, ``total_throughput``: the
  counts above divided by ``duration``; ``concurrency``: sum of E2E latencies over ``duration``.
- TTFT = ``first_token_s - send_s``; E2E = ``finish_s - send_s``; TPOT = ``(E2E - TTFT) /
  (output_len - 1)`` over requests with ``output_len > 1`` only; ITL = every gap between consecutive
  ``token_times`` of a request, pooled over requests. Each has ``mean_/median_/std_/p90_/p95_/p99_``
  in ms (``np.std`` is the population deviation; percentiles are numpy's linear ones), plus
  ``max_itl_ms``.
- ``max_output_tokens_per_s`` and ``max_concurrent_requests``: ``bench_serving``'s peaks over
  one-second buckets counted from the earliest send (token times come from ``token_times``; a record
  without them is assumed to stream evenly from first token to finish).

kvsim adds ``truncated_requests`` (passed in), ``total_cached_tokens`` and ``cache_hit_rate``
(cached / input tokens). Where ``bench_serving`` would produce NaN or divide by zero (no requests,
zero duration) the value is 0, so ``metrics.json`` is always valid JSON. No wall-clock field is
produced: the same records always give the same summary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsim.metrics.records import RequestRecord

#: The latency metrics and the statistics reported for each (key ``f"{stat}_{metric}_ms"``).
LATENCY_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2e_latency")
LATENCY_STATS: tuple[str, ...] = ("mean", "median", "std", "p90", "p95", "p99")


def latency_stats(name: str, values_s: np.ndarray) -> dict[str, float]:
    """Mean, median, std and p90/p95/p99 of latencies given in seconds, as ``{stat}_{name}_ms`` in ms.

    Args:
        name: Metric name used in the keys (``"ttft"``, ...).
        values_s: Latencies in seconds; empty gives all zeros (``bench_serving`` uses 0 for an empty
            TTFT/TPOT/ITL list).

    Returns:
        Six entries keyed ``mean_<name>_ms`` ... ``p99_<name>_ms``.
    """
    values = np.asarray(values_s, dtype=np.float64)
    if values.size == 0:
        return {f"{stat}_{name}_ms": 0.0 for stat in LATENCY_STATS}
    p90, p95, p99 = np.percentile(values, [90, 95, 99])
    return {
        f"mean_{name}_ms": float(np.mean(values)) * 1000.0,
        f"median_{name}_ms": float(np.median(values)) * 1000.0,
        f"std_{name}_ms": float(np.std(values)) * 1000.0,
        f"p90_{name}_ms": float(p90) * 1000.0,
        f"p95_{name}_ms": float(p95) * 1000.0,
        f"p99_{name}_ms": float(p99) * 1000.0,
    }


def output_token_times(record: RequestRecord) -> np.ndarray:
    """The times the record's output arrived: ``token_times``, or an even spread if it has none.

    The spread puts ``output_len`` tokens evenly from ``first_token_s`` to ``finish_s``; it is used for
    throughput-over-time views only, never for ITL.
    """
    if record.token_times is not None:
        return np.asarray(record.token_times, dtype=np.float64)
    return np.linspace(record.first_token_s, record.finish_s, record.output_len)


def _peaks(records: Sequence[RequestRecord], sends: np.ndarray, finishes: np.ndarray) -> tuple[float, int]:
    """``bench_serving``'s peak output tokens per second and peak concurrent requests (1 s buckets)."""
    origin = float(sends.min())
    num_buckets = int(np.ceil(finishes.max() - origin)) + 1
    times = np.concatenate([output_token_times(r) for r in records])
    token_buckets = (times - origin).astype(np.int64)  # int() truncation, as bench_serving does
    token_buckets = token_buckets[(token_buckets >= 0) & (token_buckets < num_buckets)]
    tokens_per_s = np.bincount(token_buckets, minlength=num_buckets)
    # A request counts in every bucket from the one it was sent in to the one it finished in.
    first = (sends - origin).astype(np.int64)
    last = np.minimum((finishes - origin).astype(np.int64) + 1, num_buckets)
    delta = np.zeros(num_buckets + 1, dtype=np.int64)
    np.add.at(delta, first, 1)
    np.add.at(delta, last, -1)
    concurrent = np.cumsum(delta[:-1])
    return float(tokens_per_s.max()), int(concurrent.max())


def summarize(
    records: Sequence[RequestRecord],
    *,
    truncated_requests: int = 0,
    start_s: float | None = None,
) -> dict[str, float | int]:
    """Compute the ``bench_serving`` summary of a run (see the module docstring for definitions).

    Args:
        records: One record per finished request, in any order.
        truncated_requests: Requests the workload cut to the context length (reported as is).
        start_s: Benchmark start for ``duration``; default the earliest ``send_s``.

    Returns:
        A flat dict of ints and floats with ``bench_serving``'s keys plus kvsim's cache keys.
    """
    n = len(records)
    summary: dict[str, float | int] = {"completed": n, "truncated_requests": int(truncated_requests)}
    if n == 0:
        sends = finishes = ttfts = e2es = tpots = itls = np.zeros(0)
        input_lens = output_lens = cached = np.zeros(0, dtype=np.int64)
        duration = 0.0
        peak_tokens, peak_requests = 0.0, 0
    else:
        sends = np.fromiter((r.send_s for r in records), dtype=np.float64, count=n)
        firsts = np.fromiter((r.first_token_s for r in records), dtype=np.float64, count=n)
        finishes = np.fromiter((r.finish_s for r in records), dtype=np.float64, count=n)
        input_lens = np.fromiter((r.input_len for r in records), dtype=np.int64, count=n)
        output_lens = np.fromiter((r.output_len for r in records), dtype=np.int64, count=n)
        cached = np.fromiter((r.cached_tokens for r in records), dtype=np.int64, count=n)
        ttfts = firsts - sends
        e2es = finishes - sends
        multi = output_lens > 1
        tpots = (e2es[multi] - ttfts[multi]) / (output_lens[multi] - 1)
        gaps = [np.diff(r.token_times) for r in records if r.token_times is not None]
        itls = np.concatenate(gaps) if gaps else np.zeros(0)
        start = float(sends.min()) if start_s is None else float(start_s)
        duration = float(finishes.max()) - start
        peak_tokens, peak_requests = _peaks(records, sends, finishes)

    total_input = int(input_lens.sum())
    total_output = int(output_lens.sum())
    total_cached = int(cached.sum())

    def per_second(value: float) -> float:
        return value / duration if duration > 0 else 0.0

    summary.update(
        {
            "total_input_tokens": total_input,
            "total_output_tokens": total_output,
            "duration": duration,
            "request_throughput": per_second(n),
            "input_throughput": per_second(total_input),
            "output_throughput": per_second(total_output),
            "total_throughput": per_second(total_input + total_output),
            "concurrency": per_second(float(e2es.sum())),
            "max_output_tokens_per_s": peak_tokens,
            "max_concurrent_requests": peak_requests,
            "max_itl_ms": float(itls.max()) * 1000.0 if itls.size else 0.0,
            "total_cached_tokens": total_cached,
            "cache_hit_rate": total_cached / total_input if total_input else 0.0,
        }
    )
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2e_latency", e2es)):
        summary.update(latency_stats(name, values))
    return summary
