"""Detectron2's ``launch``, with a CPU fallback for Detectron2 releases whose ``launch`` needs CUDA.

Detectron2 main starts its worker processes on the CPU with the gloo backend when CUDA is not
available. Detectron2 v0.6 asserts CUDA and hard-codes NCCL in its workers, so ``--num-gpus 2``
fails on a CPU machine. :func:`launch` calls Detectron2's ``launch`` wherever it works and starts
the workers itself (gloo, one machine) only for CPU runs on a Detectron2 without CPU support.
The two changes came in one Detectron2 commit, so the public
``detectron2.utils.comm.create_local_process_group`` of that commit tells them apart.
"""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm

from ..utils.errors import ClearCLIPError


def detectron2_launch_runs_on_cpu() -> bool:
    """Whether the installed Detectron2's ``launch`` starts gloo workers when CUDA is missing."""
    return hasattr(comm, "create_local_process_group")


def needs_cpu_fallback(num_processes: int, num_machines: int) -> bool:
    """Whether :func:`launch` starts the workers itself: several processes, no CUDA, and a
    Detectron2 whose ``launch`` would assert CUDA."""
    multi_process = num_processes * num_machines > 1
    return multi_process and not torch.cuda.is_available() and not detectron2_launch_runs_on_cpu()


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0, dist_url=None, args=()):
    """Detectron2's ``launch(main_func, num_gpus_per_machine, ...)`` with the same arguments;
    on a CPU machine with a Detectron2 that cannot (v0.6), ``num_gpus_per_machine`` gloo processes
    on this machine instead."""
    if not needs_cpu_fallback(num_gpus_per_machine, num_machines):
        return detectron2_launch(
            main_func, num_gpus_per_machine, num_machines=num_machines, machine_rank=machine_rank,
            dist_url=dist_url, args=args,
        )
    if num_machines != 1:
        raise ClearCLIPError(
            f"--num-machines {num_machines} on a machine without CUDA needs Detectron2 main "
            "(this Detectron2's launch supports CPU processes on one machine only through clearclip_d2): "
            "use --num-machines 1 or install Detectron2 main"
        )
    if not dist_url or dist_url == "auto":
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    mp.spawn(cpu_worker, nprocs=num_gpus_per_machine, args=(main_func, num_gpus_per_machine, dist_url, args), daemon=False)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (it may be taken again before use; Detectron2 does the same)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_worker(rank: int, main_func, world_size: int, dist_url: str, args) -> None:
    """Process ``rank`` of ``world_size`` on this machine: join the gloo group, run ``main_func(*args)``.

    Detectron2 v0.6 has no public way to set its local process group, so its ``get_local_rank``
    stays unusable here; evaluation (the plugin's use) needs only the global group.
    """
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=rank)
    try:
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()
