"""What an exercise is, and the lab's handouts year by year: each one's items, numbered, titled
and scored as that year's handout has them, each mapped to the exercise that answers it.

    python lab.py c4                       # C4 of the 2022 handout (the default)
    python lab.py --handout 2026 c4        # C4 of the 2026 handout: the GPU against the CPU
    python lab.py --handout 2026 --help    # that handout's items and titles

An exercise is written once, one function per idea: lab.EXERCISES holds the lab's, numbered
as lab.py is (2022), and LATER_EXERCISES below the ones only later handouts ask for; a handout
only numbers them. 2026's C4 is the exercise that is 2022's C5, so `--handout 2026 c4` runs
lab.c5_cpu_vs_gpu and saves results-2026/c4.json. Each handout writes to its own results
folder by default (results/ for 2022, results-YEAR/ for the others), and every results file
records its handout, so the results of one handout never answer another's.
"""

from dataclasses import dataclass, replace

import charts
import libtorch
import render
import torchscript
from torchcompile import q5_compile, render_c8_table, render_q5_compile


@dataclass(frozen=True)
class Exercise:
    """An exercise and its properties; every per-exercise rule reads these, not lists of names."""

    title: str
    run: callable                  # run(cfg, save) -> dict; run(cfg) if not saves_progress
    render: callable               # render(result) -> Markdown
    uses_data: bool = True         # loads the lab's data set, named before it runs
    saves_progress: bool = True    # run takes save(partial) and calls it as it goes
    saves_each: str = "epoch"      # what each save(partial) follows: Ctrl-C's line counts them
    evaluate: bool = False         # test accuracy after each epoch, unless --eval/--no-eval
    names_settings: bool = False   # trains one configuration: its header names batch, workers...
    profiles: bool = False         # --profile records its training
    sweeps_workers: bool = False   # varies the DataLoader's workers itself: no --loader device
    finds_best_workers: bool = False  # measures the best worker count (C3)
    takes_best_workers: bool = False  # trains with that count
    data_parallel: bool = False    # trains data-parallel when launched by torchrun
    batch_sizes: str = None        # the Config field that --batch-sizes sets
    wide_table: bool = False       # --wide adds torchinfo's columns to its table
    trains: str = None             # "epochs": train.fit on the data; "steps": steps of its own
    picks_slice: bool = False      # loads the data set itself, on a slice of its choosing
    reads_test_set: bool = False   # runs trained weights on test images: --test-size applies
    takes: tuple = ()              # Config fields of its own: no other exercise reads them
    ignores: tuple = ()            # Config fields it never reads: their options are refused
    in_lab: bool = True            # part of `all` and of REPORT.md's lab sections
    chart: callable = None         # chart(result, path) -> bool: a PNG (charts.py), if matplotlib
    # Set by the handout that numbers it (exercises_for):
    heading: str = None            # the printed title, naming the handout; None: the title
    settings: dict = None          # Config values the handout asks of it, unless given


# 2026's Part B runs C1's trained weights (or --checkpoint's), made TorchScript by
# torch.jit.script (or --trace's torch.jit.trace). None of it trains.
PART_B = {"takes": ("checkpoint", "trace")}

# The exercises that only later handouts ask for; each handout gives them its number and title,
# and makes them part of its `all`.
LATER_EXERCISES = {
    # 2025's Q5, answered from its C8's run (torchcompile.py)
    "compile-explained": Exercise("torch.compile explained from C8's run", q5_compile,
                                  render_q5_compile, uses_data=False, saves_progress=False,
                                  ignores=("seed", "device", "batch_norm")),
    # 2026's Part B (torchscript.py; the extra credit in libtorch.py)
    "torchscript": Exercise("The trained model in TorchScript", torchscript.c7_torchscript,
                            torchscript.render_c7_torchscript, saves_progress=False,
                            reads_test_set=True, **PART_B,
                            ignores=("train_size", "batch_size", "num_workers")),
    "torchscript-graph": Exercise("The TorchScript graph", torchscript.c8_graph,
                                  torchscript.render_c8_graph, uses_data=False,
                                  saves_progress=False, **PART_B, ignores=("device",)),
    "torchscript-accuracy": Exercise("TorchScript's top-1 accuracy", torchscript.c9_accuracy,
                                     torchscript.render_c9_accuracy, saves_each="test batch",
                                     reads_test_set=True, **PART_B,
                                     ignores=("train_size", "batch_size")),
    "torchscript-latency": Exercise("Latency, eager against TorchScript",
                                    torchscript.c10_latency, torchscript.render_c10_latency,
                                    uses_data=False, saves_each="timed batch size",
                                    batch_sizes="infer_batch_sizes", ignores=("device",),
                                    chart=charts.chart_torchscript_latency, **PART_B),
    "libtorch": Exercise("The model in C++ with LibTorch", libtorch.extra_credit,
                         libtorch.render_extra_credit, saves_each="C++ program",
                         reads_test_set=True, **PART_B,
                         ignores=("train_size", "batch_size", "num_workers", "device")),
    "trace-or-script": Exercise("Tracing against scripting", torchscript.q5_trace_vs_script,
                                torchscript.render_q5_trace_vs_script, uses_data=False,
                                saves_progress=False, ignores=("device",)),
    "scripting-changes": Exercise("What ResNet-18 needs to be scripted",
                                  torchscript.q6_scripting, torchscript.render_q6_scripting,
                                  uses_data=False, saves_progress=False,
                                  ignores=("device", "batch_norm")),  # it scripts both ways
}


@dataclass(frozen=True)
class Item:
    """One item of a handout: the command that runs it, the exercise that answers it, and the
    handout's own title and points."""

    command: str              # what the student types, and the results file's name: "c4"
    exercise: str             # its key in lab.EXERCISES or LATER_EXERCISES: "c5"
    title: str = None         # the handout's number and words; None: the exercise's own title
    points: int = None        # where the handout gives them
    settings: dict = None     # Config values the handout asks of this item (2025's C8: 10
                              # epochs); the command line and --quick come before them
    render: callable = None   # the handout's own layout of the results, where it asks one


@dataclass(frozen=True)
class Handout:
    name: str                 # "Spring 2026"
    items: tuple              # in the handout's order: `all` runs them so, REPORT.md shows them so
    extras: tuple             # lab.EXERCISES offered beyond the handout, under their own names


def as_in_lab_py(*names):
    """Items numbered as lab.py numbers them: command, exercise and title its own."""
    return tuple(Item(name, name) for name in names)


HANDOUTS = {
    "2022": Handout("Spring 2022", as_in_lab_py("c1", "c2", "c3", "c4", "c5", "c6", "c7",
                                                "q1", "q2", "q3", "q4"),
                    extras=("summary", "c8", "bench", "infer", "ddp")),
    "2025": Handout("Spring 2025", (
        *as_in_lab_py("c1", "c2"),
        Item("c3", "c3", "C3: I/O optimization (C3.1 the plot, C3.2 the best count, "
                         "C3.3 the explanation)", render=render.render_c3_in_parts),
        *as_in_lab_py("c4", "c5", "c6", "c7"),
        Item("c8", "c8", "C8: torch.compile (default, reduce-overhead, max-autotune) against "
                         "eager, 10 epochs", settings={"epochs": 10}, render=render_c8_table),
        *as_in_lab_py("q1", "q2", "q3", "q4"),
        Item("q5", "compile-explained", "Q5: what torch.compile does, how it makes the code "
                                        "faster, and why its first epoch is slower"),
    ), extras=("summary", "bench", "infer", "ddp")),
    "2026": Handout("Spring 2026", (
        # Part A
        Item("c1", "c1", "C1: training", 10),
        Item("c2", "c2", "C2: time measurement", 10),
        Item("c3", "c3", "C3: I/O optimization", 10),
        Item("c4", "c5", "C4: training on GPUs vs CPUs", 10),
        Item("c5", "c6", "C5: different optimizers", 10),
        Item("c6", "c7", "C6: without BatchNorm", 5),
        # Part B: model optimization with TorchScript, on C1's trained weights
        Item("c7", "torchscript", "C7: convert the trained model to TorchScript", 5),
        Item("c8", "torchscript-graph", "C8: print the model graph", 5),
        Item("c9", "torchscript-accuracy", "C9: evaluate the TorchScript model (top-1 test "
                                           "accuracy)", 5),
        Item("c10", "torchscript-latency", "C10: latency, PyTorch against TorchScript, on the "
                                           "CPU and the GPU", 5),
        Item("ec", "libtorch", "Extra credit: run the model in C++ with LibTorch", 10),
        Item("q1", "q1", "Q1: convolutional layers", 4),
        Item("q2", "q2", "Q2: input dimension of the last linear layer", 4),
        Item("q3", "q3", "Q3: trainable parameters and gradients with SGD", 8),
        Item("q4", "q4", "Q4: trainable parameters and gradients with Adam", 4),
        Item("q5", "trace-or-script", "Q5: the difference between tracing and scripting", 4),
        Item("q6", "scripting-changes", "Q6: the changes ResNet-18 needs before it can be "
                                        "scripted", 4),
    ), extras=("summary", "bench", "infer", "ddp")),
}


def exercises_for(year, exercises):
    """The exercises of handout `year` by command, in its order, then its extras.

    `exercises` is lab.EXERCISES. Each item is its exercise with the handout's title (and
    points), its settings and layout, and a heading that names the handout ("C4 (2026
    handout): ..."), so that a student of one year who forgot --handout sees at once whose C4
    ran. Items are part of `all` and of REPORT.md; the extras keep their own titles.
    """
    handout = HANDOUTS[year]
    every = {**exercises, **LATER_EXERCISES}
    numbered = {}
    for item in handout.items:
        exercise = every[item.exercise]
        title = item.title or exercise.title
        number, _, words = title.partition(": ")
        points = f" [{item.points} points]" if item.points else ""
        numbered[item.command] = replace(
            exercise, title=title + points, heading=f"{number} ({year} handout): {words}{points}",
            settings=item.settings or {}, render=item.render or exercise.render, in_lab=True)
    extras = {name: replace(exercises[name], heading=f"{exercises[name].title} (beyond the "
                                                     f"{year} handout)")
              for name in handout.extras}
    return {**numbered, **extras}


def command_for(year, exercise):
    """The command (and results file name) under which handout `year` runs lab.EXERCISES'
    `exercise`, or None when that handout does not have it: 2026's "c5" for "c6"."""
    handout = HANDOUTS[year]
    commands = [item.command for item in handout.items if item.exercise == exercise]
    commands += [name for name in handout.extras if name == exercise]
    return commands[0] if commands else None


def results_folder(year, defaults):
    """The default results folder of handout `year`; `defaults` is a Config. The default
    handout's is Config.out ("results"), another's Config.out-YEAR ("results-2026"), so that
    each handout's results files and REPORT.md stand apart."""
    return defaults.out if year == defaults.handout else f"{defaults.out}-{year}"
