"""Run-directory files: ``metrics.json``, ``requests.jsonl`` and ``iterations.jsonl``, plus their readers.

Output is deterministic: keys are sorted, floats are rounded to a fixed number of decimals before
being written in Python's shortest round-trip form (6 decimals in ``metrics.json``, where values are
ms, s and rates; 9 in the JSONL files, where values are times in seconds), and nothing depends on
the wall clock. The same records therefore always give byte-identical files. NaN and infinity are
refused rather than written as invalid JSON.

``iterations.jsonl`` can run to ~100k lines per run, so :class:`IterationLogWriter` formats each line
with one f-string (the batch through the C JSON encoder) and writes in chunks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from kvsim.metrics.records import ITERATION_KINDS, IterationRecord, RequestRecord

METRICS_FILE = "metrics.json"
REQUESTS_FILE = "requests.jsonl"
ITERATIONS_FILE = "iterations.jsonl"

#: Decimals kept in metrics.json (ms / s / rates) and in the JSONL logs (times in seconds).
METRICS_DECIMALS = 6
LOG_DECIMALS = 9

_COMPACT = {"separators": (",", ":"), "sort_keys": True, "allow_nan": False}


def _round_floats(value: Any, decimals: int) -> Any:
    """Recursively turn numpy scalars into Python ones and round floats; refuse NaN and infinity."""
    if isinstance(value, bool | None | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"cannot write non-finite number {number} as JSON")
        # + 0.0 turns -0.0 into 0.0 so that rounding noise never prints a minus sign.
        return round(number, decimals) + 0.0
    if isinstance(value, Mapping):
        return {str(k): _round_floats(v, decimals) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_round_floats(v, decimals) for v in value]
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def format_metrics(summary: Mapping[str, Any]) -> str:
    """The exact text of ``metrics.json`` for ``summary``: sorted keys, 2-space indent, final newline."""
    cleaned = _round_floats(summary, METRICS_DECIMALS)
    return json.dumps(cleaned, sort_keys=True, indent=2, allow_nan=False) + "\n"


def write_metrics(path: str | os.PathLike[str], summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` (from :func:`~kvsim.metrics.summary.summarize`, plus any run fields) as JSON.

    Args:
        path: The file, or a run directory (then ``metrics.json`` inside it).
        summary: Flat or nested mapping of numbers and strings.

    Returns:
        The path written.
    """
    target = _file_in(path, METRICS_FILE)
    target.write_text(format_metrics(summary), encoding="utf-8")
    return target


def _file_in(path: str | os.PathLike[str], default_name: str) -> Path:
    """``path`` itself, or ``path / default_name`` when ``path`` is an existing directory."""
    target = Path(path)
    return target / default_name if target.is_dir() else target


def _num(value: float) -> str:
    """One float in the logs' fixed format (shortest repr of the value rounded to LOG_DECIMALS)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"cannot write non-finite number {number} as JSON")
    return repr(round(number, LOG_DECIMALS) + 0.0)


def _request_line(record: RequestRecord, include_token_times: bool) -> str:
    # Keys in sorted order, matching what json.dumps(sort_keys=True) would give.
    parts = [
        f'"arrival_s":{_num(record.arrival_s)}',
        f'"cached_tokens":{int(record.cached_tokens)}',
    ]
    device, host = record.cached_tokens_device, record.cached_tokens_host
    if device is not None and host is not None:
        parts += [f'"cached_tokens_device":{int(device)}', f'"cached_tokens_host":{int(host)}']
    if record.cached_tokens_storage is not None:
        parts.append(f'"cached_tokens_storage":{int(record.cached_tokens_storage)}')
    parts += [
        f'"finish_s":{_num(record.finish_s)}',
        f'"first_token_s":{_num(record.first_token_s)}',
        f'"input_len":{int(record.input_len)}',
        f'"output_len":{int(record.output_len)}',
    ]
    if record.prefetch_s is not None:
        parts.append(f'"prefetch_s":{_num(record.prefetch_s)}')
    if record.prefetched_tokens is not None:
        parts.append(f'"prefetched_tokens":{int(record.prefetched_tokens)}')
    parts += [
        f'"request_id":{int(record.request_id)}',
        f'"send_s":{_num(record.send_s)}',
    ]
    if include_token_times and record.token_times is not None:
        parts.append('"token_times":[' + ",".join(_num(t) for t in record.token_times) + "]")
    return "{" + ",".join(parts) + "}\n"


def write_requests(
    path: str | os.PathLike[str],
    records: Iterable[RequestRecord],
    *,
    include_token_times: bool = False,
) -> Path:
    """Write one JSON line per request, sorted by ``request_id``.

    Each line holds ``request_id``, ``arrival_s``, ``send_s``, ``first_token_s``, ``finish_s``,
    ``input_len``, ``output_len`` and ``cached_tokens`` (prompt tokens served from the prefix cache),
    plus ``cached_tokens_device`` and ``cached_tokens_host`` for records that carry per-tier counts, and
    ``cached_tokens_storage``, ``prefetched_tokens`` and ``prefetch_s`` for records of a run with an L3
    storage tier.

    Args:
        path: The file, or a run directory (then ``requests.jsonl`` inside it).
        records: Finished requests.
        include_token_times: Also write each request's ``token_times`` (large: one number per token).

    Returns:
        The path written.
    """
    target = _file_in(path, REQUESTS_FILE)
    ordered = sorted(records, key=lambda r: r.request_id)
    with target.open("w", encoding="utf-8", newline="\n") as out:
        out.write("".join(_request_line(r, include_token_times) for r in ordered))
    return target


def _json_lines(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: not valid JSON ({err.msg})") from None


def read_requests(path: str | os.PathLike[str]) -> list[RequestRecord]:
    """Read ``requests.jsonl`` back into records (``token_times`` only if they were written)."""
    records = []
    for _, row in _json_lines(_file_in(path, REQUESTS_FILE)):
        times = row.get("token_times")
        records.append(
            RequestRecord(
                request_id=row["request_id"],
                arrival_s=row["arrival_s"],
                send_s=row["send_s"],
                first_token_s=row["first_token_s"],
                finish_s=row["finish_s"],
                input_len=row["input_len"],
                output_len=row["output_len"],
                cached_tokens=row["cached_tokens"],
                token_times=None if times is None else np.asarray(times, dtype=np.float64),
                cached_tokens_device=row.get("cached_tokens_device"),
                cached_tokens_host=row.get("cached_tokens_host"),
                cached_tokens_storage=row.get("cached_tokens_storage"),
                prefetched_tokens=row.get("prefetched_tokens"),
                prefetch_s=row.get("prefetch_s"),
            )
        )
    return records


class IterationLogWriter:
    """Buffered writer of ``iterations.jsonl``: one JSON line per engine step.

    Lines are kept in a list and written every ``chunk_lines`` steps, on :meth:`flush` and on
    :meth:`close` (or leaving a ``with`` block). Use :meth:`log` in the engine's hot loop; it takes
    the fields directly, so no :class:`IterationRecord` needs to be built per step.

    Example::

        with IterationLogWriter(run_dir / "iterations.jsonl") as log:
            log.log(t, "decode", [(1, 812), (1, 95)], 11.3, num_running=2, num_waiting=0)
    """

    def __init__(self, path: str | os.PathLike[str], *, chunk_lines: int = 8192) -> None:
        """Open (truncate) the log.

        Args:
            path: The file, or a run directory (then ``iterations.jsonl`` inside it).
            chunk_lines: Lines buffered before a write, >= 1.
        """
        if chunk_lines < 1:
            raise ValueError(f"chunk_lines(={chunk_lines}) must be >= 1")
        self.path = _file_in(path, ITERATIONS_FILE)
        self._file = self.path.open("w", encoding="utf-8", newline="\n")
        self._buffer: list[str] = []
        self._chunk_lines = chunk_lines
        self._count = 0

    @property
    def count(self) -> int:
        """Steps logged so far."""
        return self._count

    def log(
        self,
        time_s: float,
        kind: str,
        batch: Sequence[Sequence[int]] | str,
        step_time_ms: float,
        num_running: int,
        num_waiting: int,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        """Append one step (fields as in :class:`~kvsim.metrics.records.IterationRecord`).

        ``batch`` may also be given already rendered as compact JSON (an engine that knows its batch's
        shape can render it faster than the generic encoder).
        """
        if kind not in ITERATION_KINDS:
            raise ValueError(f"kind(={kind!r}) must be one of {sorted(ITERATION_KINDS)}")
        # The C encoder formats the (possibly long) batch far faster than a Python join would.
        if isinstance(batch, str):
            batch_json = batch
        elif isinstance(batch, np.ndarray):
            batch_json = json.dumps(batch.tolist(), separators=(",", ":"))
        else:
            try:
                batch_json = json.dumps(batch, separators=(",", ":"))
            except TypeError:  # numpy integers inside a list: convert, then encode
                batch_json = json.dumps([[int(e), int(p)] for e, p in batch], separators=(",", ":"))
        extra_json = ""
        if extra:
            extra_json = f'"extra":{json.dumps(_round_floats(extra, LOG_DECIMALS), **_COMPACT)},'
        self._buffer.append(
            f'{{"batch":{batch_json},{extra_json}"kind":"{kind}","num_running":{int(num_running)},'
            f'"num_waiting":{int(num_waiting)},"step_time_ms":{_num(step_time_ms)},"time_s":{_num(time_s)}}}\n'
        )
        self._count += 1
        if len(self._buffer) >= self._chunk_lines:
            self.flush()

    def append(self, record: IterationRecord) -> None:
        """Append one :class:`IterationRecord`."""
        self.log(
            record.time_s,
            record.kind,
            record.batch,
            record.step_time_ms,
            record.num_running,
            record.num_waiting,
            record.extra,
        )

    def flush(self) -> None:
        """Write the buffered lines to the file."""
        if self._buffer:
            self._file.write("".join(self._buffer))
            self._buffer.clear()
        self._file.flush()

    def close(self) -> None:
        """Flush and close; further logging raises."""
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> IterationLogWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_iterations(path: str | os.PathLike[str]) -> list[IterationRecord]:
    """Read ``iterations.jsonl`` back into records (each batch a list of ``[extend_len, past_len]`` lists)."""
    return [
        IterationRecord(
            time_s=row["time_s"],
            kind=row["kind"],
            batch=row["batch"],  # kept as parsed: converting 10^6 pairs to tuples costs seconds
            step_time_ms=row["step_time_ms"],
            num_running=row["num_running"],
            num_waiting=row["num_waiting"],
            extra=row.get("extra"),
        )
        for _, row in _json_lines(_file_in(path, ITERATIONS_FILE))
    ]
