"""Runtime per image (Table 1 "Time (s)"): device-synchronised wall clock, warm-up excluded."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # CUDA launches are async: wait before reading the clock


@torch.no_grad()
def time_per_image(fn: Callable[[Any], Any], batch: Any, device: torch.device | str,
                   warmup: int = 2, repeats: int = 5, n_images: int | None = None) -> float:
    """Median over `repeats` timed calls of fn(batch), divided by the batch size (seconds/image).

    `n_images` defaults to batch.shape[0] (tensor) or len(batch). Runs under no_grad (inference).
    """
    device = torch.device(device)
    n = n_images if n_images is not None else (batch.shape[0] if torch.is_tensor(batch) else len(batch))
    assert n > 0 and repeats > 0, (n, repeats)
    for _ in range(warmup):
        fn(batch)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / n
