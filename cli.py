"""The command line: `python lab.py EXERCISE [options]` into an exercise and a Config, and run.

    python lab.py --help                 # every exercise and option, with the Config's defaults
    python lab.py --handout 2026 --help  # the exercises as the 2026 handout numbers them

Every default shown here is read from lab.py's Config, the one place where defaults live; an
option left out keeps the Config's value. Bad input raises UsageError, which `main` below
prints as one line and exit status 2.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
from dataclasses import fields, replace

import torch

import checks
import ddp
import handouts
import parallel
import report
from data import DATASETS, DataError
from infer import InferError
from machine import gpu_device, usable_cores, worker_limit
from render import notice
from train import LOADERS, OPTIMIZERS


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


# The optimizers compute in float32: a larger number is finite for Python but not for torch,
# whose first step would fail with "value cannot be converted to type float without overflow".
FLOAT32_MAX = torch.finfo(torch.float32).max


def positive_float(text):
    value = _number(text, float)
    if not (value > 0 and math.isfinite(value)):  # nan and inf would only train to NaN
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, not {text}")
    if value > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"{text} is too large for float32, in which torch "
                                         f"computes: at most {FLOAT32_MAX:.4g}")
    return value


def _number(text, kind):
    try:
        return kind(text)
    except ValueError:
        words = {int: "a whole number", float: "a number"}
        raise argparse.ArgumentTypeError(f"{text!r} is not {words[kind]}") from None


def build_parser(defaults, exercises, handout=None):
    """The parser; `defaults` is a Config, whose values the help text shows, and `exercises`
    those of `handout` (handouts.exercises_for; None: the default handout).

    Options default to None ("not given"), so that --quick can tell its slices from the
    user's and the Config keeps its own defaults for the rest.
    """
    d = defaults
    handout = handout or d.handout
    quick = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in d.QUICK.items())
    width = max(map(len, exercises))
    listing = [f"  {name.ljust(width)}  {exercise.title}" for name, exercise in exercises.items()]
    parser = Parser(
        prog="lab.py", argument_default=None, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The HPML lab: ResNet-18 on CIFAR-10, and where the time goes.",
        epilog="\n".join([f"exercises, numbered as the {handout} handout (--handout chooses "
                          "another year's):", *listing,
                          f"  {'all'.ljust(width)}  every exercise of the handout in order, "
                          "then REPORT.md",
                          f"  {'check'.ljust(width)}  {CHECK_TITLE}"]))
    parser.add_argument("exercise", metavar="EXERCISE", type=str.lower,
                        help=f"one of: {', '.join(commands(exercises))}")
    parser.add_argument("--handout", choices=tuple(handouts.HANDOUTS),
                        help="the year of the handout whose numbers, titles, points and order "
                             "the exercises follow; each handout has its own results folder "
                             f"(default: {d.handout}, the numbering of lab.py)")
    add_run_options(parser, d, quick, evaluated=" and ".join(k for k, e in exercises.items()
                                                           if e.evaluate),
                    out=handouts.results_folder(handout, d))
    finder = ", ".join(k for k, e in exercises.items() if e.finds_best_workers)
    takers = ", ".join(k for k, e in exercises.items() if e.takes_best_workers)
    add_worker_options(parser.add_argument_group(f"worker experiments ({finder}; {takers})"),
                       d, finder, takers)
    add_speed_options(parser.add_argument_group("speed options (off by default: the lab's "
                                                "plain path)"), d, exercises)
    add_beyond_options(parser.add_argument_group("beyond the lab (infer, torchrun, ddp) and "
                                                 "2026's Part B"), d, exercises)
    add_summary_and_check_options(parser.add_argument_group("the summary and check"), exercises)
    return parser


CHECK_TITLE = ("every exercise on a tiny slice on this device, each checked against what must "
               "hold (--bench: then the headline figures)")
LAB_COMMANDS = ("all", "check")  # the commands that run the lab's exercises


def commands(exercises):
    """What the EXERCISE argument can name: every exercise, `all` and `check`."""
    return [*exercises, *LAB_COMMANDS]


def add_summary_and_check_options(group, exercises):
    wide = " and ".join(k for k, e in exercises.items() if e.wide_table)
    group.add_argument("--wide", action="store_true", default=None,
                       help=f"{wide}: add the kernel shape, the mult-adds and each row's share "
                            "of the parameters, and the mult-adds total")
    group.add_argument("--bench", dest="check_bench", action="store_true", default=None,
                       help="check: after the checks, measure the headline figures (the speed "
                            "ladder, C2 with each speed option, C5, infer, ddp where there are "
                            "GPUs, the timers' overhead) into one results folder")


def add_run_options(parser, d, quick, evaluated, out):
    """Where the run goes, on which data, and how it trains."""
    add = parser.add_argument
    add("--device", default="auto", type=str.lower, choices=("auto", "cpu", "cuda", "mps"),
        help="where to train; auto picks cuda, then mps, then cpu (default: auto)")
    add("--cuda", action="store_true", help="shorthand for --device cuda, as in the assignment")
    add("--dataset", type=str.lower, choices=DATASETS,
        help="cifar10 (downloaded when missing), folder (an image-folder tree), synthetic "
             "(generated in memory), or auto: CIFAR-10 if on disk or downloadable, else "
             f"synthetic (default: {d.dataset})")
    add("--data-path", help=f"folder of CIFAR-10 or of the image-folder tree "
                            f"(default: {d.data_path})")
    add("--train-size", type=positive_int, metavar="N",
        help="use a fixed, seeded subset of N training images (default: all)")
    add("--test-size", type=positive_int, metavar="N",
        help="use a fixed, seeded subset of N test images (default: all)")
    add("--seed", type=int,
        help=f"seed for the weights, the data order and synthetic data (default: {d.seed})")
    add("--num-workers", type=non_negative_int, metavar="N",
        help=f"DataLoader worker processes (default: {d.num_workers})")
    add("--batch-size", type=positive_int, metavar="N",
        help=f"training mini-batch size (default: {d.batch_size}; the test batch is "
             f"{d.test_batch_size})")
    add("--optimizer", type=str.lower, choices=OPTIMIZERS,
        help="sgd (momentum 0.9), nesterov, adagrad, adadelta or adam; all with weight "
             f"decay 5e-4 (default: {d.optimizer})")
    add("--lr", type=positive_float, help=f"learning rate (default: {d.lr})")
    add("--epochs", type=positive_int, metavar="N", help=f"epochs (default: {d.epochs})")
    add("--eval", dest="evaluate", action=argparse.BooleanOptionalAction,
        help="measure test accuracy after each epoch, outside the timed windows "
             f"(default: on for {evaluated}, off for the others)")
    add("--no-bn", dest="batch_norm", action="store_false", default=None,
        help="ResNet-18 without BatchNorm (the exercise without BatchNorm sets it itself)")
    add("--out", metavar="DIR", help=f"folder for the results files and REPORT.md "
                                     f"(default: {out})")
    add("--quick", action="store_true",
        help=f"small slices for a quick run on a CPU: {quick}, unless given")
    add("--force", action="store_true",
        help="all: rerun every exercise, even those whose results are complete")


def add_beyond_options(beyond, d, exercises):
    beyond.add_argument("--batch-sizes", type=batch_sizes, metavar="N,N,...",
                        help="infer: the batch sizes to time (default: "
                             f"{','.join(map(str, d.infer_batch_sizes))}); ddp: the batches "
                             f"per process (default: {_per_device(ddp.STUDY_BATCH_SIZES)})")
    beyond.add_argument("--sync-bn", action="store_true",
                        help="under torchrun: SyncBatchNorm, statistics over the global batch "
                             "(needs CUDA; default: each process normalises its own batch)")
    beyond.add_argument("--max-procs", type=positive_int, metavar="N",
                        help="ddp: world sizes 1, 2, 4, ... up to N (default: the GPUs, or 2 "
                             "on a CPU)")
    beyond.add_argument("--steps", dest="ddp_steps", type=positive_int, metavar="N",
                        help="ddp: timed steps of each kind, full and no_sync, per run "
                             f"(default: {_per_device(ddp.STUDY_STEPS)})")
    part_b = ", ".join(k for k, e in exercises.items() if "trace" in e.takes) or "Part B"
    beyond.add_argument("--checkpoint", metavar="FILE",
                        help=f"infer and 2026's {part_b}: a saved state_dict of ResNet-18 to "
                             "load (default: infer, fresh weights from --seed; Part B, the "
                             "weights C1 keeps in the results folder)")
    beyond.add_argument("--trace", action="store_true", default=None,
                        help=f"2026's {part_b}: make the trained model TorchScript with "
                             "torch.jit.trace on an example batch instead of torch.jit.script")


def _per_device(table):
    """A per-device default for a help text: "8,32,128 on a CPU, 32,128,512 on a GPU"."""
    def shown(value):
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return f"{shown(table['cpu'])} on a CPU, {shown(table['cuda'])} on a GPU"


def batch_sizes(text):
    """ "1,128" -> (1, 128)"""
    return tuple(positive_int(part) for part in text.split(","))


def add_worker_options(workers, d, finder, takers):
    workers.add_argument("--max-workers", type=non_negative_int, metavar="N",
                         help=f"{finder}: time 0, 4, 8, ... up to N workers (default: stop at "
                              "the first count that is not faster)")
    workers.add_argument("--repeats", type=positive_int, metavar="N",
                         help=f"{finder}: timings per worker count; the median is used "
                              f"(default: {d.repeats})")
    workers.add_argument("--best-workers", type=non_negative_int, metavar="N",
                         help=f"{takers}: use N as the best worker count (default: {finder}'s "
                              "result, else a sweep)")


def add_speed_options(speed, d, exercises):
    speed.add_argument("--channels-last", action="store_true",
                       help="NHWC memory format for the model and the images")
    speed.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16"),
                       help="autocast: bf16 (default when given) or fp16 with a gradient "
                            "scaler (CUDA)")
    speed.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                       choices=("default", "reduce-overhead", "max-autotune"),
                       help="torch.compile the model: default, reduce-overhead or "
                            "max-autotune (default when given: default)")
    speed.add_argument("--loader", choices=LOADERS,
                       help="torch: the lab's DataLoader; device: the training set held on the "
                            f"device and augmented there in whole batches (default: {d.loader})")
    speed.add_argument("--profile", action="store_true",
                       help="record a torch.profiler trace (Chrome trace JSON) of the first "
                            "training steps in the results folder and print the ten costliest "
                            "operators (" + ", ".join(k for k, e in exercises.items()
                                                      if e.profiles) + ")")


def resolve_device(name):
    """The torch device for --device, or UsageError when it is not on this machine."""
    if name == "auto":
        return gpu_device()[0] or "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's MPS is not available here; use --device cpu")
    return name


def parse_args(argv, config_class, exercises):
    """(exercise name, Config, --force) from the command line; see parse_command_line."""
    return parse_command_line(argv, config_class, exercises)[:3]


def parse_command_line(argv, config_class, exercises):
    """(exercise name, Config, --force, the handout's exercises by command).

    `exercises` is lab.EXERCISES; the handout, read first, numbers them (handouts.py). What a
    handout asks of an exercise (2025's C8: 10 epochs) gives way to the command line and
    --quick. Raises UsageError on bad input.
    """
    defaults = config_class()
    handout = chosen_handout(argv, defaults)
    exercises = handouts.exercises_for(handout, exercises)
    parser = build_parser(defaults, exercises, handout)
    args = parser.parse_args(argv)
    check(args, exercises)
    check_applicable(parser, args, exercises, quick=tuple(config_class.QUICK))
    given = {f.name: getattr(args, f.name) for f in fields(config_class)
             if getattr(args, f.name, None) is not None}
    given["handout"] = handout
    given["device"] = resolve_device("cuda" if args.cuda else args.device)
    given["compile"] = args.compile is not None
    given["compile_mode"] = None if args.compile in (None, "default") else args.compile
    if args.batch_sizes is not None:  # the field of the exercises' own batch sizes
        run = ([e for e in exercises.values() if e.in_lab] if args.exercise == "all"
               else [exercises[args.exercise]])
        given.update({e.batch_sizes: args.batch_sizes for e in run if e.batch_sizes})
    if given["compile"] and given["device"] == "cpu":
        check_compiler()
    if args.amp == "fp16" and given["device"] == "cpu":
        notice("lab.py: warning: --amp fp16 on the CPU is emulated and many times slower than "
               "no --amp (26x in this project's bench); bf16 is the CPU's half precision")
    if args.quick:  # each slice --quick chooses, unless the command line gave it
        given = {**config_class.QUICK, **given}
    if args.exercise == "check":  # likewise the check's tiny slice and its own folder
        given = {**checks.settings(config_class), **given}
    given.setdefault("out", handouts.results_folder(handout, defaults))
    exercises = {name: replace(exercise, settings={key: value for key, value
                                                   in (exercise.settings or {}).items()
                                                   if key not in given})
                 for name, exercise in exercises.items()}
    return args.exercise, config_class(**given), args.force, exercises


def chosen_handout(argv, defaults):
    """--handout, read before the rest of the command line: it decides the exercises' names,
    titles and order, which the full parser (and its --help) shows."""
    first = Parser(add_help=False)
    first.add_argument("--handout", choices=tuple(handouts.HANDOUTS), default=defaults.handout)
    return first.parse_known_args(argv)[0].handout


def check(args, exercises):
    """The rules that tie options to each other, to this machine and to torchrun."""
    if args.exercise not in commands(exercises):
        raise UsageError(f"unknown exercise {args.exercise!r}; choose one of: "
                         f"{', '.join(commands(exercises))}")
    exercise = exercises.get(args.exercise)
    if args.cuda and args.device not in ("auto", "cuda"):
        raise UsageError(f"--cuda contradicts --device {args.device}")
    sweepers = [k for k, e in exercises.items()
                if e.sweeps_workers and (e is exercise or (exercise is None and e.in_lab))]
    if args.loader == "device" and sweepers:
        raise UsageError(f"{' and '.join(sweepers)} measure the DataLoader's workers; "
                         "--loader device has none")
    if args.max_procs is not None and args.max_procs > worker_limit():
        raise UsageError(f"--max-procs {args.max_procs} is more processes than is sensible "
                         f"here: at most {worker_limit()}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be from 0 to {2**32 - 1}, not {args.seed}")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file; it must be a folder")
    for option in ("num_workers", "max_workers", "best_workers"):
        if (getattr(args, option) or 0) > worker_limit():
            raise UsageError(f"--{option.replace('_', '-')} {getattr(args, option)} is more "
                             f"workers than is sensible here: at most {worker_limit()} (4 per "
                             f"core, at least 64; this machine gives {usable_cores()} cores)")
    if parallel.launched_by_torchrun() and (exercise is None or not exercise.data_parallel):
        names = ", ".join(k for k, e in exercises.items() if e.data_parallel)
        raise UsageError(f"{args.exercise} does not run under torchrun; {names} train "
                         "data-parallel")
    if parallel.launched_by_torchrun() and args.loader == "device":
        raise UsageError("--loader device holds the whole training set on one device; under "
                         "torchrun use the DataLoader (--loader torch)")
    if args.sync_bn and not parallel.launched_by_torchrun():
        names = ", ".join(k for k, e in exercises.items() if e.data_parallel)
        raise UsageError(f"--sync-bn is for {names} under torchrun; this run is one process "
                         "(torchrun --nproc_per_node=N lab.py ...)")


# ----------------------------------------------------------------------------------------
# Which exercise an option applies to, read from the exercises' properties (lab.py's Exercise)


def _reads_data(exercise):
    return exercise.uses_data or exercise.picks_slice


def _trains_epochs(exercise):  # with train.fit, on the data set
    return exercise.trains == "epochs"


# By the option's dest: where it can change what an exercise does. An option not named here
# applies to every exercise, except one that `ignores` the Config field it sets; a field that
# some exercise `takes` as its own is read by no other.
APPLIES = {
    "dataset": _reads_data, "data_path": _reads_data, "train_size": _reads_data,
    "batch_size": _reads_data,
    "test_size": lambda e: _trains_epochs(e) or e.reads_test_set,
    "epochs": _trains_epochs, "evaluate": _trains_epochs,
    "loader": _trains_epochs, "channels_last": _trains_epochs, "amp": _trains_epochs,
    "compile": lambda e: _trains_epochs(e) or e.picks_slice,
    "num_workers": lambda e: ((_trains_epochs(e) or e.picks_slice or e.reads_test_set)
                              and not (e.sweeps_workers or e.takes_best_workers)),
    "optimizer": lambda e: e.trains is not None,
    "lr": lambda e: e.trains is not None,
    "profile": lambda e: e.profiles,
    "max_workers": lambda e: e.finds_best_workers,
    "repeats": lambda e: e.finds_best_workers or e.takes_best_workers,
    "best_workers": lambda e: e.takes_best_workers,
    "batch_sizes": lambda e: e.batch_sizes is not None,
    "sync_bn": lambda e: e.data_parallel,
    "wide": lambda e: e.wide_table,
}
FIELD = {"cuda": "device"}  # an option that sets a Config field of another name
TWINS = {"batch_size": "batch_sizes", "batch_sizes": "batch_size"}  # one or the other applies
# A command's own options, which no exercise takes: `all` reruns what is complete (--force),
# `check` measures the headline figures after its checks (--bench).
COMMAND_OPTIONS = {"force": "all", "check_bench": "check"}
# What `all` and `check` refuse though an exercise they run takes it: --wide widens one table
# (asked of the summary alone, it does not make `all` rerun the rest), and `check` runs on a
# tiny slice of its own, smaller than --quick's.
REFUSED_BY = {"all": ("wide",), "check": ("wide", "quick")}


def applies(dest, exercise, exercises, quick=()):
    """Whether the option with this dest can change what `exercise` does. --quick applies
    where one of the slices it chooses (`quick`, Config fields) does. A field that an exercise
    of any handout takes as its own (2026's --trace) applies to no other."""
    if dest == "quick":
        return any(applies(field, exercise, exercises) for field in quick)
    if dest in COMMAND_OPTIONS:
        return False
    field = FIELD.get(dest, dest)
    owners = [*exercises.values(), *handouts.LATER_EXERCISES.values()]
    if any(field in owner.takes for owner in owners) and field not in exercise.takes:
        return False
    rule = APPLIES.get(dest)
    return field not in exercise.ignores and (rule is None or rule(exercise))


def takes(command, dest, exercises, quick=()):
    """Whether `command` (an exercise, `all` or `check`) takes the option with this dest: its
    own (COMMAND_OPTIONS), or one that applies to an exercise it runs (for `all` and `check`
    one of the lab's), unless REFUSED_BY says otherwise."""
    if dest in COMMAND_OPTIONS:
        return COMMAND_OPTIONS[dest] == command
    if dest in REFUSED_BY.get(command, ()):
        return False
    run = ([e for e in exercises.values() if e.in_lab] if command in LAB_COMMANDS
           else [exercises[command]])
    return any(applies(dest, e, exercises, quick) for e in run)


def check_applicable(parser, args, exercises, quick=()):
    """UsageError for the first option given where it cannot apply, naming the exercises (or
    the command) where it does."""
    flags = {action.dest: "/".join(action.option_strings) for action in parser._actions}
    for action in parser._actions:
        if (not action.option_strings
                or getattr(args, action.dest, action.default) == action.default
                or takes(args.exercise, action.dest, exercises, quick)):
            continue
        takers = ([COMMAND_OPTIONS[action.dest]] if action.dest in COMMAND_OPTIONS else
                  [k for k, e in exercises.items() if applies(action.dest, e, exercises, quick)])
        other = TWINS.get(action.dest)
        instead = (f"; {args.exercise} takes {flags[other]}" if other and args.exercise
                   in exercises and takes(args.exercise, other, exercises) else "")
        takers = ", ".join(takers) or other_handouts_takers(action.dest)
        raise UsageError(f"{flags[action.dest]} is for {takers}, not {args.exercise}{instead}")


def other_handouts_takers(dest):
    """The items of other handouts whose own option this is: "c7, c8, c9, c10, ec of
    --handout 2026" for --trace under 2022."""
    field = FIELD.get(dest, dest)
    later = handouts.LATER_EXERCISES
    found = [(year, [item.command for item in handout.items if item.exercise in later
                     and field in later[item.exercise].takes])
             for year, handout in handouts.HANDOUTS.items()]
    return "; ".join(f"{', '.join(commands)} of --handout {year}"
                     for year, commands in found if commands) or "no exercise"


def check_compiler():
    """--compile on the CPU: torch's inductor writes C++ and builds it with the compiler torch
    finds (g++, or $CXX). Without one the first step fails with a 100-line traceback; say so
    at once instead."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # a torch that moved it: look on PATH as it would
        found = any(shutil.which(name) for name in (os.environ.get("CXX"), "g++", "c++") if name)
    else:
        try:
            found = bool(get_cpp_compiler())
        except Exception:  # torch's InvalidCxxCompiler, or any failure to find or run one
            found = False
    if not found:
        raise UsageError("--compile on the CPU needs a C++ compiler (g++, or the one $CXX "
                         "names) and none works here: install one, or leave out --compile")


# ----------------------------------------------------------------------------------------
# Running it


def main(argv, config_class, exercises):
    """Parse `argv`, run the exercise (or `all`), and return the exit status.

    Launched by torchrun, every process runs this; they join one process group first. The
    ddp study's measuring process arrives here too, as `ddp-worker CONFIG OUT`.
    """
    if argv[:1] == [ddp.WORKER] and len(argv) == 3:
        return ddp.worker_main(config_class(**json.loads(argv[1])), out=argv[2])
    cfg = config_class()
    status = 0
    try:
        name, cfg, force, exercises = parse_command_line(argv, config_class, exercises)
        if parallel.launched_by_torchrun():
            parallel.start(torch.device(cfg.device).type, cfg.sync_bn)
        world = parallel.current_world()
        # Rank 0 alone creates, locks and writes the results folder.
        folder = (report.results_folder(cfg.out) if world is None or world.is_main
                  else contextlib.nullcontext())
        with folder:  # created, writable, and this run's alone
            if name == "all":
                report.run_all(cfg, exercises, force)
            elif name == "check":
                status = checks.run_checks(cfg, exercises)
            else:
                exercise = exercises[name]
                report.run_exercise(name, exercise, report.exercise_config(exercise, cfg))
        parallel.stop()
    except (UsageError, DataError, report.OutputError, report.MissingResults, InferError,
            parallel.DistributedError) as error:
        notice(f"lab.py: error: {error}")
        parallel.stop_together()  # under torchrun: every rank prints its line before any exits
        return 2
    except torch.OutOfMemoryError:
        notice(f"lab.py: error: the device ran out of memory: try a smaller --batch-size "
               f"than {cfg.batch_size}; every finished epoch is kept in {cfg.out}/")
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM or SIGHUP through stop_once
        signum = getattr(stop, "signum", None) or signal.SIGINT
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        kept = (stop.kept if isinstance(stop, report.Interrupted)  # what of the run is saved
                else "nothing had finished; nothing of this run was saved")
        notice(f"\ninterrupted by {name}: {kept}")
        return 128 + signum
    except BrokenPipeError:  # the output went to `head` or a pager that has quit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return status


# Ctrl-C; `kill`, `timeout`, Slurm at the time limit and `docker stop` send SIGTERM; a closed
# terminal sends SIGHUP. Windows has no SIGHUP.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the run is, so that the run ends as on Ctrl-C."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def on_stop_signals(handler):
    """Handle every signal of STOP_SIGNALS with `handler` (or signal.SIG_IGN)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def stop_once(signum, frame):
    """The first stop signal stops the run; later ones are ignored, so that they cannot break
    the shutdown that saves REPORT.md, stops the DataLoader's workers and unlocks the results
    folder.

    A signal sent to the whole process group (Ctrl-C, `timeout`, Slurm, torchrun stopping its
    ranks) reaches the DataLoader's workers too: they end on SIGINT and SIGHUP through this
    handler, which they inherit, and on SIGTERM through torch's own. torch's SIGCHLD handler
    would then report each worker's end as a failure, so it goes now, for a handler that does
    nothing: not SIG_DFL, since a SIGCHLD already pending would then find no Python handler
    and raise "OSError: Signal 17 ignored due to race condition" wherever the run is.
    """
    on_stop_signals(signal.SIG_IGN)
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)
