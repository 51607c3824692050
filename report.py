"""The results files, `all`, and REPORT.md.

    python lab.py all --quick      # every exercise in order; REPORT.md after each one

`run_exercise` runs one exercise and writes `<out>/<name>.json` atomically after every step it
reports, so Ctrl-C keeps what finished; `run_all` runs the lab in the assignment's order,
skipping what is already complete for the same configuration; `write_report` rebuilds
REPORT.md from whatever results files are there.
"""

import datetime
import json
import os
import sys
import tempfile
from dataclasses import asdict, replace

import torch

from data import datasets_for
from machine import cpu_model, device_name, gpu_device, usable_cores
from parallel import current_world, world_facts
from render import describe_run, markdown_table


def run_exercise(name, exercise, cfg, stream=None):
    """Run one exercise, saving `<out>/<name>.json` after each step; print its tables.

    Under torchrun every rank runs the exercise, but only rank 0 prints and writes.
    """
    world = current_world()
    if world is not None and not world.is_main:
        return exercise.run(cfg, lambda partial: None)
    stream = stream or sys.stdout
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
    if world is not None:
        header["distributed"] = world_facts(world, cfg.batch_size, cfg.sync_bn)
    path = os.path.join(cfg.out, f"{name}.json")
    print(f"\n## {exercise.title}\n", file=stream, flush=True)
    if exercise.uses_data:
        print(describe_run(header, exercise.names_settings) + "\n", file=stream, flush=True)

    def save(partial):
        write_json(path, {**header, **partial})

    answer = exercise.run(cfg, save) if exercise.saves_progress else exercise.run(cfg)
    result = {**header, **answer, "complete": True,
              "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    write_json(path, result)
    if not exercise.uses_data:  # now that the run has said which data, if any, it used
        print(describe_run(result, exercise.names_settings) + "\n", file=stream)
    print(exercise.render(result), file=stream)
    saved = [path]
    if exercise.chart is not None:
        chart_path = os.path.join(cfg.out, f"{name}.png")
        if exercise.chart(result, chart_path):
            saved.append(chart_path)
    print(f"\n(saved to {', '.join(saved)})", file=stream, flush=True)
    return result


def exercise_config(exercise, cfg, evaluate=None, best_workers=None):
    """The configuration one exercise runs with: its --eval default, and the best worker count."""
    cfg = replace(cfg, evaluate=exercise.evaluate if evaluate is None else evaluate)
    if best_workers is not None and exercise.takes_best_workers:
        cfg = replace(cfg, best_workers=best_workers, num_workers=best_workers)
    return cfg


def finished_result(name, cfg):
    """The saved result of `name` if it is complete and was run with this very configuration."""
    saved = read_json(os.path.join(cfg.out, f"{name}.json"))
    if saved and saved.get("complete") and saved.get("config") == as_saved(cfg):
        return saved
    return None


def as_saved(cfg):
    """cfg as a results file holds it, read back (a tuple comes back as a list)."""
    return json.loads(json.dumps(asdict(cfg)))


def run_all(cfg, exercises, evaluate=None, force=False, stream=None):
    """Every exercise of the lab in order, C3's best worker count fed into C4-C7.

    Exercises already complete for the same configuration are skipped (unless `force`), so
    a run stopped with Ctrl-C continues where it stopped. REPORT.md is rewritten after each
    exercise and when interrupted, so it always covers what finished.
    """
    stream = stream or sys.stdout
    best = cfg.best_workers  # --best-workers wins over C3's result
    try:
        for name, exercise in exercises.items():
            if not exercise.in_lab:
                continue
            each = exercise_config(exercise, cfg, evaluate, best)
            result = None if force else finished_result(name, each)
            if result is not None:
                print(f"\n{name}: complete in {cfg.out}/{name}.json for this configuration; "
                      "skipped (--force reruns it)", file=stream, flush=True)
            else:
                result = run_exercise(name, exercise, each, stream)
                write_report(cfg, exercises)
            if exercise.finds_best_workers and cfg.best_workers is None:
                best = result["best_workers"]  # C3's count, for the exercises after it
    finally:
        path = write_report(cfg, exercises)
        print(f"\nlab report: {path}", file=stream, flush=True)
    return path


def write_report(cfg, exercises):
    """Write <out>/REPORT.md from the results files there; return its path.

    Every exercise of the lab gets a section, "Not run." when it has no results yet; the
    exercises beyond the lab, which `all` does not run, get one when their results are there.
    """
    sections = []
    first = None
    for name, exercise in exercises.items():
        saved = read_json(os.path.join(cfg.out, f"{name}.json"))
        if saved is None and not exercise.in_lab:
            continue
        sections.append(f"## {exercise.title}\n")
        if saved is None:
            sections.append("Not run.\n")
            continue
        first = first or saved
        if not saved.get("complete"):
            sections.append("*Interrupted: this section shows what finished before the stop.*\n")
        sections.append(f"*{describe_run(saved, exercise.names_settings)}*\n")
        try:
            sections.append(exercise.render(saved) + "\n")
        except (KeyError, TypeError, ValueError, StopIteration, ZeroDivisionError):
            sections.append("The saved results are too incomplete to show.\n")
        if exercise.chart is not None and os.path.exists(os.path.join(cfg.out, f"{name}.png")):
            sections.append(f"![{name} chart]({name}.png)\n")
    path = os.path.join(cfg.out, "REPORT.md")
    write_text(path, report_header(cfg, first) + "\n".join(sections))
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
    return (f"# HPML lab report: ResNet-18 on {data_title(info)}\n\n"
            "Every figure below was measured by this project and read from the results files "
            "beside this report; the line under each heading names the data, the device and "
            "the settings of that run.\n\n"
            + markdown_table(["", ""], rows, align="ll") + "\n\n")


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
    """Create the results folder before any work, so a bad --out fails at once."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise OutputError(f"--out {path} cannot be created: {error.strerror}") from None


class OutputError(Exception):
    """The results folder cannot be used; the message says why."""


def write_json(path, data):
    """Write JSON atomically: a reader (or a crash) never sees a half-written results file."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path):
    """The parsed file, or None when it is missing or unreadable."""
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def write_text(path, text):
    """Write to a temporary file beside `path`, then rename it over `path` in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; results are not
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask
