"""The HPML lab, as the assignment reads: train ResNet-18 on CIFAR-10, find out where the time goes.

    python lab.py c1                      # C1: train 5 epochs with SGD
    python lab.py c3 --max-workers 40     # C3: the DataLoader worker sweep
    python lab.py all --quick             # every exercise on a small slice, and REPORT.md
    python lab.py --help                  # every exercise and option
    python lab.py --handout 2026 c4       # another year's numbering: its C4 (handouts.py)

Each exercise is one function, `cN_...(cfg, save) -> dict`, returning JSON-ready data and
calling save(partial) as it goes, so Ctrl-C keeps every finished epoch. Printing: render.py (and
speed.py, infer.py, ddp.py, flops.py their own); charts: charts.py; results, REPORT.md: report.py.
The exercises are numbered as the 2022 handout; handouts.py numbers them as later ones do.
"""

import signal
import sys

if __name__ == "__main__":  # a stop signal while torch loads, before anything started: stop
    for name in {"SIGINT", "SIGTERM", "SIGHUP"} & set(dir(signal)):  # Windows has no SIGHUP
        signal.signal(getattr(signal, name), lambda signum, frame: sys.exit(128 + signum))

import inspect
import itertools
import math
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn as nn

import charts
import cli
import ddp
import flops
import infer
import render
import report
import speed
from data import datasets_for, make_loader
from handouts import Exercise, command_for
from machine import gpu_device, usable_cores, worker_limit
from resnet import ResNet18
from timing import profiling
from torchscript import WEIGHTS_FILE
from train import OPTIMIZERS, fit, make_optimizer, train_step


@dataclass
class Config:
    """Everything a run depends on, with the lab's defaults; the command line fills it in."""

    device: str = "cpu"            # resolved: "cpu", "cuda" or "mps"
    dataset: str = "auto"          # auto, cifar10, folder or synthetic
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
    evaluate: bool = None          # test accuracy after each epoch; None: the exercise's default
    batch_norm: bool = True
    out: str = "results"           # the default handout's; another's is results-YEAR
    handout: str = "2022"          # whose numbers, titles and order (handouts.py); lab.py's own
    # Speed options, off by default: the default is the lab's plain path.
    channels_last: bool = False
    amp: str = None                # None, "bf16" or "fp16"
    compile: bool = False
    compile_mode: str = None       # torch.compile's mode; None is its default
    loader: str = "torch"          # "torch": the lab's DataLoader; "device": DeviceLoader
    profile: bool = False          # write a torch.profiler trace to the results folder
    wide: bool = False             # summary: kernel, mult-adds and parameter-share columns too
    check_bench: bool = False      # check: then measure the headline figures (--bench)
    # The worker experiments.
    max_workers: int = None        # C3: sweep 0, 4, ... up to this; None: until no faster
    repeats: int = 3               # C3: timings per worker count (the median is used)
    best_workers: int = None       # C4-C7: the best worker count, when it is known
    quick: bool = False            # the small slices below, for a quick run on a CPU
    # Beyond the lab: inference (infer) and data-parallel training (torchrun, ddp).
    infer_batch_sizes: tuple = (1, 128)
    checkpoint: str = None         # a saved state_dict; None: infer's fresh, Part B's C1's
    trace: bool = False            # 2026's Part B: torch.jit.trace instead of torch.jit.script
    sync_bn: bool = False          # under torchrun: SyncBatchNorm over the global batch
    max_procs: int = None          # ddp: world sizes 1, 2, 4, ... up to this; None: GPUs, or 2
    ddp_batch_sizes: tuple = None  # ddp: batches per process; None: the device's (ddp.py)
    ddp_steps: int = None          # ddp: timed steps of each kind; None: the device's (ddp.py)

    QUICK: ClassVar[dict] = {"train_size": 256, "test_size": 200, "epochs": 2, "repeats": 2}


# ----------------------------------------------------------------------------------------
# C1 and C2: training, and where an epoch's time goes


def c1_training(cfg, save=None):
    """C1: train ResNet-18 for cfg.epochs; per epoch, the average loss and top-1 accuracy.

    After each epoch that did not diverge its weights replace <out>/c1.weights.pt, so the
    file ends with the last epoch's (not the best test accuracy's: choosing by the test set
    would leak it into the model). 2026's Part B starts from them.
    """
    weights = os.path.join(cfg.out, WEIGHTS_FILE)
    return training_run(cfg, save, on_weights=lambda model: report.write_weights(weights, model))


def c2_timing(cfg, save=None):
    """C2: C1 with each epoch's data, train and total time (timing.py), and FLOP/s (flops.py)."""
    run = training_run(cfg, save, trace_name="c2")
    return {**run, "arithmetic": flops.c2_arithmetic(cfg, run["epochs"])}


def training_run(cfg, save=None, label="", trace_name=None, on_weights=None):
    """fit() on cfg's data, save(run) after every epoch; {"model", "warmed_up", "epochs", ...}.

    With cfg.profile and a trace_name, the first steps are recorded into
    <out>/<trace_name>.trace.json and the run gets a "profile" summary (timing.Profile).
    """
    train_set, test_set, _ = datasets_for(cfg)
    profiled = cfg.profile and trace_name
    trace = os.path.join(cfg.out, f"{trace_name}.trace.json") if profiled else None
    with profiling(trace, cfg.device) as profiler:
        run = fit(cfg, train_set, test_set, on_epoch=save, label=label, profiler=profiler,
                  on_weights=on_weights)
    if profiler is not None:
        run["profile"] = profiler.summary()
    return run


# ----------------------------------------------------------------------------------------
# C3: the DataLoader worker sweep


def c3_worker_sweep(cfg, save=None):
    """C3: time one epoch of data loading for 0, 4, 8, ... workers; the fastest count wins.

    Without cfg.max_workers the sweep stops at the first of 0, 4, 8, ... that is not faster
    than the one before (the assignment's rule); with it, every count up to cfg.max_workers
    is timed. The usable core count joins as an extra point when it is not a multiple of 4
    (2 on a 2-core machine), since that is where adding workers should stop paying. Each
    count is timed cfg.repeats times and ranked by the median.
    """
    cores = usable_cores()
    top = cfg.max_workers if cfg.max_workers is not None else worker_limit()
    counts = sorted(set(range(0, top + 1, 4)) | ({cores} if cores <= top else set()))
    result = {"cores": cores, "max_workers": cfg.max_workers, "repeats": cfg.repeats,
              "points": [], "best_workers": None, "stopped_because": None}
    for num_workers in counts:
        times = sorted(loader_epoch_time(cfg, num_workers) for _ in range(cfg.repeats))
        point = {"num_workers": num_workers, "median": statistics.median(times),
                 "min": times[0], "max": times[-1], "times": times}
        # The stop rule follows 0, 4, 8, ...; the core count is an extra point beside them.
        on_the_rule = [p for p in result["points"] if p["num_workers"] % 4 == 0]
        previous = on_the_rule[-1] if on_the_rule and num_workers % 4 == 0 else None
        result["points"].append(point)
        result["best_workers"] = min(result["points"], key=lambda p: p["median"])["num_workers"]
        if save is not None:
            save(result)
        render.notice(f"c3: {num_workers:>2} workers: median {point['median']:.3f} s "
                      f"(min {point['min']:.3f}, max {point['max']:.3f})")
        if cfg.max_workers is None and previous and point["median"] >= previous["median"]:
            result["stopped_because"] = (f"{num_workers} workers were not faster than "
                                         f"{previous['num_workers']}")
            break
    else:
        result["stopped_because"] = "every count asked for was timed"
    return result


def loader_epoch_time(cfg, num_workers):
    """Seconds for the training DataLoader to deliver one full epoch, with no model. The clock
    starts before `iter(loader)`, so starting the worker processes is included, and stops
    after the last batch, when they have been shut down."""
    train_set = datasets_for(cfg)[0]
    loader = make_loader(train_set, cfg.batch_size, shuffle=True, num_workers=num_workers,
                         seed=cfg.seed)  # no warning past the core count: C3 explains it
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------
# C4 and C5: one worker against the best count; the CPU against the GPU


def c4_workers_compared(cfg, save=None):
    """C4: C2 with 1 worker and with the best count, side by side."""
    best, source = best_worker_count(cfg)
    result = {"best_workers": best, "best_source": source, "runs": {}}
    train_runs(result, save, [
        ("one_worker", replace(cfg, num_workers=1), "1 worker, ", "c4-1-worker"),
        ("best", replace(cfg, num_workers=best), f"{best} workers, ", f"c4-{best}-workers")])
    return result


C3_MEASURED_ON = ("handout", "dataset", "data_path", "train_size", "seed", "batch_size",
                  "device")


def best_worker_count(cfg):
    """(count, where it came from): --best-workers, else C3's results file when it was
    measured on this run's data, slice, batch size and device, else a sweep run now.

    This is the one way C4-C7 learn the count (`all` too: its C3 writes c3.json first). A
    count measured on another slice does not carry over: on 256 images worker start-up
    dominates and 0 workers wins, which says nothing about a full epoch.
    """
    if cfg.best_workers is not None:
        return cfg.best_workers, "--best-workers"
    sweep, path = saved_result(cfg, "c3", reader="c4-c7")
    mismatch = None
    used = datasets_for(cfg)[2]["name"]  # the data set actually used, not --dataset's "auto"
    slice_ = f"{cfg.train_size or 'all'} training images of {used} data, batch {cfg.batch_size}"
    if sweep and sweep["complete"]:
        mismatch = [key for key in C3_MEASURED_ON if sweep["config"].get(key) != getattr(cfg, key)]
        if not mismatch:
            return sweep["best_workers"], (f"{sweep['exercise'].upper()}'s results in {path} "
                                           f"(measured on {slice_})")
    why = (f"{path} was measured with another {', '.join(mismatch)}" if mismatch
           else "no C3 results and no --best-workers")
    render.notice(f"{why}: sweeping the worker counts on this run's slice first")
    best = c3_worker_sweep(replace(cfg, max_workers=None))["best_workers"]
    return best, f"a sweep run now ({why}; measured on {slice_})"


def saved_result(cfg, name, reader):
    """(result, path): the results file in cfg.out of EXERCISES[name], under the command that
    cfg's handout runs it as (2026 saves C6's optimizers as c5.json); result None when there
    is none that fits, and then `reader` says why on stderr."""
    command = command_for(cfg.handout, name) or name
    path = os.path.join(cfg.out, f"{command}.json")
    saved, why = report.read_result(path, command, EXERCISES[name].render)
    if why:
        render.notice(f"{reader}: not using {why}")
    return saved, path


def with_best_workers(cfg, result):
    """cfg with the best worker count, noted in `result`; the device loader has no workers."""
    if cfg.loader == "device":
        result.update(best_workers=None, best_source="none needed: --loader device")
        return cfg
    best, source = best_worker_count(cfg)
    result.update(best_workers=best, best_source=source)
    return replace(cfg, num_workers=best, best_workers=best)


def train_runs(result, save, runs):
    """Train each (key, cfg, label, trace name) in turn into result["runs"][key].

    After every epoch the run so far is put in its place and the whole result saved.
    """
    for key, cfg, label, trace_name in runs:
        facts = {"num_workers": cfg.num_workers, "device": cfg.device,
                 "optimizer": cfg.optimizer, "batch_norm": cfg.batch_norm}

        def keep(run, key=key, facts=facts):
            result["runs"][key] = {**facts, **run}
            if save is not None:
                save(result)

        keep(training_run(cfg, keep, label, trace_name))
    return result


def c5_cpu_vs_gpu(cfg, save=None):
    """C5: average epoch time on the CPU and on the GPU with the best worker count."""
    gpu, gpu_name = gpu_device()
    result = {"runs": {}, "gpu": {"device": gpu, "name": gpu_name if gpu else None,
                                  "skipped": None if gpu else gpu_name},
              "speedup": None}
    cfg = with_best_workers(cfg, result)
    runs = [("cpu", replace(cfg, device="cpu"), "cpu, ", None)]
    if gpu is not None:
        runs.append(("gpu", replace(cfg, device=gpu), f"{gpu}, ", None))
    train_runs(result, save, runs)
    if gpu is not None:
        result["speedup"] = (result["runs"]["cpu"]["summary"]["epoch_time"]
                             / result["runs"]["gpu"]["summary"]["epoch_time"])
    return result


# ----------------------------------------------------------------------------------------
# C6 and C7: five optimizers; without BatchNorm


def c6_optimizers(cfg, save=None):
    """C6: the five optimizers from the same initial weights and the same data order,
    with the best worker count."""
    result = {"optimizers": list(OPTIMIZERS), "lr": cfg.lr, "seed": cfg.seed, "runs": {}}
    cfg = with_best_workers(cfg, result)
    return train_runs(result, save, [(name, replace(cfg, optimizer=name), f"{name}, ", None)
                                     for name in OPTIMIZERS])


def c7_without_batchnorm(cfg, save=None):
    """C7: SGD without BatchNorm, against the same run with it (C6's SGD run when it matches)."""
    result = {"runs": {}, "batch_norm_source": "a fresh run", "batch_norm_reused_from": None}
    cfg = with_best_workers(replace(cfg, optimizer="sgd"), result)
    train_runs(result, save, [("without_bn", replace(cfg, batch_norm=False), "no BN, ", None)])
    c6, path = saved_result(cfg, "c6", reader="c7")
    sgd = c6["runs"].get("sgd") if c6 and c6["complete"] else None
    why = None
    if sgd is not None:  # all that C7 prints of the run must be there too
        why = report.cannot_show(render.render_c7, {"runs": {"with_bn": sgd},
                                                    "batch_norm_source": path}, f"{path}'s SGD run")
    if why:
        render.notice(f"c7: not using {why}")
    if (sgd is not None and not why and sgd.get("num_workers") == cfg.num_workers
            and same_training(c6["config"], report.as_saved(replace(cfg, batch_norm=True)))):
        result["runs"]["with_bn"] = sgd
        result["batch_norm_source"] = f"{c6['exercise'].upper()}'s SGD run (same configuration)"
        result["batch_norm_reused_from"] = c6["started"]  # another process, another time
        if save is not None:
            save(result)
    else:
        train_runs(result, save, [("with_bn", replace(cfg, batch_norm=True), "with BN, ", None)])
    return result


def same_training(a, b):
    """Two configurations (as dicts) train the same way, the optimizer and the workers aside:
    C6's SGD run is saved under C6's own --optimizer and --num-workers, so C7 picks that run
    itself and checks the workers it trained with."""
    ignore = {"out", "optimizer", "evaluate", "max_workers", "repeats", "best_workers",
              "num_workers"}
    return ({k: v for k, v in a.items() if k not in ignore}
            == {k: v for k, v in b.items() if k not in ignore})


# ----------------------------------------------------------------------------------------
# The model summary: a hand-written counter in place of torchsummary

MB = 1024 ** 2


def model_summary(model, input_size=(3, 32, 32), batch_size=-1, print_table=True, file=None):
    """Run one dummy batch through `model`, list its layers, count its parameters, estimate memory.

    input_size is one sample's shape, or a list of shapes for a model with several inputs;
    batch_size is what the table shows as the first dimension (-1: any, sized as one sample).
    Returns a JSON-ready dict: `rows` (one per layer call: layer, type, index, name, output_shape,
    params, trainable_params, output_bytes, kernel_size, mult_adds) and the totals. Prints the
    table unless print_table is False; `file` redirects it. Where torchsummary 1.5.1 miscounts,
    this one does not: README.md lists the cases and test_lab.py proves each.
    """
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    input_sizes = [input_size] if isinstance(input_size[0], int) else list(input_size)
    generator = torch.Generator().manual_seed(0)  # its own: the caller's random stream stays put
    inputs = [torch.rand(2, *size, generator=generator).to(device, dtype)  # (2, C, H, W)
              for size in input_sizes]
    batch = 1 if batch_size == -1 else batch_size  # torchsummary sizes "any batch" as one sample
    names = {module: name for name, module in model.named_modules()}
    counted = set()  # ids of the parameters already in a row: a shared one is counted once
    rows = []

    def record(module, args, output):
        own = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        counted.update(id(p) for p in own)
        rows.append({"layer": f"{type(module).__name__}-{len(rows) + 1}",
                     "type": type(module).__name__, "index": len(rows) + 1,
                     "name": names[module], "output_shape": output_shape(output, batch_size),
                     "params": sum(p.numel() for p in own),
                     "trainable_params": sum(p.numel() for p in own if p.requires_grad),
                     "output_bytes": output_bytes(output, batch),
                     **flops.layer_arithmetic(module, output, batch)})

    # torchsummary's choice of rows: every module but the model and its plain containers.
    layers = [m for m in model.modules()
              if m is not model and not isinstance(m, (nn.Sequential, nn.ModuleList))]
    hooks = [layer.register_forward_hook(record) for layer in layers]
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()  # BatchNorm uses, and leaves alone, its running statistics
        with torch.no_grad():  # only shapes are wanted; no graph, no gradients
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in was_training.items():
            module.training = training  # per module: a model may mix train and eval parts
    summary = summary_totals(model, rows, counted, input_sizes, batch, inputs[0].element_size())
    if print_table:
        print(render.format_summary(summary), file=file)
    return summary


def summary_totals(model, rows, counted, input_sizes, batch, element_size):
    """The summary's totals: each parameter once, however often it is shared; sizes in MB."""
    parameters = list(model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    input_bytes = sum(math.prod(size) * batch * element_size for size in input_sizes)
    forward_backward_bytes = 2 * sum(row["output_bytes"] for row in rows)  # outputs and grads
    params_bytes = sum(p.numel() * p.element_size() for p in parameters)
    return {
        "rows": rows,
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "unlisted_params": {name: p.numel() for name, p in model.named_parameters()
                            if id(p) not in counted},
        "input_size_mb": input_bytes / MB,
        "forward_backward_size_mb": forward_backward_bytes / MB,
        "params_size_mb": params_bytes / MB,
        "total_size_mb": (input_bytes + forward_backward_bytes + params_bytes) / MB,
        "total_mult_adds": sum(row["mult_adds"] for row in rows),
    }


def output_shape(output, batch_size):
    """A layer's output shape as the table shows it: first dimension the batch, containers kept."""
    if isinstance(output, torch.Tensor):
        return [batch_size, *output.shape[1:]] if output.dim() > 0 else []
    if isinstance(output, (tuple, list)):
        return [output_shape(item, batch_size) for item in output]
    if isinstance(output, dict):
        return {str(key): output_shape(value, batch_size) for key, value in output.items()}
    return None  # not a tensor: nothing kept for the backward pass


def output_bytes(output, batch):
    """Bytes of every tensor in a layer's output, for `batch` samples."""
    if isinstance(output, torch.Tensor):
        per_sample = math.prod(output.shape[1:]) * batch if output.dim() > 0 else 1
        return per_sample * output.element_size()
    if isinstance(output, (tuple, list)):
        return sum(output_bytes(item, batch) for item in output)
    if isinstance(output, dict):
        return sum(output_bytes(value, batch) for value in output.values())
    return 0


def resnet_summary(cfg):
    """ResNet-18 (--no-bn: without BatchNorm) as torchsummary shows it, or torchinfo with --wide."""
    model = ResNet18(batch_norm=cfg.batch_norm).to(cfg.device)
    return {**model_summary(model, (3, 32, 32), print_table=False), "wide": cfg.wide}


# ----------------------------------------------------------------------------------------
# Q1-Q4: the questions, answered from the model


def q1_conv_layers(cfg):
    """Q1: how many convolutional layers ResNet-18 has, counted from the model."""
    return {"batch_norm": cfg.batch_norm, **conv_layers(ResNet18(batch_norm=cfg.batch_norm))}


def conv_layers(model):
    """Every nn.Conv2d in the model, split into the main path and the shortcuts."""
    convs = [{"name": name, "kernel": "x".join(str(k) for k in module.kernel_size),
              "in_channels": module.in_channels, "out_channels": module.out_channels,
              "stride": module.stride[0],
              "path": "shortcut" if "shortcut" in name.split(".") else "main"}
             for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    main_path = sum(conv["path"] == "main" for conv in convs)
    linear = sum(isinstance(module, nn.Linear) for module in model.modules())
    return {
        "conv_layers": len(convs),
        "by_kernel": dict(Counter(conv["kernel"] for conv in convs)),
        "main_path_convs": main_path,
        "shortcut_convs": len(convs) - main_path,
        "linear_layers": linear,
        "weighted_layers_on_main_path": main_path + linear,  # what the "18" counts
        "convs": convs,
    }


def q2_linear_input(cfg):
    """Q2: the input dimension of the last linear layer, measured by a forward pass."""
    torch.manual_seed(cfg.seed)
    model = ResNet18(batch_norm=cfg.batch_norm).to(cfg.device)
    return {"batch_norm": cfg.batch_norm, **linear_input(model)}


def linear_input(model, input_size=(3, 32, 32)):
    """Measure, by a forward pass, the input of the last nn.Linear and the last conv's output."""
    device = next(model.parameters()).device
    linear_name, linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    conv_names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seen = {}

    def remember_conv(module, args, output):
        seen["conv"] = (conv_names[module], list(output.shape))  # the last one to run wins

    def remember_linear_input(module, args):
        seen["linear"] = list(args[0].shape)

    hooks = [m.register_forward_hook(remember_conv) for m in conv_names]
    hooks.append(linear.register_forward_pre_hook(remember_linear_input))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.randn(2, *input_size, device=device))  # (2, 3, 32, 32)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    conv_name, feature_map = seen["conv"]
    return {
        "linear_layer": linear_name,
        "input_dimension": seen["linear"][-1],
        "measured_input_shape": seen["linear"],        # (N, features)
        "in_features": linear.in_features,             # what the layer was built with
        "last_conv": conv_name,
        "last_feature_map_shape": feature_map,         # (N, C, H, W)
        "flattened_feature_map": math.prod(feature_map[1:]),
    }


def q3_sgd_parameters(cfg):
    """Q3: trainable parameters and gradients with SGD, and the state SGD keeps."""
    return one_training_step(cfg, "sgd")


def q4_adam_parameters(cfg):
    """Q4: trainable parameters and gradients with Adam, and the state Adam keeps."""
    return one_training_step(cfg, "adam")


def one_training_step(cfg, optimizer_name):
    """Build the model, take one real step with the lab's optimizer, and count."""
    torch.manual_seed(cfg.seed)
    model = ResNet18(batch_norm=cfg.batch_norm).to(cfg.device)
    optimizer = make_optimizer(optimizer_name, model.parameters(), lr=cfg.lr)
    # Random images: the counts depend on the shapes, not on the pixels.
    images = torch.randn(2, 3, 32, 32, device=cfg.device)   # (N, 3, 32, 32)
    labels = torch.randint(0, 10, (2,), device=cfg.device)  # (N,)
    model.train()
    train_step(model, optimizer, nn.CrossEntropyLoss(), images, labels)
    counts = count_parameters_and_gradients(model)  # now: the next zero_grad drops the gradients
    state = count_optimizer_state(optimizer)
    summary = model_summary(model, print_table=False)
    return {
        "batch_norm": cfg.batch_norm,
        "optimizer": type(optimizer).__name__,
        "settings": {key: list(value) if isinstance(value, tuple) else value  # betas: JSON list
                     for key, value in optimizer.defaults.items()
                     if key in ("lr", "momentum", "weight_decay", "betas")},
        **counts,
        "optimizer_state": state,
        # A kind of state with as many numbers as there are weights is one number per weight.
        "per_weight_state": [key for key, entry in state.items()
                             if entry["elements"] == counts["trainable_parameters"]],
        "summary_totals": {key: summary[key] for key in
                           ("total_params", "trainable_params", "non_trainable_params")},
        "code": "\n\n".join(inspect.getsource(function).rstrip() for function in
                            (train_step, count_parameters_and_gradients, count_optimizer_state)),
    }


def count_parameters_and_gradients(model):
    """Trainable parameters, and gradient elements as they sit in `.grad` after backward()."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "parameter_tensors": len(trainable),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "gradient_tensors": sum(p.grad is not None for p in trainable),
        "gradients": sum(p.grad.numel() for p in trainable if p.grad is not None),
    }


def count_optimizer_state(optimizer):
    """What the optimizer keeps between steps, per kind: how many tensors, how many numbers."""
    state = {}
    for per_parameter in optimizer.state.values():
        for key, value in per_parameter.items():
            entry = state.setdefault(key, {"tensors": 0, "elements": 0})
            entry["tensors"] += 1
            entry["elements"] += value.numel() if torch.is_tensor(value) else 1
    return state


# ----------------------------------------------------------------------------------------
# The exercises by name, and the command line


EXERCISES = {
    "c1": Exercise("C1: training", c1_training, render.render_c1, evaluate=True,
                   names_settings=True, data_parallel=True, trains="epochs"),
    "c2": Exercise("C2: time measurement", c2_timing, flops.render_c2, names_settings=True,
                   profiles=True, data_parallel=True, trains="epochs", chart=charts.chart_c2),
    "c3": Exercise("C3: I/O optimization (DataLoader workers)", c3_worker_sweep,
                   render.render_c3, sweeps_workers=True, finds_best_workers=True,
                   chart=charts.chart_c3, saves_each="worker count", ignores=("batch_norm",)),
    "c4": Exercise("C4: profiling, 1 worker against the best", c4_workers_compared,
                   render.render_c4, profiles=True, sweeps_workers=True, takes_best_workers=True,
                   trains="epochs", chart=charts.chart_c4),
    "c5": Exercise("C5: training on the GPU against the CPU", c5_cpu_vs_gpu, render.render_c5,
                   takes_best_workers=True, trains="epochs", chart=charts.chart_c5),
    "c6": Exercise("C6: experimenting with optimizers", c6_optimizers, render.render_c6,
                   names_settings=True, takes_best_workers=True, data_parallel=True,
                   trains="epochs", ignores=("optimizer",), chart=charts.chart_c6),
    "c7": Exercise("C7: experimenting without BatchNorm", c7_without_batchnorm, render.render_c7,
                   names_settings=True, takes_best_workers=True, data_parallel=True,
                   trains="epochs", ignores=("optimizer", "batch_norm"), chart=charts.chart_c7),
    # The questions read only the model and take a second: no data, nothing to save midway.
    "q1": Exercise("Q1: convolutional layers", q1_conv_layers, render.render_q1,
                   uses_data=False, saves_progress=False, ignores=("seed", "device")),
    "q2": Exercise("Q2: input dimension of the last linear layer", q2_linear_input,
                   render.render_q2, uses_data=False, saves_progress=False),
    "q3": Exercise("Q3: parameters and gradients with SGD", q3_sgd_parameters, render.render_q3,
                   uses_data=False, saves_progress=False, trains="steps", ignores=("optimizer",)),
    "q4": Exercise("Q4: parameters and gradients with Adam", q4_adam_parameters,
                   render.render_q4, uses_data=False, saves_progress=False, trains="steps",
                   ignores=("optimizer",)),
    "summary": Exercise("Model summary (in place of torchsummary)", resnet_summary,
                        flops.render_summary, uses_data=False, saves_progress=False,
                        ignores=("seed",), wide_table=True),
    # Beyond the lab: they pick their own slices and record the data set they used.
    "c8": Exercise("C8: torch.compile, eager against its modes", speed.c8_compile,
                   speed.render_c8, uses_data=False, in_lab=False, saves_each="mode",
                   trains="epochs", picks_slice=True, ignores=("compile",), chart=charts.chart_c8),
    "bench": Exercise("Speed ladder: images/s of each option against the default", speed.bench,
                      speed.render_bench, uses_data=False, in_lab=False, saves_each="table",
                      trains="steps", picks_slice=True, chart=charts.chart_bench),
    "infer": Exercise("Inference: eager, TorchScript, torch.export and compiled", infer.infer,
                      infer.render_infer, uses_data=False, in_lab=False,
                      batch_sizes="infer_batch_sizes", saves_each="way", takes=("checkpoint",),
                      chart=charts.chart_infer),
    "ddp": Exercise("Data-parallel scaling: processes, batch per process, exposed communication",
                    ddp.ddp_study, ddp.render_ddp, uses_data=False, in_lab=False,
                    batch_sizes="ddp_batch_sizes", saves_each="run", trains="steps",
                    takes=("max_procs", "ddp_steps"), chart=charts.chart_ddp),
}


def main(argv=None):
    """The command line (cli.py): parse, run the exercise or `all`, say how it ended."""
    return cli.main(sys.argv[1:] if argv is None else argv, Config, EXERCISES)


if __name__ == "__main__":  # guarded: DataLoader workers started with "spawn" import this file
    cli.on_stop_signals(cli.stop_once)  # Ctrl-C, SIGTERM and SIGHUP end the run alike
    status = main()
    cli.on_stop_signals(signal.SIG_IGN)  # a signal now could only spoil the exit
    sys.exit(status)
