"""Printing: every table, chart and explanation the lab shows, built from a result alone.

    python lab.py c2 --quick     # prints render_c2(result); REPORT.md pastes the same Markdown

Each `render_<exercise>(result)` takes the JSON-ready dict an exercise returned (or read back
from its results file) and returns Markdown that also reads as plain text. The explanations
are derived from the measured numbers: none of them knows in advance which row wins.
"""

import math
import sys

from data import CIFAR10_TRAIN_IMAGES


# ----------------------------------------------------------------------------------------
# One formatter per kind of number, and the two layouts


def seconds(value):
    return "-" if value is None else f"{value:.3f}"


def percent(value):
    return "-" if value is None else f"{value:.1f}%"


def ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def loss(value):
    return "-" if value is None else f"{value:.4f}"


def plural(count, noun):
    """The count and the noun, plural unless the count is 1: "1 worker", "2 workers"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def notice(text, stream=None):
    """A line for the user on stderr. A closed or full stderr is ignored: a message must never
    cost a trained epoch or hide how a run ended."""
    try:
        print(text, file=stream or sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # full, closed, or None (started with 2>&-)
        pass


def markdown_table(headers, rows, align=None):
    """A GitHub Markdown table with padded columns, so it also reads well as plain text.

    `align` is a string with one of "l" or "r" per column (numbers right, by default).
    """
    cells = [[str(cell) for cell in row] for row in rows]
    if align is None:
        align = "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]

    def line(row):
        padded = [cell.rjust(w) if a == "r" else cell.ljust(w)
                  for cell, w, a in zip(row, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line([str(h) for h in headers]), rule] + [line(row) for row in cells])


def bar_chart(labels, values, width=40, unit="s", mark=None):
    """A text bar chart, one bar per label, scaled to the largest value; `mark` flags a label."""
    top = max(values) if values else 0
    label_width = max(len(str(label)) for label in labels) if labels else 0
    lines = []
    for label, value in zip(labels, values):
        bar = "#" * max(1, round(width * value / top)) if top > 0 else ""
        flag = "  <- best" if label == mark else ""
        name = str(label).rjust(label_width)
        lines.append(f"{name} | {bar.ljust(width)} {value:.3f} {unit}{flag}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# C1-C7


def render_c1(result):
    rows = [[e["epoch"], loss(e["train_loss"]), percent(e["train_accuracy"]),
             percent(e["test_accuracy"]), seconds(e["epoch_time"])] for e in result["epochs"]]
    text = markdown_table(["epoch", "train loss", "train top-1", "test top-1", "epoch (s)"], rows)
    notes = [e for e in result["epochs"] if e["diverged"]]
    if notes:
        text += f"\n\nThe loss diverged (NaN or infinite) in epoch {notes[0]['epoch']}."
    return text


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
    if result.get("distributed"):
        text += ("\n\nUnder torchrun each time is the slowest rank's, column by column (the "
                 "mean over the ranks is in the results file as rank_mean), so data+train can "
                 "pass 100% a little.")
    if result["device"]["type"] == "cuda":
        text += "\n\n" + CUDA_SETTINGS
    if "profile" in result:  # --profile
        text += ("\n\nWith --profile the profiler records the first steps of epoch 1, which "
                 "slows them: compare epochs after the first.\n\n"
                 + render_profile(result["profile"]))
    return text


CUDA_SETTINGS = (
    "On CUDA, cuDNN autotuning is on (torch.backends.cudnn.benchmark = True, as in the lab's "
    "base code): the first batch of each new shape tries several convolution algorithms and "
    "keeps the fastest, which the device warm-up before the first timed run absorbs. On Ampere "
    "and newer GPUs, float32 convolutions may run in TF32 (cuDNN's default), with a 10-bit "
    "mantissa.")


def _share(figures):
    """The share of the epoch that data loading and training account for, as a percentage."""
    return percent(100.0 * (figures["data_time"] + figures["train_time"]) / figures["epoch_time"])


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
    text += "```\n" + chart + "\n```\n\n" + C3_AGAINST_C2 + "\n"
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


C3_AGAINST_C2 = (
    "What C3 measures: the DataLoader alone, with no model and no pinned memory, worker "
    "start-up included: how fast the workers can deliver an epoch of batches, a throughput. "
    "C2's data column is something else: the time the training loop waits for a batch, where "
    "the workers prepare the next batches while the model computes, so loading that keeps up "
    "with the model costs almost nothing there.")


def explain_cores(points, winner, cores):
    """What the core count means for the sweep, checked against the measured times."""
    text = (f"This machine gives the program {cores} usable CPU cores. Each worker is a process "
            "that needs a core to decode and augment images, and the main process needs one "
            "too, so once the workers plus the main process outnumber the cores (from "
            f"{cores} workers on), they take turns on the same cores.")
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
                   f"{at_cores['num_workers']}, beyond the point where the processes outnumber "
                   "the cores. More processes add no computing power, so the gain comes from "
                   "something this sweep does not measure: workers that wait (for a disk, for "
                   "instance) leave their core to others, and when other programs share the "
                   "cores, more processes win a larger share of them. This sweep cannot tell "
                   "which.")


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
                     "training work is the same. Worker processes share the CPU cores with the "
                     "training (on a CPU) or its host-side work (on a GPU), and so do other "
                     "programs on the machine; these two runs cannot tell those causes apart. "
                     "(One-off costs are not among them: the device was warmed up before the "
                     "first timed run.)")
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
    loading = ("the device loader" if result["best_workers"] is None
               else plural(result["best_workers"], "worker"))
    text += f"\n\nBoth with {loading} (from {result['best_source']})."
    if result["speedup"] is not None:
        speedup = result["speedup"]
        text += (f" The GPU is **{speedup:.1f}x** faster per epoch than the CPU" if speedup >= 1
                 else f" The GPU is **{1 / speedup:.1f}x slower** per epoch than the CPU")
        text += " (mean epoch time over the epochs)."
        if result["gpu"]["device"] == "cuda":
            text += " " + CUDA_SETTINGS
    else:
        text += f" The GPU run was skipped: {result['gpu']['skipped']}."
    return text


def render_c6(result):
    rows, epoch_rows = [], []
    for name, run in result["runs"].items():
        s = run["summary"]
        status = f"diverged in epoch {s['diverged_at']}" if s["diverged_at"] else ""
        rows.append([name, seconds(s["train_time"]), loss(s["train_loss"]),
                     percent(s["train_accuracy"]), loss(s["final_train_loss"]),
                     percent(s["final_train_accuracy"]), status])
        for e in run["epochs"]:
            epoch_rows.append([name, e["epoch"], seconds(e["train_time"]), loss(e["train_loss"]),
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
                     loss(s["train_loss"]), percent(s["train_accuracy"]),
                     loss(s["final_train_loss"]), percent(s["final_train_accuracy"]),
                     seconds(s["train_time"]), seconds(s["epoch_time"])])
    text = markdown_table(["model", "BN layers", "parameters", "mean loss", "mean top-1",
                           "last loss", "last top-1", "train/epoch (s)", "epoch (s)"], rows)
    text += f"\n\nThe BatchNorm run is {result['batch_norm_source']}."
    if len(rows) == 2:
        with_bn = result["runs"]["with_bn"]["summary"]
        without = result["runs"]["without_bn"]["summary"]
        text += (f" Without BatchNorm the mean training loss is {loss(without['train_loss'])} "
                 f"against {loss(with_bn['train_loss'])}, the mean top-1 accuracy "
                 f"{percent(without['train_accuracy'])} against "
                 f"{percent(with_bn['train_accuracy'])}, and an epoch's training takes "
                 f"{seconds(without['train_time'])} s against {seconds(with_bn['train_time'])} s.")
        if without["diverged_at"]:
            text += f" Without BatchNorm the loss diverged in epoch {without['diverged_at']}."
    text += ("\n\nThe convolutions have no bias in either network, as in the lab's table. "
             "BatchNorm normalises each channel and then applies a learned scale and shift; "
             "without it nothing rescales the activations from layer to layer, and nothing "
             "adds a per-channel shift after a convolution: the only bias left is the final "
             "linear layer's.")
    return text


def render_summary(result):
    return "```\n" + format_summary(result) + "\n```"


def describe_run(header, names_settings=False):
    """One line naming the data, the device and the torch version of a run, and with
    `names_settings` (an exercise that trains one configuration) its batch, workers, ..."""
    cfg, info = header["config"], header["dataset"]
    parts = []
    if info is not None:
        parts.append(f"data: {info['name']} ({info['train_images']} training, "
                     f"{info['test_images']} test images; {info['note']})")
    parts.append(f"device: {header['device']['name']}")
    parts.append(f"torch {header['torch_version']}")
    if header.get("distributed"):
        parts.append(describe_world(header["distributed"]))
    if names_settings:
        loading = ("the device loader" if cfg["loader"] == "device"
                   else plural(cfg["num_workers"], "worker"))
        parts.append(f"batch {cfg['batch_size']}, {loading}, {cfg['optimizer']} lr {cfg['lr']}, "
                     f"{plural(cfg['epochs'], 'epoch')}")
    return " · ".join(parts)


# ----------------------------------------------------------------------------------------
# The model summary and Q1-Q4


def format_summary(summary, with_rows=True):
    """The table torchsummary prints, from `model_summary`'s result; with_rows=False: totals."""
    lines = []
    if with_rows:
        lines += ["-" * 64,
                  "{:>20}  {:>25} {:>15}".format("Layer (type)", "Output Shape", "Param #"),
                  "=" * 64]
        lines += ["{:>20}  {:>25} {:>15}".format(row["layer"], str(row["output_shape"]),
                                                 f"{row['params']:,}")
                  for row in summary["rows"]]
    lines += ["=" * 64,
              f"Total params: {summary['total_params']:,}",
              f"Trainable params: {summary['trainable_params']:,}",
              f"Non-trainable params: {summary['non_trainable_params']:,}"]
    if summary["unlisted_params"]:
        unlisted = summary["unlisted_params"]
        names = ", ".join(unlisted)
        lines.append(f"Params in no listed layer: {sum(unlisted.values()):,} ({names})")
    lines += ["-" * 64,
              f"Input size (MB): {summary['input_size_mb']:0.2f}",
              f"Forward/backward pass size (MB): {summary['forward_backward_size_mb']:0.2f}",
              f"Params size (MB): {summary['params_size_mb']:0.2f}",
              f"Estimated Total Size (MB): {summary['total_size_mb']:0.2f}",
              "-" * 64]
    return "\n".join(lines)


def variant(result):
    return "ResNet-18" if result["batch_norm"] else "ResNet-18 without BatchNorm"


def render_q1(result):
    kernels = ", ".join(f"{count} {kernel}" for kernel, count in result["by_kernel"].items())
    lines = [
        f"### Q1. Convolutional layers in {variant(result)}",
        "",
        f"**{result['conv_layers']} convolutional layers** ({kernels}), counted as the "
        "`nn.Conv2d` modules in `model.named_modules()`.",
        "",
        "| # | layer | kernel | channels | stride | path |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {c['name']} | {c['kernel']} | {c['in_channels']} -> {c['out_channels']} "
              f"| {c['stride']} | {c['path']} |" for i, c in enumerate(result["convs"], 1)]
    shortcut_kernels = sorted({c["kernel"] for c in result["convs"] if c["path"] == "shortcut"})
    depth = result["weighted_layers_on_main_path"]
    lines += [
        "",
        f"Why the name says {depth}: it counts the layers with weights on the main path, "
        f"{result['main_path_convs']} convolutions plus {result['linear_layers']} linear layer = "
        f"{depth}. The other {result['shortcut_convs']} convolutions are the "
        f"{'/'.join(shortcut_kernels)} projections in the shortcuts of the blocks that change "
        "shape; they sit beside the main path, not on it, so the name leaves them out.",
    ]
    return "\n".join(lines)


def render_q2(result):
    n, channels, height, width = result["last_feature_map_shape"]
    shapes = [(f"{result['last_conv']} output", result["last_feature_map_shape"]),
              (f"{result['linear_layer']} input", result["measured_input_shape"])]
    label_width = max(len(label) for label, _ in shapes)
    lines = [
        f"### Q2. Input dimension of the last linear layer in {variant(result)}",
        "",
        f"**{result['input_dimension']}**, measured by a forward pass of {n} images: the input "
        f"of `{result['linear_layer']}` has shape {tuple(result['measured_input_shape'])} "
        f"(built as `nn.Linear({result['in_features']}, ...)`).",
        "",
        "```",
        *[f"{label:<{label_width}}  {tuple(shape)}" for label, shape in shapes],
        "```",
        "",
        f"Why not {channels}x{height}x{width} = {result['flattened_feature_map']:,}: the last "
        f"stage ends with {channels} feature maps of {height}x{width}. Global average pooling "
        f"(`F.adaptive_avg_pool2d(out, 1)`) averages each {height}x{width} map to one number, "
        f"giving (N, {channels}, 1, 1), and `flatten(1)` makes that (N, {channels}). Flattening "
        f"the maps without pooling would have given {result['flattened_feature_map']:,} inputs.",
    ]
    return "\n".join(lines)


def render_optimizer_counts(result, question):
    """Q3 and Q4 read the same: the counts, the code that made them, the optimizer's state."""
    name, state = result["optimizer"], result["optimizer_state"]
    trainable = result["trainable_parameters"]
    per_weight = result["per_weight_state"]  # one number per weight each
    counters = [key for key in state if key not in per_weight]
    settings = ", ".join(f"{key}={value}" for key, value in result["settings"].items())
    code = result["code"]  # the source of the functions that counted, saved with the answer
    lines = [
        f"### {question}. Trainable parameters and gradients with {name} ({variant(result)})",
        "",
        f"**{trainable:,} trainable parameters and {result['gradients']:,} gradients**: one "
        f"gradient per trainable parameter, held in {result['gradient_tensors']} `.grad` tensors "
        f"for {result['parameter_tensors']} parameter tensors. `model_summary` agrees: "
        f"{result['summary_totals']['trainable_params']:,} trainable params.",
        "",
        f"Counted after one real training step with `{name}({settings})` on a batch of random "
        "images (the counts depend on shapes, not pixels). This is the code that ran:",
        "",
        "```python",
        code,
        "```",
        "",
        f"What {name} keeps between steps, beside the gradients:",
        "",
        "| state | tensors | numbers |",
        "|---|---|---|",
        *[f"| {key} | {entry['tensors']:,} | {entry['elements']:,} |"
          for key, entry in state.items()],
        "",
        "`backward()` adds into `.grad`: gradients accumulate from one backward pass to the "
        "next, which is why every step starts with `zero_grad` (here it drops them, setting "
        "`.grad` to None). The optimizer state lives as long as the optimizer. "
        f"{name} keeps {len(per_weight)} "
        f"number{'' if len(per_weight) == 1 else 's'} per weight "
        f"({', '.join(per_weight) or 'none'}).",
    ]
    for key in counters:
        lines[-1] += (f" `{key}` is bookkeeping, not per-weight state: one scalar for each of "
                      f"the {state[key]['tensors']} parameter tensors, {state[key]['elements']} "
                      "numbers in all.")
    return "\n".join(lines)


def render_q3(result):
    return render_optimizer_counts(result, "Q3")


def render_q4(result):
    return render_optimizer_counts(result, "Q4")


# ----------------------------------------------------------------------------------------
# Beyond the lab: the profile, the bench and C8


def render_profile(summary):
    """The profile as Markdown: where the trace is, data loading vs training, the top operators."""
    cuda = summary["device"] == "cuda"
    headers = ["operator", "phase", "calls", "self CPU (ms)"] + (["self CUDA (ms)"] if cuda else [])
    headers.append("total CPU (ms)")
    rows = []
    for op in summary["operators"]:
        row = [op["name"], op["phase"], op["calls"], f"{1e3 * op['self_cpu_time']:.1f}"]
        if cuda:
            row.append(f"{1e3 * op['self_cuda_time']:.1f}")
        rows.append(row + [f"{1e3 * op['cpu_time']:.1f}"])
    ranked_by = "self CUDA time" if cuda else "self CPU time"
    return (
        f"Profiled the first {summary['steps']} training steps (at most {summary['max_steps']}) "
        f"with torch.profiler; trace: `{summary['trace']}` (open it in https://ui.perfetto.dev "
        f"or chrome://tracing). In those steps the training loop waited "
        f"{summary['data_loading_time']:.3f} s for data and spent "
        f"{summary['training_step_time']:.3f} s in training steps.\n\n"
        f"The {len(rows)} costliest operators by {ranked_by}:\n\n"
        + markdown_table(headers, rows, align="ll" + "r" * (len(headers) - 2))
        + "\n\nphase: the range the operator ran in: data loading (waiting for the next batch; "
        "with workers, their own work is not recorded) or the training step (copy, forward, "
        "loss, backward, optimizer step). Self time excludes the operators it calls; the "
        "profiler itself slows the steps it records.")


def render_bench(result):
    step, pipeline = result["step"], result.get("pipeline")
    rows = []
    for row in step["rows"]:
        name = row["name"] + (" (best)" if row["name"] == step["best"] else "")
        if row["error"] is not None:
            rows.append([name, "failed", "-", "-"])
            continue
        rows.append([name, f"{row['images_per_second']:.1f}", f"{row['ratio']:.2f}x",
                     f"{row['warmup_time']:.2f}"])
    sizes = result["sizes"]
    text = [
        f"Training step, batch {step['batch_size']}, the batch already on the device:",
        "",
        markdown_table(["options", "images/s", "vs default", "warm-up (s)"], rows),
        "",
        f"Median of {sizes['repeats']} rounds of {plural(sizes['steps'], 'step')} per row, "
        f"taken in turns, after {sizes['warmup_steps']} warm-up steps. Warm-up includes "
        "compilation for the compile rows, timed with the compiler's caches off as on a first "
        "run; the compiler's own start-up, once per process, took "
        f"{step['compiler_startup_time']:.1f} s more.",
    ]
    text += [f"\n{row['name']} failed: {row['error']}" for row in step["rows"] if row["error"]]
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
# Beyond the lab: inference outside eager mode (infer)


def render_infer(result):
    """The inference results as Markdown: the tables, then what the numbers say."""
    parts = [render_infer_setup(result), render_infer_conversions(result)]
    parts += [render_infer_latency(result, index) for index in range(len(result["batch_sizes"]))]
    parts += [render_infer_findings(result), render_infer_block(result["block"]),
              render_infer_trace_versus_script(result["trace_versus_script"]),
              render_infer_deprecation(result)]
    return "\n\n".join(part for part in parts if part) + "\n"


def render_infer_setup(result):
    weights = result["checkpoint"] or f"fresh, seed {result['seed']} (untrained)"
    repeats = result["repeats"]
    return (
        f"{len(result['ways'])} ways on {result['inference_device']}: ResNet-18 "
        f"{'with' if result['batch_norm'] else 'without'} BatchNorm, weights: "
        f"{weights}; torch {result['torch_version']}, {result['threads']} CPU threads. "
        f"Inputs are seeded random images. Each latency is one call, device synchronised "
        f"before and after: the first call at a batch size, then {repeats['warmup']} more "
        f"untimed, then at least {repeats['min_runs']} timed calls over at least "
        f"{repeats['budget_s']} s (at most {repeats['max_runs']}). Outputs match eager when "
        f"they differ by at most {result['tolerance']:g} of eager's largest output. "
        f"Whole run: {result.get('total_s', 0):.0f} s."
    )


def render_infer_conversions(result):
    rows = []
    for name, way in result["ways"].items():
        size = "-" if way["file_bytes"] is None else f"{way['file_bytes'] / 1e6:.1f}"
        if way["error"]:
            reload = "-"
        elif way["no_file"]:
            reload = way["no_file"]
        else:
            reload = (f"{'same' if way['reload_matches'] else 'DIFFERENT'} "
                      f"(max diff {way['reload_max_diff']:.1e})")
        convert = "-" if way["convert_s"] is None else f"{way['convert_s']:.2f}"
        rows.append([name, convert, size, reload, way["error"] or ""])
    return "### Conversion and saved file\n\n" + markdown_table(
        ["way", "conversion (s)", "file (MB)", "saved -> loaded outputs", "error"], rows,
        align="lrrll")


def render_infer_latency(result, index):
    batch_size = result["batch_sizes"][index]
    rows = [(name, way["batches"][index]) for name, way in result["ways"].items()
            if len(way["batches"]) > index]
    eager = dict(rows).get("eager")
    table = []
    for name, row in rows:
        speedup = "-" if eager is None else f"{eager['median_ms'] / row['median_ms']:.2f}x"
        table.append([name, f"{row['first_call_ms']:.1f}", f"{row['median_ms']:.2f}",
                      f"{row['p90_ms']:.2f}", f"{row['p99_ms']:.2f}",
                      f"{row['images_per_s']:,.0f}", speedup, row["runs"],
                      f"{row['max_abs_diff']:.1e}" + ("" if row["matches_eager"] else " (!)")])
    return f"### Batch size {batch_size}\n\n" + markdown_table(
        ["way", "first call (ms)", "median (ms)", "p90 (ms)", "p99 (ms)", "images/s",
         "vs eager", "timed calls", "max diff vs eager"], table)


def render_infer_findings(result):
    """What the tables say, worked out from them."""
    ways = {name: way for name, way in result["ways"].items() if way["batches"]}
    lines = []
    for index, batch_size in enumerate(result["batch_sizes"]):
        rows = {name: way["batches"][index] for name, way in ways.items()
                if len(way["batches"]) > index}
        if not rows:
            continue
        fastest = min(rows, key=lambda name: rows[name]["median_ms"])
        slowest = max(rows, key=lambda name: rows[name]["median_ms"])
        ratio = rows[slowest]["median_ms"] / rows[fastest]["median_ms"]
        lines.append(f"- Batch {batch_size}: {fastest} is fastest "
                     f"({rows[fastest]['median_ms']:.2f} ms), {slowest} slowest "
                     f"({rows[slowest]['median_ms']:.2f} ms, {ratio:.2f}x as long).")
        lines += _payback(rows, ways, batch_size)
        lines += _first_calls(rows, batch_size)
    lines += _agreement(result, ways)
    lines += [f"- {name} failed: {way['error']}" for name, way in result["ways"].items()
              if way["error"]]
    spread = [f"{name} at batch {row['batch_size']}" for name, way in ways.items()
              for row in way["batches"] if row["p90_ms"] > 1.5 * row["median_ms"]]
    if spread:
        lines.append(f"- p90 over 1.5x the median, calls that vary a lot (another load on the "
                     f"machine?): {', '.join(spread)}.")
    fewest = min((row["runs"] for way in ways.values() for row in way["batches"]), default=0)
    if 0 < fewest < 100:
        lines.append(f"- With as few as {fewest} timed calls, p99 is close to the slowest call, "
                     "not a true 99th percentile.")
    return "### What the numbers say\n\n" + "\n".join(lines)


def _payback(rows, ways, batch_size):
    """After how many calls a way faster than eager has won back its conversion time."""
    eager = rows.get("eager")
    paid = []
    for name, row in rows.items():
        convert_s = ways[name]["convert_s"] or 0.0
        saved_ms = eager["median_ms"] - row["median_ms"] if eager else 0.0
        if name != "eager" and convert_s > 0 and saved_ms > 0:
            calls = math.ceil(1000 * convert_s / saved_ms)
            paid.append(f"{name} after {plural(calls, 'call')} ({saved_ms:.2f} ms saved a call, "
                        f"{convert_s:.1f} s to convert)")
    if not paid:
        return []
    return [f"  - Faster than eager at batch {batch_size}, so the conversion pays for itself: "
            + "; ".join(paid) + "."]


def _first_calls(rows, batch_size):
    """Ways whose first call at this batch size was far slower than the rest (compiling)."""
    slow = [f"{name} {row['first_call_ms'] / 1000:.1f} s" for name, row in rows.items()
            if row["first_call_ms"] > 10 * row["median_ms"] and row["first_call_ms"] > 100]
    if not slow:
        return []
    return [f"  - First call at batch {batch_size} over 10x the median (compiling or "
            f"optimising for this shape): {', '.join(slow)}."]


def _agreement(result, ways):
    differences = [(row["max_abs_diff"], name, row["batch_size"])
                   for name, way in ways.items() for row in way["batches"]]
    wrong = sorted({name for name, way in ways.items()
                    for row in way["batches"] if not row["matches_eager"]})
    if not differences:
        return []
    largest, name, batch_size = max(differences)
    scale = max(result["eager_output_scale"])
    verdict = (f"- Outputs of {', '.join(wrong)} differ from eager's beyond the tolerance."
               if wrong else "- Every way's outputs match eager's within the tolerance.")
    return [f"{verdict} The largest difference is {largest:.1e} ({name}, batch "
            f"{batch_size}); eager's outputs reach {scale:.2f}."]


def render_infer_block(block):
    return (
        f"### One BasicBlock ({block['name']}) as the converters see it\n\n"
        f"torch.jit.script, the code it compiled:\n\n```python\n{block['script_code'].strip()}"
        f"\n```\n\nand its TorchScript graph (submodules stay calls):\n\n```text\n"
        f"{block['script_graph'].strip()}\n```\n\ntorch.export, one flat graph of ATen "
        f"operations (parameters and buffers become inputs):\n\n```python\n"
        f"{block['export_code'].strip()}\n```"
    )


def render_infer_trace_versus_script(demo):
    rows = [["eager", demo["eager"]], ["torch.jit.trace", demo["traced"]],
            ["torch.jit.script", demo["scripted"]]]
    traced_wrong = demo["traced"] != demo["eager"]
    scripted_right = demo["scripted"] == demo["eager"]
    verdict = (f"The trace {'gives a different answer' if traced_wrong else 'agrees'}; the "
               f"script {'agrees' if scripted_right else 'gives a different answer'}.")
    warning = "; ".join(demo["tracer_warning"]) or "none"
    exported = ("torch.export takes the same module without complaint."
                if demo["export"] == "exported"
                else "torch.export refuses the module rather than pick a branch: "
                + demo["export"])
    return (
        "### Trace versus script: control flow that depends on the data\n\n"
        "`SignFlip` returns `x * 2` if `x.sum() > 0`, else `-x`. Traced on "
        f"{demo['traced_on']}, then run on {demo['input']}:\n\n"
        + markdown_table(["run by", "output"], rows, align="ll")
        + f"\n\n{verdict} The trace recorded only the operations that ran, so the `if` is "
        f"gone from its code:\n\n```python\n{demo['traced_code'].strip()}\n```\n\n"
        f"while the script kept it:\n\n```python\n{demo['scripted_code'].strip()}\n```\n\n"
        f"The tracer's only warning: {warning}\n\n{exported}"
    )


def render_infer_deprecation(result):
    seen = sorted({warning for way in result["ways"].values() for warning in way["warnings"]
                   if "deprecat" in warning})
    lines = [f"- {warning}" for warning in seen]
    caught = "\n\nDeprecation warnings this run caught:\n\n" + "\n".join(lines) if lines else ""
    return "### TorchScript is deprecated\n\n" + result["deprecation"] + caught


# ----------------------------------------------------------------------------------------
# Beyond the lab: data-parallel training and the scaling study (ddp)


def describe_world(facts):
    """One header line: "2 processes × batch 128 = global batch 256, gloo, 1 thread each; ..."."""
    n = facts["world_size"]
    text = (f"{n} process{'' if n == 1 else 'es'} × batch {facts['batch_per_rank']} = "
            f"global batch {facts['global_batch']}, {facts['backend']}")
    threads = facts["threads_per_rank"]
    if threads is not None:
        text += f", {threads} thread{'' if threads == 1 else 's'} each"
    if facts["sync_bn"]:
        text += ", SyncBatchNorm"
    scaled = "scaled" if facts["lr_scaled"] else "not scaled"
    return text + f"; the learning rate is {scaled}"


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
