"""Data-parallel runs across processes: fastai's `distrib_ctx` (Hugging Face Accelerate, PyTorch DDP).

    torchrun --nproc_per_node 2 -m resnets run cnn ...          # or: accelerate launch -m resnets run cnn ...

Every rank builds the same experiment; fastai wraps the model in DistributedDataParallel and gives each
rank a slice of every epoch's shuffled indices; losses and metrics are gathered over all ranks; only
rank 0 prints and writes the run folder (resnets.training). Importing this module lets fastai's distributed loader share
its indices over gloo (CPU) as well as NCCL: fastai moves them to CUDA unconditionally.
"""

import os

import torch
import torch.distributed as dist
from fastai.distributed import DistributedDL
from fastai.torch_core import defaults
from fastcore.basics import patch

from .errors import InputError

__all__ = ["distributed_ready", "join_process_group", "backend_for"]


@patch
def _broadcast(self: DistributedDL, t, rank):
    "Broadcast the list `t` from `rank`, on the device the process group's backend works with."
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(t, dtype=torch.long, device=device)
    dist.broadcast(t, rank)
    return t.cpu().tolist()


def distributed_ready() -> None:
    "Raise an InputError naming the fix unless fastai's distributed training can run here (it needs Accelerate)."
    try:
        import accelerate  # noqa: F401  (an optional extra: fastai's distrib_ctx is built on it)
    except ImportError:
        raise InputError("distributed runs need Hugging Face Accelerate: pip install 'resnets[distributed]'") from None


def join_process_group() -> None:
    """Join the launch's process group before fastai's Accelerator would (it keeps a group that exists), with its
    keys under a prefix of this attempt (torchrun's restart count). A group restarted by torchrun then never reads
    the addresses of the one that died from the store they share: with c10d rendezvous, restarted gloo workers did
    (connectFullMesh refused, every restart in a row, on a loaded machine). gloo on a CPU, NCCL on CUDA."""
    if dist.is_initialized():
        return
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend, device = backend_for(int(os.environ.get("LOCAL_RANK", 0)), gpus, defaults.use_cuda is not False)
    if device is not None:  # before any data or model is made: fastai's default device is then this rank's GPU
        torch.cuda.set_device(device)
    elif gpus:  # fewer GPUs than ranks on this machine: every rank on the CPU, not all of them on cuda:0
        defaults.use_cuda = False
    store, rank, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, rank=rank, world_size=world,
                            store=dist.PrefixStore(f"resnets/attempt-{attempt}", store))


def backend_for(local_rank: int, gpus: int, cuda: bool = True) -> tuple[str, str | None]:
    """The process group's backend, and the CUDA device of the rank `local_rank` on a machine with `gpus` GPUs:
    NCCL with each local rank on its own GPU (fastai's `setup_distrib` sets it the same way) when the data go to
    CUDA (`cuda`: fastai's default where there is one) and there is a GPU for every local rank; else gloo, on the
    CPU (two ranks on one GPU would make NCCL fail, and a run kept on the CPU stays on gloo)."""
    if cuda and gpus > local_rank:
        return "nccl", f"cuda:{local_rank}"
    return "gloo", None
