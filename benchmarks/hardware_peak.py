"""The hardware a benchmark runs on, and its peak FLOP rate (estimated for CPUs, from datasheets for GPUs).

Imported by ``bench_model.py`` and ``bench_gpu.py`` (not a benchmark itself).

CPU peak = FLOP per cycle per core x cores used (torch threads) x clock. FLOP per cycle per core:
* fp32: 64 with full-width AVX-512 (two 512-bit FMA units x 16 lanes x 2 for the fused multiply-add: Intel
  Xeon Gold/Platinum, AMD Zen 5), 32 with AMD Zen 4 (family 25: AVX-512 runs on two 256-bit FMA units) or
  AVX2+FMA, 8 otherwise;
* bf16: twice the fp32 rate with AVX512_BF16 (VDPBF16PS: two bf16 products per fp32 lane), 1024 with
  AMX-BF16 (Intel's figure per core), else the fp32 rate (bf16 is then converted and computed in fp32).
Clock: ``cpuinfo_max_freq`` from sysfs, else the "cpu MHz" of /proc/cpuinfo (a VM's nominal clock; with
turbo the real clock is higher, so the fraction of peak is then an overestimate).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# NVIDIA datasheet dense peaks (TFLOP/s): fp32 without tensor cores, tf32 and bf16 tensor cores, no sparsity.
GPU_PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
    "A10G": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _max_clock_ghz(cpuinfo_mhz: float | None) -> tuple[float | None, str]:
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(path.read_text().strip()) / 1e6, "sysfs cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    return (cpuinfo_mhz / 1000.0 if cpuinfo_mhz else None), "/proc/cpuinfo cpu MHz (nominal)"


def describe_cpu(threads: int) -> dict[str, Any]:
    """CPU name, the features that matter for fp32/bf16 speed, and the estimated peak of ``threads`` cores."""
    info = _cpuinfo()
    flags, name = set(info.get("flags", "").split()), info.get("model name", "unknown")
    ghz, clock_source = _max_clock_ghz(float(info["cpu MHz"]) if "cpu MHz" in info else None)
    features = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8") if f in flags]
    zen4 = info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25"
    if "avx512f" in flags and not zen4:
        fp32_per_cycle = 64
    else:
        fp32_per_cycle = 32 if {"avx2", "fma"} <= flags else 8
    if "amx_bf16" in flags:
        bf16_per_cycle, bf16_unit = 1024, "AMX-BF16"
    elif "avx512_bf16" in flags:
        bf16_per_cycle, bf16_unit = 2 * fp32_per_cycle, "AVX512_BF16"
    else:
        bf16_per_cycle, bf16_unit = fp32_per_cycle, "none (bf16 computed in fp32)"
    peak = {}
    if ghz:
        peak = {
            "fp32": fp32_per_cycle * threads * ghz,
            "bf16": bf16_per_cycle * threads * ghz,
        }
    return {
        "kind": "cpu",
        "name": name,
        "vendor_family_model": [info.get("vendor_id"), info.get("cpu family"), info.get("model")],
        "features": features,
        "logical_cpus": os.cpu_count(),
        "threads_used": threads,
        "clock_ghz": ghz,
        "clock_source": clock_source,
        "flop_per_cycle_per_core": {"fp32": fp32_per_cycle, "bf16": bf16_per_cycle},
        "bf16_unit": bf16_unit,
        "peak_gflops": {k: round(v, 1) for k, v in peak.items()},
        "peak_method": "FLOP/cycle/core x threads x clock; see benchmarks/hardware_peak.py",
        "load_average": os.getloadavg(),
    }


def describe_gpu() -> dict[str, Any]:
    """The current CUDA device, its memory, and the datasheet peaks when the model is in the table."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    name = props.name
    key = next((k for k in GPU_PEAK_TFLOPS if k in name), None)
    peak = GPU_PEAK_TFLOPS.get(key, {}) if key else {}
    return {
        "kind": "gpu",
        "name": name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "bf16_supported": torch.cuda.is_bf16_supported(including_emulation=False),
        "peak_gflops": {k: v * 1000 for k, v in peak.items()},
        "peak_method": f"NVIDIA datasheet dense peak for {key!r}" if key else "unknown GPU model: no peak",
        "note": "fp32 steps may use TF32 in cuDNN convolutions (torch default), so fp32 is also compared with the tf32 peak",
        "load_average": os.getloadavg(),
    }


def fraction_of_peak(flops_per_step: float, seconds: float, peak_gflops: float | None) -> float | None:
    """Achieved FLOP rate over the peak, or None without a peak."""
    if not peak_gflops or seconds <= 0:
        return None
    return round(flops_per_step / seconds / (peak_gflops * 1e9), 4)
