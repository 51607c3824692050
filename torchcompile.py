"""What torch.compile did in C8's run, as the 2025 handout asks it: C8's table, and Q5.

    python lab.py --handout 2025 c8    # eager against the three modes, 10 epochs each
    python lab.py --handout 2025 q5    # what torch.compile does, answered from that run

C8 itself is speed.c8_compile, the same function under every handout; while each mode trains
it keeps what TorchDynamo and Inductor counted (speed.compile_counts). This file lays out the
2025 handout's table (the first epoch; the mean of epochs 6-10) and answers Q5 from the
figures of that run, every sentence with its figure.
"""

import os

import report
from render import markdown_table, plural, seconds
from speed import explain_compile

KERNEL_LANGUAGE = {"cuda": "Triton", "cpu": "C++"}  # what Inductor writes on each device


def render_c8_table(result):
    """C8 as the 2025 handout asks it: per mode the first epoch and the mean of epochs 6-10,
    with the compilation cost and the pay-back beside them; then what the numbers say."""
    epochs = result["epochs"]
    later = ("mean of epochs 6-10" if epochs >= 10 else
             f"mean of epochs 2-{epochs}" if epochs > 2 else "epoch 2" if epochs == 2 else
             "later epochs")
    rows = []
    for row, run in zip(result.get("analysis", []), result["runs"]):
        if run["error"] is not None:
            rows.append([row["mode"], "failed", "-", "-", "-"])
            continue
        payback = "-" if row["payback_epochs"] is None else f"{row['payback_epochs']:.1f}"
        rows.append([row["mode"], seconds(row["first_epoch"]),
                     seconds(row["mean_epochs_6_10"] if epochs >= 10 else row["later_epochs"]),
                     seconds(row["compile_cost"]), payback])
    text = [markdown_table(["mode", "first epoch (s)", f"{later} (s)", "compilation (s)",
                            "pays back after (epochs)"], rows), "",
            f"{result['train_images']:,} training images, batch {result['batch_size']}, "
            f"{plural(epochs, 'epoch')} per mode. The first two columns are the handout's; "
            "the compilation and the pay-back are measured against the mean of all the epochs "
            "after the first."]
    if epochs < 10:
        instead = f"the {later}" if later.startswith("mean") else later
        text.append(f"The handout asks for 10 epochs; this run trained {epochs} (--epochs or "
                    f"--quick), so the second column is not the mean of epochs 6-10 but "
                    f"{instead}.")
    if result["note"]:
        text.append(result["note"])
    text += ["", explain_compile(result)]
    text += [f"\n{run['mode']} failed: {run['error']}" for run in result["runs"] if run["error"]]
    return "\n".join(text)


# ----------------------------------------------------------------------------------------
# Q5 (2025): what torch.compile does, how it makes the code faster, why its first epoch is slower


def q5_compile(cfg):
    """Q5 (2025), answered from C8's results file in cfg.out: its measured times and what
    TorchDynamo and Inductor counted, per mode. Without a C8 run of this handout that fits,
    report.MissingResults names the command that makes one."""
    path = os.path.join(cfg.out, "c8.json")
    saved, why = report.read_result(path, "c8", render_c8_table)
    if saved is not None and not saved["complete"]:
        saved, why = None, f"{path} is from a C8 run that did not finish"
    if saved is not None and saved["config"].get("handout") != cfg.handout:
        saved, why = None, f"{path} was run under another handout"
    if saved is not None and not all("compile_counts" in run for run in saved["runs"]):
        saved, why = None, f"{path} was saved before C8 kept TorchDynamo's counts"
    if saved is None:
        raise report.MissingResults(
            f"Q5 is answered from C8's run, and {why or f'there is no {path}'}: run "
            f"python lab.py --handout {cfg.handout} c8 --out {cfg.out} first")
    return {
        "source": path,
        "dataset": saved["dataset"],  # what C8 trained on, for the header line
        "device": saved["device"],    # and where: every figure below is C8's
        "c8_started": saved["started"],
        "train_images": saved["train_images"], "batch_size": saved["batch_size"],
        "epochs": saved["epochs"], "compiler_startup_time": saved["compiler_startup_time"],
        "modes": [{**row, "error": run["error"], "counts": run["compile_counts"]}
                  for row, run in zip(saved["analysis"], saved["runs"])],
    }


def render_q5_compile(result):
    """Q5's answer in three parts, each sentence with its figure from C8's run."""
    compiled = [m for m in result["modes"] if m["mode"] != "eager" and m["error"] is None]
    rows = [[m["mode"], m["counts"]["frames"], m["counts"]["graphs"],
             m["counts"]["graph_breaks"], m["counts"]["captured_ops"], m["counts"]["aot_graphs"],
             m["counts"]["generated_kernels"], m["counts"]["library_calls"]]
            for m in result["modes"]]
    text = [f"Every figure is C8's, from its run started {result['c8_started']} "
            f"({result['source']}).", "",
            markdown_table(["mode", "frames", "graphs", "graph breaks", "operations captured",
                            "graphs to AOTAutograd", "kernels generated", "library calls"],
                           rows)]
    if not compiled:
        return "\n".join(text + ["", "No compiled mode finished in C8's run: there is nothing "
                                     "to answer from."])
    return "\n".join(text + ["", what_compile_does(result, compiled[0]), "",
                             why_faster(result, compiled), "", why_first_epoch(result, compiled)])


def what_compile_does(result, mode):
    """Part 1: the stages, with the counts of one compiled mode."""
    counts = mode["counts"]
    language = KERNEL_LANGUAGE.get(result["device"]["type"], "its own code")
    text = (f"**What torch.compile does.** On the model's first call, TorchDynamo reads the "
            "Python bytecode of forward() and captures its tensor operations into FX graphs: in "
            f"{mode['mode']} mode it was handed {plural(counts['frames'], 'Python frame')} and "
            f"captured {plural(counts['graphs'], 'graph')} of {counts['captured_ops']} operations "
            f"in all. AOTAutograd traced the backward pass of "
            f"{plural(counts['aot_graphs'], 'graph')} ahead of time. Inductor scheduled "
            f"{counts['nodes_before_fusion']} operations from the forward and backward graphs, "
            f"fused what it could into {counts['generated_kernels']} kernels it generated in "
            f"{language}, and called existing library kernels {counts['library_calls']} times "
            "(the convolutions and matrix products). ")
    last_batch = result["train_images"] % result["batch_size"]
    if counts["graph_breaks"]:
        reasons = "; ".join(f"{reason} ({count}x)"
                            for reason, count in counts["graph_break_reasons"].items())
        return text + (f"TorchDynamo broke the graph {plural(counts['graph_breaks'], 'time')}, "
                       f"running Python in between: {reasons}.")
    text += "There was no graph break: the whole forward pass is one graph per input shape."
    if last_batch and counts["graphs"] > 1:
        text += (f" The last batch of each epoch has {last_batch} images, another shape; the "
                 "model is compiled with static shapes, so that batch has a graph of its own.")
    return text


def why_faster(result, compiled):
    """Part 2: fusion, and the later epochs against eager's."""
    eager = next(m for m in result["modes"] if m["mode"] == "eager")
    faster = [f"{m['mode']} {m['later_epochs']:.2f} s ({m['speedup']:.2f}x)" for m in compiled
              if m["speedup"] is not None]
    text = ("**How it makes the code faster.** A fused kernel reads its inputs and writes its "
            "result once, where eager mode runs one kernel per operation, each through memory "
            "and through Python's dispatcher; the compiled graph runs with no Python between "
            "its operations. ")
    if eager["later_epochs"] is None or not faster:
        return text + "C8's run had no later epoch to compare with (use --epochs 2 or more)."
    text += (f"In C8's run an epoch after the first took {eager['later_epochs']:.2f} s in eager "
             f"mode, against " + ", ".join(faster) + ".")
    if all(m["speedup"] <= 1 for m in compiled if m["speedup"] is not None):
        text += (" None was faster than eager here: what fusion saves did not show at this "
                 "size on this device.")
    return text


def why_first_epoch(result, compiled):
    """Part 3: the first epoch pays for the compilation, mode by mode."""
    lines = ["**Why its first epoch is slower.** The first epoch's first step waits for all of "
             "the above (capture, the backward graph, kernel generation and their compilation); "
             "later steps run the compiled code. The compiler's start-up, once per process, "
             f"took {result['compiler_startup_time']:.1f} s before the first mode."]
    for m in compiled:
        if m["compile_cost"] is None:
            continue
        line = (f"- {m['mode']}: first epoch {m['first_epoch']:.1f} s against "
                f"{m['later_epochs']:.2f} s for a later one; {m['compile_cost']:.1f} s of it is "
                "compilation (less eager's own first-epoch warm-up)")
        line += (f", paid back after {m['payback_epochs']:.1f} epochs of this size."
                 if m["payback_epochs"] is not None else ", never paid back at this size.")
        lines.append(line)
    return "\n".join(lines)
