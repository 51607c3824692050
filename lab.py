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
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace

import torch

import report
from data import DATASETS, DataError, load_datasets
from report import markdown_table, mean, percent, seconds
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
        "diverged_at": next((e["epoch"] for e in history if e["diverged"]), None),
    }


def training_run(cfg, checkpoint=None, label=""):
    """Train as cfg says; return {"epochs": [...], "summary": {...}}, checkpointing each epoch."""
    train_set, test_set, info = datasets_for(cfg)
    run = {"epochs": [], "summary": summarize([])}

    def on_epoch(history):
        run["epochs"] = list(history)
        run["summary"] = summarize(history)
        if checkpoint is not None:
            checkpoint(run)

    fit(cfg, train_set, test_set, on_epoch=on_epoch, label=label)
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
    return training_run(cfg, checkpoint)


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
    return text + (
        "\n\ndata: time blocked waiting for the next batch (worker start-up included); "
        "train: copy to the device, forward, loss, backward and optimizer step, device "
        "synchronised; other: what is left of the epoch, the loop's own bookkeeping "
        "(the Python loop and the progress line). data+train is their share of the total.")


def _share(figures):
    """The share of the epoch that data loading and training account for, as a percentage."""
    return percent(100.0 * (figures["data_time"] + figures["train_time"]) / figures["epoch_time"])


# ----------------------------------------------------------------------------------------
# The command line


@dataclass
class Exercise:
    title: str
    run: callable = None           # run(cfg, checkpoint) -> dict; None: not built yet
    render: callable = None        # render(result) -> Markdown text
    uses_data: bool = True
    evaluate: bool = False         # test accuracy on by default


EXERCISES = {
    "c1": Exercise("C1: training", c1_training, render_c1, evaluate=True),
    "c2": Exercise("C2: time measurement", c2_timing, render_c2),
    "c3": Exercise("C3: I/O optimization (DataLoader workers)"),
    "c4": Exercise("C4: profiling, 1 worker against the best"),
    "c5": Exercise("C5: training on the GPU against the CPU"),
    "c6": Exercise("C6: experimenting with optimizers"),
    "c7": Exercise("C7: experimenting without BatchNorm"),
    "q1": Exercise("Q1: convolutional layers", uses_data=False),
    "q2": Exercise("Q2: input dimension of the last linear layer", uses_data=False),
    "q3": Exercise("Q3: parameters and gradients with SGD", uses_data=False),
    "q4": Exercise("Q4: parameters and gradients with Adam", uses_data=False),
}
CHOICES = list(EXERCISES) + ["all"]


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
    add("--epochs", type=positive_int, default=5, metavar="N", help="epochs (default: 5)")
    add("--eval", dest="evaluate", action=argparse.BooleanOptionalAction, default=None,
        help="measure test accuracy after each epoch, outside the timed windows "
             "(default: on for c1, off for the others)")
    add("--no-bn", dest="batch_norm", action="store_false",
        help="ResNet-18 without BatchNorm (C7 uses it on its own)")
    add("--out", default="results", metavar="DIR",
        help="folder for the results files and REPORT.md (default: results)")
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
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's MPS is not available here; use --device cpu")
    return name


def parse_args(argv):
    """(exercise name, Config) from the command line; UsageError on bad input."""
    args = build_parser().parse_args(argv)
    if args.exercise not in CHOICES:
        raise UsageError(f"unknown exercise {args.exercise!r}; choose one of: {', '.join(CHOICES)}")
    if args.cuda:
        if args.device not in ("auto", "cuda"):
            raise UsageError(f"--cuda contradicts --device {args.device}")
        args.device = "cuda"
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file; it must be a folder")
    cfg = Config(
        device=resolve_device(args.device), dataset=args.dataset, data_path=args.data_path,
        train_size=args.train_size, test_size=args.test_size, seed=args.seed,
        num_workers=args.num_workers, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, epochs=args.epochs, batch_norm=args.batch_norm, out=args.out,
        channels_last=args.channels_last, amp=args.amp, compile=args.compile is not None,
        compile_mode=None if args.compile in (None, "default") else args.compile,
        loader=args.loader, profile=args.profile)
    return args.exercise, cfg, args.evaluate


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


def run_exercise(name, cfg, stream=sys.stdout):
    """Run one exercise, saving `<out>/<name>.json` after each step; print its tables."""
    exercise = EXERCISES[name]
    if exercise.run is None:
        print(f"{name}: {exercise.title} is not built yet.", file=stream)
        return None
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
    print(f"\n## {exercise.title}\n\n{describe_run(header)}\n", file=stream, flush=True)

    def checkpoint(partial):
        report.write_json(path, {**header, **partial})

    result = {**header, **exercise.run(cfg, checkpoint)}
    result["complete"] = True
    result["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    report.write_json(path, result)
    print(exercise.render(result), file=stream)
    print(f"\n(saved to {path})", file=stream, flush=True)
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
    if info is not None:
        parts.append(f"batch {cfg['batch_size']}, {cfg['num_workers']} workers, "
                     f"{cfg['optimizer']} lr {cfg['lr']}, {cfg['epochs']} epochs")
    return " · ".join(parts)


def main(argv=None):
    try:
        name, cfg, evaluate = parse_args(sys.argv[1:] if argv is None else argv)
        names = list(EXERCISES) if name == "all" else [name]
        for each in names:
            each_evaluate = EXERCISES[each].evaluate if evaluate is None else evaluate
            run_exercise(each, replace(cfg, evaluate=each_evaluate))
    except (UsageError, DataError) as error:
        print(f"lab.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished epoch is kept in {cfg.out}/", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # guarded: DataLoader workers started with "spawn" import this file
    sys.exit(main())
