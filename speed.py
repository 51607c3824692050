"""Beyond the lab: how fast it can go (`bench`), C8 (torch.compile), and what the timers
themselves cost.

    python lab.py bench          # the speed ladder: each option's images/s against the default
    python lab.py c8             # C8: eager against torch.compile's modes, epoch by epoch
    python speed.py overhead     # the same epoch trained with and without the lab's timers

The bench's figures are medians over repeats taken in turns, so that a load that comes and
goes on a shared machine hits every row alike, each given as a ratio against a baseline
measured in the same run. C8 does not take turns: it trains all of one mode's epochs, then the
next mode's, and compares the means of their later epochs, so a load that changes between
modes enters its figures. `render_bench` and `render_c8` turn a result into its tables and
what they say.
"""

import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace

import torch

from data import (CIFAR10_TRAIN_IMAGES, DeviceLoader, SyntheticCIFAR, load_datasets, make_loader,
                  test_transform)
from flops import bench_arithmetic, explain_bench_arithmetic, gflops
from machine import usable_cores
from render import markdown_table, one_line, percent, plural, seconds
from timing import CudaEventTimer, EpochTimer, NullTimer, Timer
from train import fit, make_optimizer, make_training, train_one_epoch, train_step
from resnet import ResNet18

# How much `bench` measures. On a CPU a ResNet-18 step at batch 128 takes seconds, so there
# each round times one step per row: the whole bench takes a few minutes on 2 cores. (A smaller
# batch would be quicker but is not the lab's: bfloat16's gain on a CPU grows with the batch.)
BENCH_SIZES = {
    "cpu": {"warmup_steps": 2, "repeats": 5, "steps": 1,
            "pipeline_images": 10_000, "pipeline_repeats": 3},
    "gpu": {"warmup_steps": 10, "repeats": 5, "steps": 20,
            "pipeline_images": 10_000, "pipeline_repeats": 3},
}

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
C8_CPU_TRAIN_SIZE = 256  # c8 on a CPU without --train-size: a slice that runs in minutes
ERROR_CHARS = 300  # a failed row's reason: its exception's first line, cut to this


# ----------------------------------------------------------------------------------------
# bench: the speed ladder


def step_variants(device, compile_mode=None):
    """(row name, Config changes) for the training-step table; the first is the lab's default."""
    compiled = {"compile": True, "compile_mode": compile_mode}
    variants = [("default", {}),
                ("channels-last", {"channels_last": True}),
                ("amp bf16", {"amp": "bf16"})]
    if device.type == "cuda":
        variants.append(("amp fp16 (gradient scaler)", {"amp": "fp16"}))
    variants += [("compile", compiled),
                 ("channels-last + bf16", {"channels_last": True, "amp": "bf16"}),
                 ("channels-last + bf16 + compile", {"channels_last": True, "amp": "bf16",
                                                     **compiled})]
    return variants


def worker_counts(cores, num_workers):
    """0, 1, 2, then doubling up to the number of cores, and the run's own --num-workers."""
    counts = {0, 1, 2, num_workers}
    count = 4
    while count <= cores:
        counts.add(count)
        count *= 2
    return sorted(counts)


def ratios(rates, reference):
    """Each repeat's rate over the reference's rate in the same repeat."""
    return [rate / ref for rate, ref in zip(rates, reference)]


def start_compiler(device):
    """Seconds to compile a one-line function: the compiler's start-up, once per process."""
    with Timer(device) as timer:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(8, device=device))
    return timer.elapsed


@contextmanager
def cold_compiles():
    """TorchInductor's caches off, as on a first run, so that compilation is timed in full."""
    with warnings.catch_warnings(), torch.compiler.config.patch(force_disable_caches=True):
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")  # as asked
        yield


def bench(cfg, save=None):
    """The training step's and the data pipeline's images per second, option by option.

    Step: every row trains its own copy of the same seeded ResNet-18 on one fixed batch that
    is already on the device, through train.py's `train_step`. First `warmup_steps` steps
    (compilation, kernel selection; timed, reported apart), then `repeats` rounds in which
    every row times `steps` steps in turn, with CUDA events on a GPU (the host is not stalled
    between steps, as in training) and a synchronised clock elsewhere. Images/s is the median
    over the rounds; the ratio is the median of each round's rate over the default's.

    Pipeline: whole passes over a seeded slice of the training set, each batch delivered on
    the device, worker start-up included as in C2; the device loader's one-off upload is
    reported apart. Ratios are against the DataLoader with cfg.num_workers workers.

    Each step row also gets its dtype, FLOP/s and their share of this device's matmul rate in
    that dtype, both measured in this run (flops.bench_arithmetic).
    """
    device = torch.device(cfg.device)
    sizes = BENCH_SIZES["gpu" if device.type == "cuda" else "cpu"]
    images = min(cfg.train_size or sizes["pipeline_images"], sizes["pipeline_images"])
    train_set, _, info = load_datasets(cfg.dataset, cfg.data_path, cfg.seed, train_size=images,
                                       test_size=1)
    result = {"dataset": info, "sizes": sizes}  # the slice bench really used
    with cold_compiles():
        result["step"] = bench_steps(cfg, device, train_set, sizes)
    result.update(bench_arithmetic(cfg, device, result["step"]["rows"]))
    if save is not None:
        save(result)
    result["pipeline"] = bench_pipeline(cfg, device, train_set, sizes)
    return result


def steps_time(trainer, batch, steps, device):
    """Seconds that `steps` training steps on one batch take on the device."""
    variant, model, optimizer, scaler = trainer
    images, labels = batch
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    with CudaEventTimer(device) as timer:
        for _ in range(steps):
            train_step(model, optimizer, criterion, images, labels, variant.amp, scaler)
    return timer.elapsed


def bench_steps(cfg, device, train_set, sizes):
    """The step table: rows of images/s and ratios (see `bench`)."""
    images, labels = next(iter(DeviceLoader(train_set, cfg.batch_size, device, seed=cfg.seed)))
    # (B, 3, 32, 32) and (B,), on the device
    plain = replace(cfg, channels_last=False, amp=None, compile=False, compile_mode=None)
    compiler_startup = start_compiler(device)
    trainers, rows = [], []
    for name, changes in step_variants(device, cfg.compile_mode):
        variant = replace(plain, **changes)
        row = {"name": name, "options": changes, "warmup_time": None, "rates": [],
               "images_per_second": None, "ratio": None, "error": None}
        rows.append(row)
        memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
        batch = (images.contiguous(memory_format=memory_format), labels)
        try:
            trainer = (variant, *make_training(variant, device))
            row["warmup_time"] = steps_time(trainer, batch, sizes["warmup_steps"], device)
            trainers.append((row, trainer, batch))
        except Exception as error:  # a compiler missing or failing: report the row, go on
            row["error"] = one_line(error, max_chars=ERROR_CHARS)
    for _ in range(sizes["repeats"]):
        for row, trainer, batch in trainers:
            try:
                elapsed = steps_time(trainer, batch, sizes["steps"], device)
                row["rates"].append(sizes["steps"] * len(labels) / elapsed)
            except Exception as error:
                row["error"] = one_line(error, max_chars=ERROR_CHARS)
        trainers = [t for t in trainers if t[0]["error"] is None]
    default = rows[0]
    for row in rows:
        if row["error"] is None and row["rates"] and default["rates"]:
            row["images_per_second"] = statistics.median(row["rates"])
            row["ratio"] = statistics.median(ratios(row["rates"], default["rates"]))
    measured = [row for row in rows[1:] if row["ratio"] is not None]
    best = max(measured, key=lambda row: row["ratio"])["name"] if measured else None
    return {"batch_size": cfg.batch_size, "compiler_startup_time": compiler_startup,
            "rows": rows, "best": best}


def bench_pipeline(cfg, device, train_set, sizes):
    """The pipeline table: DataLoader at each worker count against the device loader."""
    loaders = []
    for workers in worker_counts(usable_cores(), cfg.num_workers):
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, num_workers=workers,
                             seed=cfg.seed, pin_memory=device.type == "cuda")
        row = {"name": f"DataLoader, {plural(workers, 'worker')}", "num_workers": workers,
               "setup_time": None, "rates": []}
        loaders.append((row, loader))
    with Timer(device) as setup:
        loader = DeviceLoader(train_set, cfg.batch_size, device, seed=cfg.seed)
    loaders.append(({"name": "device loader", "num_workers": None,
                     "setup_time": setup.elapsed, "rates": []}, loader))
    for _ in range(sizes["pipeline_repeats"]):
        for row, loader in loaders:
            with Timer(device) as timer:  # synchronised: the last copy has landed
                for images, labels in loader:
                    images = images.to(device, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
            row["rates"].append(len(train_set) / timer.elapsed)
    rows = [row for row, _ in loaders]
    reference = next(row for row in rows if row["num_workers"] == cfg.num_workers)
    for row in rows:
        row["images_per_second"] = statistics.median(row["rates"])
        row["ratio"] = statistics.median(ratios(row["rates"], reference["rates"]))
    return {"images": len(train_set), "batch_size": cfg.batch_size,
            "reference": reference["name"], "rows": rows}


# ----------------------------------------------------------------------------------------
# C8: torch.compile


def c8_compile(cfg, save=None):
    """C8: eager against each torch.compile mode, cfg.epochs epochs each, from the same weights.

    Compilation is timed with TorchInductor's caches off, as on a first run (a later run on
    the same machine reuses the on-disk cache and starts much faster). The model is compiled
    with static shapes (train.compile_model), so a partial last batch gets a graph of its own.
    The compiler's start-up, paid once per process, is timed on its own before the first mode.
    Each run also keeps what TorchDynamo and Inductor counted while it trained (compile_counts).
    """
    device = torch.device(cfg.device)
    note = None
    if device.type == "cpu" and cfg.train_size is None:
        cfg = replace(cfg, train_size=C8_CPU_TRAIN_SIZE)
        note = (f"On a CPU, without --train-size, C8 trains on a seeded slice of "
                f"{C8_CPU_TRAIN_SIZE} images so that it finishes in a few minutes; give "
                "--train-size N for more.")
    train_set, test_set, info = load_datasets(cfg.dataset, cfg.data_path, cfg.seed,
                                              cfg.train_size, cfg.test_size)
    result = {"note": note, "dataset": info, "train_images": len(train_set),
              "batch_size": cfg.batch_size, "epochs": cfg.epochs, "runs": []}
    with cold_compiles():
        result["compiler_startup_time"] = start_compiler(device)
        for mode in ("eager",) + COMPILE_MODES:
            torch._dynamo.reset()  # each mode compiles from scratch
            variant = replace(cfg, compile=mode != "eager",
                              compile_mode=None if mode in ("eager", "default") else mode)
            run = {"mode": mode, "epoch_times": [], "last_step_times": [], "error": None}
            reset_compile_counts()
            try:
                epochs = fit(variant, train_set, test_set, label=f"{mode}: ")["epochs"]
                run["epoch_times"] = [epoch["epoch_time"] for epoch in epochs]
                run["last_step_times"] = [epoch["last_train_time"] for epoch in epochs]
            except Exception as error:
                run["error"] = one_line(error, max_chars=ERROR_CHARS)
            run["compile_counts"] = compile_counts()
            result["runs"].append(run)
            result["analysis"] = analyse_compile(result)
            if save is not None:
                save(result)
    return result


def reset_compile_counts():
    """Zero TorchDynamo's counters and Inductor's metrics (torch._dynamo.reset() keeps them)."""
    from torch._inductor import metrics  # imported here: torch._inductor loads in seconds
    torch._dynamo.utils.counters.clear()
    metrics.reset()


def compile_counts():
    """What TorchDynamo and Inductor counted since reset_compile_counts(), as torch counts it.

    frames: Python frames Dynamo was handed; graphs: the FX graphs it captured (one per input
    shape when nothing breaks), of captured_ops operations; graph_breaks: where it had to stop
    a graph and fall back to Python, with the reasons; aot_graphs: the graphs AOTAutograd
    turned into a forward and a backward graph; generated_kernels: the kernels Inductor wrote
    (C++ on a CPU, Triton on a GPU) from nodes_before_fusion scheduled operations, beside
    library_calls to existing kernels (convolutions, matrix products). All 0 for eager.
    """
    from torch._inductor import metrics
    counters = torch._dynamo.utils.counters
    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "captured_ops": counters["stats"]["calls_captured"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "graph_break_reasons": dict(counters["graph_break"].most_common(5)),
            "aot_graphs": counters["aot_autograd"]["total"],
            "generated_kernels": getattr(metrics, "generated_kernel_count", None),
            "nodes_before_fusion": getattr(metrics, "ir_nodes_pre_fusion", None),
            "library_calls": counters["inductor"]["extern_calls"]}


def analyse_compile(result):
    """Per run: first epoch, mean of the later ones, and against eager the one-off compilation
    cost, the saving per later epoch and the number of epochs (and images) to pay back."""
    analysis = []
    eager = None
    for run in result["runs"]:
        times, last_steps = run["epoch_times"], run.get("last_step_times", [])
        row = {"mode": run["mode"], "first_epoch": times[0] if times else None,
               "later_epochs": statistics.mean(times[1:]) if len(times) > 1 else None,
               "mean_epochs_6_10": statistics.mean(times[5:10]) if len(times) >= 10 else None,
               # The last batch's step in epoch 1 against later epochs: with a partial last
               # batch, what compiling its own graph (static shapes) cost.
               "last_step_extra": (last_steps[0] - statistics.mean(last_steps[1:])
                                   if len(last_steps) > 1 else None),
               "compile_cost": None, "saving": None, "speedup": None,
               "payback_epochs": None, "payback_images": None}
        analysis.append(row)
        if run["mode"] == "eager":
            eager = row
            continue
        if eager is None or row["later_epochs"] is None or eager["later_epochs"] is None:
            continue
        # What the first epoch costs beyond a later one, less eager's own first-epoch warm-up
        # (none when eager's first epoch was no slower: that difference is noise).
        eager_warmup = max(eager["first_epoch"] - eager["later_epochs"], 0.0)
        row["compile_cost"] = row["first_epoch"] - row["later_epochs"] - eager_warmup
        row["saving"] = eager["later_epochs"] - row["later_epochs"]
        row["speedup"] = eager["later_epochs"] / row["later_epochs"]
        if row["saving"] > 0:
            row["payback_epochs"] = max(row["compile_cost"], 0.0) / row["saving"]
            row["payback_images"] = row["payback_epochs"] * result["train_images"]
    return analysis


# ----------------------------------------------------------------------------------------
# Printing the results, each from its result alone (REPORT.md rebuilds from the files)


def render_bench(result):
    step, pipeline = result["step"], result.get("pipeline")
    rows = []
    for row in step["rows"]:
        name = row["name"] + (" (best)" if row["name"] == step["best"] else "")
        if row["error"] is not None:
            rows.append([name, "failed", "-", "-", "-", "-", "-"])
            continue
        share = row.get("matmul_share")  # none in a bench.json from before flops.py
        rows.append([name, f"{row['images_per_second']:.1f}", f"{row['ratio']:.2f}x",
                     f"{row['warmup_time']:.2f}", gflops(row.get("flops_per_s")),
                     row.get("dtype", "-"), percent(None if share is None else 100 * share)])
    sizes = result["sizes"]
    text = [
        f"Training step, batch {step['batch_size']}, the batch already on the device:",
        "",
        markdown_table(["options", "images/s", "vs default", "warm-up (s)", "GFLOP/s", "dtype",
                        "of matmul"], rows, align="lrrrrlr"),
        "",
        f"Median of {sizes['repeats']} rounds of {plural(sizes['steps'], 'step')} per row, "
        f"taken in turns, after {sizes['warmup_steps']} warm-up steps. Warm-up includes "
        "compilation for the compile rows, timed with the compiler's caches off as on a first "
        "run; the compiler's own start-up, once per process, took "
        f"{step['compiler_startup_time']:.1f} s more.",
    ]
    text += [f"\n{row['name']} failed: {row['error']}" for row in step["rows"] if row["error"]]
    if "step_flops" in result:
        text += ["", explain_bench_arithmetic(result)]
    if pipeline is not None:
        rows = [[row["name"], f"{row['images_per_second']:,.0f}", f"{row['ratio']:.2f}x"]
                for row in pipeline["rows"]]
        setup = pipeline["rows"][-1]["setup_time"]
        text += [
            "",
            f"Data pipeline, batch {pipeline['batch_size']}, whole passes over "
            f"{pipeline['images']:,} training images, each batch delivered on the device:",
            "",
            markdown_table(["loader", "images/s", f"vs {pipeline['reference']}"], rows),
            "",
            f"Median of {sizes['pipeline_repeats']} passes each, taken in turns; DataLoader "
            "passes include starting their workers, as every epoch in C2 does. The device "
            f"loader's one-off upload of the images took {setup:.2f} s. The device loader "
            "changes where the data comes from, not the step, so it has no row above.",
        ]
    return "\n".join(text)


def render_c8(result):
    analysis = result.get("analysis", [])
    rows = []
    for row, run in zip(analysis, result["runs"]):
        if run["error"] is not None:
            rows.append([row["mode"], "failed", "-", "-", "-", "-"])
            continue
        rows.append([row["mode"], seconds(row["first_epoch"]), seconds(row["later_epochs"]),
                     seconds(row["compile_cost"]),
                     "-" if row["speedup"] is None else f"{row['speedup']:.2f}x",
                     "-" if row["payback_epochs"] is None else f"{row['payback_epochs']:.1f}"])
    text = [f"{result['train_images']:,} training images, batch {result['batch_size']}, "
            f"{result['epochs']} epochs per mode."]
    if result["note"]:
        text.append(result["note"])
    text += ["", markdown_table(["mode", "first epoch (s)", "later epochs, mean (s)",
                                 "compilation (s)", "later vs eager", "pays back after (epochs)"],
                                rows),
             "", explain_compile(result)]
    text += [f"\n{run['mode']} failed: {run['error']}" for run in result["runs"] if run["error"]]
    return "\n".join(text)


def recompile_costs(analysis):
    """What the last batch's step cost in the first epoch beyond later epochs, per mode."""
    costs = [f"{mode} {row['last_step_extra']:.1f} s" for mode, row in analysis.items()
             if mode != "eager" and row.get("last_step_extra") is not None]
    if not costs:
        return ""
    return ("Compiling that second graph made the first epoch's last step slower than in later "
            "epochs by: " + ", ".join(costs) + ".")


def explain_compile(result):
    """Why the first epoch is slow, and whether compiling pays, in words drawn from the numbers."""
    analysis = {row["mode"]: row for row in result.get("analysis", [])}
    eager = analysis.get("eager")
    if eager is None or eager["later_epochs"] is None:
        return "With one epoch there is no later epoch to compare with: use --epochs 2 or more."
    warmup = eager["first_epoch"] - eager["later_epochs"]
    if warmup > 0:
        eager_line = (f"Eager's own first epoch was {warmup:.2f} s slower than its later ones "
                      "(allocating memory, choosing kernels); the compilation column subtracts "
                      "that.")
    else:
        eager_line = (f"Eager's own first epoch was no slower than its later ones "
                      f"({eager['first_epoch']:.2f} s against {eager['later_epochs']:.2f} s: "
                      "the difference is noise).")
    lines = [
        "Why the first epoch is slow: on its first step torch.compile traces the model into a "
        "graph (Dynamo), derives the backward graph (AOTAutograd), fuses operators and "
        "generates kernels (Inductor: C++ on a CPU, Triton on a GPU), then compiles them. That "
        "is done once per process and input shape; later steps run the compiled code. "
        f"{eager_line} The compiler's start-up, once per process, took "
        f"{result['compiler_startup_time']:.1f} s more, before the first mode."]
    last_batch = result["train_images"] % result["batch_size"]
    if last_batch:
        lines.append(f"The last batch of each epoch has {last_batch} images, a new shape. The "
                     "model is compiled with static shapes (dynamic=False), so that batch gets "
                     "a graph of its own, compiled in the first epoch, and full batches keep "
                     "theirs; with dynamic shapes, every later batch would run one slower "
                     "graph. " + recompile_costs(analysis))
    for mode, row in analysis.items():
        if mode == "eager" or row["compile_cost"] is None:
            continue
        line = (f"- {mode}: the first epoch took {row['first_epoch']:.1f} s, about "
                f"{row['compile_cost']:.1f} s of it compilation; later epochs "
                f"{row['later_epochs']:.2f} s against eager's {eager['later_epochs']:.2f} s")
        if row["payback_epochs"] is None:
            line += ", no faster, so compiling does not pay back at this size on this device."
        else:
            full = row["payback_images"] / CIFAR10_TRAIN_IMAGES
            line += (f", {row['saving']:.2f} s saved per epoch: it pays back after "
                     f"{row['payback_epochs']:.1f} epochs of this size, "
                     f"{row['payback_images']:,.0f} images ({full:.2f} of a full CIFAR-10 "
                     "epoch).")
        lines.append(line)
    if "reduce-overhead" in analysis:
        lines.append("reduce-overhead adds CUDA graphs, which replay a whole step's kernels in "
                     "one launch; on a CPU there are no CUDA graphs, and it compiles like "
                     "default. max-autotune also benchmarks alternative kernels while it "
                     "compiles: a longer compilation for a step that may be faster.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# What the timers cost: python speed.py overhead


def timer_overhead(batches=8, batch_size=32, repeats=5, device=None):
    """The same training epoch with the lab's EpochTimer and with NullTimer, which does nothing.

    The two alternate (timed, bare, timed, bare, ...) so that a load coming and going on a
    shared machine hits both alike; the medians are compared. Also prints what one empty
    synchronised window costs, the timers' own overhead with no training around it. Returns
    the figures: `window_time`, the medians `timed_time` and `bare_time`, and `overhead`
    (timed / bare - 1). `device`: CUDA if there is one, else the CPU, unless given.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        batch_size, batches = 128, 50
    timer = EpochTimer(device)
    start = time.perf_counter()
    for _ in range(1000):
        with timer.train():
            pass
    window = (time.perf_counter() - start) / 1000
    print(f"{device}: one empty timed window costs {window * 1e6:.1f} us")

    dataset = SyntheticCIFAR(batches * batch_size, seed=0, transform=test_transform())
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor(dataset.targets)
    loader = list(zip(images.split(batch_size), labels.split(batch_size)))  # no loading cost
    torch.manual_seed(0)
    model = ResNet18().to(device)
    optimizer = make_optimizer("sgd", model.parameters(), lr=0.01)
    train_one_epoch(model, loader[:2], optimizer, device)  # warm-up
    times = {"timed": [], "bare": []}
    for _ in range(repeats):
        for name, timer_class in (("timed", EpochTimer), ("bare", NullTimer)):
            with Timer(device) as whole:
                train_one_epoch(model, loader, optimizer, device, timer=timer_class(device))
            times[name].append(whole.elapsed)
    timed, bare = (statistics.median(times[k]) for k in ("timed", "bare"))
    print(f"{device}: an epoch of {batches} batches of {batch_size}: timed {timed:.3f} s, "
          f"bare {bare:.3f} s (medians of {repeats}); the timers cost "
          f"{100 * (timed / bare - 1):+.2f}%")
    spread = {k: f"{min(v):.3f}-{max(v):.3f}" for k, v in times.items()}
    print(f"spread: timed {spread['timed']} s, bare {spread['bare']} s; windows per epoch: "
          f"{2 * batches + 2}, so their own cost is {100 * window * (2 * batches + 2) / bare:.4f}%")
    return {"device": device.type, "batches": batches, "batch_size": batch_size,
            "window_time": window, "timed_time": timed, "bare_time": bare,
            "overhead": timed / bare - 1}


if __name__ == "__main__":
    if sys.argv[1:] != ["overhead"]:
        sys.exit("usage: python speed.py overhead   (the timers' cost; the rest: python lab.py)")
    timer_overhead()
