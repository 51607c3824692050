"""The headline figures, measured into one folder: the second half of `python lab.py check --bench`.

    python lab.py check --device cuda --bench   # the checks (checks.py), then these figures

After the checks, --bench runs the lab's timing studies at sizes of their own (FIGURES, per
device type), with the lab's batch size: the speed ladder (bench), C2 with the plain path and
with each speed option alone, C5, infer, ddp where there are two GPUs, and the timers'
overhead, each into <out>/figures as its own results file (and chart). It prints one table,
one row per figure, and each row on stderr as soon as it is measured, so that a run cut short
keeps what it measured. A figure that fails is a row with its reason, and the status 1.
"""

import contextlib
import io
import os
import time
from dataclasses import replace
from functools import partial

import torch

import report
from render import markdown_table, notice, one_line, plural, ratio
from speed import ERROR_CHARS, timer_overhead

# The slices --bench measures C2 (with each speed option) and C5 on, per device type: C5's
# is smaller, since it trains on the CPU too.
FIGURES = {"cuda": {"c2": {"train_size": 10_000, "test_size": 1_000, "epochs": 2},
                    "c5": {"train_size": 2_048, "test_size": 1_000, "epochs": 2}},
           "cpu": {"c2": {"train_size": 512, "test_size": 100, "epochs": 2},
                   "c5": {"train_size": 512, "test_size": 100, "epochs": 2}}}


def c2_options(device):
    """(name, Config changes): C2 with the lab's plain path, then each speed option alone."""
    options = [("default", {}), ("channels-last", {"channels_last": True}),
               ("amp-bf16", {"amp": "bf16"})]
    if torch.device(device).type == "cuda":
        options.append(("amp-fp16", {"amp": "fp16"}))
    return options + [("compile", {"compile": True}), ("device-loader", {"loader": "device"})]


def measure_figures(cfg, exercises):
    """Measure the headline figures into <out>/figures and print one table; True if all ran.

    They run at FIGURES' sizes with the lab's batch and infer's batch sizes, and with
    cfg.num_workers as the best worker count (C5), whatever the checks' slice was.
    """
    sizes = FIGURES["cuda" if torch.device(cfg.device).type == "cuda" else "cpu"]
    defaults = type(cfg)()
    base = replace(cfg, out=os.path.join(cfg.out, "figures"), check_bench=False,
                   batch_size=defaults.batch_size, infer_batch_sizes=defaults.infer_batch_sizes,
                   best_workers=cfg.num_workers, **sizes["c2"])
    figures = [("bench", figure_bench)]
    figures += [(f"c2 {name}", partial(figure_c2, option=name, changes=changes))
                for name, changes in c2_options(cfg.device)]
    figures += [("c5", partial(figure_c5, sizes=sizes["c5"])), ("infer", figure_infer),
                ("ddp", figure_ddp), ("timers' overhead", figure_overhead)]
    print(f"\ncheck --bench: the headline figures (C2 on {sizes['c2']['train_size']:,} and C5 "
          f"on {sizes['c5']['train_size']:,} training images, batch {base.batch_size}); "
          f"results in {base.out}", flush=True)
    rows, every = [], True
    for name, measure in figures:
        notice(f"check --bench: measuring {name} ...")
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                measured, file = measure(exercises, base)
        except Exception as error:
            measured, file, every = f"failed: {one_line(error, max_chars=ERROR_CHARS)}", "-", False
        rows.append([name, measured, file, f"{time.perf_counter() - start:.0f}"])
        notice(f"check --bench: {name}: {measured}")  # kept, should the run be cut short
    print(markdown_table(["figure", "measured", "results file", "took (s)"], rows,
                         align="lllr"), flush=True)
    return every


def run(exercises, name, cfg, file_name=None):
    """(result, file name): exercise `name` run into cfg.out as <file_name>.json, tables hidden."""
    exercise = exercises[name]
    file_name = file_name or name
    result = report.run_exercise(file_name, exercise, report.exercise_config(exercise, cfg),
                                 io.StringIO())
    return result, f"{file_name}.json"


def share_text(row):
    share = row.get("matmul_share")
    return ("" if share is None else
            f", {row['flops_per_s'] / 1e9:,.0f} GFLOP/s = {100 * share:.0f}% of {row['dtype']} "
            "matmul")


def figure_bench(exercises, base):
    result, file = run(exercises, "bench", base)
    rows = {row["name"]: row for row in result["step"]["rows"]}
    default, best = rows["default"], rows.get(result["step"]["best"])
    text = f"default {default['images_per_second']:,.1f} images/s{share_text(default)}"
    if best is not None:
        text += (f"; best {best['name']} {best['images_per_second']:,.1f} images/s "
                 f"({best['ratio']:.2f}x){share_text(best)}")
    return text, file


def figure_c2(exercises, base, option, changes):
    result, file = run(exercises, "c2", replace(base, **changes), f"c2-{option}")
    summary, arithmetic = result["summary"], result["arithmetic"]
    row = {"flops_per_s": arithmetic.get("flops_per_s"), "dtype": arithmetic.get("dtype"),
           "matmul_share": arithmetic.get("matmul_share")}
    return (f"epoch {summary['epoch_time']:.2f} s (data {summary['data_time']:.2f}, train "
            f"{summary['train_time']:.2f}){share_text(row)}", file)


def figure_c5(exercises, base, sizes):
    result, file = run(exercises, "c5", replace(base, **sizes))
    if result["speedup"] is None:
        return f"GPU skipped: {result['gpu']['skipped']}", file
    cpu, gpu = (result["runs"][side]["summary"]["epoch_time"] for side in ("cpu", "gpu"))
    return f"epoch: CPU {cpu:.2f} s, GPU {gpu:.2f} s, {result['speedup']:.1f}x", file


def figure_infer(exercises, base):
    result, file = run(exercises, "infer", base)
    texts = []
    for index, batch_size in enumerate(result["batch_sizes"]):
        times = {way: outcome["batches"][index]["median_ms"]
                 for way, outcome in result["ways"].items()
                 if outcome["error"] is None and len(outcome["batches"]) > index}
        fastest = min(times, key=times.get)
        texts.append(f"batch {batch_size}: eager {times['eager']:.2f} ms" + (
            ", the fastest way" if fastest == "eager" else
            f", {fastest} {times[fastest]:.2f} ms ({times['eager'] / times[fastest]:.2f}x)"))
    return "; ".join(texts), file


def figure_ddp(exercises, base):
    gpus = torch.cuda.device_count() if torch.device(base.device).type == "cuda" else 0
    if gpus < 2:
        return f"skipped: needs two or more GPUs ({plural(gpus, 'GPU')} here)", "-"
    result, file = run(exercises, "ddp", replace(base, max_procs=2,
                                                 ddp_batch_sizes=(base.batch_size,)))
    two = next(r for r in result["runs"] if r["world_size"] == 2)
    if not two["ok"]:
        return f"2 GPUs failed: {two['reason']}", file
    return (f"2 GPUs at batch {two['batch_per_rank']} each: {ratio(two['speedup'])} one GPU's "
            f"images/s, exposed communication {100 * two['exposed_communication_share']:.0f}% "
            "of the step", file)


def figure_overhead(exercises, base):
    figures = timer_overhead(device=base.device)
    return (f"one empty window {1e6 * figures['window_time']:.1f} us; an epoch of "
            f"{figures['batches']} batches {100 * figures['overhead']:+.2f}% with the timers "
            "(speed.py overhead)", "-")
