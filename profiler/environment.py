"""The environment a measurement was taken in: hardware, clocks, power, versions, settings."""

from __future__ import annotations

import os
import platform

import torch


def _nvml_gpu(device) -> dict:
    from .device import DeviceError, nvml_device

    try:
        dev = nvml_device(device)
    except DeviceError as e:
        return {"nvml_unavailable_reason": str(e)}
    nv, h = dev.nvml, dev.handle
    out = {"nvml_index": dev.index, "gpu_uuid": dev.uuid}

    def read(key, fn, scale=1.0):
        try:
            v = fn()
            out[key] = v.decode() if isinstance(v, bytes) else (v * scale if isinstance(v, (int, float)) else v)
        except Exception:
            out[key] = None

    read("driver_version", nv.nvmlSystemGetDriverVersion)
    read("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
    read("memory_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
    read("max_sm_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM))
    read("power_limit_w", lambda: nv.nvmlDeviceGetPowerManagementLimit(h), 1e-3)
    read("temperature_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
    read("persistence_mode", lambda: nv.nvmlDeviceGetPersistenceMode(h))
    return out


def environment(device: torch.device, *, dtype=None, attn_implementation=None, seed=None, source=None) -> dict:
    """A dict recorded with every measured row."""
    import transformers

    device = torch.device(device)
    env = {
        "device": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "attn_implementation": attn_implementation,
        "seed": seed,
        "model_source": source,
    }
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        env.update({"gpu": torch.cuda.get_device_name(index), "gpu_memory_bytes": props.total_memory,
                    "gpu_sm_count": props.multi_processor_count, "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version()})
        env.update(_nvml_gpu(device))
    else:
        env["gpu"] = None
    return env


def gpu_label(device: torch.device) -> str:
    """The ``gpu`` key of a row: the card's name, or ``cpu``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device.index or 0)
    return "cpu"
