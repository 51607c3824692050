"""The data-parallel scaling study: `python lab.py ddp`.

    python lab.py ddp --max-procs 2      # world sizes 1 and 2 x batches 8, 32 and 128

For each world size and batch per process, ddp_study launches torchrun on the measuring
process (`lab.py ddp-worker CONFIG OUT`, the run's Config as JSON), which times DDP training
steps in turn with the gradient all-reduce and under `model.no_sync()` (computation only), and
an all-reduce of ResNet-18's gradients on its own. The difference of the two steps is the
exposed communication: what the overlap with the backward pass leaves visible of the
all-reduce. render_ddp prints what the figures show. The building blocks (the process group,
the sampler, DDP, the sums over ranks) are in parallel.py.
"""

import copy
import json
import os
import re
import statistics
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
from parallel import (DistributedError, ranks_differing, same_initial_weights, start, stop,
                      weights_digest, world_facts, wrap)
from render import markdown_table, one_line, percent, ratio
from timing import Timer
from train import make_model, make_optimizer, train_step

# Per device type: the batches per process, and the untimed and timed steps of each kind per
# run. Warm-up needs 2 at least (DDP rebuilds its buckets in the step after the first
# synchronised one, whatever its kind: with 2, a pair of each kind follows the rebuild). On
# two CPU cores a step at batch 128 takes seconds per process, so the CPU's batches are small
# enough for 5 pairs of steps each in a few minutes.
STUDY_BATCH_SIZES = {"cpu": (8, 32, 128), "cuda": (32, 128, 512)}
STUDY_WARMUP = {"cpu": 2, "cuda": 5}
STUDY_STEPS = {"cpu": 5, "cuda": 20}
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


def schedule(warmup, steps):
    """The study's steps in order, as (kind, timed): `warmup` untimed rounds, then `steps`
    timed ones, each round a full step and then a no_sync step, so that a load coming and
    going on the machine hits both kinds alike."""
    return [(kind, timed_round) for timed_round in [False] * warmup + [True] * steps
            for kind in ("full", "no_sync")]


def measure_steps(cfg, world, warmup):
    """Per-step seconds of the full DDP step and of the same step under no_sync().

    The full step averages the gradients with an all-reduce during the backward pass; under
    `model.no_sync()` DDP skips it, so that step is the computation alone. Both are the whole
    train_step, optimizer step included. Before anything is timed come `warmup` untimed steps
    of each kind (at least 2): the first steps allocate memory and pick kernels, and DDP
    rebuilds its gradient buckets, in the order the first backward pass produced them, at
    the start of the step after the first synchronised one. The no_sync step's update comes
    from this rank's gradient alone, so it is undone after its window: the replicas stay
    equal, as the study checks at the end. DDP is built without buffer broadcasts
    (sync_buffers=False): by default a full step after a full step broadcasts BatchNorm's
    buffers and one after a no_sync step does not, which would tilt the difference.
    """
    device = torch.device(world.device)
    model = make_model(cfg, device)
    initial_weights = same_initial_weights(model, world)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    model = wrap(model, world, sync_buffers=False)
    images, labels = fixed_batch(cfg.batch_size, cfg.seed + world.rank, device)
    criterion = nn.CrossEntropyLoss()
    losses = []

    def full_step():
        losses.append(train_step(model, optimizer, criterion, images, labels)[1].detach())

    def step(kind, clock):
        if kind == "full":
            return clock(full_step)
        saved = copy.deepcopy((model.module.state_dict(), optimizer.state_dict()))
        with model.no_sync():
            seconds = clock(lambda: train_step(model, optimizer, criterion, images, labels))
        model.module.load_state_dict(saved[0])  # copied into the same tensors, in place
        optimizer.load_state_dict(saved[1])
        return seconds

    times = {"full": [], "no_sync": []}
    for kind, timed_round in schedule(warmup, cfg.ddp_steps):
        if timed_round:
            times[kind].append(step(kind, lambda call: timed(call, world)))
        else:
            step(kind, lambda call: call())
    final = weights_digest(model.module, buffers=False)
    return {"initial_weights_sha256": initial_weights,
            "gradient_floats": sum(p.numel() for p in model.parameters()),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in model.module.buffers()),
            "full_step": slowest_rank(times["full"], world),
            "computation_step": slowest_rank(times["no_sync"], world),
            "parameters_differ_on": ranks_differing(final, world)[1],
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
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = True  # as in train.fit: autotune the convolutions
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
        print(f"{ERROR_PREFIX}rank {os.environ.get('RANK', '?')}: {one_line(error)}",
              file=sys.stderr, flush=True)
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
    batch_sizes = tuple(cfg.ddp_batch_sizes or STUDY_BATCH_SIZES.get(device,
                                                                      STUDY_BATCH_SIZES["cpu"]))
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
    """The worker's raw timings as the study reports them: medians over the timed steps, with
    their spread (min, max), in seconds per step.

    Exposed communication is the median over the pairs (a full step and the no_sync step
    after it) of full minus no_sync: what the overlap with the backward pass leaves visible
    of the all-reduce, plus DDP's copies of the gradients into its buckets and back. It is
    clear of the noise only when every pair's difference has the same sign. With 1 process
    there is no other rank to exchange with, so there is none.
    """
    world = record["world"]
    n, global_batch = world["world_size"], world["global_batch"]
    full, computation = record["full_step"], record["computation_step"]
    step_time = statistics.median(full)
    summary = {"backend": world["backend"], "threads_per_rank": world["threads_per_rank"],
               "init_time": record["init_time"], "steps": record["steps"],
               "warmup": record["warmup"], "full_steps": full, "computation_steps": computation,
               "images_per_second": global_batch / step_time,
               "step_time": step_time, "step_spread": [min(full), max(full)],
               "computation_time": statistics.median(computation),
               "computation_spread": [min(computation), max(computation)],
               "exposed_communication_time": None, "exposed_communication_spread": None,
               "exposed_communication_clear": None, "exposed_communication_share": None,
               "buffer_bytes": record["buffer_bytes"],
               "parameters_differ_on": record["parameters_differ_on"],
               "initial_weights_sha256": record["initial_weights_sha256"],
               "final_loss": record["final_loss"], "all_reduce": None}
    if n > 1:
        pairs = [f - c for f, c in zip(full, computation)]
        exposed = statistics.median(pairs)
        summary.update(exposed_communication_time=exposed,
                       exposed_communication_spread=[min(pairs), max(pairs)],
                       exposed_communication_clear=min(pairs) > 0 or max(pairs) < 0,
                       exposed_communication_share=exposed / step_time)
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
             _with_spread(r["step_time"], r["step_spread"]),
             _with_spread(r["computation_time"], r["computation_spread"]), *_exposed_cells(r)]
            for r in ok]
    text = markdown_table(["processes", "batch per process", "global batch", "images/s",
                           "speed-up", "efficiency", "step (ms)", "computation (ms)",
                           "exposed communication (ms)", "pairs' range (ms)", "share of step"],
                          rows, align="r" * 11)
    text += "".join(f"\n- {r['world_size']} × batch {r['batch_per_rank']}: failed: "
                    f"{r['reason']}" for r in runs if not r["ok"])
    buffers = f"{ok[0]['buffer_bytes'] / 1e3:.0f} kB" if ok else "its buffers"
    text += (f"\n\n{result['study_device']}, {result['steps']} timed steps of each kind, a full "
             f"step and a no_sync step in turn, after {result['warmup']} untimed of each kind "
             "(DDP rebuilds its gradient buckets in the step after the first synchronised "
             "one); each time is "
             "the median over the timed steps (min-max in brackets), the slowest rank's. "
             "Speed-up is against 1 process at the same batch per process. Computation is the "
             "step under no_sync(), without the all-reduce; its update is undone after its "
             "window, so the replicas stay equal. Exposed communication is the median, over the "
             "pairs, of the full step minus the no_sync step: what the overlap with the backward "
             "pass leaves visible of the all-reduce, plus DDP's copies of the gradients into its "
             "buckets and back. It is within the noise when the pairs' range includes zero. "
             f"Neither kind of step broadcasts BatchNorm's buffers ({buffers}; DDP's default, "
             "which the lab's training keeps, broadcasts them before a forward pass that "
             "follows a synchronised one).\n")
    for line in _all_reduce_lines(ok):
        text += f"\n{line}"
    if ok:
        text += "\n\n" + " ".join(filter(None, [
            _explain_dominance(ok), _explain_batch(ok), _explain_overlap(ok),
            _explain_replicas(ok), _explain_hardware(result, ok), _explain_launch(ok)]))
    return text + "\n"


def _with_spread(seconds, spread):
    return f"{1000 * seconds:.1f} ({1000 * spread[0]:.0f}-{1000 * spread[1]:.0f})"


def _exposed_cells(run):
    """The exposed communication, the range of the pairs and the share, as the table shows
    them: no figure for 1 process, and none that lies within the noise."""
    if run["exposed_communication_time"] is None:
        return ["none: 1 process", "-", "-"]
    low, high = run["exposed_communication_spread"]
    spread = f"{1000 * low:.1f} to {1000 * high:.1f}"
    if not run["exposed_communication_clear"]:
        return ["within the noise", spread, "-"]
    return [f"{1000 * run['exposed_communication_time']:.1f}", spread,
            percent(_hundred(run["exposed_communication_share"]))]


def _clear(ok, positive=True):
    """The runs whose exposed communication is clear of the noise, above zero (or below)."""
    return [r for r in ok if r["exposed_communication_clear"]
            and (r["exposed_communication_time"] > 0) == positive]


def _names(runs):
    return ", ".join(f"{r['world_size']} × {r['batch_per_rank']}" for r in runs)


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
    """Where exposed communication is clear of the noise, and where it takes half a step."""
    shared = [r for r in ok if r["world_size"] > 1]
    if not shared:
        return ("Only 1 process ran: with no other rank there is nothing to all-reduce, so no "
                "exposed communication is given.")
    text = []
    noisy = [r for r in shared if not r["exposed_communication_clear"]]
    if noisy:
        text.append(f"At {_names(noisy)} (processes × batch per process) the exposed "
                    "communication is within the noise: in at least one pair the full step "
                    "was no slower than its no_sync step, so it cannot be told apart from zero "
                    "with these steps.")
    negative = _clear(ok, positive=False)
    if negative:
        text.append(f"At {_names(negative)} the full step was faster than its no_sync step in "
                    "every pair: that is not communication but something else that differed "
                    "between the two kinds of step, such as a load that came and went in time "
                    "with them.")
    clear = _clear(ok)
    dominated = [r for r in clear if r["exposed_communication_share"] > 0.5]
    if dominated:
        text.append(f"Exposed communication takes more than half of the step at "
                    f"{_names(dominated)}.")
    elif clear:
        top = max(clear, key=lambda r: r["exposed_communication_share"])
        text.append("Where it is clear of the noise, exposed communication never takes half "
                    f"of a step; its largest share is "
                    f"{percent(_hundred(top['exposed_communication_share']))}, at "
                    f"{top['world_size']} processes × batch {top['batch_per_rank']}.")
    return " ".join(text)


def _explain_batch(ok):
    """Why a larger batch per process hides the all-reduce, where the numbers show it."""
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
    noisy = [r for r in (small, large) if r not in _clear(ok)]
    if noisy:
        return text + (f"; at batch {' and '.join(str(r['batch_per_rank']) for r in noisy)} "
                       "the exposed communication is within the noise, so how its share "
                       "changes with the batch cannot be read from this run.")
    shares = (f"{percent(_hundred(small['exposed_communication_share']))} to "
              f"{percent(_hundred(large['exposed_communication_share']))}")
    if large["exposed_communication_share"] < small["exposed_communication_share"]:
        return text + f", so its exposed share of the step falls from {shares}."
    return text + f"; yet its exposed share did not fall here ({shares})."


def _explain_overlap(ok):
    """Exposed communication against the standalone all-reduce, where it is clear of noise."""
    clear = [r for r in _clear(ok) if r["all_reduce"]]
    hidden = [r for r in clear if r["exposed_communication_time"] < r["all_reduce"]["seconds"]]
    longer = [r for r in clear if r not in hidden]
    text = []
    if hidden:
        text.append(f"At {_names(hidden)} a step exposed less than one standalone all-reduce: "
                    "DDP all-reduces each bucket of gradients as soon as the backward pass has "
                    "produced it, while the rest is still being computed, so part of the "
                    "exchange is hidden.")
    if longer:
        text.append(f"At {_names(longer)} a step exposed more than one standalone all-reduce: "
                    "the gradient goes in several buckets (up to 25 MB each), each its own "
                    "all-reduce, copied in and out of the gradients, and they run beside the "
                    "backward pass, sharing its hardware.")
    if any(r["world_size"] == 1 for r in ok) and any(r["world_size"] > 1 for r in ok):
        text.append("With 1 process there is no other rank to all-reduce with, so no exposed "
                    "communication is given for it.")
    if any(r["efficiency"] is not None and r["efficiency"] > 1.05 for r in ok):
        text.append("An efficiency above 100% does not come from splitting the same work: the "
                    "1-process baseline was slowed by something else, such as other programs "
                    "on the machine (a process whose threads fill every core waits at each "
                    "parallel step for whichever thread they delayed), or noise.")
    return " ".join(text)


def _explain_replicas(ok):
    """Whether the ranks ended the study with the same parameters, as DDP should keep them."""
    shared = [r for r in ok if r["world_size"] > 1]
    drifted = [r for r in shared if r["parameters_differ_on"]]
    if drifted:
        return (f"(!) After the run at {_names(drifted)} some ranks' parameters differed from "
                "rank 0's: the replicas drifted apart, so those figures are not one model's.")
    if not shared:
        return ""
    return ("After every run with more than one process the ranks' parameters were equal "
            "(compared by hash).")


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
