"""Throughput of ``file://`` saves and loads, next to ``dd`` on the same disk.

    python examples/bench_transfer.py                      # 1 GiB in 2 MiB blocks under a temp dir
    python examples/bench_transfer.py --dir /mnt/nvme --fsync

The blocks get the URIs a ``kvsim serve`` file storage hands out (the same layout code), in both layouts:
packed (8 blocks per file, written in place) and one block per file (temporary file + rename). Each figure
is the best of ``--repeats`` runs; files are removed before every write run. ``dd`` writes one file of the
same size with the same block size (``conv=fdatasync`` with ``--fsync``) and reads it back. The methods run
interleaved and every write starts after ``sync``, so that none inherits another's dirty pages on a shared
machine. Reads of both come from the page cache (the data was just written), so they compare the software
paths, not the disk; the loads fill 1 GiB of distinct buffers while ``dd`` reuses one 2 MiB buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from kvsim.cache import NfsStorageSpec, StorageConfig
from kvsim.cache.backends.layout import block_uris, file_path, packed_files
from kvsim.connectors import TransferClient

MIB = 1 << 20


def uris_for(root: Path, name: str, per_file: int, blocks: int, size: int) -> tuple[str, list[str]]:
    """The storage_configs JSON and the server's URIs for ``blocks`` blocks of ``size`` bytes."""
    storage = StorageConfig(name, NfsStorageSpec(root_path=f"{root}/", key_count_per_file=per_file))
    keys = [f"bench/tp0/{i + 1:x}" for i in range(blocks)]
    uris: list[str] = []
    for file_name, batch in packed_files(keys, per_file):
        path = file_path(storage.spec, file_name)  # type: ignore[arg-type]
        uris += block_uris("file", name, path, len(batch), size, per_file > 1)
    return json.dumps([storage.to_model_dict()]), uris


class Kvsim:
    """One TransferClient and its blocks, for one layout."""

    def __init__(self, root: Path, per_file: int, total: int, block: int, fsync: bool, threads: int) -> None:
        self.root = root
        n = total // block
        configs, self.uris = uris_for(root, "bench", per_file, n, block)
        rng = np.random.default_rng(0)
        self.data = [rng.integers(0, 256, block, dtype=np.uint8) for _ in range(n)]
        self.out = [np.zeros(block, np.uint8) for _ in range(n)]  # touched now: no page faults in the runs
        self.client = TransferClient(
            configs, threads=threads, fsync="data" if fsync else "none", put_timeout_s=600, get_timeout_s=600
        )

    def write(self) -> float:
        shutil.rmtree(self.root, ignore_errors=True)
        os.sync()  # start from a clean page cache, as dd does below
        saved = self.client.save(self.uris, self.data)
        assert saved.all_ok, saved.first_error
        return saved.seconds

    def read(self) -> float:
        loaded = self.client.load(self.uris, self.out)
        assert loaded.all_ok, loaded.first_error
        assert np.array_equal(self.out[-1], self.data[-1])
        return loaded.seconds

    def close(self) -> None:
        self.client.close()
        shutil.rmtree(self.root, ignore_errors=True)


def dd_write(path: Path, total: int, block: int, fsync: bool) -> float:
    """Seconds of one ``dd`` write of ``total`` bytes in ``block``-byte writes."""
    path.unlink(missing_ok=True)
    os.sync()  # no writeback of earlier runs' dirty pages may throttle this one
    args = ["dd", "if=/dev/zero", f"of={path}", f"bs={block}", f"count={total // block}"]
    if fsync:
        args.append("conv=fdatasync")
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - t0


def dd_read(path: Path, block: int) -> float:
    """Seconds of one ``dd`` read of ``path``."""
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={block}"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    """Run the comparison and print a table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, help="where to write (default: a temp dir)")
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--block-mib", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fsync", action="store_true", help="flush to the disk before a save counts")
    args = parser.parse_args()
    total, block = args.total_mib * MIB, args.block_mib * MIB
    layouts = (("kvsim packed (8/file)", 8), ("kvsim 1 block/file", 1))
    runs: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in ["dd", *(n for n, _ in layouts)]
    }
    with tempfile.TemporaryDirectory(prefix="kvsim-bench-", dir=args.dir) as tmp:
        base = Path(tmp)
        kvsims = {
            name: Kvsim(base / f"s{per}", per, total, block, args.fsync, args.threads)
            for name, per in layouts
        }
        # Interleaved, so that every method sees the same machine (shared machines are noisy).
        for _ in range(args.repeats):
            runs["dd"][0].append(dd_write(base / "dd.bin", total, block, args.fsync))
            runs["dd"][1].append(dd_read(base / "dd.bin", block))
            (base / "dd.bin").unlink()
            for name, k in kvsims.items():
                runs[name][0].append(k.write())
                runs[name][1].append(k.read())
        for k in kvsims.values():
            k.close()
    gib = total / (1 << 30)
    dd_w, dd_r = min(runs["dd"][0]), min(runs["dd"][1])
    print(
        f"{args.total_mib} MiB in {args.block_mib} MiB blocks, fsync={'on' if args.fsync else 'off'}, "
        f"{args.threads} threads, best of {args.repeats} interleaved runs (median in brackets)"
    )
    print(f"{'':22s} {'write GiB/s':>18s} {'vs dd':>6s} {'read GiB/s':>18s} {'vs dd':>6s}")
    for name, (w, r) in runs.items():
        print(
            f"{name:22s} {gib / min(w):8.2f} ({gib / statistics.median(w):5.2f}) {dd_w / min(w):6.0%} "
            f"{gib / min(r):8.2f} ({gib / statistics.median(r):5.2f}) {dd_r / min(r):6.0%}"
        )


if __name__ == "__main__":
    main()
