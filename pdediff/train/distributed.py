"""Single-process or ``torchrun`` (DDP) execution: process group, device, agreement.

``torchrun --nproc_per_node P -m pdediff.cli train ...`` starts ``P`` processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; each joins one process
group (NCCL on CUDA, gloo on CPU).  Without those variables training runs in this process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pdediff.errors import PdediffError

__all__ = ["Dist", "agree", "init_distributed", "resolve_device", "state_digest"]


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA if available (the process's own GPU under torchrun), else CPU."""
    if str(device) == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise PdediffError(f"bad device {str(device)!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PdediffError(f"device {device} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


@dataclass
class Dist:
    """This process's place in the (possibly one-process) group.

    Attributes
    ----------
    rank, world_size, local_rank
        As set by ``torchrun`` (0, 1, 0 for a single process).
    device
        Where this process computes.
    owns_group
        Whether :func:`init_distributed` created the process group (and so destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self, clean: bool = True) -> None:
        """Destroy the group this object created; ``clean``: after all ranks arrive (a
        rank leaving while another still talks to it can abort the other)."""
        if self.owns_group and dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()


def init_distributed(device: str | torch.device = "auto") -> Dist:
    """Join the process group ``torchrun`` describes in the environment, if any.

    An already initialised group (a caller's) is used and left open.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return Dist(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


def agree(d: Dist, ok: bool) -> bool:
    """True when ``ok`` on every rank: a failure on one process stops all of them instead
    of leaving the others waiting in a collective."""
    if not d.active:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=_comm_device(d))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_mean(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ranks (a no-op for one process)."""
    if not d.active:
        return values
    values = values.detach().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / d.world_size


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of the bytes of every parameter and buffer, in ``state_dict`` order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_digests(d: Dist, digest: str) -> list[str]:
    """Every rank's ``digest`` (hex SHA-256), in rank order."""
    if not d.active:
        return [digest]
    local = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.int64, device=_comm_device(d))
    out = [torch.empty_like(local) for _ in range(d.world_size)]
    dist.all_gather(out, local)
    return [bytes(t.cpu().tolist()).hex() for t in out]


def _comm_device(d: Dist) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return d.device if dist.get_backend() == "nccl" else torch.device("cpu")
