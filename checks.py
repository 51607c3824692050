"""`python lab.py check`: does the whole lab work on this device? One command, one line per check.

    python lab.py check --device cpu            # every exercise on a tiny slice, checked
    python lab.py check --device cuda --bench   # the first command to run on a GPU

Each check runs part of the lab on a tiny slice (SLICE) in a results folder of its own
(<out>/check) and asserts what must hold wherever it runs: an invariant, or a figure worked out
a second way, never only that it ran. It prints PASS or FAIL with the reason, and its time, or
SKIP with why it does not apply here; the exit status is 1 if any check failed. With --bench
it then measures the headline figures at their own sizes into <out>/check/figures and prints
one short table (figures.py).

A check is a function of the Context that raises CheckFailed (or Skipped) and returns a short
note; add yours to CHECKS with its name. A check of a part that may be absent here (a module,
a compiler, a second GPU) gives `needs`: a function of the Context that returns why the check
cannot run here, or None. A new exercise's results are ctx.result(name), run once, whichever
check asks first.
"""

import contextlib
import io
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace

import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import parallel
import report
from figures import measure_figures
from render import notice, one_line, plural
from resnet import ResNet18
from speed import ERROR_CHARS
from timing import CudaEventTimer, EpochTimer, Timer
from train import make_optimizer, train_step

# The tiny slice every check runs on, unless the command line says otherwise: synthetic data,
# so that a check needs no download and gives the same images everywhere.
SLICE = {"dataset": "synthetic", "train_size": 32, "test_size": 16, "batch_size": 16,
         "epochs": 1, "max_workers": 4, "repeats": 1, "infer_batch_sizes": (1, 2)}
RELATIVE = 0.005  # how close two counts of the same FLOPs must be


class CheckFailed(Exception):
    """What does not hold; the message is the check's one-line reason."""


class Skipped(Exception):
    """Why a check does not apply on this machine."""


@dataclass(frozen=True)
class Check:
    name: str
    run: callable            # run(context) -> a short note; raises CheckFailed or Skipped
    needs: callable = None   # needs(context) -> why it cannot run here, or None


def expect(condition, reason):
    if not condition:
        raise CheckFailed(reason)


def close(a, b, relative=RELATIVE):
    return abs(a - b) <= relative * max(abs(a), abs(b))


def settings(config_class):
    """The Config values `check` runs with unless the command line gives them: SLICE, and a
    results folder of its own, so that a check never overwrites the lab's results."""
    return {**SLICE, "out": os.path.join(config_class.out, "check")}


class Context:
    """What the checks share: the run's Config, the registry, and each exercise's result,
    run once on the first ask, its tables printed to nowhere and its wall time kept."""

    def __init__(self, cfg, exercises):
        self.cfg = cfg
        self.exercises = exercises
        self.results, self.errors, self.wall_time = {}, {}, {}

    def result(self, name):
        if name in self.errors:
            raise CheckFailed(f"{name} failed: {self.errors[name]}")
        if name not in self.results:
            # No chart: drawn from the results file alone, it is the same on every device.
            exercise = replace(self.exercises[name], chart=None)
            if exercise.takes_best_workers:  # their count comes from C3's file in the folder
                self.result(next(k for k, e in self.exercises.items() if e.finds_best_workers))
            start = time.perf_counter()
            try:
                self.results[name] = report.run_exercise(
                    name, exercise, report.exercise_config(exercise, self.cfg), io.StringIO())
            except Exception as error:
                self.errors[name] = one_line(error, max_chars=ERROR_CHARS)
                raise CheckFailed(f"{name} failed: {self.errors[name]}") from None
            self.wall_time[name] = time.perf_counter() - start
        return self.results[name]


# ----------------------------------------------------------------------------------------
# The checks


def check_c1(ctx):
    result = ctx.result("c1")
    epochs, images = result["epochs"], result["dataset"]["train_images"]
    expect(len(epochs) == ctx.cfg.epochs, f"{len(epochs)} epochs, not {ctx.cfg.epochs}")
    for epoch in epochs:
        expect(not epoch["diverged"], f"the loss diverged in epoch {epoch['epoch']}")
        expect(epoch["images"] == images, f"epoch {epoch['epoch']} trained {epoch['images']} "
                                          f"images of {images}")
        for key in ("train_accuracy", "test_accuracy"):
            value = epoch[key]
            expect(value is not None and 0 <= value <= 100, f"{key} is {value}, not a percentage")
    return f"{plural(len(epochs), 'epoch')} of {images} images, loss {epochs[-1]['train_loss']:.3f}"


def check_c2_windows(ctx):
    result = ctx.result("c2")
    for epoch in result["epochs"]:
        number = epoch["epoch"]
        data, train, total = epoch["data_time"], epoch["train_time"], epoch["epoch_time"]
        expect(min(data, train) >= 0, f"epoch {number}: a window is negative")
        expect(data + train <= total, f"epoch {number}: data + train = {data + train:.4f} s, "
                                      f"more than the epoch's {total:.4f} s: windows overlap")
        expect(math.isclose(data + train + epoch["other_time"], total, abs_tol=1e-9),
               f"epoch {number}: data + train + other is not the total")
        expect(epoch["first_batch_time"] <= data and epoch["last_train_time"] <= train,
               f"epoch {number}: a single window is longer than its sum")
    summary = result["summary"]
    for key in ("data_time", "train_time", "other_time", "epoch_time"):
        mean = sum(epoch[key] for epoch in result["epochs"]) / len(result["epochs"])
        expect(math.isclose(summary[key], mean), f"the summary's {key} is not the epochs' mean")
    epochs_time = sum(epoch["epoch_time"] for epoch in result["epochs"])
    expect(epochs_time <= ctx.wall_time["c2"], f"the epochs took {epochs_time:.2f} s, longer "
                                               f"than the whole run's {ctx.wall_time['c2']:.2f} s")
    return (f"data {summary['data_time']:.3f} + train {summary['train_time']:.3f} + other "
            f"{summary['other_time']:.3f} = {summary['epoch_time']:.3f} s")


def check_step_flops(ctx):
    arithmetic, summary = ctx.result("c2")["arithmetic"], ctx.result("summary")
    if "skipped" in arithmetic:
        raise Skipped(arithmetic["skipped"])
    step = arithmetic["step_flops"]
    forward, backward = step["forward_per_image"], step["backward_per_image"]
    expect(close(forward, 2 * summary["total_mult_adds"]),
           f"FlopCounterMode counted {forward:,.0f} forward FLOPs per image, not twice the "
           f"summary's {summary['total_mult_adds']:,} mult-adds")
    # Backward: the gradients of every layer's input and weights, each as costly as the
    # forward pass, except the first layer's input gradient: the images need none.
    first = next(row["mult_adds"] for row in summary["rows"] if row["mult_adds"])
    expect(close(backward, 2 * forward - 2 * first),
           f"backward {backward:,.0f} FLOPs per image, not 2 x forward less the first layer's "
           f"input gradient ({2 * forward - 2 * first:,.0f})")
    epochs = ctx.result("c2")["epochs"]
    images_per_second = sum(e["images"] for e in epochs) / sum(e["train_time"] for e in epochs)
    rate = arithmetic["matmul_flops_per_s"][arithmetic["dtype"]]
    expect(close(arithmetic["flops_per_s"], step["per_image"] * images_per_second)
           and close(arithmetic["matmul_share"], arithmetic["flops_per_s"] / rate),
           "C2's FLOP/s or share is not its images/s times the count, over the matmul rate")
    return (f"{forward / 1e9:.3f} + {backward / 1e9:.3f} GFLOP per image; "
            f"{100 * arithmetic['matmul_share']:.1f}% of the {arithmetic['dtype']} matmul rate")


def needs_cuda(ctx):
    device = torch.device(ctx.cfg.device).type
    if device == "cpu":
        return ("on the CPU every operation has finished when it returns: there is no queue "
                "for a timer to miss (test_lab checks the timers with a simulated GPU)")
    if device != "cuda":
        return f"it queues a CUDA kernel (torch.cuda._sleep), which {device} has not"
    return None


def check_queued_work(ctx):
    device = torch.device(ctx.cfg.device)
    with CudaEventTimer(device) as probe:
        torch.cuda._sleep(10_000_000)  # a kernel that spins for that many GPU clock cycles
    cycles = int(10_000_000 * 0.2 / max(probe.elapsed, 1e-6))  # about 0.2 s of them
    with CudaEventTimer(device) as kernel_timer:
        torch.cuda._sleep(cycles)
    kernel = kernel_timer.elapsed
    timer = EpochTimer(device)
    with timer.epoch():
        with timer.train():
            start = time.perf_counter()
            torch.cuda._sleep(cycles)
            queued = time.perf_counter() - start  # the host's part: only the queueing
        with timer.data():
            pass
    with Timer(device) as plain:
        torch.cuda._sleep(cycles)
    if queued > kernel / 2:
        raise Skipped(f"the {kernel:.3f} s kernel ran before the host went on "
                      "(CUDA_LAUNCH_BLOCKING?): there was no queue to see")
    expect(timer.train_time >= 0.9 * kernel,
           f"the window that queued a {kernel:.3f} s kernel measured {timer.train_time:.3f} s")
    expect(timer.data_time < 0.1 * kernel,
           f"the next window measured {timer.data_time:.3f} s of the kernel before it")
    expect(plain.elapsed >= 0.9 * kernel, f"Timer measured {plain.elapsed:.3f} s of a "
                                          f"{kernel:.3f} s kernel")
    return (f"a {1e3 * kernel:.0f} ms kernel queued in {1e3 * queued:.2f} ms: its window "
            f"{1e3 * timer.train_time:.0f} ms, the next {1e3 * timer.data_time:.2f} ms")


def check_c3(ctx):
    result = ctx.result("c3")
    points = result["points"]
    fastest = min(points, key=lambda point: point["median"])
    expect(result["best_workers"] == fastest["num_workers"],
           f"best is {result['best_workers']} workers, but {fastest['num_workers']} were fastest")
    for point in points:
        expect(point["min"] <= point["median"] <= point["max"]
               and len(point["times"]) == result["repeats"],
               f"{point['num_workers']} workers: the median is not among its timings")
    counts = ", ".join(str(point["num_workers"]) for point in points)
    return f"timed {counts} workers; best {result['best_workers']}"


def check_c4(ctx):
    result, best = ctx.result("c4"), ctx.result("c3")["best_workers"]
    runs = result["runs"]
    expect(result["best_workers"] == best, f"C4 used {result['best_workers']} workers, C3 "
                                           f"found {best} best")
    expect(runs["one_worker"]["num_workers"] == 1 and runs["best"]["num_workers"] == best,
           "the two runs did not use 1 worker and the best count")
    expect(same_weights(runs.values()), "the two runs started from different weights")
    return f"1 worker against {plural(best, 'worker')}, read from C3's results"


def same_weights(runs):
    return len({run["model"]["initial_weights_sha256"] for run in runs}) == 1


def check_c5(ctx):
    result = ctx.result("c5")
    runs = result["runs"]
    expect("cpu" in runs, "no CPU run")
    if result["gpu"]["device"] is None:
        expect("gpu" not in runs and result["gpu"]["skipped"], "no GPU, yet no reason given")
        return f"CPU only; GPU skipped: {result['gpu']['skipped']}"
    epoch = {side: runs[side]["summary"]["epoch_time"] for side in ("cpu", "gpu")}
    expect(close(result["speedup"], epoch["cpu"] / epoch["gpu"]),
           "the speed-up is not the CPU's epoch time over the GPU's")
    return f"CPU {epoch['cpu']:.2f} s, GPU {epoch['gpu']:.2f} s per epoch: {result['speedup']:.1f}x"


def check_c6(ctx):
    result = ctx.result("c6")
    runs = result["runs"]
    expect(list(runs) == result["optimizers"], f"ran {', '.join(runs)}")
    expect(same_weights(runs.values()), "the optimizers started from different weights")
    expect(len({run["num_workers"] for run in runs.values()}) == 1,
           "the optimizers trained with different worker counts")
    return f"{len(runs)} optimizers from the same weights"


def check_c7(ctx):
    result = ctx.result("c7")
    with_bn, without = result["runs"]["with_bn"], result["runs"]["without_bn"]
    model = ResNet18()
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    expect(without["model"]["batchnorm_layers"] == 0, "the run without BatchNorm has some")
    expect(with_bn["model"]["batchnorm_layers"] == len(batchnorms),
           f"the BatchNorm run has {with_bn['model']['batchnorm_layers']} BatchNorm layers, "
           f"the model {len(batchnorms)}")
    difference = with_bn["model"]["parameters"] - without["model"]["parameters"]
    expect(difference == sum(p.numel() for m in batchnorms for p in m.parameters()),
           f"the two models differ by {difference} parameters, not by BatchNorm's")
    return (f"{len(batchnorms)} BatchNorm layers, {difference:,} parameters; BatchNorm run: "
            f"{result['batch_norm_source']}")


def check_summary(ctx):
    summary = ctx.result("summary")
    model = ResNet18(batch_norm=ctx.cfg.batch_norm)
    parameters = sum(p.numel() for p in model.parameters())
    expect(summary["total_params"] == parameters == sum(row["params"] for row in summary["rows"]),
           f"the summary counts {summary['total_params']:,} parameters, the model has "
           f"{parameters:,}")
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))  # (1, 3, 32, 32)
    expect(close(summary["total_mult_adds"], counter.get_total_flops() / 2),
           f"{summary['total_mult_adds']:,} mult-adds, but FlopCounterMode counts "
           f"{counter.get_total_flops():,} FLOPs for one image")
    return f"{parameters:,} parameters, {summary['total_mult_adds']:,} mult-adds"


def check_q1(ctx):
    result = ctx.result("q1")
    weights = sum(p.dim() == 4 for p in ResNet18(batch_norm=ctx.cfg.batch_norm).parameters())
    expect(result["conv_layers"] == weights == sum(result["by_kernel"].values()),
           f"Q1 says {result['conv_layers']} convolutions; the model has {weights} kernels")
    expect(result["main_path_convs"] + result["shortcut_convs"] == weights,
           "the main path and the shortcuts do not add up")
    expect(result["weighted_layers_on_main_path"] == 18,
           f"{result['weighted_layers_on_main_path']} weighted layers on the main path, not 18")
    return f"{weights} convolutions, 18 weighted layers on the main path"


def check_q2(ctx):
    result = ctx.result("q2")
    model = ResNet18(batch_norm=ctx.cfg.batch_norm)
    expect(result["input_dimension"] == model.linear.in_features
           == result["last_feature_map_shape"][1],
           f"Q2 says {result['input_dimension']}; the layer takes {model.linear.in_features}")
    return f"{result['input_dimension']} = the channels of the last feature map"


def check_optimizer_counts(name, per_weight):
    """Q3 and Q4: one gradient per trainable parameter, and the optimizer's per-weight state."""
    def check(ctx):
        result = ctx.result(name)
        model = ResNet18(batch_norm=ctx.cfg.batch_norm)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        expect(result["trainable_parameters"] == result["gradients"] == trainable,
               f"{result['gradients']:,} gradients for {trainable:,} trainable parameters")
        expect(sorted(result["per_weight_state"]) == sorted(per_weight),
               f"per-weight state {result['per_weight_state']}, not {per_weight}")
        return f"{trainable:,} parameters and gradients; {', '.join(per_weight)} per weight"
    return check


def check_infer(ctx):
    result = ctx.result("infer")
    for way, outcome in result["ways"].items():
        expect(outcome["error"] is None, f"{way} failed: {outcome['error']}")
        for batch in outcome["batches"]:
            expect(batch["matches_eager"], f"{way} differs from eager by "
                                           f"{batch['max_abs_diff']:.2e} at batch "
                                           f"{batch['batch_size']}")
        expect(outcome["reload_matches"] in (True, None), f"{way}'s saved file loads back "
                                                          "to other outputs")
    return f"{', '.join(result['ways'])} equal eager at batch sizes {result['batch_sizes']}"


def needs_two_gpus(ctx):
    gpus = torch.cuda.device_count()
    if torch.device(ctx.cfg.device).type != "cuda" or gpus < 2:
        return (f"needs two or more GPUs ({plural(gpus, 'GPU')} here); test_ddp checks it on "
                "the CPU with gloo")
    return None


def check_two_ranks(ctx):
    return two_ranks_step_like_one("cuda")


def check_results_read_back(ctx):
    expect(ctx.results, "no exercise ran")
    for name in ctx.results:
        path = os.path.join(ctx.cfg.out, f"{name}.json")
        saved, why = report.read_result(path, name, ctx.exercises[name].render)
        expect(saved is not None and saved["complete"], why or f"{path} is missing or incomplete")
    return f"{len(ctx.results)} files in {ctx.cfg.out}"


CHECKS = [
    Check("c1: every image trained, the loss finite, the accuracies percentages", check_c1),
    Check("c2: the data, train and other windows add up to each epoch", check_c2_windows),
    Check("timers: work queued on the GPU is timed in the window that queued it",
          check_queued_work, needs=needs_cuda),
    Check("c3: the best worker count is the fastest median", check_c3),
    Check("c4: 1 worker against C3's best count, from the same weights", check_c4),
    Check("c5: the CPU against the GPU, or the GPU skipped with the reason", check_c5),
    Check("c6: every optimizer from the same weights and workers", check_c6),
    Check("c7: without BatchNorm: none of its layers, fewer parameters by exactly theirs",
          check_c7),
    Check("summary: the totals equal the model's parameters and FlopCounterMode's count",
          check_summary),
    Check("c2: torch's FLOPs of the step are twice the summary's mult-adds", check_step_flops),
    Check("q1: the convolutions are the model's 4-d kernels", check_q1),
    Check("q2: the linear layer's input is the last feature map's channels", check_q2),
    Check("q3: one gradient and one momentum buffer per weight (SGD)",
          check_optimizer_counts("q3", ["momentum_buffer"])),
    Check("q4: one gradient and two moments per weight (Adam)",
          check_optimizer_counts("q4", ["exp_avg", "exp_avg_sq"])),
    Check("infer: every way's outputs equal eager's", check_infer),
    Check("ddp: two ranks step like one process with twice the batch", check_two_ranks,
          needs=needs_two_gpus),
    Check("results: every results file reads back", check_results_read_back),
]


# ----------------------------------------------------------------------------------------
# Two ranks against one process


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_model(device):
    """A seeded ResNet-18 without BatchNorm, in float64: the comparison is then exact to ~1e-12,
    and BatchNorm's per-rank statistics cannot make the two ways differ."""
    torch.manual_seed(0)
    return ResNet18(batch_norm=False).double().to(device)


def one_batch(count, device):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, 32, 32, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (count,), generator=generator)  # (count,)
    return images.to(device), labels.to(device)                      # (count, 3, 32, 32)


def one_rank(rank, device_type, port, batch, folder):
    """Rank `rank` of two: one DDP step on its half of a batch of 2 * batch; its weights saved."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    world = parallel.start(device_type)
    try:
        model = fresh_model(world.device)
        optimizer = make_optimizer("sgd", model.parameters(), lr=0.1)
        model = parallel.wrap(model, world)
        images, labels = one_batch(2 * batch, world.device)
        mine = slice(rank * batch, (rank + 1) * batch)
        train_step(model, optimizer, nn.CrossEntropyLoss(), images[mine], labels[mine])
        weights = nn.utils.parameters_to_vector(model.parameters()).detach().cpu()
        torch.save(weights, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        parallel.stop()


def two_ranks_step_like_one(device_type, batch=4):
    """DDP averages the two ranks' gradients, each the mean over `batch` images: the step is the
    one a single process takes on all 2 * batch. A process that sees only half of them steps
    elsewhere: the control that shows the comparison can fail."""
    device = "cuda:0" if device_type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(one_rank, args=(device_type, free_port(), batch, folder), nprocs=2)
        rank0, rank1 = (torch.load(os.path.join(folder, f"rank{r}.pt")) for r in (0, 1))
    images, labels = one_batch(2 * batch, device)
    initial = nn.utils.parameters_to_vector(fresh_model(device).parameters()).detach().cpu()

    def one_process(count):
        model = fresh_model(device)
        optimizer = make_optimizer("sgd", model.parameters(), lr=0.1)
        train_step(model, optimizer, nn.CrossEntropyLoss(), images[:count], labels[:count])
        return nn.utils.parameters_to_vector(model.parameters()).detach().cpu() - initial

    expected = one_process(2 * batch)
    expect(torch.equal(rank0, rank1), "the two ranks took different steps")
    error = ((rank0 - initial - expected).norm() / expected.norm()).item()
    half = ((one_process(batch) - expected).norm() / expected.norm()).item()
    expect(error < 1e-6, f"the ranks' step differs from one process's by {error:.1e}")
    expect(half > 1e-2, "a process that saw half the batch steps the same: nothing was compared")
    return f"relative difference {error:.1e} (half the batch: {half:.1e})"


# ----------------------------------------------------------------------------------------
# Running the checks, then --bench


def run_checks(cfg, exercises, checks=None):
    """Run `checks` (CHECKS by default) in order, one line each; then, with cfg.check_bench,
    the headline figures. Returns the exit status: 1 if anything failed, else 0."""
    checks = CHECKS if checks is None else checks
    ctx = Context(cfg, exercises)
    print(f"check: {plural(len(checks), 'check')} on {cfg.device}, "
          f"{cfg.train_size or 'all'} {cfg.dataset} training images, batch {cfg.batch_size}, "
          f"{plural(cfg.epochs, 'epoch')}; results in {cfg.out}", flush=True)
    begin = time.perf_counter()
    verdicts = [run_one(check, ctx) for check in checks]
    unrun = [name for name in exercises if name not in ctx.results and name not in ctx.errors]
    print(f"check: {verdicts.count('PASS')} passed, {verdicts.count('FAIL')} failed, "
          f"{verdicts.count('SKIP')} skipped in {time.perf_counter() - begin:.0f} s"
          + (f"; not run by the checks: {', '.join(unrun)}, timing studies that their own "
             "commands measure (--bench runs bench, and ddp on two GPUs)" if unrun else ""),
          flush=True)
    failed = "FAIL" in verdicts
    if cfg.check_bench:
        failed = not measure_figures(cfg, exercises) or failed
    return 1 if failed else 0


def run_one(check, ctx):
    """One check: its line, PASS, FAIL or SKIP, with its time; what the lab printed is hidden."""
    if sys.stderr.isatty():
        notice(f"running: {check.name} ...")
    start = time.perf_counter()
    captured = io.StringIO()
    try:
        why = check.needs(ctx) if check.needs else None
        if why:
            raise Skipped(why)
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            verdict, detail = "PASS", check.run(ctx)
    except Skipped as reason:
        verdict, detail = "SKIP", str(reason)
    except CheckFailed as reason:
        verdict, detail = "FAIL", str(reason)
    except Exception as error:  # a bug the check ran into: its cause, where it was raised
        place = traceback.extract_tb(error.__traceback__)[-1]
        verdict = "FAIL"
        detail = (f"{one_line(error, max_chars=ERROR_CHARS)} "
                  f"({os.path.basename(place.filename)}:{place.lineno})")
    elapsed = time.perf_counter() - start
    print(f"{verdict} {check.name} ({elapsed:.1f} s){': ' + detail if detail else ''}",
          flush=True)
    return verdict
