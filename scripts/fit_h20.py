"""Fit the H20 profiles' op-family parameters and measure their held-out errors.

    python scripts/fit_h20.py [--shared ../shared] [--folds 10]

Reads the third-party H20-3e SGLang kernel tables from ``../shared`` (never copied into the repository)
and writes:

- ``kvsim/hardware/profiles/H20-3e/fitted.yaml``: GEMM (bf16, fp8 block-quantized), prefill and decode
  attention (16-bit and fp8 KV) fitted on the H20-3e tables, elementwise from the H20-3e memory-bound
  GEMMs, communication from a stated prior, host copies transferred from the H200's copy fit (the same
  PCIe Gen5 x16 host path; run ``scripts/fit_h200.py`` first); 10-fold cross-validated errors;
- ``kvsim/hardware/profiles/H20/fitted.yaml``: the same parameters. The H20 has the H20-3e's compute and
  96 GB of HBM3 at 4.0 TB/s instead of 141 GB of HBM3e at 4.8 TB/s; every model's memory-bound term
  divides by the profile's own bandwidth, so the H20's memory-bound times come out 4.8/4.0 = 1.2x longer;
- the ``"H20-3e"`` entry of ``docs/validation/data/step_time_fit.json``, for
  ``scripts/validate_step_time.py`` (``scripts/fit_h200.py`` writes the ``"H200"`` entry).

Exits 1 with a message naming the missing file when ``../shared`` lacks the H20-3e tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvsim.hardware.profile import GpuProfile, load_profile_folder  # noqa: E402
from kvsim.perf import fit as fitting  # noqa: E402
from kvsim.perf.families import AllreduceParams, StreamParams, params_to_yaml  # noqa: E402
from kvsim.perf.validation import (  # noqa: E402
    ErrorSummary,
    aic_tables,
    decode_arrays,
    gemm_arrays,
    gemm_bound,
    prefill_arrays,
    shared_root,
)

PROFILES = REPO / "kvsim" / "hardware" / "profiles"
DOC_DATA = REPO / "docs" / "validation" / "data"
FIT_JSON = DOC_DATA / "step_time_fit.json"
#: Priors where no rows exist (stated in fitted.yaml and the validation report).
ALLREDUCE_PRIOR = AllreduceParams(e_link=0.75, t0=10e-6)
PRIOR_ERR = {"elementwise": 0.2, "communication": 0.3, "host_copy_transferred": 0.15}


def summary(errors: Any) -> dict[str, Any]:
    return ErrorSummary.of(list(errors)).as_dict()


def profile(name: str) -> GpuProfile:
    return load_profile_folder(PROFILES / name, allow_roofline=True)


# ---- H20-3e ------------------------------------------------------------------------------------------------


def fit_h20_3e(aic: dict[str, Any], gpu: GpuProfile, folds: int) -> tuple[dict, dict, dict]:
    """Fit every family on the H20-3e tables; returns families, validation and the detailed summary."""
    bw = gpu.memory_bandwidth
    families: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    detail: dict[str, Any] = {}

    gemm_params, gemm_detail = {}, {}
    for key in ("bf16", "fp8"):
        peak = gpu.peak_flops(key)
        data, seconds = gemm_arrays(aic["gemm"], key, peak, bw)
        params, in_sample = fitting.fit(fitting.GEMM, data, seconds)
        held = fitting.held_out_errors(fitting.GEMM, data, seconds, folds=folds)
        compute = gemm_bound(data, peak, bw)
        llm = (data["n"] >= 1024) & (data["k"] >= 1024)
        gemm_params[key] = params
        gemm_detail[key] = {
            "all": summary(held),
            "compute_bound": summary(held[compute]),
            "memory_bound": summary(held[~compute]),
            "llm_shapes_compute_bound": summary(held[llm & compute]),
            "llm_shapes_memory_bound": summary(held[llm & ~compute]),
            "in_sample": summary(in_sample),
        }
        validation.setdefault("gemm", {})[f"fitted:{key}"] = {
            **summary(held),
            "method": f"{folds}-fold cross-validation of gemm_v1 on {len(seconds)} H20-3e rows",
        }
    validation["gemm"]["fitted"] = validation["gemm"]["fitted:bf16"]
    families["gemm"] = {
        "model": "gemm_v1",
        "basis": "AIConfigurator H20-3e SGLang 0.5.1.post1 gemm_perf (float16 -> bf16, fp8_block -> fp8)",
        "params": {key: params_to_yaml(p) for key, p in gemm_params.items()},
    }
    detail["gemm"] = gemm_detail

    # Elementwise kernels stream memory: take the bandwidth the H20-3e's memory-bound GEMMs reach (m <= 8,
    # >= 64 MB of weights) and the shortest kernel any table shows under CUDA graphs as the fixed cost.
    gemm = aic["gemm"]
    big = gemm[(gemm.key == "bf16") & (gemm.m <= 8) & (gemm.n * gemm.k * 2 >= 64e6)]
    achieved = (big.n * big.k * 2 + big.m * big.k * 2 + big.m * big.n * 2) / (big.latency * 1e-3)
    stream_e = float(np.median(achieved) / bw)
    t0 = float(gemm.latency.min() * 1e-3)

    for family, arrays, spec in (
        ("attention_prefill", prefill_arrays, fitting.PREFILL),
        ("attention_decode", decode_arrays, fitting.DECODE),
    ):
        params_by_key, family_detail = {}, {}
        frame = aic["prefill" if family == "attention_prefill" else "decode"]
        for key in ("bf16", "fp8"):
            if family == "attention_prefill":
                data, seconds = arrays(frame, key, gpu.peak_flops("bf16"), bw)
                split = data["isl"] >= 512
                split_names = ("isl_ge_512", "isl_lt_512")
            else:
                # fp8 KV: the kernel's tensor-core tiles run in fp8 (twice the bf16 rate)
                data, seconds = arrays(frame, key, gpu.peak_flops(key), bw)
                split = data["length"] >= 1024
                split_names = ("kv_ge_1024", "kv_lt_1024")
            # The H20-3e's decode rows cannot tell a bandwidth limit from a padded tensor-core limit
            # (both halve with an fp8 cache); HBM efficiency is therefore held at what the GPU's
            # streaming GEMMs reach, and the fit finds the compute ceiling the rows show.
            fixed = {"e_mem": stream_e} if family == "attention_decode" else None
            params, in_sample = fitting.fit(spec, data, seconds, fixed=fixed)
            held = fitting.held_out_errors(spec, data, seconds, folds=folds, fixed=fixed)
            params_by_key[key] = params
            family_detail[key] = {
                "all": summary(held),
                split_names[0]: summary(held[split]),
                split_names[1]: summary(held[~split]),
                "in_sample": summary(in_sample),
            }
            validation.setdefault(family, {})[f"fitted:{key}"] = {
                **summary(held),
                "method": f"{folds}-fold cross-validation of {spec.model} on {len(seconds)} H20-3e rows",
            }
        validation[family]["fitted"] = validation[family]["fitted:bf16"]
        families[family] = {
            "model": spec.model,
            "backend": "unknown",
            "basis": "AIConfigurator H20-3e tables recorded under SGLang 0.5.5.post2, kernel_source "
            "'default' (backend not recorded); kv float16 -> bf16, kv fp8 -> fp8",
            "params": {key: params_to_yaml(p) for key, p in params_by_key.items()},
        }
        detail[family] = family_detail

    e_mem = stream_e
    families["elementwise"] = {
        "model": "stream_v1",
        "basis": "no elementwise rows: HBM efficiency of the H20-3e's memory-bound bf16 GEMMs "
        f"({len(big)} rows with m <= 8 and >= 64 MB of weights); fixed cost = the shortest H20-3e GEMM",
        "prior_rel_err": PRIOR_ERR["elementwise"],
        "params": {"any": params_to_yaml(StreamParams(e_mem=e_mem, t0=t0))},
    }
    detail["elementwise"] = {"e_mem": round(e_mem, 4), "t0_us": round(t0 * 1e6, 3), "rows": len(big)}
    families["communication"] = allreduce_prior()
    return families, validation, detail


def allreduce_prior() -> dict[str, Any]:
    return {
        "model": "allreduce_v1",
        "basis": "prior, no all-reduce rows: ring all-reduce at 75% of the NVLink per-direction bandwidth "
        "plus 10 us per collective (SGLang's custom all-reduce latency on NVLink 4)",
        "prior_rel_err": PRIOR_ERR["communication"],
        "params": {"any": params_to_yaml(ALLREDUCE_PRIOR)},
    }


# ---- host copies, from the H200 ---------------------------------------------------------------------------


def h200_copies() -> dict[str, Any]:
    """The H200's fitted copy family, transferred to the H20s (the same PCIe Gen5 x16 host path).

    An H20 measured 54-55 GB/s host-to-device, the H200 55 GB/s. The H200 copy rows are timed as served
    (timing floor 0), so their fixed costs move over unchanged; d2d scales with each GPU's HBM bandwidth.
    """
    path = PROFILES / "H200" / "fitted.yaml"
    fitted = yaml.safe_load(path.read_text()) if path.is_file() else {}
    entry = (fitted.get("families") or {}).get("host_copy")
    if entry is None:
        raise SystemExit(
            f"fit_h20: {path.relative_to(REPO)} has no host_copy fit; run scripts/fit_h200.py first"
        )
    floor_us = float(fitted.get("table_timing_floor_us", 0.0))
    params = {
        direction: {**values, "t0_us": max(float(values["t0_us"]) - floor_us, 1.0)}
        for direction, values in entry["params"].items()
    }
    return {
        "model": "copy_v1",
        "basis": "transferred from the H200 copy fit (same PCIe Gen5 x16 host path, rows timed as served); "
        "d2d scales with this GPU's HBM bandwidth",
        "prior_rel_err": PRIOR_ERR["host_copy_transferred"],
        "params": params,
    }


# ---- output ------------------------------------------------------------------------------------------------


class _NoAliases(yaml.SafeDumper):
    """Write repeated mappings out in full (no YAML anchors) so that each entry reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def generated_header(script: str) -> str:
    """The first line of a generated ``fitted.yaml``."""
    return f"# Generated by {script}; do not edit by hand (rerun the script).\n"


def write_yaml(path: Path, content: dict[str, Any], header: str) -> None:
    """Write ``content`` as YAML under ``header`` (no anchors, keys in insertion order)."""
    text = header + yaml.dump(content, Dumper=_NoAliases, sort_keys=False, width=100, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(REPO)}")


def write_fitted(name: str, content: dict[str, Any]) -> None:
    write_yaml(PROFILES / name / "fitted.yaml", content, generated_header("scripts/fit_h20.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=None, help="the shared data folder (default ../shared)"
    )
    parser.add_argument("--folds", type=int, default=10, help="cross-validation folds on the H20-3e tables")
    args = parser.parse_args(argv)
    shared = args.shared or shared_root(REPO)
    try:
        aic = aic_tables(shared)
    except FileNotFoundError as exc:
        print(f"fit_h20: cannot fit: {exc}", file=sys.stderr)
        return 1
    h20e_gpu = profile("H20-3e")
    families, validation, detail = fit_h20_3e(aic, h20e_gpu, args.folds)
    families["host_copy"] = h200_copies()
    sources = {
        "H20-3e": "AIConfigurator H20-3e SGLang tables (ai-dynamo/aiconfigurator PR #134, Apache-2.0), "
        "read from ../shared/data/third_party/aic-h20-3e-sglang-0.5.1.post1; only these parameters "
        "are committed",
    }
    write_fitted("H20-3e", {"fitted_on": sources["H20-3e"], "families": families, "validation": validation})
    h20_validation = {
        family: {
            key: {**entry, "method": f"{entry['method']} (measured on the H20-3e, not on an H20)"}
            for key, entry in entries.items()
        }
        for family, entries in validation.items()
    }
    write_fitted(
        "H20",
        {
            "fitted_on": sources["H20-3e"] + ". The H20 shares the H20-3e's compute; memory-bound terms use "
            "this profile's 4.0 TB/s instead of 4.8 TB/s",
            "families": families,
            "validation": h20_validation,
        },
    )
    fit = json.loads(FIT_JSON.read_text()) if FIT_JSON.is_file() else {}
    fit.update({"H20-3e": detail, "folds": args.folds})
    FIT_JSON.write_text(json.dumps(fit, indent=1) + "\n")
    print(f"wrote {FIT_JSON.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
