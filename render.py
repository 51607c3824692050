"""Printing: the lab's tables, charts and explanations (C1-C7, Q1-Q4, the model summary, the
profile), each built from a result alone, and the formatters and layouts every module shares.

    python lab.py c2 --quick     # prints render_c2(result); REPORT.md pastes the same Markdown

Each `render_<exercise>(result)` takes the JSON-ready dict an exercise returned (or read back
from its results file) and returns Markdown that also reads as plain text. The explanations
are derived from the measured numbers: none of them knows in advance which row wins. The
exercises beyond the lab print from their own modules (speed.py, infer.py, ddp.py), as do the
arithmetic (flops.py: C2's FLOP/s, the summary's --wide) and `python lab.py check` (checks.py);
this file imports none of the project, so any module can use its formatters.
"""

import math
import sys


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


def one_line(error, with_type=True, max_chars=None):
    """An exception (or warning) as one line: its type and the first line of its message, cut
    to `max_chars` when given."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    return (f"{type(error).__name__}: {message}" if with_type else message)[:max_chars]


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
    explanation = explain_c1(result["epochs"])
    return text + ("\n\n" + explanation if explanation else "")


# A model that gives each of the ten classes probability 1/10 has this cross-entropy loss.
CHANCE_LOSS = math.log(10)
# A run that has seen fewer training images than this, in all, is a test of the code only.
SMOKE_IMAGES = 10_000


def explain_c1(epochs):
    """What C1's epochs show, every figure read from them: the trend, against chance, the gap
    between training and test accuracy, and whether the run was long enough to say anything."""
    good = [e for e in epochs if not e["diverged"]]
    if not good:
        return ""
    first, last = good[0], good[-1]
    lines = []
    if len(good) > 1:
        change = last["train_loss"] - first["train_loss"]
        trend = "fell" if change < 0 else "rose" if change > 0 else "stayed the same,"
        lines.append(f"- The training loss {trend} from {loss(first['train_loss'])} in epoch "
                     f"{first['epoch']} to {loss(last['train_loss'])} in epoch {last['epoch']}; "
                     f"top-1 training accuracy went from {percent(first['train_accuracy'])} to "
                     f"{percent(last['train_accuracy'])}.")
    if last["train_loss"] >= CHANCE_LOSS:
        lines.append(f"- A model that guesses the ten classes evenly has loss ln 10 = "
                     f"{CHANCE_LOSS:.3f} and 10% accuracy: at loss {loss(last['train_loss'])} "
                     "this one is no better than guessing yet.")
    if last["test_accuracy"] is not None:
        lines.append(explain_test_gap(last))
    seen = sum(e["images"] for e in epochs)
    if seen < SMOKE_IMAGES:
        lines.append(f"- The run saw {seen:,} training images in all: a test that the code "
                     "runs, not a result to interpret.")
    return "\n".join(lines)


def explain_test_gap(epoch):
    """One line on the last epoch's test accuracy against its training accuracy."""
    train, test = epoch["train_accuracy"], epoch["test_accuracy"]
    line = (f"- In epoch {epoch['epoch']} the test accuracy is {percent(test)} against "
            f"{percent(train)} on the training images. ")
    if train - test > 10:
        return line + (f"The model does {train - test:.1f} points better on the images it "
                       "trains on than on new ones: it is starting to overfit.")
    if test - train > 2:
        return line + ("Higher on the test set is usual early on: the training accuracy is "
                       "averaged over the epoch, while the weights were still improving, on "
                       "randomly cropped and flipped images; the test accuracy is measured at "
                       "the epoch's end on plain ones.")
    return line + "The two are close: no sign of overfitting yet."


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
        text += "\n\n" + explain_distributed_c2(result)
    if result["device"]["type"] == "cuda":
        text += "\n\n" + CUDA_SETTINGS
    if "profile" in result:  # --profile
        text += ("\n\nWith --profile the profiler records the first steps of epoch 1, which "
                 "slows them: compare epochs after the first.\n\n"
                 + render_profile(result["profile"]))
    return text


def explain_distributed_c2(result):
    """What C2's figures are under torchrun: the slowest rank's, so data+train can pass 100%
    (and by how much at most), and the sampler's padding counted in the images."""
    n = result["distributed"]["world_size"]
    bounds = []
    for e in result["epochs"]:
        mean = e.get("rank_mean") or {}
        if None not in (mean.get("train_time"), mean.get("data_time")):
            spread = min(e["train_time"] - mean["train_time"], e["data_time"] - mean["data_time"])
            bounds.append(100 * n * spread / e["epoch_time"])
    text = ("Under torchrun each time is the slowest rank's, column by column (the mean over "
            "the ranks is in the results file as rank_mean). The slowest to wait for data need "
            "not be the slowest to train, so data+train can pass 100%, by at most the spread of "
            "the ranks' training times (or of their waits, whichever is smaller) over the epoch")
    if bounds:
        text += (f"; from the slowest and mean times, no more than {max(max(bounds), 0):.1f} "
                 "points in this run")
    text += "."
    dataset = result.get("dataset") or {}
    padded = [e["images"] - dataset["train_images"] for e in result["epochs"]
              if "images" in e and dataset.get("train_images")]
    if padded and max(padded) > 0:
        text += (f" The images of an epoch, {result['epochs'][0]['images']:,} summed over the "
                 f"{n} ranks, include {max(padded)} padded duplicates: the sampler repeats the "
                 f"first images so that the {dataset['train_images']:,} split evenly.")
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
    chart, best, explanation = c3_parts(result)
    return "\n\n".join(part for part in (chart, C3_AGAINST_C2, best, explanation) if part)


def render_c3_in_parts(result):
    """C3 as the 2025 handout splits it: C3.1 the plot, C3.2 the best count, C3.3 why."""
    chart, best, explanation = c3_parts(result)
    return "\n\n".join(["**C3.1, the plot**", chart,
                         "**C3.2, the best count**", best or "No count was timed yet.",
                         "**C3.3, the explanation**", *filter(None, [explanation]),
                         C3_AGAINST_C2])


def c3_parts(result):
    """C3's table and chart; the best count and why the sweep stopped; what the core count
    explains (both None while no count is timed)."""
    points = result["points"]
    best = result["best_workers"]
    rows = [[p["num_workers"], seconds(p["median"]), f"{p['min']:.3f}-{p['max']:.3f}",
             "best" if p["num_workers"] == best else ""] for p in points]
    chart = markdown_table(["workers", "median (s)", f"spread of {result['repeats']} (s)", "note"],
                           rows, align="rrrl")
    bars = bar_chart([f"{p['num_workers']} workers" for p in points],
                     [p["median"] for p in points], mark=f"{best} workers")
    chart += f"\n\nOne epoch of data loading (no model), median of {result['repeats']} runs:\n\n"
    chart += "```\n" + bars + "\n```"
    if not points:
        return chart, None, None
    winner = next(p for p in points if p["num_workers"] == best)
    verdict = (f"Best: **{best} workers**, {winner['median']:.3f} s per epoch. "
               f"The sweep stopped because {result['stopped_because']}.")
    close = [p for p in points if p is not winner and p["min"] <= winner["max"]]
    if close:
        verdict += (" Within the noise of the best (their spreads overlap): "
                    + ", ".join(str(p["num_workers"]) for p in close) + " workers.")
    return chart, verdict, explain_cores(points, winner, result["cores"])


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
    """C4's explanation, every figure in it read from the two runs (and, for the one-off
    costs, whether each run warmed the device up first: on a CPU none does)."""
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
        line = (f"- The training time itself changed by {100 * train_change:.0f}%, though the "
                "training work is the same. Worker processes share the CPU cores with the "
                "training (on a CPU) or its host-side work (on a GPU), and so do other "
                "programs on the machine; these two runs cannot tell those causes apart.")
        if one.get("warmed_up") and best.get("warmed_up"):
            line += (" (One-off costs are not among them: the device was warmed up before "
                     "each timed run.)")
        lines.append(line)
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
             f"the worker processes afresh; the rest, {steady:.3f} s in all "
             f"({100 * steady / s['epoch_time']:.1f}% of the epoch), is the other batches' "
             "waits and the last `next()`, which finds the epoch over and shuts the workers "
             "down. ")
    if steady / s["epoch_time"] < 0.05:
        return line + ("After the start, loading is hidden behind compute: the workers prepare "
                       "the next batches while the model trains.")
    return line + ("Loading is not hidden: the workers do not prepare batches as fast as the "
                   "model consumes them, unless the shutdown at the end took that time (these "
                   "figures do not separate the two).")


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
    runs = result["runs"]
    diverged = any(run["summary"]["diverged_at"] for run in runs.values())
    extra = ["diverged"] if diverged else []  # a column only when some run diverged
    rows, epoch_rows = [], []
    for name, run in runs.items():
        s = run["summary"]
        status = [f"in epoch {s['diverged_at']}" if s["diverged_at"] else ""] if diverged else []
        rows.append([name, seconds(s["train_time"]), loss(s["train_loss"]),
                     percent(s["train_accuracy"]), loss(s["final_train_loss"]),
                     percent(s["final_train_accuracy"]), *status])
        for e in run["epochs"]:
            mark = ["yes" if e["diverged"] else ""] if diverged else []
            epoch_rows.append([name, e["epoch"], seconds(e["train_time"]), loss(e["train_loss"]),
                               percent(e["train_accuracy"]), *mark])
    text = markdown_table(["optimizer", "mean train (s)", "mean loss", "mean top-1",
                           "last loss", "last top-1", *extra], rows,
                          align="lrrrrr" + "l" * len(extra))
    text += "\n\nPer epoch:\n\n" + markdown_table(
        ["optimizer", "epoch", "train (s)", "loss", "top-1", *extra], epoch_rows,
        align="lrrrr" + "l" * len(extra))
    fingerprints = sorted({run["model"]["initial_weights_sha256"]
                           for run in runs.values() if run["model"]})
    text += "\n\n" + (
        f"All runs start from the same initial weights (SHA-256 prefix {fingerprints[0]})"
        if len(fingerprints) == 1 else
        f"The runs did NOT start from the same weights: {', '.join(fingerprints)}")
    text += (f"; all see the same data order (seed {result['seed']}); lr {result['lr']} and "
             "weight decay 5e-4 for all, momentum 0.9 for the two SGDs.")
    return text + "\n\n" + explain_c6(runs, result["lr"])


# The learning rates these optimizers are usually given, where lr is the size of a step.
USUAL_LR = {"adam": 1e-3, "adagrad": 1e-2}


def explain_c6(runs, lr):
    """Which optimizers diverged, stalled or learned at the one lr they share, from their runs,
    and why one lr cannot suit all five."""
    verdict, texts = {}, {}
    for name, run in runs.items():
        epochs, s = run["epochs"], run["summary"]
        if s["diverged_at"]:
            verdict[name], texts[name] = "diverged", f"{name} (in epoch {s['diverged_at']})"
        elif epochs:
            first, last = epochs[0]["train_loss"], epochs[-1]["train_loss"]
            stuck = last >= CHANCE_LOSS or (len(epochs) > 1 and last >= first)
            verdict[name], texts[name] = ("stalled" if stuck else "learned",
                                          f"{name} (last loss {loss(last)})")
    meaning = {"diverged": "the loss became NaN or infinite and the run stopped",
               "stalled": "the last epoch's loss is no lower than the first's, or no better "
                          f"than guessing (ln 10 = {CHANCE_LOSS:.3f})",
               "learned": "the loss fell, and below guessing"}
    lines = []
    for kind in meaning:
        names = [texts[name] for name in verdict if verdict[name] == kind]
        if names:
            lines.append(f"- {kind.capitalize()} at lr {lr}: {', '.join(names)}: {meaning[kind]}.")
    lines.append(explain_shared_lr(lr, [name for name in USUAL_LR
                                        if verdict.get(name) in ("diverged", "stalled")]))
    seen = [sum(e["images"] for e in run["epochs"]) for run in runs.values() if run["epochs"]]
    if seen and max(seen) < SMOKE_IMAGES:
        lines.append(f"- Each run saw at most {max(seen):,} training images: a test that the "
                     "code runs; these verdicts need full epochs.")
    return "\n".join(lines)


def explain_shared_lr(lr, trapped):
    """Why one lr cannot suit all five; `trapped`: Adam or Adagrad, where they did not learn."""
    line = ("- One lr cannot suit all five. SGD's step is lr times the gradient, and the lab's "
            "lr of 0.1 is SGD's. Adam and Adagrad divide each step by a running measure of the "
            "gradients' size, so their lr is roughly how far every weight moves per step; "
            "Adadelta sizes its own steps (its lr is a multiplier, 1.0 by default). ")
    if all(lr >= 3 * usual for usual in USUAL_LR.values()):
        ratios = " and ".join(f"{lr / usual:g}x {name}'s usual {usual:g}"
                              for name, usual in USUAL_LR.items())
        line += (f"lr {lr} is {ratios}: a known trap"
                 + (f", and {' and '.join(trapped)} fell into it here." if trapped else "."))
    else:
        line += f"At lr {lr}, below SGD's 0.1, SGD's steps are smaller than the lab's."
    return line + (" To compare the optimizers fairly, give each its usual lr, e.g. "
                   "`python lab.py c1 --optimizer adam --lr 0.001`.")


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
    reused = result.get("batch_norm_reused_from")
    if len(rows) == 2:
        with_bn = result["runs"]["with_bn"]["summary"]
        without = result["runs"]["without_bn"]["summary"]
        text += (f" Without BatchNorm the mean training loss is {loss(without['train_loss'])} "
                 f"against {loss(with_bn['train_loss'])}, the mean top-1 accuracy "
                 f"{percent(without['train_accuracy'])} against "
                 f"{percent(with_bn['train_accuracy'])}, and an epoch's training takes "
                 f"{seconds(without['train_time'])} s against {seconds(with_bn['train_time'])} s.")
        if reused:
            text += (f" The BatchNorm side was timed in another process, C6's (started "
                     f"{reused}), so whatever else the machine was doing then or now is in "
                     "that difference too; with no C6 results in its folder, C7 trains both "
                     "sides itself, one after the other.")
        if without["diverged_at"]:
            text += f" Without BatchNorm the loss diverged in epoch {without['diverged_at']}."
    text += ("\n\nThe convolutions have no bias in either network, as in the lab's table. "
             "BatchNorm normalises each channel and then applies a learned scale and shift; "
             "without it nothing rescales the activations from layer to layer, and nothing "
             "adds a per-channel shift after a convolution: the only bias left is the final "
             "linear layer's.")
    return text


# ----------------------------------------------------------------------------------------
# The model summary and Q1-Q4


def format_summary(summary, with_rows=True, wide=False):
    """The table torchsummary prints, from `model_summary`'s result; with_rows=False: totals.

    wide=True adds torchinfo's most asked-for columns (kernel shape, mult-adds, share of the
    parameters) and the mult-adds total (flops.render_summary says what they count).
    """
    rule = 64 + (41 if wide else 0)
    columns = "{:>20}  {:>25} {:>15}" + (" {:>14} {:>15} {:>9}" if wide else "")
    lines = []
    if with_rows:
        headings = ["Layer (type)", "Output Shape", "Param #"]
        if wide:
            headings += ["Kernel Shape", "Mult-Adds", "Param %"]
        lines += ["-" * rule, columns.format(*headings), "=" * rule]
        for row in summary["rows"]:
            cells = [row["layer"], str(row["output_shape"]), f"{row['params']:,}"]
            if wide:
                share = row["params"] / summary["total_params"] if summary["total_params"] else 0
                cells += [str(row["kernel_size"] or "--"),
                          f"{row['mult_adds']:,}" if row["mult_adds"] else "--",
                          f"{100 * share:.2f}%" if row["params"] else "--"]
            lines.append(columns.format(*cells))
    lines += ["=" * rule,
              f"Total params: {summary['total_params']:,}",
              f"Trainable params: {summary['trainable_params']:,}",
              f"Non-trainable params: {summary['non_trainable_params']:,}"]
    if summary["unlisted_params"]:
        unlisted = summary["unlisted_params"]
        names = ", ".join(unlisted)
        lines.append(f"Params in no listed layer: {sum(unlisted.values()):,} ({names})")
    if wide:
        lines.append(f"Total mult-adds: {summary['total_mult_adds']:,} "
                     f"({summary['total_mult_adds'] / 1e6:,.2f} M)")
    lines += ["-" * rule,
              f"Input size (MB): {summary['input_size_mb']:0.2f}",
              f"Forward/backward pass size (MB): {summary['forward_backward_size_mb']:0.2f}",
              f"Params size (MB): {summary['params_size_mb']:0.2f}",
              f"Estimated Total Size (MB): {summary['total_size_mb']:0.2f}",
              "-" * rule]
    return "\n".join(lines)


def variant(result):
    return "ResNet-18" if result["batch_norm"] else "ResNet-18 without BatchNorm"


def render_q1(result):
    kernels = ", ".join(f"{count} {kernel}" for kernel, count in result["by_kernel"].items())
    lines = [  # no heading of its own: the exercise's title is printed above it
        f"**{result['conv_layers']} convolutional layers** ({kernels}) in {variant(result)}, "
        "counted as the `nn.Conv2d` modules in `model.named_modules()`.",
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
    lines = [  # no heading of its own: the exercise's title is printed above it
        f"**{result['input_dimension']}** in {variant(result)}, measured by a forward pass of "
        f"{n} images: the input "
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


def render_optimizer_counts(result):
    """Q3 and Q4 read the same: the counts, the code that made them, the optimizer's state."""
    name, state = result["optimizer"], result["optimizer_state"]
    trainable = result["trainable_parameters"]
    per_weight = result["per_weight_state"]  # one number per weight each
    counters = [key for key in state if key not in per_weight]
    settings = ", ".join(f"{key}={value}" for key, value in result["settings"].items())
    code = result["code"]  # the source of the functions that counted, saved with the answer
    lines = [  # no heading of its own: the exercise's title is printed above it
        f"**{trainable:,} trainable parameters and {result['gradients']:,} gradients** in "
        f"{variant(result)} with {name}: one "
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
    return render_optimizer_counts(result)


def render_q4(result):
    return render_optimizer_counts(result)


# ----------------------------------------------------------------------------------------
# The profile (--profile)


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
