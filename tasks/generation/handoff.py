"""Handing one GPU back and forth between the vLLM engine and in-process work (training, reward-model scoring).

On a GPU the engine holds about `gpu_memory_utilization` of the device. Before in-process work,
`tasks.generation.release_accelerator()` puts it to sleep (level 1: weights copied to CPU memory, KV cache
dropped); `tasks.generation.get_engine()` wakes it again. This module holds what that hand-off needs without
vLLM: freeing this process's cached GPU memory, and the rule that decides whether the engine fits back.

The rule (`wake_needed_bytes`): waking maps back exactly the memory pools that sleeping gave up (weights
and KV cache); what the engine keeps while asleep (CUDA context, graphs, NCCL buffers) it still holds, so
it needs nothing new. So the need is what `sleep()` released, measured as the rise in the device's free
memory around it. When there is no usable measurement (nothing measured, or the free memory fell because
something else allocated at the same moment), the bound is the engine's whole budget,
`gpu_memory_utilization × total`: too high by what the sleeping engine keeps, never too low. On top of it
`WAKE_HEADROOM_BYTES` stays free for the in-place weight reload after waking. With tensor_parallel_size > 1
only this process's current device is checked: in-process training and scoring run there, and the other
devices hold nothing but the engine's own share.

Nothing here imports torch at module level: the CPU path and the tests of the rule run without CUDA.
"""

from __future__ import annotations

import gc

GIB = 1024**3
# After waking, the in-place reload materializes one layer at a time next to the weights before copying it
# into their storage, and the allocator rounds mappings up: keep this much free beyond the pools themselves.
WAKE_HEADROOM_BYTES = GIB // 2


def free_accelerator_memory() -> None:
    """Free what this process no longer uses: collect unreachable models, then return cached CUDA blocks.

    A finished trainer and its model sit in reference cycles (callbacks, the accelerator's prepared
    models), which reference counting alone never frees; and PyTorch keeps freed blocks cached for reuse,
    where the engine's child process cannot get at them. A no-op for the GPU on a machine without CUDA.
    """
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_memory() -> tuple[int, int]:
    """(free, total) bytes of this process's current CUDA device, as the driver reports them (all processes)."""
    import torch

    return torch.cuda.mem_get_info()


def wake_needed_bytes(total_bytes: int, utilization: float, released_bytes: int | None) -> int:
    """Bytes a sleeping engine maps back when it wakes (see the module docstring for the rule).

    >>> GIB = 1024**3
    >>> wake_needed_bytes(80 * GIB, 0.85, 60 * GIB) // GIB      # measured: what sleep() gave up
    60
    >>> wake_needed_bytes(80 * GIB, 0.5, None) // GIB           # not measured: the whole budget
    40
    >>> wake_needed_bytes(80 * GIB, 0.5, -2 * GIB) // GIB       # something allocated during sleep(): unusable
    40
    >>> wake_needed_bytes(80 * GIB, 0.5, 70 * GIB) // GIB       # never more than the budget
    40
    """
    budget = int(utilization * total_bytes)
    if released_bytes is None or released_bytes <= 0:
        return budget
    return min(released_bytes, budget)


def wake_memory_error(
    free_bytes: int,
    total_bytes: int,
    utilization: float,
    released_bytes: int | None,
    *,
    model: str,
    headroom_bytes: int = WAKE_HEADROOM_BYTES,
) -> str | None:
    """Why the engine cannot wake in `free_bytes` (the message of the EngineError), or None when it fits.

    >>> GIB = 1024**3
    >>> wake_memory_error(70 * GIB, 80 * GIB, 0.85, 60 * GIB, model="m") is None
    True
    >>> print(wake_memory_error(20 * GIB, 80 * GIB, 0.85, 60 * GIB, model="m"))  # doctest: +ELLIPSIS
    cannot wake the vLLM engine of m: the GPU has 20.0 GiB free, the engine needs 60.5 GiB (60.0 GiB ...
    """
    needed = wake_needed_bytes(total_bytes, utilization, released_bytes) + headroom_bytes
    if free_bytes >= needed:
        return None
    basis = (
        f"{released_bytes / GIB:.1f} GiB its sleep released"
        if released_bytes is not None and 0 < released_bytes <= utilization * total_bytes
        else f"gpu_memory_utilization {utilization} of {total_bytes / GIB:.1f} GiB"
    )
    return (
        f"cannot wake the vLLM engine of {model}: the GPU has {free_bytes / GIB:.1f} GiB free, the engine needs "
        f"{needed / GIB:.1f} GiB ({basis}, plus {headroom_bytes / GIB:.1f} GiB for the weight reload). Something "
        "in this process (a model still referenced after training or scoring) or another process holds the "
        "rest: lower generation.engine.gpu_memory_utilization, or train through the launcher "
        "(training.launcher.kind: accelerate), whose processes give their memory back when they exit"
    )
