"""The results files, `all`, and REPORT.md.

    python lab.py all --quick      # every exercise in order; REPORT.md after each one

`run_exercise` runs one exercise and writes `<out>/<name>.json` atomically after every step it
reports, so Ctrl-C keeps what finished; a complete file of another configuration is first moved
aside (`keep_earlier`), so no run loses another's results. `run_all` runs the lab in the
assignment's order, skipping what is already complete for the same configuration;
`write_report` rebuilds REPORT.md from whatever results files are there.
"""

import contextlib
import datetime
import errno
import functools
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace

import torch

from data import datasets_for
from machine import (cannot_write, cpu_model, device_name, gpu_device, usable_cores,
                     worker_limit)
from parallel import current_world, world_facts
from render import markdown_table, notice, plural

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two runs there must not share a folder
    fcntl = None

# The project's version, recorded in every results file when the code is not a git checkout.
__version__ = "2026.11"


def run_exercise(name, exercise, cfg, stream=None):
    """Run one exercise, saving `<out>/<name>.json` after each step; print its tables.

    Under torchrun every rank runs the exercise, but only rank 0 prints and writes. Ctrl-C
    raises Interrupted, which says what of the run was kept.
    """
    world = current_world()
    if world is not None and not world.is_main:
        return exercise.run(cfg, lambda partial: None)
    stream = stream or sys.stdout
    path = os.path.join(cfg.out, f"{name}.json")
    if os.path.isdir(path):  # found now, not when the first epoch is to be saved
        raise OutputError(f"{path} is a folder, so {name}'s results cannot be saved; move it away")
    save = Saving(path, results_header(name, exercise, cfg, world))
    show(f"\n## {exercise.heading or exercise.title}\n", stream)
    if exercise.uses_data:
        show(describe_run(save.header, exercise.names_settings) + "\n", stream)
    keep_earlier(name, exercise, cfg, stream)
    try:
        answer = exercise.run(cfg, save) if exercise.saves_progress else exercise.run(cfg)
        result = save({**answer, "complete": True,
                       "finished": datetime.datetime.now().isoformat(timespec="seconds")})
    except KeyboardInterrupt as stop:
        raise Interrupted(save.kept(name, exercise), stop) from None
    try:
        show_result(name, exercise, cfg, result, stream)
    except KeyboardInterrupt as stop:
        raise Interrupted(f"{name} had finished; {path} is complete", stop) from None
    return result


def results_header(name, exercise, cfg, world):
    """What every results file starts with: the exercise, the configuration as asked, the data
    set actually used, the device and the versions of torch and of this code."""
    info = datasets_for(cfg)[2] if exercise.uses_data else None
    header = {
        "exercise": name,
        "title": exercise.title,
        "handout": cfg.handout,        # whose numbering `exercise` and `title` follow
        "complete": False,
        "config": asdict(cfg),
        "dataset": info,
        "dataset_used": None,  # filled in by Saving from `dataset`, which a run may bring
        "device": {"type": cfg.device, "name": device_name(cfg.device)},
        "torch_version": torch.__version__,
        "code_version": code_version(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if world is not None:
        header["distributed"] = world_facts(world, cfg.batch_size, cfg.sync_bn)
    return header


class Saving:
    """save(partial): writes the header and `partial` to the results file; it remembers what
    it wrote, so that Ctrl-C can say what was kept."""

    def __init__(self, path, header):
        self.path, self.header = path, header
        self.steps, self.last = 0, None

    def __call__(self, partial):
        data = {**self.header, **partial}
        # `config.dataset` is what was asked for ("auto"); this is the data set that was used.
        data["dataset_used"] = (data.get("dataset") or {}).get("name")
        write_json(self.path, data)
        self.steps, self.last = self.steps + 1, data
        return data

    def kept(self, name, exercise):
        """What of an interrupted run is in its results file, in words."""
        if self.steps == 0:
            first = f"its first {exercise.saves_each}" if exercise.saves_progress else ""
            return f"{name} had not finished {first or 'yet'}; nothing of it was saved"
        if exercise.saves_each != "epoch":
            steps = plural(self.steps, exercise.saves_each)
            return f"{name} had finished {steps}, kept in {self.path}"
        runs = self.last.get("runs")
        counts = ({key: len(run["epochs"]) for key, run in runs.items()}
                  if isinstance(runs, dict) else {})
        total = sum(counts.values()) if counts else len(self.last.get("epochs", []))
        detail = (" (" + ", ".join(f"{key} {count}" for key, count in counts.items()) + ")"
                  if len(counts) > 1 else "")
        return f"{name} had finished {plural(total, 'epoch')}{detail}, kept in {self.path}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) during a run; `kept` says what of it is saved, for the line
    cli.main prints, and `signum` keeps the signal that stopped it (None: Ctrl-C)."""

    def __init__(self, kept, stop=None):
        super().__init__(kept)
        self.kept = kept
        self.signum = getattr(stop, "signum", None)


def show_result(name, exercise, cfg, result, stream):
    """Print a finished run's tables, save its chart, and say where everything went."""
    path = os.path.join(cfg.out, f"{name}.json")
    if not exercise.uses_data:  # now that the run has said which data, if any, it used
        show(describe_run(result, exercise.names_settings) + "\n", stream)
    show(exercise.render(result), stream)
    saved = [path]
    if exercise.chart is not None:  # without one, charts.py has said why, once
        chart_path = os.path.join(cfg.out, f"{name}.png")
        if exercise.chart(result, chart_path):
            saved.append(chart_path)
    show(f"\n(saved to {', '.join(saved)})", stream)


def keep_earlier(name, exercise, cfg, stream):
    """Move `<out>/<name>.json` out of this run's way when it is complete and of another
    configuration, and say so in one line: no run loses another configuration's results.

    It becomes `<out>/<name>.<settings>.json` (its chart `<name>.<settings>.png`, C1's weights
    `<name>.<settings>.weights.pt`), where
    <settings> names what its configuration set differently from the defaults
    (`c3.max-workers-4.repeats-1.json`, `c3.quick.json`); a name already taken gets a number.
    A file of this same configuration, or one that is incomplete or does not fit, is replaced.
    """
    path = os.path.join(cfg.out, f"{name}.json")
    saved, _ = read_result(path, name, exercise.render)
    if saved is None or not saved["complete"] or same_configuration(saved["config"], cfg):
        return
    base = os.path.join(cfg.out, f"{name}.{settings_name(saved['config'], cfg, exercise)}")
    number = 1
    while os.path.lexists(f"{base}{'' if number == 1 else f'.{number}'}.json"):
        number += 1
    base += "" if number == 1 else f".{number}"
    moves = [(path, f"{base}.json", None)]
    beside = {"png": "its chart"} if exercise.chart is not None else {}
    for suffix, what in {**beside, "weights.pt": "its weights"}.items():  # C1 keeps weights
        if os.path.isfile(os.path.join(cfg.out, f"{name}.{suffix}")):
            moves.append((os.path.join(cfg.out, f"{name}.{suffix}"), f"{base}.{suffix}", what))
    for source, target, _ in moves:
        try:
            os.replace(source, target)
        except OSError as error:
            raise OutputError(f"cannot move {source} to {target} to keep it: "
                              f"{error.strerror or error}") from None
    kept = " and ".join(what for _, _, what in moves[1:])
    show(f"(kept {path}, complete and of another configuration, as {base}.json"
         f"{f' with {kept}' if kept else ''})\n", stream)


def settings_name(config, cfg, exercise):
    """What a saved configuration set differently from the defaults, as a file name:
    "max-workers-4.repeats-1", "quick" (the --quick slices), "defaults"."""
    defaults = as_saved(replace(type(cfg)(), evaluate=exercise.evaluate))
    quick = type(cfg).QUICK if config.get("quick") else {}
    parts = ["quick"] if quick else []
    for key, value in config.items():
        if key in ("out", "quick") or value == defaults.get(key) or quick.get(key) == value:
            continue
        option = key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(option if value else f"no-{option}")
        else:
            text = "-".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(f"{option}-{text}")
    name = re.sub(r"[^A-Za-z0-9.+-]+", "_", ".".join(parts)) or "defaults"
    if len(name) > 120:  # a long --data-path, say: cut, with a digest that keeps names apart
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{name[:110]}.{digest}"
    return name


@functools.lru_cache(maxsize=None)
def code_version(folder=os.path.dirname(os.path.abspath(__file__))):
    """The version of the code in `folder`: its git commit (and whether tracked files differ
    from it) when it is a git checkout, and the project's __version__ in any case."""
    version = {"git_commit": None, "local_changes": None, "version": __version__}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
            changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                     cwd=folder, capture_output=True, text=True, timeout=10)
            if changes.returncode == 0:
                version["local_changes"] = bool(changes.stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs: the version alone
        pass
    return version


def show(text, stream):
    """Print a table or header of the run. A full or closed stdout stops the run with one line
    (OutputError) rather than a traceback; what finished is already saved. A reader that has
    gone (`| head`) is BrokenPipeError, which cli.main ends quietly."""
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as error:
        raise OutputError(f"cannot print the results ({getattr(error, 'strerror', None) or error})"
                          "; every finished step is saved in the results folder") from None


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


def exercise_config(exercise, cfg):
    """The configuration one exercise runs with: --eval/--no-eval, else the exercise's default,
    and the settings its handout asks of it (cli.py leaves out those the command line gave)."""
    return replace(cfg, evaluate=exercise.evaluate if cfg.evaluate is None else cfg.evaluate,
                   **(exercise.settings or {}))


def finished_result(name, cfg, exercise=None):
    """The saved result of `name` if it fits, is complete and was run with this configuration.

    `out` is left out of the comparison: the file was read from that folder, however it was
    spelled ("results", "results/", an absolute path). A file that does not fit is said why.
    """
    path = os.path.join(cfg.out, f"{name}.json")
    saved, why = read_result(path, name, exercise.render if exercise else None)
    if why:
        notice(f"{name}: not finished: {why}; running it again")
    if saved is None or not saved["complete"]:
        return None
    return saved if same_configuration(saved["config"], cfg) else None


def same_configuration(config, cfg):
    """A saved configuration (a dict) is cfg's, `out` aside."""
    here = {key: value for key, value in as_saved(cfg).items() if key != "out"}
    return here == {key: value for key, value in config.items() if key != "out"}


def as_saved(cfg):
    """cfg as a results file holds it, read back (a tuple comes back as a list)."""
    return json.loads(json.dumps(asdict(cfg)))


class CannotRunHere(Exception):
    """An exercise this machine or folder cannot run (the extra credit without a C++ compiler,
    Part B without trained weights): alone it is one line and exit status 2; `all` says it in
    one line and goes on with the next exercise."""


def run_all(cfg, exercises, force=False, stream=None):
    """Every exercise of the lab in order; C4-C7 read C3's best worker count from its results.

    Exercises already complete for the same configuration are skipped (unless `force`), so
    a run stopped with Ctrl-C continues where it stopped. REPORT.md is rewritten after each
    exercise and when interrupted, so it always covers what finished.
    """
    stream = stream or sys.stdout
    complete, name = [], None
    try:
        for name, exercise in exercises.items():
            if not exercise.in_lab:
                continue
            each = exercise_config(exercise, cfg)
            result = None if force else finished_result(name, each, exercise)
            if result is not None:
                show(f"\n{name}: complete in {cfg.out}/{name}.json for this configuration; "
                     "skipped (--force reruns it)", stream)
            else:
                try:
                    run_exercise(name, exercise, each, stream)
                except CannotRunHere as error:
                    notice(f"lab.py: {name} skipped: {error}")
                    continue
            complete.append(name)
            if result is None:
                write_report(cfg, exercises)
    except KeyboardInterrupt as stop:
        now = stop.kept if isinstance(stop, Interrupted) else f"{name} had not started"
        done = f"{', '.join(complete)} complete in {cfg.out}/; " if complete else ""
        raise Interrupted(done + now, stop) from None
    finally:
        path = write_report(cfg, exercises)
        show(f"\nlab report: {path}", stream)
    return path


def write_report(cfg, exercises):
    """Write <out>/REPORT.md from the results files there, each chart under its section;
    return its path.

    Every exercise of the lab gets a section, "Not run." when it has no results yet; the
    exercises beyond the lab, which `all` does not run, get one when their results are there.
    """
    sections = []
    first = None
    sliced = {}  # the exercises that read a slice of the data: their training images
    for name, exercise in exercises.items():
        path = os.path.join(cfg.out, f"{name}.json")
        saved, why = read_result(path, name, exercise.render)
        numbered_by = saved and saved.get("handout", type(cfg).handout)  # none: before 2025's
        if saved is not None and numbered_by != cfg.handout:  # one --out for two handouts
            saved, why = None, (f"{path} holds the {numbered_by} handout's {name}, not the "
                                f"{cfg.handout} handout's")
        if saved is None and why is None and not exercise.in_lab:
            continue
        sections.append(f"## {exercise.title}\n")
        if saved is None:
            sections.append(f"Not shown: {why}.\n" if why else "Not run.\n")
            continue
        first = first or saved
        if saved.get("dataset") and saved["config"].get("train_size") is not None:
            sliced[name] = saved["config"]["train_size"]
        if not saved.get("complete"):
            sections.append("*Interrupted: this section shows what finished before the stop.*\n")
        sections.append(f"*{describe_run(saved, exercise.names_settings)}*\n")
        try:
            sections.append(exercise.render(saved) + "\n")
        except (KeyError, TypeError, ValueError, StopIteration, ZeroDivisionError):
            sections.append("The saved results are too incomplete to show.\n")
        if exercise.chart is not None and chart_is_drawn(name, exercise, saved, cfg.out):
            sections.append(f"![{exercise.title}]({name}.png)\n")
    path = os.path.join(cfg.out, "REPORT.md")
    write_text(path, report_header(cfg, first, sliced, exercises) + "\n".join(sections))
    return path


def chart_is_drawn(name, exercise, saved, out):
    """Whether <out>/<name>.png shows the figures of <out>/<name>.json.

    A chart missing or older than its results file is drawn from them first, where matplotlib
    is installed; one that still is not there, or still older, is not shown.
    """
    chart, results = os.path.join(out, f"{name}.png"), os.path.join(out, f"{name}.json")

    def fresh():
        return os.path.isfile(chart) and os.path.getmtime(chart) >= os.path.getmtime(results)

    if not fresh():
        try:
            exercise.chart(saved, chart)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            pass  # an interrupted run too incomplete to draw: its section shows the tables
    return fresh()


def report_header(cfg, sample, sliced=None, exercises=None):
    """The report's title, a warning when runs read a slice of the data (`sliced`: name ->
    training images), and the set-up: handout, data, slices, machine and versions."""
    gpu, gpu_name = gpu_device()
    info = (sample or {}).get("dataset") or {}
    epochs = [f"; {name}: {exercise.settings['epochs']}, as its handout asks"
              for name, exercise in (exercises or {}).items()
              if "epochs" in (exercise.settings or {})]
    rows = [
        ["date", datetime.date.today().isoformat()],
        ["handout", f"{cfg.handout}: its numbers, titles and order (--handout {cfg.handout})"],
        ["data set", f"{info.get('name', '-')}: {info.get('note', '-')}"],
        ["training images", info.get("train_images", "-")],
        ["test images", info.get("test_images", "-")],
        ["slices", f"train-size {cfg.train_size or 'all'}, test-size {cfg.test_size or 'all'}, "
                   f"C3 repeats {cfg.repeats}" + (" (chosen by --quick)" if cfg.quick else "")],
        ["epochs per run", f"{cfg.epochs}{''.join(epochs)}"],
        ["batch size", f"{cfg.batch_size} (test {cfg.test_batch_size})"],
        ["optimizer", f"{cfg.optimizer}, lr {cfg.lr}, weight decay 5e-4"],
        ["training device", f"{cfg.device}: {device_name(cfg.device)}"],
        ["CPU", f"{cpu_model()}, {usable_cores()} cores usable"],
        ["GPU", gpu_name if gpu else f"none: {gpu_name}"],
        ["torch", torch.__version__],
        ["seed", cfg.seed],
    ]
    return (f"# HPML lab report: ResNet-18 on {data_title(info)}\n\n"
            + smoke_test_banner(sliced or {}) +
            "Every figure below was measured by this project and read from the results files "
            "beside this report; the line under each heading names the data, the device and "
            "the settings of that run.\n\n"
            + markdown_table(["setting", "value"], rows, align="ll") + "\n\n")


def smoke_test_banner(sliced):
    """The warning at the top of a report whose runs read a slice of the training set."""
    if not sliced:
        return ""
    sizes = " or ".join(str(size) for size in sorted(set(sliced.values())))
    return ("> **A smoke test: these figures teach nothing about CIFAR-10.** "
            f"{', '.join(sliced)} ran on a slice of {sizes} training images (--quick or "
            "--train-size): enough to show that the code runs, far too little to show what "
            "the lab asks about. Run without --quick and --train-size for the lab's figures.\n\n")


def data_title(info):
    """What the runs trained on, for the report's title: CIFAR-10 only when it was."""
    name = info.get("name")
    if name == "cifar10":
        return "CIFAR-10"
    if name == "synthetic":
        return "synthetic CIFAR-shaped data (not CIFAR-10)"
    if name == "folder":
        return f"the image folder {info.get('source')}"
    return "no data yet"


def make_output_folder(path):
    """Create the results folder and write a file in it before any work, so a bad --out fails
    at once rather than after an epoch has trained."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise OutputError(f"--out {path} cannot be created: {error.strerror}") from None
    why = cannot_write(path)
    if why:
        raise OutputError(f"--out {path} cannot be written: {why}")


@contextlib.contextmanager
def results_folder(path):
    """make_output_folder, then hold <path>/.lock while the run lasts: two runs writing the
    same results files would overwrite each other's epochs. The lock goes with the process."""
    make_output_folder(path)
    if fcntl is None:
        yield
        return
    lock_path = os.path.join(path, ".lock")
    try:
        lock = open(lock_path, "a")
    except OSError as error:  # a folder of that name, say
        raise OutputError(f"--out {path} cannot be locked: {lock_path} cannot be opened as a "
                          f"file ({error.strerror}); move it away") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"--out {path} is in use by another lab.py run (it holds "
                              f"{lock_path}); wait for it, or choose another --out") from None
        yield


class OutputError(Exception):
    """The results folder cannot be used; the message says why."""


class MissingResults(Exception):
    """An exercise answers from another's results file, and there is none that fits; the
    message names the command that makes one."""


def write_json(path, data):
    """Write JSON atomically: a reader (or a crash) never sees a half-written results file.

    NaN and infinity become null: strict JSON readers refuse Python's `NaN`, and a diverged
    epoch already says why its loss is missing (`diverged`).
    """
    write_text(path, json.dumps(finite(data), indent=2, allow_nan=False) + "\n")


def finite(value):
    """`value` with every NaN or infinite float replaced by None, containers copied."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


# What run_exercise writes at the top of every results file, and its type.
HEADER = {"exercise": str, "title": str, "complete": bool, "config": dict, "started": str}
# Keys whose values are times or counts: a number of 0 or more, or null. Profiler self times
# ("self_cpu_time") and ddp's exposed communication time (a difference of two timings) are
# left out: either can come out below zero.
MEASURE = re.compile(r"^(?!self_|exposed_communication_).*(time|times|workers|images|epochs|"
                     r"epoch|cores|repeats|parameters|_size)$|^(median|min|max)$")


def read_result(path, name, render=None):
    """(result, None) when `path` holds a results file of exercise `name` that fits;
    (None, why) when it does not; (None, None) when there is none.

    It fits when it is a JSON object with run_exercise's header naming `name`, every time and
    count in it is a number of 0 or more (or null), and, once complete, its `epochs` and
    `points` lists are not empty and `render` (the exercise's own) can draw its tables.
    Every reader of a results file goes through here: a file that does not fit is rerun.
    """
    if not os.path.lexists(path):
        return None, None
    if not os.path.isfile(path):
        return None, f"{path} is not a file"
    try:
        with open(path) as file:
            saved = json.load(file)
    except (OSError, ValueError) as error:
        return None, f"{path} cannot be read ({getattr(error, 'strerror', None) or error})"
    # REPORT.md shows every file's header line, and names its settings where there are some.
    why = misfit(saved, name) or cannot_show(lambda run: describe_run(run, True), saved)
    if why is None and saved["complete"] and render is not None:
        why = cannot_show(render, saved)
    return (None, f"{path} {why}") if why else (saved, None)


def cannot_show(render, result, what=""):
    """None when render(result) works, else why not: "cannot be shown (KeyError: 'epochs')".
    Any failure counts: what a later reader would show from the result is broken."""
    try:
        render(result)
        return None
    except Exception as error:
        return f"{what} cannot be shown ({type(error).__name__}: {error})".lstrip()


def misfit(saved, name):
    """Why a parsed results file does not fit exercise `name`, or None when it does."""
    if not isinstance(saved, dict):
        return f"holds a JSON {type(saved).__name__}, not a results object"
    for key, kind in HEADER.items():
        if not isinstance(saved.get(key), kind):
            return f"has no valid {key!r}"
    if saved["exercise"] != name:
        return f"holds the results of {saved['exercise']!r}, not {name!r}"
    return misfit_value(saved, "", saved["complete"])


def misfit_value(value, key, complete):
    """The first time or count under `value` that cannot be right, or an empty list of epochs
    or points in a complete result; None if there is none."""
    if isinstance(value, dict):
        return next(filter(None, (misfit_value(item, inner, complete)
                                  for inner, item in value.items())), None)
    if isinstance(value, list):
        if complete and key in ("epochs", "points") and not value:
            return f"is complete but its {key!r} list is empty"
        return next(filter(None, (misfit_value(item, key, complete) for item in value)), None)
    if MEASURE.match(key) and value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            or (key.endswith("workers") and not isinstance(value, int))):
        return f"has {key} = {value!r}, not a number of 0 or more"
    if key.endswith("workers") and isinstance(value, int) and value > worker_limit():
        # A count read back is bounded as the option that sets it: C4-C7 would start them.
        return (f"has {key} = {value}, more workers than a run may ask for here (at most "
                f"{worker_limit()}, as --num-workers)")
    return None


def write_text(path, text):
    """Write `path` atomically; a full disk or a folder gone bad is one OutputError, and the
    last complete version of the file stays as it was."""
    _write_atomically(path, text)


def write_bytes(path, data):
    """write_text for a binary file (weights, a TorchScript model)."""
    _write_atomically(path, bytes(data))


def _write_atomically(path, content):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        _replace_atomically(folder, path, content)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"the results folder {folder} is full (no space left on the "
                              f"device): {path} keeps its last complete version") from None
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None


def write_weights(path, model):
    """model.state_dict() as torch.save writes it, on the CPU (so that a machine without the
    GPU it trained on reads it too), written atomically: a run stopped while writing keeps the
    last complete weights. torch.load(path) reads them back."""
    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in model.state_dict().items()}, buffer)
    write_bytes(path, buffer.getvalue())


def _replace_atomically(folder, path, content):
    """Write `content` (text, or bytes) to a temporary file beside `path`, then rename it over
    `path` in one step."""
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb" if isinstance(content, bytes) else "w") as file:
            file.write(content)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; results are not
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask
