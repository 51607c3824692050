"""Data-parallel training: the process group, the sampler, DistributedDataParallel and the sums.

    torchrun --nproc_per_node=2 lab.py c2 --dataset synthetic --train-size 512

Every process (rank) holds a whole ResNet-18 and trains on its share of the data set;
DistributedDataParallel averages the gradients across the ranks with an all-reduce during the
backward pass, so every rank takes the same optimizer step. torchrun starts the processes and
tears them all down when one fails; this file only validates, joins and sums. train.fit uses it
when `current_world()` says the process was started by torchrun.
"""

import datetime
import hashlib
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from machine import usable_cores

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                      "MASTER_ADDR", "MASTER_PORT")
# Long enough for rank 0 to evaluate or save while the others wait at the next collective;
# short enough that a lost rank ends the run in minutes (torch's default is 10 to 30).
TIMEOUT = datetime.timedelta(minutes=5)
# How long a rank that stops on bad input waits for the others to reach the same line.
STOP_WAIT = datetime.timedelta(seconds=15)
TIMING_KEYS = ("data_time", "train_time", "other_time", "epoch_time", "first_batch_time",
               "last_train_time")


class DistributedError(Exception):
    """The distributed run cannot start or went wrong; the message is one line that says why."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started."""

    rank: int               # 0 .. world_size - 1, across all machines
    local_rank: int         # 0 .. local_world_size - 1, on this machine: the GPU it uses
    world_size: int
    local_world_size: int
    backend: str            # "nccl" on CUDA, "gloo" on the CPU
    device: str             # "cuda:1", "cpu"
    threads: int = None     # torch threads per process on the CPU; None on CUDA

    @property
    def is_main(self):
        return self.rank == 0


def launched_by_torchrun():
    """True when the environment holds what torchrun gives each process it starts."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def check_request(device_type, sync_bn, local_world_size, gpus):
    """Raise DistributedError unless the request can run. It reads nothing another rank on this
    machine could see differently, so every rank raises the same line, before any of them
    waits for the others."""
    if device_type not in ("cuda", "cpu"):
        raise DistributedError(f"data-parallel training runs on 'cuda' (nccl) or 'cpu' (gloo), "
                               f"not {device_type!r}")
    if device_type == "cuda" and gpus == 0:
        raise DistributedError("CUDA was asked for but torch sees no GPU on this machine")
    if device_type == "cuda" and local_world_size > gpus:
        raise DistributedError(f"{local_world_size} processes on this machine but {gpus} "
                               f"GPU{'' if gpus == 1 else 's'}: use --nproc_per_node {gpus} "
                               "or fewer, one process per GPU")
    if device_type == "cpu" and sync_bn:
        raise DistributedError("SyncBatchNorm needs GPU tensors: on the CPU torch refuses it "
                               "('SyncBatchNorm expected input tensor to be on GPU'); drop "
                               "--sync-bn or run on CUDA")


def start(device_type, sync_bn=False, timeout=TIMEOUT):
    """Join the process group torchrun set up and return this process's World.

    On CUDA each process takes the GPU numbered by its local rank; on the CPU the usable
    cores are shared out, so two processes on two cores do not each start two threads.
    """
    if not launched_by_torchrun():
        raise DistributedError("not started by torchrun (no RANK, WORLD_SIZE, ... in the "
                               "environment): run it as torchrun --nproc_per_node=N ...")
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world_size = int(os.environ["LOCAL_WORLD_SIZE"])
    check_request(device_type, sync_bn, local_world_size, torch.cuda.device_count())
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)  # before init: nccl binds each rank to its device
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = "cpu", "gloo"
        # torchrun's OMP_NUM_THREADS=1 would leave cores idle: share them out instead.
        torch.set_num_threads(max(1, usable_cores() // local_world_size))
    try:
        dist.init_process_group(backend, timeout=timeout,
                                device_id=torch.device(device) if backend == "nccl" else None)
    except dist.DistError as error:  # DistNetworkError, DistStoreError: no world to join
        raise DistributedError(cannot_join(error)) from None
    return current_world()


def cannot_join(error):
    """Why init_process_group failed, in one line: the address it tried, and the cause."""
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    if "EADDRINUSE" in str(error):  # a launcher's MASTER_PORT that another program holds
        return (f"cannot start the process group at {where} (MASTER_ADDR:MASTER_PORT): the "
                "port is in use by another program; choose a free MASTER_PORT")
    lines = str(error).strip().splitlines() or [""]
    return f"cannot join the process group at {where}: {type(error).__name__}: {lines[0]}"


def stop_together(timeout=STOP_WAIT):
    """Under torchrun, before the process group exists: wait, at most `timeout`, until every
    rank has reached this call, then return.

    torchrun stops every process once one of them exits with an error. Bad input fails on
    every rank alike, but a rank still importing torch would be stopped before it prints its
    line; each rank prints first, then waits here, so every rank's line is printed. The count
    is kept in torchrun's own store (at MASTER_ADDR:MASTER_PORT; without torchrun's agent,
    rank 0 holds it, as init_process_group would). Best effort: a store that cannot be
    reached means no wait.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    deadline = time.monotonic() + timeout.total_seconds()
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              world_size, is_master=hosts, timeout=timeout,
                              wait_for_workers=False)
        store.add("lab.py stopping", 1)
        while store.add("lab.py stopping", 0) < world_size and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:  # no store (a busy port, a rank 0 gone): each rank has printed already
        pass


def stop():
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def current_world():
    """This process's World once start() has joined the process group, else None.

    Read from torch.distributed and torchrun's variables, which hold the state: nothing here
    keeps any of its own.
    """
    if not dist.is_initialized():
        return None
    backend = dist.get_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return World(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(),
                 local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)), backend=backend,
                 device=f"cuda:{local_rank}" if backend == "nccl" else "cpu",
                 threads=None if backend == "nccl" else torch.get_num_threads())


def wrap(model, world, sync_bn=False, sync_buffers=True):
    """The model in DistributedDataParallel; with sync_bn, BatchNorm statistics are computed
    over the global batch instead of each rank's share of it.

    With sync_buffers (DDP's default) rank 0's buffers, BatchNorm's running statistics, are
    broadcast at the start of every forward pass that follows a synchronised one; without it
    they are copied only once, here, and each rank's then follow its own batches.
    """
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [world.local_rank] if world.backend == "nccl" else None
    return DistributedDataParallel(model, device_ids=device_ids,
                                   forward_sync_buffers=sync_buffers)


def sampler(dataset, world, seed):
    """This rank's share of each epoch: a shuffled, seeded DistributedSampler.

    Call `sampler.set_epoch(epoch)` before each epoch, or every epoch repeats the first one's
    order. With drop_last False a data set that does not split evenly is padded with its first
    indices, so a few images are seen twice per epoch (and counted twice by reduce_epoch).
    """
    return DistributedSampler(dataset, num_replicas=world.world_size, rank=world.rank,
                              shuffle=True, seed=seed, drop_last=False)


def weights_digest(model, buffers=True):
    """SHA-256 of the model's state_dict (of its parameters alone without `buffers`), its
    first 16 hex digits."""
    digest = hashlib.sha256()
    tensors = model.state_dict().values() if buffers else model.parameters()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def ranks_differing(value, world):
    """Every rank's `value` (a string) gathered, and the ranks whose value is not rank 0's."""
    values = [None] * world.world_size
    dist.all_gather_object(values, value)
    return values, [rank for rank, theirs in enumerate(values) if theirs != values[0]]


def same_initial_weights(model, world):
    """The weights' hash, after checking that every rank has the same one.

    DDP copies rank 0's weights to the others when it wraps the model anyway; this is the
    evidence that seeding alone already made them equal.
    """
    mine = weights_digest(model)
    hashes, differ = ranks_differing(mine, world)
    if differ:
        raise DistributedError(f"initial weights differ from rank 0's ({hashes[0]}) on rank"
                               f"{'' if len(differ) == 1 else 's'} "
                               f"{', '.join(map(str, differ))}")
    return mine


def reduce_epoch(epoch, world):
    """One rank's train_one_epoch figures turned into the whole world's; the same on every rank.

    Loss and accuracy are over all ranks' images (sums, then a division), `images` is the
    total, and each time is the slowest rank's, which sets the pace; "rank_mean" holds the
    mean of each time over the ranks.
    """
    images = epoch["images"]
    correct = round(epoch["train_accuracy"] * images / 100)
    totals = torch.tensor([epoch["train_loss"] * images, correct, images],
                          dtype=torch.float64, device=world.device)       # (3,)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    times = torch.tensor([math.nan if epoch[key] is None else epoch[key] for key in TIMING_KEYS],
                         dtype=torch.float64, device=world.device)        # (6,)
    slowest, summed = times.clone(), times.clone()
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    loss_sum, correct, images = totals.tolist()
    seen = max(images, 1)

    def figures(values):
        return {key: None if math.isnan(value) else value  # NaN stood for None
                for key, value in zip(TIMING_KEYS, values)}

    return {"train_loss": loss_sum / seen, "train_accuracy": 100.0 * correct / seen,
            "images": int(images), **figures(slowest.tolist()),
            "rank_mean": figures((summed / world.world_size).tolist())}


def world_facts(world, batch_size, sync_bn):
    """What a results file records about the world a run trained in."""
    return {"world_size": world.world_size, "backend": world.backend,
            "batch_per_rank": batch_size, "global_batch": batch_size * world.world_size,
            "lr_scaled": False, "sync_bn": sync_bn, "threads_per_rank": world.threads}
