"""The device layer against a fake NVML: which physical GPU a torch device is, under
CUDA_VISIBLE_DEVICES given as indices or UUIDs, MIG refused, and energy sources per architecture."""

import sys
import types

import pytest
import torch

from profiler import device as D
from profiler.energy import NoEnergy, NVMLEnergy, NVMLPowerSampling, open_source


class FakeNVML(types.SimpleNamespace):
    """Four physical GPUs; GPU 2 is in MIG mode; GPUs of architecture < Volta have no energy counter."""

    class NVMLError(Exception):
        pass

    def __init__(self, arch=("hopper", "hopper", "ampere", "pascal")):
        super().__init__()
        self.gpus = [{"uuid": f"GPU-{i:04d}", "name": f"Fake GPU {i}", "mig": i == 2, "arch": a, "energy_mj": 1000 * i}
                     for i, a in enumerate(arch)]
        self.NVML_CLOCK_SM, self.NVML_CLOCK_MEM, self.NVML_TEMPERATURE_GPU = 0, 1, 0

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.gpus):
            raise self.NVMLError(f"invalid index {i}")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, g in enumerate(self.gpus):
            if g["uuid"] == uuid:
                return i
        raise self.NVMLError(f"no GPU with UUID {uuid}")

    def nvmlDeviceGetIndex(self, h):
        return h

    def nvmlDeviceGetUUID(self, h):
        return self.gpus[h]["uuid"].encode()

    def nvmlDeviceGetName(self, h):
        return self.gpus[h]["name"]

    def nvmlDeviceGetMigMode(self, h):
        return (1 if self.gpus[h]["mig"] else 0, 0)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.gpus[h]["arch"] == "pascal":
            raise self.NVMLError("Not Supported")
        return self.gpus[h]["energy_mj"]

    def nvmlDeviceGetPowerUsage(self, h):
        return 100_000

    def nvmlSystemGetDriverVersion(self):
        return "580.00"

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980

    nvmlDeviceGetMaxClockInfo = nvmlDeviceGetClockInfo

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return 700_000

    def nvmlDeviceGetTemperature(self, h, kind):
        return 40

    def nvmlDeviceGetPersistenceMode(self, h):
        return 1


@pytest.fixture
def fake(monkeypatch):
    nv = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(D, "_torch_uuid", lambda ordinal: None)  # no CUDA here: the fallback is the index
    return nv


@pytest.mark.parametrize("visible, ordinal, physical", [
    (None, 0, 0), (None, 1, 1),             # nothing hidden: ordinals are physical
    ("3,1", 0, 3), ("3,1", 1, 1),           # Ray gives an actor physical GPU 3 as its cuda:0
    ("GPU-0001,GPU-0000", 0, 1),            # UUIDs in CUDA_VISIBLE_DEVICES
])
def test_a_torch_device_maps_to_its_physical_gpu(fake, monkeypatch, visible, ordinal, physical):
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    dev = D.nvml_device(torch.device("cuda", ordinal))
    assert dev.index == physical and dev.uuid == f"GPU-{physical:04d}"


def test_torch_uuid_is_used_when_nothing_is_hidden(fake, monkeypatch):
    monkeypatch.setattr(D, "_torch_uuid", lambda ordinal: "GPU-0003")
    assert D.nvml_device(torch.device("cuda", 0)).index == 3


def test_mig_and_bad_ordinals_are_refused_with_the_reason(fake, monkeypatch):
    with pytest.raises(D.DeviceError, match="cuda:2 is a GPU in MIG mode"):
        D.nvml_device(torch.device("cuda", 2))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-abcd")
    with pytest.raises(D.DeviceError, match="cuda:0 is a MIG slice \\(MIG-abcd\\)"):
        D.nvml_device(torch.device("cuda", 0))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(D.DeviceError, match="cuda:1 is not among CUDA_VISIBLE_DEVICES='0'"):
        D.nvml_device(torch.device("cuda", 1))
    with pytest.raises(D.DeviceError, match="not a CUDA device"):
        D.nvml_device(torch.device("cpu"))


def test_energy_sources_follow_the_device_and_the_architecture(fake, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3,2")
    src = open_source(torch.device("cuda", 0))  # physical 1: Hopper, counter
    assert isinstance(src, NVMLEnergy) and src.dev.index == 1 and src._read_j() == 1.0
    old = open_source(torch.device("cuda", 1))  # physical 3: Pascal, no counter -> power sampling
    assert isinstance(old, NVMLPowerSampling) and old.dev.index == 3
    mig = open_source(torch.device("cuda", 2))  # physical 2: MIG -> no energy, with the reason
    assert isinstance(mig, NoEnergy) and "MIG mode" in mig.unavailable_reason
    with pytest.raises(ValueError, match="energy source 'zeus' is not allowed; use one of auto, nvml, power, none"):
        open_source(torch.device("cuda", 0), "zeus")


def test_environment_reads_the_mapped_gpu(fake, monkeypatch):
    from profiler.environment import _nvml_gpu
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    env = _nvml_gpu(torch.device("cuda", 0))
    assert env["nvml_index"] == 3 and env["gpu_uuid"] == "GPU-0003" and env["power_limit_w"] == 700
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert "MIG" in _nvml_gpu(torch.device("cuda", 0))["nvml_unavailable_reason"]
