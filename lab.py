"""The HPML lab: train ResNet-18 on CIFAR-10 and find out where the time goes.

    python lab.py c1                      # C1: train 5 epochs with SGD
    python lab.py c2 --epochs 2           # C2: data-loading, training and total time per epoch
    python lab.py all --quick             # every exercise on a small slice, and REPORT.md
    python lab.py --help                  # every exercise and option

Each exercise is one function, `cN_...(cfg, checkpoint) -> dict`, that returns plain,
JSON-ready data and hands each finished epoch to `checkpoint` as it goes. Only the command
line prints and saves: `<out>/<exercise>.json`, rewritten atomically after every epoch, so
Ctrl-C keeps what has finished.
"""

import argparse
import datetime
import functools
import hashlib
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch

import report
from data import DATASETS, DataError, load_datasets, make_loader
from questions import (format_summary, model_summary, q1_conv_layers, q2_linear_input,
                       q3_sgd_parameters, q4_adam_parameters, render_q1, render_q2, render_q3,
                       render_q4)
from report import bar_chart, markdown_table, mean, percent, plural, seconds
from resnet import ResNet18
from speed import bench, c8_compile, profiling, render_bench, render_c8, render_profile
from train import OPTIMIZERS, fit


@dataclass
class Config:
    """Everything a run depends on; the command line fills it, the exercises only read it."""

    device: str = "cpu"            # resolved: "cpu", "cuda" or "mps"
    dataset: str = "auto"
    data_path: str = "./data"
    train_size: int = None         # None: the whole training set
    test_size: int = None
    seed: int = 0
    num_workers: int = 2
    batch_size: int = 128
    test_batch_size: int = 100
    optimizer: str = "sgd"
    lr: float = 0.1
    epochs: int = 5
    evaluate: bool = False         # test accuracy after each epoch
    batch_norm: bool = True
    out: str = "results"
    # Speed options, off by default: the default is the lab's plain path.
    channels_last: bool = False
    amp: str = None                # None, "bf16" or "fp16"
    compile: bool = False
    compile_mode: str = None       # torch.compile's mode; None is its default
    loader: str = "torch"          # "torch": the lab's DataLoader; "device": DeviceLoader
    profile: bool = False          # c2, c4: write a torch.profiler trace to the results folder
    # The worker experiments.
    max_workers: int = None        # C3: sweep 0, 4, ... up to this; None: until no faster
    repeats: int = 3               # C3: timings per worker count (the median is used)
    best_workers: int = None       # C4, C5: the best worker count, when it is known
    quick: bool = False            # small slices chosen by --quick


# ----------------------------------------------------------------------------------------
# The data, loaded once per run of the command line


@functools.lru_cache(maxsize=2)
def _datasets(dataset, data_path, seed, train_size, test_size):
    return load_datasets(dataset, data_path, seed, train_size, test_size)


def datasets_for(cfg):
    """(train_set, test_set, info) for cfg; `info` names the data set actually used."""
    return _datasets(cfg.dataset, cfg.data_path, cfg.seed, cfg.train_size, cfg.test_size)


def summarize(history):
    """Averages over the epochs of a run (diverged epochs included in the times)."""
    return {
        "epochs": len(history),
        "train_loss": mean(e["train_loss"] for e in history),
        "train_accuracy": mean(e["train_accuracy"] for e in history),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_train_accuracy": history[-1]["train_accuracy"] if history else None,
        "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
        "data_time": mean(e["data_time"] for e in history),
        "train_time": mean(e["train_time"] for e in history),
        "other_time": mean(e["other_time"] for e in history),
        "epoch_time": mean(e["epoch_time"] for e in history),
        "first_batch_time": mean(e["first_batch_time"] for e in history),
        "diverged_at": next((e["epoch"] for e in history if e["diverged"]), None),
    }


def training_run(cfg, checkpoint=None, label="", trace_name=None):
    """Train as cfg says; return {"epochs": [...], "summary": {...}}, checkpointing each epoch.

    With cfg.profile and a trace_name, the first steps are recorded into
    <out>/<trace_name>.trace.json and the run gets a "profile" summary (speed.Profile).
    """
    train_set, test_set, info = datasets_for(cfg)
    run = {"model": None, "epochs": [], "summary": summarize([])}

    def on_model(model):
        run["model"] = model_facts(model)

    def on_epoch(history):
        run["epochs"] = list(history)
        run["summary"] = summarize(history)
        if checkpoint is not None:
            checkpoint(run)

    profiled = cfg.profile and trace_name is not None
    trace = os.path.join(cfg.out, f"{trace_name}.trace.json") if profiled else None
    with profiling(trace, cfg.device) as profiler:
        fit(cfg, train_set, test_set, on_epoch=on_epoch, label=label, profiler=profiler,
            on_model=on_model)
    if profiler is not None:
        run["profile"] = profiler.summary()
    return run


# ----------------------------------------------------------------------------------------
# C1 and C2


def c1_training(cfg, checkpoint=None):
    """C1: train ResNet-18 for cfg.epochs; per epoch, the average loss and top-1 accuracy."""
    return training_run(cfg, checkpoint)


def render_c1(result):
    rows = [[e["epoch"], f"{e['train_loss']:.4f}", percent(e["train_accuracy"]),
             percent(e["test_accuracy"]), seconds(e["epoch_time"])] for e in result["epochs"]]
    text = markdown_table(["epoch", "train loss", "train top-1", "test top-1", "epoch (s)"], rows)
    notes = [e for e in result["epochs"] if e["diverged"]]
    if notes:
        text += f"\n\nThe loss diverged (NaN or infinite) in epoch {notes[0]['epoch']}."
    return text


def c2_timing(cfg, checkpoint=None):
    """C2: C1 with, per epoch, the data-loading, training and total time."""
    return training_run(cfg, checkpoint, trace_name="c2")


def render_c2(result):
    epochs = result["epochs"]
    rows = [[e["epoch"], seconds(e["data_time"]), seconds(e["train_time"]),
             seconds(e["other_time"]), seconds(e["epoch_time"]), _share(e)] for e in epochs]
    if epochs:
        s = result["summary"]
        rows.append(["mean", seconds(s["data_time"]), seconds(s["train_time"]),
                     seconds(s["other_time"]), seconds(s["epoch_time"]), _share(s)])
    text = markdown_table(["epoch", "data (s)", "train (s)", "other (s)", "total (s)",
                           "data+train"], rows)
    text += (
        "\n\ndata: time blocked waiting for the next batch (worker start-up included); "
        "train: copy to the device, forward, loss, backward and optimizer step, device "
        "synchronised; other: what is left of the epoch, the loop's own bookkeeping "
        "(the Python loop and the progress line). data+train is their share of the total.")
    if "profile" in result:  # --profile
        text += ("\n\nWith --profile the profiler records the first steps of epoch 1, which "
                 "slows them: compare epochs after the first.\n\n"
                 + render_profile(result["profile"]))
    return text


def _share(figures):
    """The share of the epoch that data loading and training account for, as a percentage."""
    return percent(100.0 * (figures["data_time"] + figures["train_time"]) / figures["epoch_time"])


# ----------------------------------------------------------------------------------------
# C3 and C4: DataLoader workers


def usable_cores():
    """The CPU cores this process may run on (what worker processes can actually share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def loader_epoch_time(cfg, num_workers):
    """Seconds for the training DataLoader to deliver one full epoch, with no model.

    The clock starts before `iter(loader)`, so starting the worker processes is included,
    and stops after the last batch, when they have been shut down.
    """
    train_set = datasets_for(cfg)[0]
    with warnings.catch_warnings():  # torch warns past the core count; C3 explains it instead
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, num_workers=num_workers,
                             seed=cfg.seed)
        start = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - start


def c3_worker_sweep(cfg, checkpoint=None):
    """C3: time one epoch of data loading for 0, 4, 8, ... workers; the fastest count wins.

    Without cfg.max_workers the sweep stops at the first of 0, 4, 8, ... that is not faster
    than the one before (the assignment's rule); with it, every count up to cfg.max_workers
    is timed. The machine's core count joins the sweep as an extra point when it is not a
    multiple of 4 (2 on a 2-core machine), since that is where adding workers should stop
    paying. Each count is timed cfg.repeats times and ranked by the median.
    """
    cores = usable_cores()
    top = cfg.max_workers if cfg.max_workers is not None else 4 * max(cores, 16)
    counts = sorted(set(range(0, top + 1, 4)) | ({cores} if cores <= top else set()))
    result = {"cores": cores, "max_workers": cfg.max_workers, "repeats": cfg.repeats,
              "points": [], "best_workers": None, "stopped_because": None}
    for num_workers in counts:
        times = sorted(loader_epoch_time(cfg, num_workers) for _ in range(cfg.repeats))
        point = {"num_workers": num_workers, "median": statistics.median(times),
                 "min": times[0], "max": times[-1], "times": times}
        print(f"c3: {num_workers:>2} workers: median {point['median']:.3f} s "
              f"(min {point['min']:.3f}, max {point['max']:.3f})", file=sys.stderr, flush=True)
        # The stop rule follows 0, 4, 8, ...; the core count is an extra point beside them.
        on_the_rule = [p for p in result["points"] if p["num_workers"] % 4 == 0]
        previous = on_the_rule[-1] if on_the_rule and num_workers % 4 == 0 else None
        result["points"].append(point)
        result["best_workers"] = min(result["points"], key=lambda p: p["median"])["num_workers"]
        if checkpoint is not None:
            checkpoint(result)
        if cfg.max_workers is None and previous and point["median"] >= previous["median"]:
            result["stopped_because"] = (f"{num_workers} workers were not faster than "
                                         f"{previous['num_workers']}")
            break
    else:
        result["stopped_because"] = "every count asked for was timed"
    return result


def render_c3(result):
    points = result["points"]
    best = result["best_workers"]
    rows = [[p["num_workers"], seconds(p["median"]), f"{p['min']:.3f}-{p['max']:.3f}",
             "best" if p["num_workers"] == best else ""] for p in points]
    text = markdown_table(["workers", "median (s)", f"spread of {result['repeats']} (s)", ""],
                          rows, align="rrrl")
    chart = bar_chart([f"{p['num_workers']} workers" for p in points],
                      [p["median"] for p in points], mark=f"{best} workers")
    text += f"\n\nOne epoch of data loading (no model), median of {result['repeats']} runs:\n\n"
    text += "```\n" + chart + "\n```\n"
    if not points:
        return text
    winner = next(p for p in points if p["num_workers"] == best)
    text += (f"\nBest: **{best} workers**, {winner['median']:.3f} s per epoch. "
             f"The sweep stopped because {result['stopped_because']}.")
    close = [p for p in points if p is not winner and p["min"] <= winner["max"]]
    if close:
        text += (" Within the noise of the best (their spreads overlap): "
                 + ", ".join(str(p["num_workers"]) for p in close) + " workers.")
    text += "\n\n" + explain_cores(points, winner, result["cores"])
    return text


def explain_cores(points, winner, cores):
    """What the core count means for the sweep, checked against the measured times."""
    text = (f"This machine gives the program {cores} CPU cores. Each worker is a process that "
            "needs a core to decode and augment images, and the main process needs one too, "
            f"so beyond {cores} workers the processes share the same cores.")
    at_cores = next((p for p in points if p["num_workers"] >= cores), None)
    if at_cores is None or not any(p["num_workers"] > at_cores["num_workers"] for p in points):
        return text + f" No count above {cores} was timed in this sweep."
    if winner["num_workers"] <= at_cores["num_workers"]:
        return text + " The sweep agrees: no count above that was faster."
    gain = 100 * (1 - winner["median"] / at_cores["median"])
    if winner["max"] >= at_cores["min"]:
        return text + (f" The {winner['num_workers']}-worker median is {gain:.0f}% below the "
                       f"{at_cores['num_workers']}-worker one, but their spreads overlap: noise.")
    return text + (f" Here {winner['num_workers']} workers were still {gain:.0f}% faster than "
                   f"{at_cores['num_workers']}. Workers that wait (on a disk, say) leave their "
                   "core to others, and with other programs busy on the same cores, more "
                   "processes win a larger share of them; neither adds computing power.")


def c3_chart_png(result, path):
    """Save C3's chart as a PNG where matplotlib happens to be installed; True if saved."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = result["points"]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.errorbar([p["num_workers"] for p in points], [p["median"] for p in points],
                  yerr=[[p["median"] - p["min"] for p in points],
                        [p["max"] - p["median"] for p in points]], marker="o", capsize=3)
    axes.set_xlabel("DataLoader workers")
    axes.set_ylabel("seconds per epoch (median)")
    axes.set_title("C3: data loading time against workers")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def best_worker_count(cfg):
    """(count, where it came from): --best-workers, else C3's results file, else a sweep."""
    path = os.path.join(cfg.out, "c3.json")
    sweep = report.read_json(path)
    measured = sweep["best_workers"] if sweep and sweep.get("complete") else None
    if cfg.best_workers is not None and cfg.best_workers != measured:
        return cfg.best_workers, "--best-workers"
    if measured is not None:
        return measured, f"C3's results in {path}"
    print("c4/c5: no C3 results and no --best-workers: sweeping the worker counts first",
          file=sys.stderr)
    return c3_worker_sweep(replace(cfg, max_workers=None))["best_workers"], "a sweep run now"


def run_into(result, key, cfg, checkpoint, label="", trace_name=None):
    """Train as cfg says, keeping the run in result["runs"][key] after every epoch."""
    def save(run):
        result["runs"][key] = {"num_workers": cfg.num_workers, "device": cfg.device,
                               "optimizer": cfg.optimizer, "batch_norm": cfg.batch_norm, **run}
        if checkpoint is not None:
            checkpoint(result)

    save(training_run(cfg, save, label, trace_name))
    return result["runs"][key]


def model_facts(model):
    """What a run's model is before its first step: size, BatchNorm layers, weights' hash."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batchnorm_layers": sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()),
        "initial_weights_sha256": digest.hexdigest()[:16],
    }


def c4_workers_compared(cfg, checkpoint=None):
    """C4: C2 with 1 worker and with the best count, side by side."""
    best, source = best_worker_count(cfg)
    result = {"best_workers": best, "best_source": source, "runs": {}}
    run_into(result, "one_worker", replace(cfg, num_workers=1), checkpoint, "1 worker, ",
             trace_name="c4-1-worker")
    run_into(result, "best", replace(cfg, num_workers=best), checkpoint, f"{best} workers, ",
             trace_name=f"c4-{best}-workers")
    return result


def render_c4(result):
    runs = result["runs"]
    names = {"one_worker": "1 worker", "best": f"{result['best_workers']} workers (best)"}
    rows = []
    for key, run in runs.items():
        for e in run["epochs"]:
            rows.append([names[key], e["epoch"], seconds(e["data_time"]),
                         seconds(e["first_batch_time"]), seconds(e["train_time"]),
                         seconds(e["epoch_time"])])
        s = run["summary"]
        if run["epochs"]:
            rows.append([names[key], "mean", seconds(s["data_time"]),
                         seconds(s["first_batch_time"]),
                         seconds(s["train_time"]), seconds(s["epoch_time"])])
    text = markdown_table(["workers", "epoch", "data (s)", "of which first batch (s)",
                           "train (s)", "total (s)"], rows, align="lrrrrr")
    text += f"\n\nThe best count, {result['best_workers']}, comes from {result['best_source']}."
    if "one_worker" in runs and "best" in runs and runs["best"]["epochs"]:
        text += "\n\n" + explain_c4(runs["one_worker"], runs["best"], result["best_workers"])
    for key, run in runs.items():
        if "profile" in run:
            text += f"\n\nProfile, {names[key]}:\n\n" + render_profile(run["profile"])
    return text


def explain_c4(one, best, best_workers):
    """C4's explanation, every figure in it read from the two runs."""
    lines = [explain_wait(one, 1)]
    if best_workers != 1:
        lines.append(explain_wait(best, best_workers))
    a, b = one["summary"], best["summary"]
    speedup = a["epoch_time"] / b["epoch_time"]
    lines.append(f"- Per epoch, {plural(best_workers, 'worker')} took {b['epoch_time']:.3f} s "
                 f"against {a['epoch_time']:.3f} s with 1 worker ({speedup:.2f}x as fast). "
                 f"Of the difference of {a['epoch_time'] - b['epoch_time']:+.3f} s, "
                 f"{a['data_time'] - b['data_time']:+.3f} s is in the wait for data and "
                 f"{a['train_time'] - b['train_time']:+.3f} s in training.")
    train_change = abs(a["train_time"] - b["train_time"]) / max(a["train_time"], b["train_time"])
    if train_change > 0.05:
        lines.append(f"- The training time itself changed by {100 * train_change:.0f}%, though the "
                     "training work is the same: worker processes run on the same CPU cores as "
                     "the training (on a CPU) or its host-side work (on a GPU) and take turns "
                     "with it, and other programs on the machine do too.")
    else:
        lines.append("- The training time stayed within 5%: the workers change only how long "
                     "the loop waits for data.")
    return "\n".join(lines)


def explain_wait(run, num_workers):
    """One line on how long a run waited for data, and why, from its figures.

    The first batch of an epoch waits for the workers to start, so whether loading keeps up
    is judged on the rest of the wait.
    """
    s = run["summary"]
    share = 100 * s["data_time"] / s["epoch_time"]
    line = (f"- With {plural(num_workers, 'worker')}, the loop waited {s['data_time']:.3f} s "
            f"per epoch for data ({share:.1f}% of the epoch). ")
    if num_workers == 0:
        return line + ("With no workers the main process loads every batch itself, between "
                       "training steps: nothing is hidden, and the wait is the whole cost of "
                       "reading, augmenting and collating the images.")
    first = s["first_batch_time"]
    steady = s["data_time"] - first
    line += (f"{first:.3f} s of it is the first batch of each epoch, which includes starting "
             f"the worker processes afresh; the other batches waited {steady:.3f} s in all "
             f"({100 * steady / s['epoch_time']:.1f}% of the epoch). ")
    if steady / s["epoch_time"] < 0.05:
        return line + ("After the start, loading is hidden behind compute: the workers prepare "
                       "the next batches while the model trains.")
    return line + ("Loading is not hidden: the workers do not prepare batches as fast as the "
                   "model consumes them.")


# ----------------------------------------------------------------------------------------
# C5, C6 and C7


def gpu_device():
    """("cuda" or "mps", its name), or (None, why there is none)."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name()
    if torch.backends.mps.is_available():
        return "mps", "Apple MPS"
    return None, f"torch {torch.__version__} finds no CUDA or MPS device on this machine"


def c5_cpu_vs_gpu(cfg, checkpoint=None):
    """C5: average epoch time on the CPU and on the GPU with the best worker count."""
    best, source = best_worker_count(cfg)
    gpu, gpu_name = gpu_device()
    result = {"best_workers": best, "best_source": source, "runs": {},
              "gpu": {"device": gpu, "name": gpu_name if gpu else None,
                      "skipped": None if gpu else gpu_name},
              "speedup": None}
    run_into(result, "cpu", replace(cfg, device="cpu", num_workers=best), checkpoint, "cpu, ")
    if gpu is not None:
        run_into(result, "gpu", replace(cfg, device=gpu, num_workers=best), checkpoint,
                 f"{gpu}, ")
        result["speedup"] = (result["runs"]["cpu"]["summary"]["epoch_time"]
                             / result["runs"]["gpu"]["summary"]["epoch_time"])
    return result


def render_c5(result):
    rows = []
    for key, run in result["runs"].items():
        s = run["summary"]
        name = "CPU" if key == "cpu" else f"GPU ({result['gpu']['name']})"
        rows.append([name, s["epochs"], seconds(s["epoch_time"]), seconds(s["train_time"]),
                     seconds(s["data_time"])])
    if result["gpu"]["skipped"]:
        rows.append(["GPU", "-", "skipped", "-", "-"])
    text = markdown_table(["device", "epochs", "mean epoch (s)", "mean train (s)",
                           "mean data (s)"], rows)
    text += f"\n\nBoth with {result['best_workers']} workers (from {result['best_source']})."
    if result["speedup"] is not None:
        speedup = result["speedup"]
        text += (f" The GPU is **{speedup:.1f}x** faster per epoch than the CPU" if speedup >= 1
                 else f" The GPU is **{1 / speedup:.1f}x slower** per epoch than the CPU")
        text += " (mean epoch time over the epochs)."
    else:
        text += f" The GPU run was skipped: {result['gpu']['skipped']}."
    return text


def c6_optimizers(cfg, checkpoint=None):
    """C6: the five optimizers from the same initial weights and the same data order."""
    result = {"optimizers": list(OPTIMIZERS), "lr": cfg.lr, "seed": cfg.seed, "runs": {}}
    for name in OPTIMIZERS:
        run_into(result, name, replace(cfg, optimizer=name), checkpoint, f"{name}, ")
    return result


def render_c6(result):
    rows, epoch_rows = [], []
    for name, run in result["runs"].items():
        s = run["summary"]
        status = f"diverged in epoch {s['diverged_at']}" if s["diverged_at"] else ""
        rows.append([name, seconds(s["train_time"]), _loss(s["train_loss"]),
                     percent(s["train_accuracy"]), _loss(s["final_train_loss"]),
                     percent(s["final_train_accuracy"]), status])
        for e in run["epochs"]:
            epoch_rows.append([name, e["epoch"], seconds(e["train_time"]), _loss(e["train_loss"]),
                               percent(e["train_accuracy"]), "diverged" if e["diverged"] else ""])
    text = markdown_table(["optimizer", "mean train (s)", "mean loss", "mean top-1",
                           "last loss", "last top-1", ""], rows, align="lrrrrrl")
    text += "\n\nPer epoch:\n\n" + markdown_table(
        ["optimizer", "epoch", "train (s)", "loss", "top-1", ""], epoch_rows, align="lrrrrl")
    fingerprints = sorted({run["model"]["initial_weights_sha256"]
                           for run in result["runs"].values() if run["model"]})
    text += "\n\n" + (
        f"All runs start from the same initial weights (SHA-256 prefix {fingerprints[0]})"
        if len(fingerprints) == 1 else
        f"The runs did NOT start from the same weights: {', '.join(fingerprints)}")
    text += (f"; all see the same data order (seed {result['seed']}); lr {result['lr']} and "
             "weight decay 5e-4 for all, momentum 0.9 for the two SGDs.")
    return text


def _loss(value):
    return "-" if value is None else f"{value:.4f}"


def c7_without_batchnorm(cfg, checkpoint=None):
    """C7: SGD without BatchNorm, against the same run with it (C6's SGD run when it matches)."""
    cfg = replace(cfg, optimizer="sgd")
    result = {"runs": {}, "batch_norm_source": "a fresh run"}
    c6 = report.read_json(os.path.join(cfg.out, "c6.json"))
    reusable = (c6 and c6.get("complete") and "sgd" in c6.get("runs", {})
                and _same_training(c6["config"], asdict(replace(cfg, batch_norm=True))))
    run_into(result, "without_bn", replace(cfg, batch_norm=False), checkpoint, "no BN, ")
    if reusable:
        result["runs"]["with_bn"] = c6["runs"]["sgd"]
        result["batch_norm_source"] = "C6's SGD run (same configuration)"
        if checkpoint is not None:
            checkpoint(result)
    else:
        run_into(result, "with_bn", replace(cfg, batch_norm=True), checkpoint, "with BN, ")
    return result


def _same_training(a, b):
    """Two configurations train the same way (the output folder aside).

    The optimizer is left out because C7 asks whether C6's SGD run, saved under a config
    naming C6's own --optimizer, matches; the caller picks the SGD run itself.
    """
    ignore = {"out", "optimizer", "evaluate", "max_workers", "repeats", "best_workers"}
    return {k: v for k, v in a.items() if k not in ignore} == \
        {k: v for k, v in b.items() if k not in ignore}


def render_c7(result):
    names = {"with_bn": "with BatchNorm", "without_bn": "without BatchNorm"}
    rows = []
    for key in ("with_bn", "without_bn"):
        run = result["runs"].get(key)
        if run is None:
            continue
        s = run["summary"]
        rows.append([names[key], run["model"]["batchnorm_layers"],
                     f"{run['model']['parameters']:,}",
                     _loss(s["train_loss"]), percent(s["train_accuracy"]),
                     _loss(s["final_train_loss"]), percent(s["final_train_accuracy"]),
                     seconds(s["train_time"]), seconds(s["epoch_time"])])
    text = markdown_table(["model", "BN layers", "parameters", "mean loss", "mean top-1",
                           "last loss", "last top-1", "train/epoch (s)", "epoch (s)"], rows)
    text += f"\n\nThe BatchNorm run is {result['batch_norm_source']}."
    if len(rows) == 2:
        with_bn = result["runs"]["with_bn"]["summary"]
        without = result["runs"]["without_bn"]["summary"]
        text += (f" Without BatchNorm the mean training loss is {without['train_loss']:.4f} "
                 f"against {with_bn['train_loss']:.4f}, the mean top-1 accuracy "
                 f"{without['train_accuracy']:.1f}% against {with_bn['train_accuracy']:.1f}%, "
                 f"and an epoch's training takes {without['train_time']:.3f} s against "
                 f"{with_bn['train_time']:.3f} s.")
        if without["diverged_at"]:
            text += f" Without BatchNorm the loss diverged in epoch {without['diverged_at']}."
    return text


def resnet_summary(cfg):
    """The lab's ResNet-18 (with --no-bn, the one without BatchNorm) as torchsummary shows it."""
    model = ResNet18(batch_norm=cfg.batch_norm).to(cfg.device)
    return model_summary(model, (3, 32, 32), batch_size=-1, print_table=False)


def render_summary(result):
    return "```\n" + format_summary(result) + "\n```"


# ----------------------------------------------------------------------------------------
# The command line


@dataclass
class Exercise:
    title: str
    run: callable                  # run(cfg, checkpoint) -> dict
    render: callable               # render(result) -> Markdown text
    uses_data: bool = True         # loads the lab's data set, named before it runs
    checkpoints: bool = True       # run takes a checkpoint(partial) callback
    evaluate: bool = False         # test accuracy on by default
    chart: callable = None         # chart(result, path) -> bool: a PNG, where matplotlib is


EXERCISES = {
    "c1": Exercise("C1: training", c1_training, render_c1, evaluate=True),
    "c2": Exercise("C2: time measurement", c2_timing, render_c2),
    "c3": Exercise("C3: I/O optimization (DataLoader workers)", c3_worker_sweep, render_c3,
                   chart=c3_chart_png),
    "c4": Exercise("C4: profiling, 1 worker against the best", c4_workers_compared, render_c4),
    "c5": Exercise("C5: training on the GPU against the CPU", c5_cpu_vs_gpu, render_c5),
    "c6": Exercise("C6: experimenting with optimizers", c6_optimizers, render_c6),
    "c7": Exercise("C7: experimenting without BatchNorm", c7_without_batchnorm, render_c7),
    # The questions read only the model and take a second: no data, nothing to checkpoint.
    "q1": Exercise("Q1: convolutional layers", q1_conv_layers, render_q1, False, False),
    "q2": Exercise("Q2: input dimension of the last linear layer", q2_linear_input, render_q2,
                   False, False),
    "q3": Exercise("Q3: parameters and gradients with SGD", q3_sgd_parameters, render_q3,
                   False, False),
    "q4": Exercise("Q4: parameters and gradients with Adam", q4_adam_parameters, render_q4,
                   False, False),
    "summary": Exercise("Model summary (in place of torchsummary)", resnet_summary,
                        render_summary, False, False),
    # C8 and bench pick their own slices and record the data set they used in "dataset".
    "c8": Exercise("C8: torch.compile, eager against its modes", c8_compile, render_c8,
                   uses_data=False),
    "bench": Exercise("Speed ladder: images/s of each option against the default", bench,
                      render_bench, uses_data=False),
}
CHOICES = list(EXERCISES) + ["all"]
QUICK = {"train_size": 256, "test_size": 200, "epochs": 2, "repeats": 2}


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of argparse's usage block
        raise UsageError(f"{message} (see python lab.py --help)")


def positive_int(text):
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text}")
    return value


def non_negative_int(text):
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def positive_float(text):
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _number(text, kind):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None


def build_parser():
    parser = Parser(
        prog="lab.py",
        description="The HPML lab: ResNet-18 on CIFAR-10, and where the time goes.",
        epilog="exercises: " + "; ".join(f"{k} = {e.title}" for k, e in EXERCISES.items())
        + "; all = every exercise in order, then REPORT.md")
    parser.add_argument("exercise", metavar="EXERCISE", type=str.lower,
                        help=f"one of: {', '.join(CHOICES)}")
    add = parser.add_argument
    add("--device", default="auto", type=str.lower, choices=("auto", "cpu", "cuda", "mps"),
        help="where to train; auto picks cuda, then mps, then cpu (default: auto)")
    add("--cuda", action="store_true", help="shorthand for --device cuda, as in the assignment")
    add("--dataset", default="auto", type=str.lower, choices=DATASETS,
        help="cifar10 (downloaded when missing), folder (an image-folder tree), synthetic "
             "(generated in memory), or auto: CIFAR-10 if on disk or downloadable, else "
             "synthetic (default: auto)")
    add("--data-path", default="./data",
        help="folder of CIFAR-10 or of the image-folder tree (default: ./data)")
    add("--train-size", type=positive_int, metavar="N",
        help="use a fixed, seeded subset of N training images (default: all)")
    add("--test-size", type=positive_int, metavar="N",
        help="use a fixed, seeded subset of N test images (default: all)")
    add("--seed", type=int, default=0,
        help="seed for the weights, the data order and synthetic data (default: 0)")
    add("--num-workers", type=non_negative_int, default=2, metavar="N",
        help="DataLoader worker processes (default: 2)")
    add("--batch-size", type=positive_int, default=128, metavar="N",
        help="training mini-batch size (default: 128; the test batch is 100)")
    add("--optimizer", default="sgd", type=str.lower, choices=OPTIMIZERS,
        help="sgd (momentum 0.9), nesterov, adagrad, adadelta or adam; all with weight "
             "decay 5e-4 (default: sgd)")
    add("--lr", type=positive_float, default=0.1, help="learning rate (default: 0.1)")
    add("--epochs", type=positive_int, metavar="N", help="epochs (default: 5)")
    add("--eval", dest="evaluate", action=argparse.BooleanOptionalAction, default=None,
        help="measure test accuracy after each epoch, outside the timed windows "
             "(default: on for c1, off for the others)")
    add("--no-bn", dest="batch_norm", action="store_false",
        help="ResNet-18 without BatchNorm (C7 uses it on its own)")
    add("--out", default="results", metavar="DIR",
        help="folder for the results files and REPORT.md (default: results)")
    add("--quick", action="store_true",
        help=f"small slices for a quick run on a CPU: --train-size {QUICK['train_size']} "
             f"--test-size {QUICK['test_size']} --epochs {QUICK['epochs']} --repeats "
             f"{QUICK['repeats']}, unless given")
    add("--force", action="store_true",
        help="all: rerun every exercise, even those whose results are complete")
    workers = parser.add_argument_group("worker experiments (C3, C4, C5)")
    workers.add_argument("--max-workers", type=non_negative_int, metavar="N",
                         help="C3: time 0, 4, 8, ... up to N workers (default: stop at the "
                              "first count that is not faster)")
    workers.add_argument("--repeats", type=positive_int, metavar="N",
                         help="C3: timings per worker count; the median is used (default: 3)")
    workers.add_argument("--best-workers", type=non_negative_int, metavar="N",
                         help="C4, C5: use N as the best worker count (default: C3's result, "
                              "else a sweep)")
    speed = parser.add_argument_group("speed options (off by default: the lab's plain path)")
    speed.add_argument("--channels-last", action="store_true",
                       help="NHWC memory format for the model and the images")
    speed.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16"),
                       help="autocast: bf16 (default when given) or fp16 with a gradient "
                            "scaler (CUDA)")
    speed.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                       choices=("default", "reduce-overhead", "max-autotune"),
                       help="torch.compile the model: default, reduce-overhead or "
                            "max-autotune (default when given: default)")
    speed.add_argument("--loader", default="torch", choices=("torch", "device"),
                       help="torch: the lab's DataLoader (default); device: the training set "
                            "held on the device and augmented there in whole batches")
    add("--profile", action="store_true",
        help="c2, c4: record a torch.profiler trace (Chrome trace JSON) in the results folder "
             "and print the ten costliest operators")
    return parser


def resolve_device(name):
    """The torch device for --device, or UsageError when it is not on this machine."""
    if name == "auto":
        return gpu_device()[0] or "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's MPS is not available here; use --device cpu")
    return name


def parse_args(argv):
    """(exercise, Config, --eval/--no-eval or None, --force) from the command line.

    Raises UsageError on bad input.
    """
    args = build_parser().parse_args(argv)
    if args.exercise not in CHOICES:
        raise UsageError(f"unknown exercise {args.exercise!r}; choose one of: {', '.join(CHOICES)}")
    if args.cuda:
        if args.device not in ("auto", "cuda"):
            raise UsageError(f"--cuda contradicts --device {args.device}")
        args.device = "cuda"
    if args.profile and args.exercise not in ("c2", "c4", "all"):
        raise UsageError(f"--profile records c2 and c4 only, not {args.exercise}")
    if args.loader == "device" and args.exercise in ("c3", "c4"):
        raise UsageError(f"{args.exercise} measures the DataLoader's workers; "
                         "--loader device has none")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be from 0 to {2**32 - 1}, not {args.seed}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file; it must be a folder")
    cfg = Config(
        device=resolve_device(args.device), dataset=args.dataset, data_path=args.data_path,
        train_size=args.train_size, test_size=args.test_size, seed=args.seed,
        num_workers=args.num_workers, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, epochs=args.epochs or 5, batch_norm=args.batch_norm, out=args.out,
        channels_last=args.channels_last, amp=args.amp, compile=args.compile is not None,
        compile_mode=None if args.compile in (None, "default") else args.compile,
        loader=args.loader, profile=args.profile, max_workers=args.max_workers,
        repeats=args.repeats or 3, best_workers=args.best_workers, quick=args.quick)
    if args.quick:  # each slice --quick chooses, unless the command line gave it
        given = {"train_size": args.train_size, "test_size": args.test_size,
                 "epochs": args.epochs, "repeats": args.repeats}
        cfg = replace(cfg, **{k: QUICK[k] for k, v in given.items() if v is None})
    return args.exercise, cfg, args.evaluate, args.force


def device_name(device):
    """The device in words: the GPU's name, or the CPU model and its cores."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    if device == "mps":
        return "Apple MPS"
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_exercise(name, cfg, stream=None):
    """Run one exercise, saving `<out>/<name>.json` after each step; print its tables."""
    stream = stream or sys.stdout
    exercise = EXERCISES[name]
    info = datasets_for(cfg)[2] if exercise.uses_data else None
    header = {
        "exercise": name,
        "title": exercise.title,
        "complete": False,
        "config": asdict(cfg),
        "dataset": info,
        "device": {"type": cfg.device, "name": device_name(cfg.device)},
        "torch_version": torch.__version__,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    path = os.path.join(cfg.out, f"{name}.json")
    print(f"\n## {exercise.title}\n", file=stream, flush=True)
    if exercise.uses_data:
        print(describe_run(header) + "\n", file=stream, flush=True)

    def checkpoint(partial):
        report.write_json(path, {**header, **partial})

    answer = exercise.run(cfg, checkpoint) if exercise.checkpoints else exercise.run(cfg)
    result = {**header, **answer}
    result["complete"] = True
    result["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    report.write_json(path, result)
    if not exercise.uses_data:  # now that the run has said which data, if any, it used
        print(describe_run(result) + "\n", file=stream)
    print(exercise.render(result), file=stream)
    saved = [path]
    if exercise.chart is not None:
        chart_path = os.path.join(cfg.out, f"{name}.png")
        if exercise.chart(result, chart_path):
            saved.append(chart_path)
    print(f"\n(saved to {', '.join(saved)})", file=stream, flush=True)
    return result


def describe_run(header):
    """One line naming the data, the device and the torch version of a run."""
    cfg, info = header["config"], header["dataset"]
    parts = []
    if info is not None:
        parts.append(f"data: {info['name']} ({info['train_images']} training, "
                     f"{info['test_images']} test images; {info['note']})")
    parts.append(f"device: {header['device']['name']}")
    parts.append(f"torch {header['torch_version']}")
    if header["exercise"] in ("c1", "c2", "c6", "c7"):  # the others vary the workers themselves
        loading = ("the device loader" if cfg["loader"] == "device"
                   else plural(cfg["num_workers"], "worker"))
        parts.append(f"batch {cfg['batch_size']}, {loading}, {cfg['optimizer']} lr {cfg['lr']}, "
                     f"{plural(cfg['epochs'], 'epoch')}")
    return " · ".join(parts)


# ----------------------------------------------------------------------------------------
# `all` and the lab report

LAB_ORDER = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "q1", "q2", "q3", "q4", "summary"]
BEYOND_THE_LAB = ["c8", "bench"]  # in the report when their results exist; `all` skips them


def exercise_config(name, cfg, evaluate=None, best_workers=None):
    """The configuration one exercise runs with inside `all`."""
    cfg = replace(cfg, evaluate=EXERCISES[name].evaluate if evaluate is None else evaluate)
    if best_workers is not None and name in ("c4", "c5", "c6", "c7"):
        cfg = replace(cfg, best_workers=best_workers, num_workers=best_workers)
    return cfg


def finished_result(name, cfg):
    """The saved result of `name` if it is complete and was run with this very configuration."""
    saved = report.read_json(os.path.join(cfg.out, f"{name}.json"))
    if saved and saved.get("complete") and saved.get("config") == asdict(cfg):
        return saved
    return None


def run_all(cfg, evaluate=None, force=False, stream=None):
    """Every exercise in the assignment's order, C3's best worker count fed into C4-C7.

    Exercises already complete for the same configuration are skipped (unless `force`), so
    a run stopped with Ctrl-C continues where it stopped. REPORT.md is rewritten after each
    exercise and when interrupted, so it always covers what finished.
    """
    stream = stream or sys.stdout
    best = cfg.best_workers  # --best-workers wins over C3's result
    try:
        for name in LAB_ORDER:
            each = exercise_config(name, cfg, evaluate, best)
            result = None if force else finished_result(name, each)
            if result is not None:
                print(f"\n{name}: complete in {cfg.out}/{name}.json for this configuration; "
                      "skipped (--force reruns it)", file=stream, flush=True)
            else:
                result = run_exercise(name, each, stream)
                write_report(cfg)
            if name == "c3" and result is not None and cfg.best_workers is None:
                best = result["best_workers"]
    finally:
        path = write_report(cfg)
        print(f"\nlab report: {path}", file=stream, flush=True)
    return path


def write_report(cfg):
    """Write <out>/REPORT.md from the results files there; return its path.

    Every exercise of the lab gets a section, "Not run." when it has no results yet;
    C8 and the bench, which `all` does not run, get one when their results are there.
    """
    sections = []
    first = None
    extras = [name for name in BEYOND_THE_LAB
              if os.path.exists(os.path.join(cfg.out, f"{name}.json"))]
    for name in LAB_ORDER + extras:
        exercise = EXERCISES[name]
        saved = report.read_json(os.path.join(cfg.out, f"{name}.json"))
        sections.append(f"## {exercise.title}\n")
        if saved is None:
            sections.append("Not run.\n")
            continue
        first = first or saved
        if not saved.get("complete"):
            sections.append("*Interrupted: this section shows what finished before the stop.*\n")
        sections.append(f"*{describe_run(saved)}*\n")
        try:
            sections.append(exercise.render(saved) + "\n")
        except (KeyError, TypeError, ValueError, StopIteration, ZeroDivisionError):
            sections.append("The saved results are too incomplete to show.\n")
        if name == "c3" and os.path.exists(os.path.join(cfg.out, "c3.png")):
            sections.append("![C3 chart](c3.png)\n")
    path = os.path.join(cfg.out, "REPORT.md")
    report.write_text(path, report_header(cfg, first) + "\n".join(sections))
    return path


def report_header(cfg, sample):
    """The report's title and set-up: data, slices, machine and versions."""
    gpu, gpu_name = gpu_device()
    info = (sample or {}).get("dataset") or {}
    rows = [
        ["date", datetime.date.today().isoformat()],
        ["data set", f"{info.get('name', '-')}: {info.get('note', '-')}"],
        ["training images", info.get("train_images", "-")],
        ["test images", info.get("test_images", "-")],
        ["slices", f"train-size {cfg.train_size or 'all'}, test-size {cfg.test_size or 'all'}, "
                   f"C3 repeats {cfg.repeats}" + (" (chosen by --quick)" if cfg.quick else "")],
        ["epochs per run", cfg.epochs],
        ["batch size", f"{cfg.batch_size} (test {cfg.test_batch_size})"],
        ["optimizer", f"{cfg.optimizer}, lr {cfg.lr}, weight decay 5e-4"],
        ["training device", f"{cfg.device}: {device_name(cfg.device)}"],
        ["CPU", f"{cpu_model()}, {usable_cores()} cores usable"],
        ["GPU", gpu_name if gpu else f"none: {gpu_name}"],
        ["torch", torch.__version__],
        ["seed", cfg.seed],
    ]
    return ("# HPML lab report: ResNet-18 on CIFAR-10\n\n"
            "Every figure below was measured by this project and read from the results files "
            "beside this report; the line under each heading names the data, the device and "
            "the settings of that run.\n\n"
            + markdown_table(["", ""], rows, align="ll") + "\n\n")


def make_output_folder(path):
    """Create the results folder before any work, so a bad --out fails at once."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {path} cannot be created: {error.strerror}") from None


def main(argv=None):
    cfg = Config()
    try:
        name, cfg, evaluate, force = parse_args(sys.argv[1:] if argv is None else argv)
        make_output_folder(cfg.out)
        if name == "all":
            run_all(cfg, evaluate, force)
        else:
            run_exercise(name, exercise_config(name, cfg, evaluate))
    except (UsageError, DataError) as error:
        print(f"lab.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished epoch is kept in {cfg.out}/", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to `head` or a pager that has quit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":  # guarded: DataLoader workers started with "spawn" import this file
    sys.exit(main())
