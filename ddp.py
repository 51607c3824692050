"""The data-parallel scaling study: `python lab.py ddp`.

    python lab.py ddp --max-procs 2 --dataset synthetic   # world sizes 1, 2 x batches 32/128/512

For each world size and batch per process, ddp_study launches torchrun on this file's worker,
which times a DDP training step with the gradient all-reduce and under `model.no_sync()`
(computation only), and an all-reduce of ResNet-18's gradients on its own; render_ddp prints
what the figures show. The building blocks (the process group, the sampler, DDP, the sums over
ranks) are in parallel.py.

    torchrun --nproc_per_node=2 ddp.py check-start     # does a 2-process world start here?
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.nn as nn

from machine import usable_cores
from parallel import DistributedError, same_initial_weights, start, stop, world_facts, wrap
from render import markdown_table, one_line, percent, ratio
from timing import Timer
from train import make_model, make_optimizer, train_step

STUDY_BATCH_SIZES = (32, 128, 512)
STUDY_STEPS = {"cpu": 1, "cuda": 20}    # timed steps per run: a CPU step at batch 512 takes 30 s
STUDY_WARMUP = {"cpu": 1, "cuda": 5}
ALL_REDUCE_REPEATS = 10
RUN_LIMIT_S = 3600                      # one torchrun of the study; a hang is killed after this
ERROR_PREFIX = "ddp.py: error: "
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


def measure_steps(args, world):
    """Per-step seconds of the full DDP step and of the same step under no_sync().

    The full step averages the gradients with an all-reduce during the backward pass; under
    `model.no_sync()` DDP skips it, so that step is the computation alone. The two alternate,
    so a load coming and going on the machine hits both alike.
    """
    device = torch.device(world.device)
    model = make_model(args, device)
    initial_weights = same_initial_weights(model, world)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr)
    model = wrap(model, world)
    images, labels = fixed_batch(args.batch_size, args.seed + world.rank, device)
    criterion = nn.CrossEntropyLoss()
    losses = []

    def step():
        losses.append(train_step(model, optimizer, criterion, images, labels)[1].detach())

    for _ in range(args.warmup):  # the first steps allocate memory and pick kernels
        step()
    full, computation = [], []
    for _ in range(args.steps):
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


def run_worker(args):
    """The study's measuring process: one world size, one batch size; rank 0 writes args.out."""
    begin = time.perf_counter()
    world = start(args.device)
    init_time = time.perf_counter() - begin
    try:
        figures = measure_steps(args, world)
        figures["all_reduce_time"] = time_all_reduce(figures["gradient_floats"], world)
        if world.is_main:
            record = {"world": world_facts(world, args.batch_size, sync_bn=False),
                      "init_time": init_time, "steps": args.steps, "warmup": args.warmup,
                      **figures}
            with open(args.out, "w") as file:
                json.dump(record, file, indent=2)
    finally:
        stop()


def ddp_study(cfg, save=None):
    """Time data-parallel training steps for world sizes 1, 2, 4, ... and batch sizes per process.

    Each (world size, batch size) is one torchrun of `ddp.py worker`; `save(result)` is called
    after each. A run that fails is kept with its one-line reason and the study goes on.
    The images are random tensors already on the device, whatever cfg.dataset says: data
    loading is C2's subject, and here it would only blur the step.
    """
    device = torch.device(getattr(cfg, "device", "cpu")).type
    max_procs = getattr(cfg, "max_procs", None)
    if max_procs is None:
        max_procs = max(1, torch.cuda.device_count()) if device == "cuda" else 2
    batch_sizes = tuple(getattr(cfg, "ddp_batch_sizes", None) or STUDY_BATCH_SIZES)
    steps = getattr(cfg, "ddp_steps", None) or STUDY_STEPS.get(device, STUDY_STEPS["cpu"])
    warmup = STUDY_WARMUP.get(device, STUDY_WARMUP["cpu"])
    world_sizes = sorted({2 ** k for k in range(max(max_procs, 1).bit_length())} | {max_procs})
    result = {"study_device": device, "max_procs": max_procs, "world_sizes": world_sizes,
              "batch_sizes": list(batch_sizes), "steps": steps, "warmup": warmup,
              "usable_cores": usable_cores(), "runs": []}
    for n in world_sizes:
        for batch_size in batch_sizes:
            run = launch_run(cfg, device, n, batch_size, steps, warmup)
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


def launch_run(cfg, device, n, batch_size, steps, warmup):
    """One torchrun of n workers at `batch_size` per process; the run's figures, or its reason."""
    run = {"world_size": n, "batch_per_rank": batch_size, "global_batch": n * batch_size}
    with tempfile.TemporaryDirectory(prefix="ddp-") as folder:
        out = os.path.join(folder, "worker.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(n), os.path.abspath(__file__), "worker",
                   "--out", out, "--device", device, "--batch-size", str(batch_size),
                   "--steps", str(steps), "--warmup", str(warmup),
                   "--seed", str(getattr(cfg, "seed", 0)), "--lr", str(getattr(cfg, "lr", 0.1)),
                   "--optimizer", getattr(cfg, "optimizer", "sgd")]
        if not getattr(cfg, "batch_norm", True):
            command.append("--no-batch-norm")
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


# ----------------------------------------------------------------------------------------
# Printing the results, from the result alone (REPORT.md rebuilds from the file)


def _hundred(fraction):
    return None if fraction is None else 100 * fraction


def render_ddp(result):
    """The study as Markdown: the table, the all-reduce figures, and what they show."""
    runs = result["runs"]
    ok = [r for r in runs if r["ok"]]
    rows = [[r["world_size"], r["batch_per_rank"], r["global_batch"],
             f"{r['images_per_second']:.1f}", ratio(r["speedup"]),
             percent(_hundred(r["efficiency"])),
             f"{1000 * r['computation_time']:.1f}", f"{1000 * r['communication_time']:.1f}",
             percent(_hundred(r["communication_share"]))] for r in ok]
    text = markdown_table(["processes", "batch per process", "global batch", "images/s",
                           "speed-up", "efficiency", "computation (ms)",
                           "communication (ms)", "communication share"], rows, align="r" * 9)
    text += "".join(f"\n- {r['world_size']} × batch {r['batch_per_rank']}: failed: "
                    f"{r['reason']}" for r in runs if not r["ok"])
    text += (f"\n\n{result['study_device']}, {result['steps']} timed step(s) of each kind after "
             f"{result['warmup']} warm-up step(s); speed-up against 1 process at the same "
             "batch per process; computation is the step under no_sync() (no all-reduce), "
             "communication what the full step takes beyond it.\n")
    for line in _all_reduce_lines(ok):
        text += f"\n{line}"
    if ok:
        text += "\n\n" + " ".join(filter(None, [
            _explain_dominance(ok), _explain_batch(ok), _explain_overlap(ok),
            _explain_hardware(result, ok), _explain_launch(ok)]))
    return text + "\n"


def _all_reduce_lines(ok):
    """One line per world size: the standalone all-reduce of a gradient's worth of float32."""
    lines = []
    for n in sorted({r["world_size"] for r in ok if r["all_reduce"]}):
        figures = next(r["all_reduce"] for r in ok if r["world_size"] == n and r["all_reduce"])
        backend = next(r["backend"] for r in ok if r["world_size"] == n)
        lines.append(f"all_reduce of {figures['bytes'] / 1e6:.1f} MB ({figures['floats']:,} "
                     f"float32, the gradient) across {n} processes, {backend}: "
                     f"{1000 * figures['seconds']:.1f} ms, algorithm bandwidth "
                     f"{figures['algorithm_bandwidth'] / 1e9:.2f} GB/s, bus bandwidth "
                     f"{figures['bus_bandwidth'] / 1e9:.2f} GB/s (2(n-1)/n × bytes / time, as "
                     "nccl-tests defines it).")
    return lines


def _explain_dominance(ok):
    """Where communication takes more than half of a step, if anywhere."""
    shared = [r for r in ok if r["world_size"] > 1]
    if not shared:
        return "Only 1 process ran, so nothing was communicated."
    dominated = [f"{r['world_size']} × {r['batch_per_rank']}" for r in shared
                 if r["communication_share"] > 0.5]
    top = max(shared, key=lambda r: r["communication_share"])
    if dominated:
        return (f"Communication takes more than half of the step at {', '.join(dominated)} "
                "(processes × batch per process).")
    return (f"Communication never takes half of a step here; its largest share is "
            f"{percent(_hundred(top['communication_share']))}, at {top['world_size']} processes × "
            f"batch {top['batch_per_rank']}.")


def _explain_batch(ok):
    """Why a larger batch per process hides the all-reduce, in this study's numbers."""
    n = max(r["world_size"] for r in ok)
    at_n = sorted((r for r in ok if r["world_size"] == n), key=lambda r: r["batch_per_rank"])
    if n == 1 or len(at_n) < 2:
        return ""
    small, large = at_n[0], at_n[-1]
    megabytes = next((r["all_reduce"]["bytes"] / 1e6 for r in at_n if r["all_reduce"]), None)
    size = f"the same {megabytes:.1f} MB" if megabytes else "the same size"
    text = (f"With {n} processes the computation grows with the batch, from "
            f"{1000 * small['computation_time']:.0f} ms at {small['batch_per_rank']} images per "
            f"process to {1000 * large['computation_time']:.0f} ms at "
            f"{large['batch_per_rank']}, while the all-reduce moves {size} of gradients "
            "whatever the batch")
    shares = (f"{percent(_hundred(small['communication_share']))} to "
              f"{percent(_hundred(large['communication_share']))}")
    if large["communication_share"] < small["communication_share"]:
        return text + f", so its share of the step falls from {shares}."
    return text + (f"; yet its share did not fall here ({shares}): with few timed steps, and "
                   "cores shared with anything else running, two steps can differ by more "
                   "than the all-reduce itself.")


def _explain_overlap(ok):
    """Communication per step against the standalone all-reduce, and what the noise does."""
    shared = [r for r in ok if r["all_reduce"]]
    hidden = [r for r in shared if 0 <= r["communication_time"] < r["all_reduce"]["seconds"]]
    longer = [r for r in shared if r["communication_time"] >= r["all_reduce"]["seconds"]]
    text = []
    if hidden:
        text.append(f"In {len(hidden)} of the {len(shared)} runs with more than one process "
                    "a step lost less than one standalone all-reduce: DDP all-reduces each "
                    "bucket of gradients as soon as the backward pass has produced it, while "
                    "the rest is still being computed.")
    if longer:
        text.append(f"In {len(longer)} of the {len(shared)} runs with more than one process "
                    "a step lost more than one standalone all-reduce: the gradient goes in "
                    "several buckets (up to 25 MB each), each its own all-reduce, and they run "
                    "beside the backward pass, sharing its hardware.")
    if any(r["communication_time"] < 0 for r in ok):
        text.append("A negative communication time means the two kinds of step differed by "
                    "less than the noise between steps: read it as zero.")
    single = [r["communication_time"] for r in ok if r["world_size"] == 1]
    if single:
        text.append("With 1 process there is nothing to exchange, so its 'communication' "
                    f"({1000 * min(single):.0f} to {1000 * max(single):.0f} ms) is DDP's own "
                    "bookkeeping plus the noise between two steps.")
    if any(r["efficiency"] is not None and r["efficiency"] > 1.05 for r in ok):
        text.append("An efficiency above 100% does not come from splitting the same work: the "
                    "1-process baseline was slowed by something else, such as other programs "
                    "on the machine (a process whose threads fill every core waits at each "
                    "parallel step for whichever thread they delayed), or noise.")
    return " ".join(text)


def _explain_hardware(result, ok):
    """What this hardware can show: separate GPUs add compute, processes on shared cores do not."""
    n = max(r["world_size"] for r in ok)
    common = [b for b in result["batch_sizes"]
              if {1, n} <= {r["world_size"] for r in ok if r["batch_per_rank"] == b}]
    if n == 1 or not common:
        return ""
    b = common[-1]
    one, many = (next(r for r in ok if r["world_size"] == size and r["batch_per_rank"] == b)
                 for size in (1, n))
    change = (f"at batch {b} per process one step's computation took "
              f"{1000 * one['computation_time']:.0f} ms with 1 process and "
              f"{1000 * many['computation_time']:.0f} ms with {n}")
    if result["study_device"] != "cpu":
        return (f"Each process has its own GPU: {change}, so what keeps the speed-up from {n} "
                "is the communication and the slowest rank.")
    threads = ", ".join(f"{r['world_size']} × {r['threads_per_rank']}"
                        for r in ok if r["batch_per_rank"] == b)
    return (f"On the CPU the processes share this machine's {result['usable_cores']} cores "
            f"(processes × torch threads each: {threads}), so adding processes adds no "
            f"arithmetic: {change}. CPU 'scaling' here shows the cost of the all-reduce and of "
            "splitting the cores, not more compute; data parallelism pays when each process "
            "brings its own GPU or machine.")


def _explain_launch(ok):
    """How long joining the world took, next to the whole torchrun."""
    init = max(r["init_time"] for r in ok)
    shortest = min(r["wall_time"] for r in ok)
    return (f"Each run is a fresh torchrun: joining the process group took at most "
            f"{init:.2f} s, while the shortest run took {shortest:.0f} s from launch to results "
            "(starting Python and importing torch in every process comes first).")


# ----------------------------------------------------------------------------------------
# ddp.py's own command line, under torchrun: check-start and the study's worker


def check_start(args):
    """`torchrun ... ddp.py check-start`: join the world, say so on every rank, leave."""
    world = start(args.device, args.sync_bn)
    try:
        threads = "" if world.threads is None else (
            f", {world.threads} torch thread{'' if world.threads == 1 else 's'}")
        print(f"rank {world.rank} of {world.world_size}: {world.device}, {world.backend}"
              f"{threads}", flush=True)
    finally:
        stop()


def build_parser():
    parser = argparse.ArgumentParser(description="Data-parallel building blocks; run under "
                                     "torchrun (python -m torch.distributed.run).")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-start", help="start the world on every rank, then stop")
    worker = commands.add_parser("worker", help="the scaling study's measuring process")
    for command in (check, worker):
        command.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl)")
    check.add_argument("--sync-bn", action="store_true", help="ask for SyncBatchNorm")
    worker.add_argument("--out", required=True, help="rank 0 writes its JSON results here")
    worker.add_argument("--batch-size", type=int, default=128, help="images per process")
    worker.add_argument("--steps", type=int, default=1, help="timed steps of each kind")
    worker.add_argument("--warmup", type=int, default=1, help="untimed steps of each kind first")
    worker.add_argument("--seed", type=int, default=0, help="seeds the weights and the images")
    worker.add_argument("--lr", type=float, default=0.1, help="learning rate")
    worker.add_argument("--optimizer", default="sgd", help="as train.make_optimizer names it")
    worker.add_argument("--no-batch-norm", dest="batch_norm", action="store_false",
                        help="ResNet-18 without BatchNorm")
    worker.set_defaults(channels_last=False)  # train.make_model reads it
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        (check_start if args.command == "check-start" else run_worker)(args)
    except DistributedError as error:  # the same line on every rank, no traceback
        print(ERROR_PREFIX + str(error), file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as error:
        traceback.print_exc()
        print(f"{ERROR_PREFIX}rank {os.environ.get('RANK', '?')}: {one_line(error)}",
              file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()