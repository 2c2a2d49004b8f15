"""The dense peak FLOP/s a device offers in the dtype a run computes in: the datasheet figure for known GPUs (without
sparsity; NVIDIA's headline tensor figures are sparse, twice these), a matmul probe on a CPU."""

from __future__ import annotations

import functools
import re
import time

import torch

from amused_lightning.errors import SettingError

TFLOPS = 1e12

# Dense tensor-core TFLOP/s by compute dtype, from NVIDIA's datasheets (GeForce: with fp32 accumulation, as autocast
# uses). "fp32" is the plain CUDA-core rate, "tf32" what fp32 matmuls get with TF32 allowed.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "b200": {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0, "fp32": 80.0},
    "h200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "h200-nvl": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "h100-sxm": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "h100-nvl": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "h100-pcie": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "a100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "l40s": {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "l40": {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5},
    "l4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    # AWS's A10G has no NVIDIA datasheet of its own: the A10's figures.
    "a10g": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "a10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "rtx-4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
    "rtx-3090": {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6},
    "v100": {"fp16": 125.0, "fp32": 15.7},
    "t4": {"fp16": 65.0, "fp32": 8.1},
}


# Words of a CUDA device name that pick a table row; the first match wins, so variants come before their chip.
_NAME_WORDS: list[tuple[set[str], str]] = [
    ({"h100", "pcie"}, "h100-pcie"), ({"h100", "nvl"}, "h100-nvl"), ({"h100"}, "h100-sxm"),
    ({"h200", "nvl"}, "h200-nvl"), ({"h200"}, "h200"), ({"b200"}, "b200"), ({"a100"}, "a100"), ({"l40s"}, "l40s"),
    ({"l40"}, "l40"), ({"l4"}, "l4"), ({"a10g"}, "a10g"), ({"a10"}, "a10"), ({"4090"}, "rtx-4090"),
    ({"3090"}, "rtx-3090"), ({"v100"}, "v100"), ({"t4"}, "t4"),
]


def table_key(device_name: str) -> str | None:
    """The table's key for a CUDA device name ("NVIDIA H100 80GB HBM3" -> "h100-sxm"), None if it has none."""
    words = set(re.split(r"[\s_-]+", device_name.lower()))
    return next((key for needed, key in _NAME_WORDS if needed <= words), None)


def dtype_key(precision: str, tf32: bool) -> str:
    """The table's column for a Lightning precision setting ("bf16-mixed" -> "bf16")."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    return "tf32" if tf32 else "fp32"


def tf32_enabled() -> bool:
    """Whether fp32 matmuls may run as TF32 (`allow_tf32`, or a float32 matmul precision below highest)."""
    return torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"


def parse_peak(value: float | str | None, setting: str) -> float | None:
    """A peak given as TFLOP/s or as a table key, checked; None (look it up or measure it) stays None."""
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in PEAK_TFLOPS:
        return None  # a device name: resolved against the run's dtype by `known_peak`
    try:
        number = float(value)
    except ValueError:
        raise SettingError(f"{setting}={value!r} is neither a number of TFLOP/s nor a known device "
                           f"({', '.join(PEAK_TFLOPS)})") from None
    if not number > 0:
        raise SettingError(f"{setting}={value!r} must be a positive number of TFLOP/s")
    return number


def known_peak(key: str, dtype: str, setting: str) -> float:
    """The table's TFLOP/s for `key` in `dtype`, or a one-line error naming the setting."""
    column = PEAK_TFLOPS[key]
    if dtype not in column:
        raise SettingError(f"{setting}={key!r}: that device has no {dtype} tensor figure (it has "
                           f"{', '.join(column)}); give the peak as a number of TFLOP/s")
    return column[dtype]


@functools.cache
def cpu_matmul_tflops(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """The best rate of a (size x size) matmul on this CPU with the threads torch uses: a CPU's practical peak."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # first call: thread pool and kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / TFLOPS


CPU_PROBE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}


def resolve_peak(value: float | str | None, dtype: str, device: torch.device, setting: str) -> tuple[float | None, str]:
    """The peak TFLOP/s a run is measured against, and where it came from: the setting (a number or a table key),
    else the table row of the CUDA device's name, else a matmul probe on a CPU; None for an unknown accelerator."""
    number = parse_peak(value, setting)
    if number is not None:
        return number, setting
    if value is not None:
        return known_peak(str(value).lower(), dtype, setting), f"{setting}={value}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = table_key(name)
        if key is None or dtype not in PEAK_TFLOPS[key]:
            return None, f"{name!r} is not in the peak table: set {setting}"
        return PEAK_TFLOPS[key][dtype], f"{name}, {key} datasheet"
    if device.type == "cpu":
        return cpu_matmul_tflops(CPU_PROBE_DTYPES[dtype]), "a matmul probe on this CPU"
    return None, f"no peak known for a {device.type} device: set {setting}"
