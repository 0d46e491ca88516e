"""Memory of this process (host RSS) and of the CUDA device, as the `memory/*` tags report it."""

from __future__ import annotations

import sys

import torch

from lit_lora.constants import MB


def host_memory_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MB. The peak is the OS's high-water mark since
    the process started: it cannot be reset, so unlike the CUDA peak it never goes down between epochs."""
    import psutil

    info = psutil.Process().memory_info()
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_bytes = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
    except ImportError:  # Windows
        peak_bytes = getattr(info, "peak_wset", info.rss)
    return info.rss / MB, max(peak_bytes, info.rss) / MB


def memory_metrics(device: torch.device) -> dict[str, float]:
    """The `memory/*` scalars for `device`: host RSS always, and the CUDA allocator's view on a GPU."""
    rss, peak_rss = host_memory_mb()
    out = {"memory/rss_mb": rss, "memory/peak_rss_mb": peak_rss}
    if device.type == "cuda":
        # Allocator counters and cudaMemGetInfo: host-side queries that do not wait for queued kernels.
        free, total = torch.cuda.mem_get_info(device)
        out.update(
            {
                "memory/allocated_mb": torch.cuda.memory_allocated(device) / MB,
                "memory/reserved_mb": torch.cuda.memory_reserved(device) / MB,
                "memory/peak_allocated_mb": torch.cuda.max_memory_allocated(device) / MB,
                "memory/free_mb": free / MB,
                "memory/total_mb": total / MB,
            }
        )
    return out


def device_memory_mb(device: torch.device) -> float:
    """What the device holding the model uses now: CUDA allocated memory, or this process's RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / MB
    return host_memory_mb()[0]
