"""Double of vllm.platforms: a machine without a GPU (no device capability)."""

from typing import NamedTuple


class DeviceCapability(NamedTuple):
    major: int
    minor: int


class _NoGpuPlatform:
    device_name = "cpu-double"

    @classmethod
    def get_device_capability(cls, device_id: int = 0) -> DeviceCapability | None:
        return None


current_platform = _NoGpuPlatform()
