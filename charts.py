"""Charts: a PNG for every exercise that compares or follows something, drawn from its results.

    pip install matplotlib        # the charts need it; without it every exercise runs as before
    python lab.py c6 --quick      # the tables, and results/c6.png: loss and top-1 per epoch

Each `chart_<exercise>(result, path) -> bool` reads the result alone, as the exercise returned
it or as its results file holds it, so REPORT.md redraws every chart from the files beside it.
It returns False, drawing nothing, where matplotlib is not installed. matplotlib is imported on
the first chart, on its non-interactive Agg backend, so the lab starts as fast without it and
a machine without a display draws too. One palette, COLOURS, gives the same thing the same
colour in every chart: the wait for data is orange wherever it appears.
"""

import functools
import os
import textwrap

from render import notice

COLOURS = {
    # Where the time goes (C2, C4, C5; ddp's step)
    "data": "#ff7f0e", "first batch": "#ffbb78", "train": "#1f77b4", "other": "#c7c7c7",
    "computation": "#1f77b4", "communication": "#d62728",
    # The optimizers (C6); C7's run with BatchNorm is the same SGD run
    "sgd": "#2ca02c", "nesterov": "#98df8a", "adagrad": "#9467bd", "adadelta": "#c5b0d5",
    "adam": "#8c564b", "with_bn": "#2ca02c", "without_bn": "#e377c2",
    # How the model runs: eager is the lab's plain path; torch.compile's default mode is the
    # same thing in C8 ("default"), infer ("compile") and the bench ("compile")
    "eager": "#7f7f7f", "default": "#17becf", "compile": "#17becf",
    "reduce-overhead": "#9edae5", "max-autotune": "#bcbd22",
    "trace": "#aec7e8", "script": "#c49c94", "export": "#f7b6d2", "aoti": "#dbdb8d",
    "option": "#8da0cb",  # a speed option of the bench other than compiling
}
OTHER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#bcbd22", "#17becf")  # for names the palette does not know, in turn
PARTS = ("data", "train", "other")  # an epoch's three windows (timing.py), bottom to top
LABELS = {"data": "data (waiting for a batch)", "train": "train (step, synchronised)",
          "other": "other (the loop itself)",
          "first batch": "first batch (worker start-up included)",
          "with_bn": "with BatchNorm", "without_bn": "without BatchNorm"}
WIDTH, HEIGHT, DPI = 8.0, 4.0, 110  # about 880 x 440 pixels: REPORT.md's width
NO_MATPLOTLIB = ("charts: matplotlib is not installed, so no PNG charts are drawn; "
                 "`pip install matplotlib` adds them to the results folder and REPORT.md")


@functools.cache
def pyplot():
    """matplotlib.pyplot on the Agg backend, or None where matplotlib is not installed.

    Cached, so that the import happens once and the note saying how to get the charts is
    printed once per process, by the first exercise that would draw.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")  # draws to files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        notice(NO_MATPLOTLIB)
        return None
    return plt


def colour(name, index=0):
    return COLOURS.get(name, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def figure_with(plt, panels=1, width=WIDTH, height=HEIGHT):
    """A figure and its list of axes, side by side."""
    figure, axes = plt.subplots(1, panels, figsize=(width, height), squeeze=False)
    return figure, list(axes[0])


def legend_below(figure, axes, columns=4):
    """One legend for the figure, under the axes, where it cannot cover a bar or a line."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=min(columns, len(labels)), frameon=False)


def save(plt, figure, path):
    """Write the PNG atomically (a reader never sees half a chart) and free the figure; True
    if saved. A chart that cannot be written (a full disk) is one line, and the run goes on:
    its results are saved already."""
    figure.tight_layout()
    temporary = f"{path}.tmp"
    try:
        figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")
        os.replace(temporary, path)
    except OSError as error:
        notice(f"charts: cannot save {path}: {error.strerror or error}")
        return False
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.unlink(temporary)
    return True


def stacked_parts(axes, labels, figures, parts=PARTS):
    """One bar per label, the parts stacked in their colours; figures[i]["<part>_time"], in
    seconds, is each bar's part ("first batch": "first_batch_time")."""
    positions = range(len(labels))
    bottom = [0.0] * len(labels)
    for part in parts:
        heights = [f[f"{part.replace(' ', '_')}_time"] for f in figures]
        axes.bar(positions, heights, bottom=bottom, color=colour(part), label=LABELS[part],
                 width=0.6)
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes.set_xticks(list(positions), labels)
    axes.set_ylabel("seconds")
    return bottom


def note_shares(axes, tops, figures):
    """Above each stacked bar, the data wait and the rest outside training, in seconds: on a
    CPU they are slivers of the bar, and the reader should not have to guess them."""
    for x, (top, f) in enumerate(zip(tops, figures)):
        axes.annotate(f"data {f['data_time']:.3f} s\nother {f['other_time']:.3f} s",
                      (x, top), xytext=(0, 3), textcoords="offset points", ha="center",
                      va="bottom", fontsize=8)
    axes.set_ylim(0, 1.25 * max(tops, default=1) or 1)


# ----------------------------------------------------------------------------------------
# C2-C7


def chart_c2(result, path):
    """C2: each epoch's data, train and other time, stacked, and their mean."""
    plt = pyplot()
    if plt is None:
        return False
    epochs = result["epochs"]
    figures, labels = list(epochs), [f"epoch {e['epoch']}" for e in epochs]
    if len(epochs) > 1:  # the mean beside them, as in the table
        figures.append(result["summary"])
        labels.append("mean")
    figure, (axes,) = figure_with(plt)
    tops = stacked_parts(axes, labels, figures)
    note_shares(axes, tops, figures)
    axes.set_title("C2: where each epoch's time goes")
    legend_below(figure, axes, columns=3)
    return save(plt, figure, path)


def chart_c3(result, path):
    """C3: the median epoch of data loading per worker count, its spread, the best marked."""
    plt = pyplot()
    if plt is None:
        return False
    points, best = result["points"], result["best_workers"]
    counts = [p["num_workers"] for p in points]
    medians = [p["median"] for p in points]
    figure, (axes,) = figure_with(plt)
    axes.errorbar(counts, medians, yerr=[[p["median"] - p["min"] for p in points],
                                         [p["max"] - p["median"] for p in points]],
                  marker="o", capsize=3, color=colour("data"),
                  label=f"median of {result['repeats']} (bar: fastest to slowest)")
    for p in points:
        if p["num_workers"] == best:
            axes.plot([best], [p["median"]], marker="o", markersize=14, linestyle="none",
                      markerfacecolor="none", markeredgecolor="black", markeredgewidth=1.5,
                      label=f"best: {best} workers, {p['median']:.3f} s")
    axes.set_xticks(counts)
    axes.set_ylim(0, 1.1 * max((p["max"] for p in points), default=1))
    axes.set_xlabel("DataLoader workers")
    axes.set_ylabel("seconds per epoch (median)")
    axes.set_title("C3: data loading time against workers")
    legend_below(figure, axes, columns=2)
    return save(plt, figure, path)


def chart_c4(result, path):
    """C4: the two runs side by side, epoch by epoch: the whole epoch, and the wait for data."""
    plt = pyplot()
    if plt is None:
        return False
    names = {"one_worker": "1 worker", "best": f"{result['best_workers']} workers"}
    labels, figures = [], []
    for key, run in result["runs"].items():
        for e in run["epochs"]:
            labels.append(f"{names[key]}\nepoch {e['epoch']}")
            figures.append(e)
    figure, (whole, wait) = figure_with(plt, panels=2, width=WIDTH + 1)
    tops = stacked_parts(whole, labels, figures)
    note_shares(whole, tops, figures)
    whole.set_title("the whole epoch")
    rest = [{"first_batch_time": e["first_batch_time"],
             "data_time": e["data_time"] - e["first_batch_time"]} for e in figures]
    stacked_parts(wait, labels, rest, parts=("first batch", "data"))
    wait.set_title("the wait for data: the first batch, then the rest")
    figure.suptitle(f"C4: 1 worker against the best count ({result['best_workers']})")
    handles = [*whole.get_legend_handles_labels()[0],
               wait.get_legend_handles_labels()[0][0]]
    figure.legend(handles, [h.get_label() for h in handles], loc="upper center",
                  bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    return save(plt, figure, path)


def chart_c5(result, path):
    """C5: the mean epoch on the CPU and on the GPU, stacked as C2's; a skipped GPU says why."""
    plt = pyplot()
    if plt is None:
        return False
    runs = result["runs"]
    labels = ["CPU" if key == "cpu" else f"GPU\n{result['gpu']['name']}" for key in runs]
    figures = [run["summary"] for run in runs.values()]
    figure, (axes,) = figure_with(plt)
    tops = stacked_parts(axes, labels, figures)
    note_shares(axes, tops, figures)
    axes.set_ylabel("seconds per epoch (mean)")
    if result["speedup"] is not None:
        axes.set_title(f"C5: the GPU is {result['speedup']:.1f}x as fast as the CPU per epoch")
    else:  # the GPU's place stays, with the reason in it
        axes.set_title("C5: the CPU's mean epoch; the GPU run was skipped")
        axes.set_xticks([0, 1], [*labels, "GPU"])
        axes.set_xlim(-0.6, 1.6)
        axes.text(1, max(tops) / 2, "skipped:\n" + textwrap.fill(result["gpu"]["skipped"], 30),
                  ha="center", va="center", fontsize=9)
    legend_below(figure, axes, columns=3)
    return save(plt, figure, path)


def chart_c6(result, path):
    """C6: the training loss and top-1 accuracy per epoch, one line per optimizer."""
    return training_curves(result, path, "C6: the optimizers from the same weights",
                           {name: name for name in result["runs"]})


def chart_c7(result, path):
    """C7: the same per-epoch curves with and without BatchNorm, and each epoch's train time."""
    return training_curves(result, path, "C7: SGD with and without BatchNorm",
                           {key: LABELS[key] for key in ("with_bn", "without_bn")
                            if key in result["runs"]}, with_time=True)


def training_curves(result, path, title, names, with_time=False):
    """Loss and top-1 per epoch, a line per run. An epoch whose loss diverged has no loss to
    plot: it is an x at the top of the loss panel, and its run's label says so."""
    plt = pyplot()
    if plt is None:
        return False
    panels = 3 if with_time else 2
    figure, axes = figure_with(plt, panels=panels, width=WIDTH + 1.5 * (panels - 2))
    loss_axes, accuracy_axes = axes[0], axes[1]
    labels, marked = [], 0  # marked: runs that diverged, an x each, one below the other
    for index, (key, label) in enumerate(names.items()):
        epochs = result["runs"][key]["epochs"]
        line_colour = colour(key, index)
        diverged = [e["epoch"] for e in epochs if e["diverged"]]
        labels.append(label + (f" (diverged in epoch {diverged[0]})" if diverged else ""))
        finite = [e for e in epochs if not e["diverged"]]
        loss_axes.plot([e["epoch"] for e in finite], [e["train_loss"] for e in finite],
                       marker="o", color=line_colour, label=labels[-1])
        loss_axes.plot(diverged, [0.94 - 0.07 * marked] * len(diverged), linestyle="none",
                       marker="x", markersize=9, color=line_colour,
                       transform=loss_axes.get_xaxis_transform())
        marked += bool(diverged)
        accuracy_axes.plot([e["epoch"] for e in epochs], [e["train_accuracy"] for e in epochs],
                           marker="o", color=line_colour)
        if with_time:
            axes[2].plot([e["epoch"] for e in epochs], [e["train_time"] for e in epochs],
                         marker="o", color=line_colour)
    loss_axes.set(title="training loss", ylabel="cross-entropy (mean over the epoch)")
    if marked:
        loss_axes.text(0.98, 0.02, "x: the loss diverged (NaN or infinite)", ha="right",
                       transform=loss_axes.transAxes, fontsize=8)
    accuracy_axes.set(title="training top-1", ylabel="% of training images")
    if with_time:
        axes[2].set(title="training time", ylabel="seconds per epoch (train)")
        axes[2].set_ylim(bottom=0)
    last = max((len(result["runs"][key]["epochs"]) for key in names), default=1)
    for each in axes:
        each.set_xlabel("epoch")
        each.set_xticks(range(1, last + 1))
    accuracy_axes.set_ylim(0, min(100, 1.1 * accuracy_axes.get_ylim()[1]))
    figure.suptitle(title)
    legend_below(figure, loss_axes, columns=5 if sum(map(len, labels)) < 60 else 3)
    return save(plt, figure, path)


# ----------------------------------------------------------------------------------------
# Beyond the lab: C8, infer, ddp, bench


def chart_c8(result, path):
    """C8: epoch time per mode; epoch 1, which holds the compilation, on a scale of its own."""
    plt = pyplot()
    if plt is None:
        return False
    runs = [run for run in result["runs"] if run["error"] is None and run["epoch_times"]]
    costs = {row["mode"]: row["compile_cost"] for row in result.get("analysis", [])}
    later = max((len(run["epoch_times"]) for run in runs), default=1) > 1
    figure, axes = figure_with(plt, panels=2 if later else 1, width=WIDTH + (1 if later else 0))
    width = 0.8 / max(len(runs), 1)
    for index, run in enumerate(runs):
        label = run["mode"]
        if costs.get(label) is not None:
            label += f" (compilation about {costs[label]:.1f} s)"
        times = run["epoch_times"]
        bars = axes[0].bar([index], times[:1], color=colour(run["mode"], index), label=label)
        axes[0].bar_label(bars, fmt="{:.1f} s", fontsize=8)
        if later:
            epochs = range(2, len(times) + 1)
            bars = axes[1].bar([e + (index - (len(runs) - 1) / 2) * width for e in epochs],
                               times[1:], width=width, color=colour(run["mode"], index))
            axes[1].bar_label(bars, fmt="{:.1f}", fontsize=8)
    axes[0].set_xticks(range(len(runs)), [run["mode"] for run in runs], rotation=15)
    axes[0].set(title="epoch 1: compilation included", ylabel="seconds per epoch")
    if later:
        axes[1].set_xticks(list(range(2, max(len(r["epoch_times"]) for r in runs) + 1)))
        axes[1].set(title="later epochs: the compiled code alone", xlabel="epoch",
                    ylabel="seconds per epoch")
    for each in axes:
        each.margins(y=0.1)  # room for the figures over the bars
    failed = [run["mode"] for run in result["runs"] if run["error"] is not None]
    figure.suptitle(f"C8: torch.compile against eager, {result['train_images']:,} images per "
                    f"epoch, batch {result['batch_size']}"
                    + (f" ({', '.join(failed)} failed)" if failed else ""))
    legend_below(figure, axes[0], columns=2)
    return save(plt, figure, path)


def chart_infer(result, path):
    """infer: each way's median latency at each batch size, the p90 as a whisker."""
    plt = pyplot()
    if plt is None:
        return False
    ways = list(result["ways"])
    sizes = result["batch_sizes"]
    figure, axes = figure_with(plt, panels=len(sizes), width=WIDTH + 1,
                               height=max(2.8, 1.4 + 0.45 * len(ways)))
    for panel, (each, size) in enumerate(zip(axes, sizes)):
        slowest = 0.0
        for row, name in enumerate(ways):
            batches = result["ways"][name]["batches"]
            if panel >= len(batches):  # failed, or stopped before this batch size
                each.text(0, row, "  no time: " + ("failed" if result["ways"][name]["error"]
                                                  else "not measured"), va="center", fontsize=8)
                continue
            median, p90 = batches[panel]["median_ms"], batches[panel]["p90_ms"]
            if p90 is None:  # too few calls for a p90: the bar alone
                p90 = median
            each.barh([row], [median], color=colour(name, row), xerr=[[0], [p90 - median]],
                      capsize=3)
            each.annotate(f" {median:.{1 if median >= 1 else 3}f} ms", (p90, row), va="center",
                          fontsize=8)
            slowest = max(slowest, p90)
        each.set_yticks(range(len(ways)), ways if panel == 0 else [""] * len(ways))
        each.set_ylim(len(ways) - 0.5, -0.5)  # the first way on top, as in the tables
        each.set_xlim(0, 1.3 * slowest or 1)  # room for the figures after the whiskers
        each.set(title=f"batch {size}", xlabel="milliseconds per call (median)")
    figure.suptitle(f"infer: latency of each way on {result['inference_device']}; "
                    "whisker: up to the p90 of single calls, where enough were timed for one")
    return save(plt, figure, path)


def chart_torchscript_latency(result, path):
    """2026's C10: eager's and TorchScript's median latency per device at each batch size, the
    p90 as a whisker, as infer's chart draws them."""
    plt = pyplot()
    if plt is None:
        return False
    sizes = result["batch_sizes"]
    script = "trace" if result["method"].endswith("trace") else "script"
    figure, axes = figure_with(plt, panels=len(sizes), width=WIDTH + 1, height=3.2)
    for each, size in zip(axes, sizes):
        bars = [(f"{row['device']} {name}", row[way], colour(key))
                for row in result["rows"] if row["batch_size"] == size
                for way, name, key in (("eager", "eager", "eager"),
                                       ("torchscript", "TorchScript", script))]
        for place, (label, timing, shade) in enumerate(bars):
            median = timing["median_ms"]
            p90 = median if timing["p90_ms"] is None else timing["p90_ms"]  # too few calls
            each.barh([place], [median], color=shade, xerr=[[0], [p90 - median]], capsize=3)
            each.annotate(f" {median:.{1 if median >= 1 else 3}f} ms", (p90, place),
                          va="center", fontsize=8)
        each.set_yticks(range(len(bars)), [label for label, _, _ in bars])
        each.set_ylim(len(bars) - 0.5, -0.5)  # in the table's order, top to bottom
        each.set_xlim(0, 1.3 * max((t["p90_ms"] or t["median_ms"] for _, t, _ in bars),
                                   default=1))
        each.set(title=f"batch {size}", xlabel="milliseconds per call (median)")
    skipped = " (no GPU here)" if result["gpu"]["skipped"] else ""
    figure.suptitle(f"C10: latency, eager against TorchScript ({result['method']}){skipped}; "
                    "whisker: up to the p90 of single calls, where enough were timed for one")
    return save(plt, figure, path)


def chart_ddp(result, path):
    """ddp: images/s per world size, a line per batch per process against linear scaling
    (dashed), and each run's step split into computation and the exposed communication
    beyond it (none with 1 process, and none drawn where it is within the noise)."""
    plt = pyplot()
    if plt is None:
        return False
    ok = [run for run in result["runs"] if run["ok"]]
    figure, (rate, step) = figure_with(plt, panels=2, width=WIDTH + 1)
    batches = result["batch_sizes"]
    for index, batch in enumerate(batches):
        runs = [run for run in ok if run["batch_per_rank"] == batch]
        shade = plt.cm.viridis(0.8 * index / max(len(batches) - 1, 1))  # not a palette colour
        sizes = [run["world_size"] for run in runs]
        rate.plot(sizes, [run["images_per_second"] for run in runs], marker="o", color=shade,
                  label=f"batch {batch} per process")
        base = next((run for run in runs if run["world_size"] == 1), None)
        if base is not None:
            rate.plot(sizes, [n * base["images_per_second"] for n in sizes], linestyle="--",
                      color=shade, alpha=0.6)
    rate.plot([], [], linestyle="--", color="gray", label="linear scaling from 1 process")
    rate.set_xticks(result["world_sizes"])
    rate.set(title="throughput", xlabel="processes", ylabel="images per second (all processes)")
    rate.set_ylim(bottom=0)
    computation = [1000 * run["computation_time"] for run in ok]
    # As the table: no bar for 1 process (nothing to all-reduce) or within the noise.
    clear = [run["exposed_communication_clear"] for run in ok]
    exposed = [run["exposed_communication_time"] if run["exposed_communication_clear"] else None
               for run in ok]
    communication = [1000 * max(seconds or 0.0, 0.0) for seconds in exposed]
    below_zero = any(seconds is not None and seconds < 0 for seconds in exposed)
    step.bar(range(len(ok)), computation, color=colour("computation"),
             label="computation (the step under no_sync)")
    step.bar(range(len(ok)), communication, bottom=computation, color=colour("communication"),
             label="exposed communication beyond it"
             + (" (below 0: drawn as 0)" if below_zero else ""))
    for index, is_clear in enumerate(clear):
        if is_clear is False:  # None: 1 process
            step.annotate("noise", (index, computation[index]), ha="center", va="bottom",
                          fontsize=7)
    if False in clear:
        step.plot([], [], " ", label="noise: exposed communication within the noise, not drawn")
    tallest = max((c + e for c, e in zip(computation, communication)), default=0.0)
    step.set_ylim(0, 1.1 * tallest or 1)  # room for the notes above the bars
    step.set_xticks(range(len(ok)), [f"{r['world_size']} × {r['batch_per_rank']}" for r in ok])
    step.set(title="one training step", xlabel="processes × batch per process",
             ylabel="milliseconds per step")
    failed = len(result["runs"]) - len(ok)
    figure.suptitle(f"ddp: data-parallel scaling on {result['study_device']}"
                    + (f" ({failed} run{'s' * (failed > 1)} failed)" if failed else ""))
    handles = [h for each in (rate, step) for h in each.get_legend_handles_labels()[0]]
    figure.legend(handles, [h.get_label() for h in handles], loc="upper center",
                  bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    return save(plt, figure, path)


def chart_bench(result, path):
    """bench: each option's images/s as a multiple of the default's, and the data pipeline's."""
    plt = pyplot()
    if plt is None:
        return False
    step, pipeline = result["step"], result.get("pipeline")
    counts = [len(step["rows"])] + ([len(pipeline["rows"])] if pipeline else [])
    figure, axes = plt.subplots(len(counts), 1, squeeze=False, figsize=(
        WIDTH, 0.5 + sum(0.9 + 0.4 * count for count in counts)),
        gridspec_kw={"height_ratios": counts})  # one above the other: the names are long
    axes = list(axes[:, 0])
    # The default is the lab's eager path; compiled rows are torch.compile's colour.
    ladder(axes[0], step["rows"], [colour("eager") if row["name"] == "default"
                                   else colour("compile") if row["options"].get("compile")
                                   else colour("option") for row in step["rows"]])
    axes[0].set(title=f"training step, batch {step['batch_size']}",
                xlabel="images/s as a multiple of the default's")
    if pipeline:
        names = [row["name"] + (" (reference)" if row["name"] == pipeline["reference"] else "")
                 for row in pipeline["rows"]]
        ladder(axes[1], [{**row, "name": name} for row, name in zip(pipeline["rows"], names)],
               [colour("data") if row["num_workers"] is not None else colour("option")
                for row in pipeline["rows"]])
        axes[1].set(title=f"data pipeline, batch {pipeline['batch_size']}",
                    xlabel="images/s as a multiple of the reference's")
    figure.suptitle("bench: the speed ladder against the default")
    return save(plt, figure, path)


def ladder(axes, rows, colours):
    """Horizontal bars of each row's ratio, the line at 1 the reference; the ratio and the
    images/s at the end (both medians over the rounds, so they may rank two rows apart), and
    a step row's share of the matmul rate in its dtype (flops.py) where the result has one."""
    shares = False
    for index, (row, bar_colour) in enumerate(zip(rows, colours)):
        if row.get("ratio") is None:
            axes.text(0, index, "  failed", va="center", fontsize=8)
            continue
        axes.barh([index], [row["ratio"]], color=bar_colour)
        rate, share = row["images_per_second"], row.get("matmul_share")
        text = f" {row['ratio']:.2f}x, {rate:,.{1 if rate < 100 else 0}f} images/s"
        if share is not None:
            text += f", {100 * share:.0f}% of {row['dtype']} matmul"
            shares = True
        axes.annotate(text, (row["ratio"], index), va="center", fontsize=8)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_yticks(range(len(rows)), [row["name"] for row in rows])
    axes.invert_yaxis()  # the ladder reads from the default down
    room = 2.0 if shares else 1.5  # for the words after the longest bar
    axes.set_xlim(0, room * max((row["ratio"] or 0 for row in rows), default=1) or 1)
