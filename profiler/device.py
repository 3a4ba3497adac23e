"""One device layer: a torch device -> its hardware identity and its NVML handle.

NVML numbers GPUs physically and ignores ``CUDA_VISIBLE_DEVICES``; torch numbers the visible
ones (Ray sets ``CUDA_VISIBLE_DEVICES`` for every GPU actor, so "cuda:0" of an actor is
seldom physical GPU 0). The mapping goes through the device's UUID: the visible-devices entry
(an index, a ``GPU-`` UUID or a ``MIG-`` UUID), else torch's own UUID of the device. A MIG
slice is refused with its reason: NVML's energy counter and clocks are the whole GPU's, not the
slice's. Energy sources and the environment record both use this layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class DeviceError(ValueError):
    """A device whose NVML handle cannot be found or used."""


@dataclass
class NVMLDevice:
    nvml: object     # the pynvml module (or a stand-in in tests)
    handle: object
    index: int       # physical NVML index
    uuid: str
    name: str


def load_nvml():
    """(pynvml, None) once initialised, or (None, reason)."""
    try:
        import pynvml  # provided by nvidia-ml-py
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML is not available: {e}"
    return pynvml, None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _visible_entry(ordinal: int) -> str | None:
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None or cvd.strip() == "":
        return None
    entries = [e.strip() for e in cvd.split(",") if e.strip()]
    if ordinal >= len(entries):
        raise DeviceError(f"cuda:{ordinal} is not among CUDA_VISIBLE_DEVICES={cvd!r} ({len(entries)} visible)")
    return entries[ordinal]


def _torch_uuid(ordinal: int) -> str | None:
    try:
        import torch
        u = getattr(torch.cuda.get_device_properties(ordinal), "uuid", None)
    except Exception:  # no CUDA here (tests), or an old torch
        return None
    if u is None:
        return None
    s = str(u)
    return s if s.startswith(("GPU-", "MIG-")) else f"GPU-{s}"


def _handle(nvml, ordinal: int):
    entry = _visible_entry(ordinal)
    if entry is not None and entry.startswith("MIG-"):
        raise DeviceError(f"cuda:{ordinal} is a MIG slice ({entry}); NVML's energy counter and clocks are the "
                          "whole GPU's, so they are not measured for a slice")
    if entry is not None and entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    uuid = entry if entry is not None else _torch_uuid(ordinal)
    if uuid is not None:
        return nvml.nvmlDeviceGetHandleByUUID(uuid.encode() if isinstance(uuid, str) else uuid)
    return nvml.nvmlDeviceGetHandleByIndex(ordinal)  # no visible-devices mapping: ordinals are physical


def _is_mig(nvml, handle) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception:  # not supported (pre-Ampere) or no such call: not MIG
        return False
    return bool(current)


def nvml_device(device) -> NVMLDevice:
    """The NVML device behind a torch device (``torch.device('cuda:1')``, ``'cuda'``, an int)."""
    ordinal = device if isinstance(device, int) else (getattr(device, "index", None) or 0)
    if getattr(device, "type", "cuda") != "cuda":
        raise DeviceError(f"{device} is not a CUDA device; NVML reads NVIDIA GPUs only")
    nvml, reason = load_nvml()
    if nvml is None:
        raise DeviceError(reason)
    try:
        handle = _handle(nvml, ordinal)
    except DeviceError:
        raise
    except Exception as e:
        raise DeviceError(f"no NVML device for cuda:{ordinal} ({type(e).__name__}: {e})") from None
    if _is_mig(nvml, handle):
        raise DeviceError(f"cuda:{ordinal} is a GPU in MIG mode; NVML's energy counter and clocks are the whole "
                          "GPU's, so they are not measured for a slice")
    return NVMLDevice(nvml=nvml, handle=handle, index=int(nvml.nvmlDeviceGetIndex(handle)),
                      uuid=_text(nvml.nvmlDeviceGetUUID(handle)), name=_text(nvml.nvmlDeviceGetName(handle)))
