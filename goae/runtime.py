"""Process runtime: the device, autocast and the torchrun process group. Below every training/eval package.

Stages, the CLI and the library share it (`goae.pipeline` and `goae.data` need it without importing the
training package). What a stage reads from `runtime.*` is read up front in `pick_device` (so the keys a
stage depends on do not hinge on the device it happens to run on).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


# ----------------------------------------------------------------------------------------- device

def pick_device(runtime) -> torch.device:
    """Chosen once per process ('auto' = cuda when available) and passed down."""
    want, threads, tf32 = runtime.device, runtime.threads, runtime.tf32  # every key read, whatever the device
    if threads:
        torch.set_num_threads(threads)
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
        dev = torch.device("cuda")
        if dist.is_available() and dist.is_initialized():  # torchrun: one GPU per local rank
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(dev)  # NCCL collectives (barrier) run on the current device
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return dev
    return torch.device("cpu")


def autocast(device: torch.device, runtime):
    """bf16 autocast on CUDA when enabled; a no-op context on CPU (fp32 keeps CPU runs exact)."""
    enabled = bool(runtime.bf16) and device.type == "cuda"  # bf16 read on every device (a declared key)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


# ------------------------------------------------------------------------------------------- DDP

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group torchrun set up (env:// rendezvous); single process otherwise."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return Dist()
    if not dist.is_initialized():
        # gloo for CPU tensors, NCCL for CUDA ones: right whichever device runtime.device picks
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
