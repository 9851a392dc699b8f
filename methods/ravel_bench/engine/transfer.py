"""Host-to-device copies that do not stall the GPU.

A plain ``tensor.to("cuda")`` from ordinary (pageable) host memory synchronizes the stream: the
host waits until the GPU has run everything queued before it, so the GPU idles while Python
prepares the next batch, and every batch costs its Python time plus its GPU time. A copy from
pinned memory with ``non_blocking=True`` is queued like a kernel instead. PyTorch's caching host
allocator reuses pinned blocks and keeps each one until its copy has finished, so pinning a
small index tensor per batch is cheap and safe.
"""

from collections.abc import Mapping

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy ``tensor`` to ``device``; a CPU-to-CUDA copy is queued without waiting.

    Same values and dtype as ``tensor.to(device)``; a tensor already on ``device`` is returned
    as it is.
    """
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def batch_to_device(
    batch: Mapping[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """:func:`to_device` on every tensor of a batch dict."""
    return {k: to_device(v, device) for k, v in batch.items()}
