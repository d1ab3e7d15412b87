"""What this machine's matrix units can do, read once from the OS (no benchmark, no guess).

Plugins ask here before choosing a precision: bf16 on a CPU without AMX or AVX512-BF16 is
emulated and slower than fp32, so every ``auto`` setting stays fp32 there.
"""

from __future__ import annotations

from pathlib import Path

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bf16 matmul features this CPU reports (``amx_bf16``, ``avx512_bf16``); empty where it has none."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def native_bf16(device_type: str) -> bool:
    """Whether bf16 matrix products run natively on ``device_type`` (``cuda`` or ``cpu``) here."""
    import torch

    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        return bool(cpu_bf16_flags())
    return False
