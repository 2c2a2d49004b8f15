"""The peak table, its device names and dtypes, and the setting that overrides it."""

import pytest
import torch

from amused_lightning.errors import SettingError
from amused_lightning.model.device_peaks import PEAK_TFLOPS, dtype_key, parse_peak, resolve_peak, table_key


def test_peak_table_names_and_dtypes():
    assert PEAK_TFLOPS["h100-sxm"]["bf16"] == 989.4 and PEAK_TFLOPS["h200"]["bf16"] == 989.4
    names = {"NVIDIA H100 80GB HBM3": "h100-sxm", "NVIDIA H100 PCIe": "h100-pcie", "NVIDIA H100 NVL": "h100-nvl",
             "NVIDIA H200": "h200", "NVIDIA A100-SXM4-80GB": "a100", "NVIDIA A10G": "a10g", "NVIDIA L4": "l4",
             "NVIDIA L40S": "l40s", "NVIDIA GeForce RTX 4090": "rtx-4090", "Tesla T4": "t4", "Quadro P1000": None}
    assert {name: table_key(name) for name in names} == names
    precisions = ("bf16-mixed", "16-mixed", "32-true", "32")
    assert [dtype_key(p, False) for p in precisions] == ["bf16", "fp16", "fp32", "fp32"]
    assert dtype_key("32", True) == "tf32"


def test_peak_setting_takes_a_number_or_a_device_and_refuses_anything_else():
    cpu = torch.device("cpu")
    assert resolve_peak(312, "bf16", cpu, "p") == (312.0, "p")
    assert resolve_peak("H100-SXM", "bf16", cpu, "p")[0] == 989.4
    assert resolve_peak(None, "fp32", cpu, "p")[0] > 0  # measured on this CPU
    with pytest.raises(SettingError, match=r"p=-5 must be a positive number of TFLOP/s"):
        parse_peak(-5, "p")
    with pytest.raises(SettingError, match=r"p='h1000' is neither a number of TFLOP/s nor a known device \(b200, "):
        parse_peak("h1000", "p")
    with pytest.raises(SettingError, match="p='v100': that device has no bf16 tensor figure"):
        resolve_peak("v100", "bf16", cpu, "p")
