"""The data-parallel scaling study: `python lab.py ddp`.

    python lab.py ddp --max-procs 2      # world sizes 1 and 2 x batches 32, 128 and 512

For each world size and batch per process, ddp_study launches torchrun on the measuring
process (`lab.py ddp-worker CONFIG OUT`, the run's Config as JSON), which times a DDP training
step with the gradient all-reduce and under `model.no_sync()` (computation only), and an
all-reduce of ResNet-18's gradients on its own. The building blocks (the process group, the
sampler, DDP, the sums over ranks) are in parallel.py.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace

import torch
import torch.distributed as dist
import torch.nn as nn

from machine import usable_cores
from parallel import DistributedError, same_initial_weights, start, stop, world_facts, wrap
from timing import Timer
from train import make_model, make_optimizer, train_step

STUDY_STEPS = {"cpu": 1, "cuda": 20}    # timed steps per run: a CPU step at batch 512 takes 30 s
STUDY_WARMUP = {"cpu": 1, "cuda": 5}
ALL_REDUCE_REPEATS = 10
RUN_LIMIT_S = 3600                      # one torchrun of the study; a hang is killed after this
WORKER = "ddp-worker"                   # lab.py ddp-worker CONFIG OUT: one run of the study
LAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab.py")
ERROR_PREFIX = "ddp-worker: error: "
EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([\w.]*(?:Error|Exception): .*)")


# ----------------------------------------------------------------------------------------
# The scaling study: the parent launches torchrun, the worker measures


def speedup(rate, base_rate):
    """How many times faster than the baseline (None when either is unknown)."""
    if rate is None or not base_rate:
        return None
    return rate / base_rate


def efficiency(speedup, n):
    """Speed-up per process: 1.0 is perfect scaling."""
    return None if speedup is None else speedup / n


def bus_bandwidth(nbytes, seconds, n):
    """nccl-tests' bus bandwidth of an all-reduce: the algorithm bandwidth (nbytes / seconds)
    times 2(n-1)/n, the share of the data each link carries in a ring, so that it compares
    with the hardware's link speed whatever n is."""
    return 2 * (n - 1) / n * nbytes / seconds


def fixed_batch(batch_size, seed, device):
    """Random CIFAR-shaped images and labels on the device: a step's cost does not depend on
    the pixel values, and no data loading enters the timed window."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, 32, 32, generator=generator)   # (B, 3, 32, 32)
    labels = torch.randint(0, 10, (batch_size,), generator=generator)  # (B,)
    return images.to(device), labels.to(device)


def slowest_rank(values, world):
    """Each value replaced by its largest over the ranks: the slowest rank sets the pace."""
    tensor = torch.tensor(values, dtype=torch.float64, device=world.device)  # (len(values),)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def timed(step, world):
    """Seconds for one call of `step`, every rank starting together (the barrier is outside
    the window) and the device synchronised at both ends."""
    dist.barrier()
    with Timer(world.device) as timer:
        step()
    return timer.elapsed


def measure_steps(cfg, world, warmup):
    """Per-step seconds of the full DDP step and of the same step under no_sync().

    The full step averages the gradients with an all-reduce during the backward pass; under
    `model.no_sync()` DDP skips it, so that step is the computation alone. The two alternate,
    so a load coming and going on the machine hits both alike.
    """
    device = torch.device(world.device)
    model = make_model(cfg, device)
    initial_weights = same_initial_weights(model, world)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    model = wrap(model, world)
    images, labels = fixed_batch(cfg.batch_size, cfg.seed + world.rank, device)
    criterion = nn.CrossEntropyLoss()
    losses = []

    def step():
        losses.append(train_step(model, optimizer, criterion, images, labels)[1].detach())

    for _ in range(warmup):  # the first steps allocate memory and pick kernels
        step()
    full, computation = [], []
    for _ in range(cfg.ddp_steps):
        full.append(timed(step, world))
        with model.no_sync():
            computation.append(timed(step, world))
    return {"initial_weights_sha256": initial_weights,
            "gradient_floats": sum(p.numel() for p in model.parameters()),
            "full_step": slowest_rank(full, world),
            "computation_step": slowest_rank(computation, world),
            "final_loss": losses[-1].item()}


def time_all_reduce(floats, world, repeats=ALL_REDUCE_REPEATS):
    """Seconds per all-reduce of `floats` float32 numbers (the gradient's size), averaged over
    back-to-back repeats as nccl-tests does; the slowest rank's figure. None for one process."""
    if world.world_size == 1:
        return None
    tensor = torch.zeros(floats, dtype=torch.float32, device=world.device)  # (floats,)
    dist.all_reduce(tensor)  # warm-up: the first call sets up the connections
    dist.barrier()
    with Timer(world.device) as timer:
        for _ in range(repeats):
            dist.all_reduce(tensor)
    return slowest_rank([timer.elapsed / repeats], world)[0]


def run_worker(cfg, out):
    """The study's measuring process: one world size, at cfg.batch_size per process and
    cfg.ddp_steps timed steps of each kind; rank 0 writes the figures to `out`."""
    begin = time.perf_counter()
    world = start(cfg.device)
    init_time = time.perf_counter() - begin
    warmup = STUDY_WARMUP.get(cfg.device, STUDY_WARMUP["cpu"])
    try:
        figures = measure_steps(cfg, world, warmup)
        figures["all_reduce_time"] = time_all_reduce(figures["gradient_floats"], world)
        if world.is_main:
            record = {"world": world_facts(world, cfg.batch_size, sync_bn=False),
                      "init_time": init_time, "steps": cfg.ddp_steps, "warmup": warmup,
                      **figures}
            with open(out, "w") as file:
                json.dump(record, file, indent=2)
    finally:
        stop()


def worker_main(cfg, out):
    """`lab.py ddp-worker CONFIG OUT` under torchrun: run_worker, and the exit status.

    Every failure ends in one line that starts with ERROR_PREFIX, which the study reads back
    as the run's reason; a DistributedError reads the same on every rank.
    """
    try:
        run_worker(cfg, out)
    except DistributedError as error:
        print(ERROR_PREFIX + str(error), file=sys.stderr, flush=True)
        return 2
    except Exception as error:
        traceback.print_exc()
        first_line = (str(error).splitlines() or [""])[0]
        print(f"{ERROR_PREFIX}rank {os.environ.get('RANK', '?')}: {type(error).__name__}: "
              f"{first_line}", file=sys.stderr, flush=True)
        return 1
    return 0


def ddp_study(cfg, save=None):
    """Time data-parallel training steps for world sizes 1, 2, 4, ... and batch sizes per process.

    Each (world size, batch size) is one torchrun of `lab.py ddp-worker`; `save(result)` is
    called after each. A run that fails is kept with its one-line reason and the study goes on.
    The images are random tensors already on the device, whatever cfg.dataset says: data
    loading is C2's subject, and here it would only blur the step.
    """
    device = torch.device(cfg.device).type
    max_procs = cfg.max_procs
    if max_procs is None:
        max_procs = max(1, torch.cuda.device_count()) if device == "cuda" else 2
    batch_sizes = tuple(cfg.ddp_batch_sizes)
    steps = cfg.ddp_steps or STUDY_STEPS.get(device, STUDY_STEPS["cpu"])
    warmup = STUDY_WARMUP.get(device, STUDY_WARMUP["cpu"])
    world_sizes = sorted({2 ** k for k in range(max(max_procs, 1).bit_length())} | {max_procs})
    result = {"study_device": device, "max_procs": max_procs, "world_sizes": world_sizes,
              "batch_sizes": list(batch_sizes), "steps": steps, "warmup": warmup,
              "usable_cores": usable_cores(), "runs": []}
    for n in world_sizes:
        for batch_size in batch_sizes:
            run = launch_run(replace(cfg, device=device, batch_size=batch_size,
                                     ddp_steps=steps), n)
            base = run if n == 1 else next((r for r in result["runs"] if r["world_size"] == 1
                                            and r["batch_per_rank"] == batch_size), None)
            run["speedup"] = speedup(run.get("images_per_second"),
                                     base and base.get("images_per_second"))
            run["efficiency"] = efficiency(run["speedup"], n)
            result["runs"].append(run)
            print(f"ddp: {n} × batch {batch_size}: " + (
                f"{run['images_per_second']:.1f} images/s" if run["ok"] else run["reason"]),
                file=sys.stderr, flush=True)
            if save is not None:
                save(result)
    return result


def launch_run(cfg, n):
    """One torchrun of n workers, cfg.batch_size per process: the run's figures, or its reason."""
    run = {"world_size": n, "batch_per_rank": cfg.batch_size, "global_batch": n * cfg.batch_size}
    with tempfile.TemporaryDirectory(prefix="ddp-") as folder:
        out = os.path.join(folder, "worker.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(n), LAB, WORKER, json.dumps(asdict(cfg)), out]
        begin = time.perf_counter()
        returncode, stderr = run_torchrun(command, RUN_LIMIT_S)
        run["wall_time"] = time.perf_counter() - begin
        record = _read_record(out) if returncode == 0 else None
    if record is None:
        return {**run, "ok": False, "reason": failure_reason(returncode, stderr)}
    return {**run, "ok": True, **summarize_record(record)}


def run_torchrun(command, limit_s):
    """(exit status, stderr) of `command`; past limit_s torchrun is sent SIGTERM, on which it
    stops the workers it started (as it does on Ctrl-C)."""
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as process:
        try:
            stderr = process.communicate(timeout=limit_s)[1]
        except subprocess.TimeoutExpired:
            process.terminate()
            process.communicate()
            return None, f"{ERROR_PREFIX}no result after {limit_s} s, so it was stopped"
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: the study's ranks stop too
            process.terminate()
            process.communicate()
            raise
    return process.returncode, stderr


def _read_record(path):
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def failure_reason(returncode, stderr):
    """One line: the worker's own error line (main() prints one for every exception), else the
    last exception a worker printed (one that failed before main(), at an import), else the
    exit status."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):]
    for line in reversed(lines):
        match = EXCEPTION_LINE.match(line)
        if match and "ChildFailedError" not in line:  # torchrun's own summary, not the cause
            return match.group(1)
    if returncode == 0:
        return "the worker exited without writing its results"
    return f"torchrun exited with status {returncode}"


def summarize_record(record):
    """The worker's raw timings as the study reports them (times in seconds, per step)."""
    world = record["world"]
    n, global_batch = world["world_size"], world["global_batch"]
    full, computation = record["full_step"], record["computation_step"]
    step_time = sum(full) / len(full)
    computation_time = sum(computation) / len(computation)
    communication_time = step_time - computation_time  # what the all-reduce adds, not hidden
    summary = {"backend": world["backend"], "threads_per_rank": world["threads_per_rank"],
               "init_time": record["init_time"], "steps": record["steps"],
               "images_per_second": global_batch * len(full) / sum(full),
               "step_time": step_time, "computation_time": computation_time,
               "communication_time": communication_time,
               "communication_share": communication_time / step_time,
               "initial_weights_sha256": record["initial_weights_sha256"],
               "final_loss": record["final_loss"], "all_reduce": None}
    seconds = record["all_reduce_time"]
    if seconds is not None:
        nbytes = 4 * record["gradient_floats"]  # float32
        summary["all_reduce"] = {"floats": record["gradient_floats"], "bytes": nbytes,
                                 "seconds": seconds, "algorithm_bandwidth": nbytes / seconds,
                                 "bus_bandwidth": bus_bandwidth(nbytes, seconds, n)}
    return summary
