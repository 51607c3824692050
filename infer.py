"""Inference six ways, and what each one costs: `python lab.py infer --device cpu`.

ResNet-18 (fresh seeded weights, or cfg.checkpoint's) runs eagerly, traced and scripted with
TorchScript, exported with torch.export, compiled with torch.compile (static shapes, as in
training), and compiled ahead of time by AOTInductor. For each way, `infer(cfg)` measures the
conversion with TorchInductor's caches off (as C8), AOTInductor's load, the saved file's size
and whether it loads back to the same outputs; then at each batch size, the ways taking turns
call by call, the first call, the latency (median; p90, p99 from enough calls) of single calls
timed with the device synchronised at both ends, images/s, and how far any call's outputs are
from eager's, in eval mode under torch.inference_mode(). It also shows what TorchScript and
torch.export make of one BasicBlock, and how a trace goes wrong. `render_infer(result)` prints
the tables and what they say, with the calls after which a way pays for its one-time costs.
"""

import contextlib
import copy
import io
import math
import os
import pickle
import re
import tempfile
import time
import warnings
from typing import NamedTuple

import torch
import torch.nn as nn

from machine import available_memory
from render import markdown_table, one_line, plural
from resnet import ResNet18
from speed import cold_compiles, start_compiler
from timing import Timer, synchronize
from train import compile_model

# Per device type: after every way's first call and `warmup` untimed rounds, rounds of one call
# per way are timed until there are `min_runs` and `budget_s` seconds per way have passed, or
# there are `max_runs`. The CPU's are few because one batch of 128 takes a second on 2 cores.
REPEATS = {
    "cpu": {"warmup": 1, "min_runs": 3, "max_runs": 50, "budget_s": 1.0},
    "cuda": {"warmup": 20, "min_runs": 100, "max_runs": 1000, "budget_s": 2.0},
}
MIN_PERCENTILE_CALLS = 10  # p90, p99 and the spread flag from this many timed calls or more
TOLERANCE = 1e-3   # largest |difference| from eager allowed, relative to eager's largest |output|
EXAMPLE_BATCH = 2  # torch.export fixes a dimension it sees as 1, so it sees a batch of 2
MAX_BATCH = 4096   # the exported programs accept any batch size from 1 to this

DEPRECATION = (
    "TorchScript (torch.jit.trace, torch.jit.script and their saved files) has been marked "
    "deprecated in PyTorch's documentation since 2.5, and in this PyTorch every call to "
    "torch.jit.trace or torch.jit.script raises a FutureWarning that says \"Please switch to "
    "`torch.compile` or `torch.export`\", and every torch.jit.save or torch.jit.load one that "
    "says \"Please switch to `torch.export`\"; on Python 3.14 and later, trace and script warn "
    "that they are not supported and may break. Their work is now split three ways. For the whole "
    "network as one graph to save, load and serve without its Python class: torch.export "
    "(torch.export.save and torch.export.load; `.module()` runs the program). Unlike a trace, "
    "it stops at control flow that depends on the data instead of silently keeping one "
    "branch. To compile that exported graph ahead of time into a package that a Python or C++ "
    "process loads and runs without compiling again: AOTInductor "
    "(torch._inductor.aoti_compile_and_package, then aoti_load_package). For speed inside a "
    "Python program: torch.compile, which keeps the result in the process, with nothing to "
    "save; with static shapes (dynamic=False, as here and in training) it compiles on the "
    "first call at each new input shape (by default the second shape compiles one dynamic "
    "graph, which every later batch size runs)."
)


class InferError(Exception):
    """A checkpoint that cannot be read or does not fit, or a device infer does not time."""


class Converted(NamedTuple):
    """What one way made of the model."""

    run: object            # the callable that is timed
    convert_s: float       # seconds to make it from the eager model
    path: str = None       # the saved file; None when the way has none
    reload: object = None  # () -> the callable read back from `path`
    no_file: str = None    # why there is no file
    load_s: float = None   # seconds to load `run` from `path`, when it was loaded from there


# ----------------------------------------------------------------------------------------
# The six ways: each takes the eval-mode model, an example batch and a folder for its file


def convert_eager(model, example, folder):
    """The nn.Module itself; its file is the state_dict, which needs the class to load."""
    path = os.path.join(folder, "state_dict.pt")
    torch.save(model.state_dict(), path)

    def reload():
        fresh = copy.deepcopy(model)
        fresh.load_state_dict(torch.load(path, map_location=example.device, weights_only=True))
        return fresh

    return Converted(model, 0.0, path, reload)


def convert_trace(model, example, folder):
    """torch.jit.trace: runs the model once and records the operations that ran."""
    with Timer(example.device) as clock:
        traced = torch.jit.trace(model, example)
    path = os.path.join(folder, "traced.pt")
    torch.jit.save(traced, path)
    return Converted(traced, clock.elapsed, path,
                     lambda: torch.jit.load(path, map_location=example.device))


def convert_script(model, example, folder):
    """torch.jit.script: compiles forward()'s Python source, control flow included."""
    with Timer(example.device) as clock:
        scripted = torch.jit.script(model)
    path = os.path.join(folder, "scripted.pt")
    torch.jit.save(scripted, path)
    return Converted(scripted, clock.elapsed, path,
                     lambda: torch.jit.load(path, map_location=example.device))


def convert_export(model, example, folder):
    """torch.export: the whole forward as one graph of ATen operations, any batch size."""
    with Timer(example.device) as clock:
        exported = export_program(model, example)
    path = os.path.join(folder, "exported.pt2")
    torch.export.save(exported, path)
    return Converted(exported.module(), clock.elapsed, path,
                     lambda: torch.export.load(path).module())


def convert_compile(model, example, folder):
    """torch.compile with static shapes (dynamic=False), as training compiles: a graph for the
    example's batch size now, and another on the first call at each new batch size (past
    torch._dynamo's recompile limit, 8 shapes, new ones run eagerly)."""
    torch._dynamo.reset()  # start cold, so that the conversion time holds all the compiling
    with Timer(example.device) as clock:
        compiled = compile_model(model)
        compiled(example)  # the compiling happens here
    return Converted(compiled, clock.elapsed,
                     no_file="torch.compile keeps its compiled code in the process; no file")


def convert_aoti(model, example, folder):
    """AOTInductor: the exported graph compiled ahead of time into a package, then loaded (timed
    apart: what a serving process pays to start)."""
    path = os.path.join(folder, "aoti.pt2")
    with Timer(example.device) as clock:
        torch._inductor.aoti_compile_and_package(export_program(model, example), package_path=path)
    with Timer(example.device) as loading:
        loaded = torch._inductor.aoti_load_package(path)
    return Converted(loaded, clock.elapsed, path, lambda: torch._inductor.aoti_load_package(path),
                     load_s=loading.elapsed)


WAYS = {"eager": convert_eager, "trace": convert_trace, "script": convert_script,
        "export": convert_export, "compile": convert_compile, "aoti": convert_aoti}


def export_program(model, example):
    """torch.export.export of `model` with a dynamic batch dimension (1 to MAX_BATCH)."""
    batch = example.new_zeros(EXAMPLE_BATCH, *example.shape[1:])  # (2, 3, 32, 32)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    return torch.export.export(model, (batch,), dynamic_shapes=dynamic_shapes)


# ----------------------------------------------------------------------------------------
# Measuring


def infer(cfg, save=None, ways=None, work_dir=None):
    """Measure each way in `ways` (all of WAYS by default); JSON-ready, save(result) after each.

    cfg is the lab's Config: device, batch_norm, seed, infer_batch_sizes and checkpoint are
    read. The inputs are seeded random images. Saved files go to a temporary folder (inside
    `work_dir` if given) that is removed at the end.
    """
    started = time.perf_counter()
    device = torch.device(cfg.device)
    if device.type not in REPEATS:
        raise InferError(f"infer runs on {' or '.join(REPEATS)}, not {device.type}")
    ways = list(WAYS) if ways is None else list(ways)
    unknown = [name for name in ways if name not in WAYS]
    if unknown:
        raise ValueError(f"unknown way {', '.join(unknown)}; the ways are {', '.join(WAYS)}")
    batch_sizes = [int(size) for size in cfg.infer_batch_sizes]
    check_memory(batch_sizes, device)
    model = load_model(cfg).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    inputs = [torch.randn(size, 3, 32, 32, generator=generator).to(device)  # (B, 3, 32, 32)
              for size in batch_sizes]
    # Eager's outputs are the oracle; computing them first also takes the process's one-time
    # start-up (thread pools, kernel choice) out of every way's first call.
    with torch.inference_mode():
        reference = [model(images) for images in inputs]  # (B, 10)
    result = {
        "inference_device": str(device), "torch_version": torch.__version__,
        "threads": torch.get_num_threads(), "batch_norm": cfg.batch_norm, "seed": cfg.seed,
        "checkpoint": cfg.checkpoint, "batch_sizes": batch_sizes,
        "repeats": dict(REPEATS[device.type]), "tolerance": TOLERANCE,
        "eager_output_scale": [output.abs().max().item() for output in reference],
        "block": look_at_a_block(model, device),
        "trace_versus_script": trace_versus_script(),
        "deprecation": DEPRECATION, "caches": "cold", "compiler_startup_s": None,
        "min_percentile_calls": MIN_PERCENTILE_CALLS, "ways": {},
    }
    repeats = REPEATS[device.type]
    with tempfile.TemporaryDirectory(prefix="infer-", dir=work_dir) as folder, cold_compiles():
        if {"compile", "aoti"} & set(ways):  # paid once per process, by whichever comes first
            result["compiler_startup_s"] = start_compiler(device)
        converted = {}
        for name in ways:
            os.makedirs(os.path.join(folder, name))
            result["ways"][name], converted[name] = convert_way(
                WAYS[name], model, inputs[0], os.path.join(folder, name))
            _saved(result, started, save)
        for images, expected in zip(inputs, reference):
            live = {name: way for name, way in converted.items()
                    if not result["ways"][name]["error"]}
            rows = time_in_rounds(live, result["ways"], images, expected, repeats)
            for name, row in rows.items():
                result["ways"][name]["batches"].append(row)
            _saved(result, started, save)
    return result


# Per image: the input (3 x 32 x 32 float32), and what a forward pass in inference mode holds at
# once, about four of the largest feature maps (64 x 32 x 32 float32: a block's input, its two
# convolutions' outputs and the shortcut's).
INPUT_BYTES = 3 * 32 * 32 * 4
FORWARD_BYTES = 4 * 64 * 32 * 32 * 4


def check_memory(batch_sizes, device):
    """InferError when the inputs of every batch size (held together) and the forward pass of
    the largest need more memory than the device has free."""
    needed = sum(batch_sizes) * INPUT_BYTES + max(batch_sizes) * FORWARD_BYTES
    free = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
            else available_memory())
    if free is not None and needed > free:
        raise InferError(f"--batch-sizes {','.join(map(str, batch_sizes))} needs about "
                         f"{needed / 2**30:.3g} GiB of memory for the inputs and a forward pass, "
                         f"and {free / 2**30:.1f} GiB is free on {device.type}: ask for smaller "
                         "batches")


def _saved(result, started, save):
    result["total_s"] = time.perf_counter() - started
    if save is not None:
        save(result)


def load_model(cfg):
    """ResNet-18 in eval mode: seeded fresh weights, or those of cfg.checkpoint."""
    torch.manual_seed(cfg.seed)
    model = ResNet18(batch_norm=cfg.batch_norm)
    if cfg.checkpoint is not None:
        load_checkpoint(model, cfg.checkpoint)
    return model.eval()


def load_checkpoint(model, path):
    """Load a saved state_dict (plain, or under the key "model"), or raise InferError."""
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # a plain pickle, or objects beyond tensors
        # torch's own message advises weights_only=False, which would run the file's code.
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(error))
        raise InferError(f"cannot read checkpoint {path}: it is not a state_dict that torch.save "
                         "wrote" + (f" ({detail.group(1).strip()})" if detail else "")
                         + ", and infer loads nothing that could run code") from None
    except Exception as error:  # no file, or not a torch file
        raise InferError(f"cannot read checkpoint {path}: {one_line(error)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InferError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    expected = model.state_dict()
    tensors = {key: value for key, value in state.items() if torch.is_tensor(value)}
    problems = [
        _listed("missing", [key for key in expected if key not in state]),
        _listed("unexpected", [key for key in state if key not in expected]),
        _listed("not a tensor", [f"{key} ({type(state[key]).__name__})" for key in expected
                                 if key in state and key not in tensors]),
        _listed("wrong shape", [f"{key} {tuple(value.shape)} not {tuple(expected[key].shape)}"
                                for key, value in tensors.items() if key in expected
                                and value.shape != expected[key].shape]),
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        hint = " (trained with the other batch_norm setting?)" if "bn" in str(problems) else ""
        raise InferError(f"checkpoint {path} does not fit ResNet18(batch_norm="
                         f"{model.bn1 is not None}): {'; '.join(problems)}{hint}")
    model.load_state_dict(state)


def _listed(what, keys):
    """ "2 missing: bn1.weight, bn1.bias" with at most three keys named; "" when there are none."""
    if not keys:
        return ""
    more = f", and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{len(keys)} {what}: {', '.join(keys[:3])}{more}"


def convert_way(convert, model, example, folder):
    """One way's conversion, file and round trip: (its outcome so far, its Converted or None).
    A failure is a one-line reason; the outcome collects the warnings of every later call."""
    outcome = {**dict.fromkeys(("convert_s", "load_s", "file_bytes", "no_file", "error",
                                "reload_max_diff", "reload_matches")),
               "batches": [], "warnings": []}
    converted = None
    with recording(outcome), torch.inference_mode():
        try:
            converted = convert(model, example, folder)
            outcome.update(convert_s=converted.convert_s, load_s=converted.load_s)
            outcome.update(round_trip(converted, example))
        except Exception as error:
            outcome["error"] = one_line(error)
    return outcome, converted


@contextlib.contextmanager
def recording(outcome):
    """The warnings raised inside, added to outcome["warnings"] (each once)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    outcome["warnings"] = sorted(set(outcome["warnings"]) | {
        f"{w.category.__name__}: {one_line(w.message, False)}" for w in caught})


def round_trip(converted, images):
    """The saved file's size, and whether what loads back from it gives the same outputs."""
    if converted.path is None:
        return {"no_file": converted.no_file}
    reloaded = converted.reload()
    before, after = converted.run(images), reloaded(images)  # (B, 10) each
    difference = max_difference(after, before)
    return {"file_bytes": os.path.getsize(converted.path), "reload_max_diff": difference,
            "reload_matches": difference <= TOLERANCE * before.abs().max().item()}


def time_in_rounds(converted, outcomes, images, expected, repeats):
    """Each way's latency on one batch, the ways taking turns as the bench's rows do (so that
    a load coming and going hits them alike) in the rounds that REPEATS describes. Every
    call's outputs are compared with eager's, `expected`; a way that fails is dropped, its
    one-line reason in outcomes[name]["error"]."""
    live = dict(converted)
    rows = {name: {"batch_size": len(images), "max_abs_diff": 0.0} for name in live}
    times = {name: [] for name in live}

    def call(name):
        try:
            with recording(outcomes[name]), torch.inference_mode():
                seconds, outputs = timed_call(live[name].run, images)
        except Exception as error:
            outcomes[name]["error"] = one_line(error)
            del live[name]
            return None
        rows[name]["max_abs_diff"] = max(rows[name]["max_abs_diff"],
                                         max_difference(outputs, expected))
        return seconds

    for name in list(live):
        first = call(name)
        if first is not None:
            rows[name]["first_call_ms"] = 1000 * first
    for _ in range(repeats["warmup"]):
        for name in list(live):
            call(name)
    deadline = time.perf_counter() + repeats["budget_s"] * len(live)
    rounds = 0
    while live and rounds < repeats["max_runs"] and (
            rounds < repeats["min_runs"] or time.perf_counter() < deadline):
        for name in list(live):
            seconds = call(name)
            if seconds is not None:
                times[name].append(seconds)
        rounds += 1
    scale = expected.abs().max().item()
    return {name: latency_row(rows[name], times[name], scale) for name in live}


def latency_row(row, times, scale):
    """A way's figures at one batch size from its timed calls; p90 and p99 only from
    MIN_PERCENTILE_CALLS calls or more (from fewer they are about the slowest call)."""
    median = percentile(times, 50)
    enough = len(times) >= MIN_PERCENTILE_CALLS
    return {**row, "median_ms": 1000 * median,
            "p90_ms": 1000 * percentile(times, 90) if enough else None,
            "p99_ms": 1000 * percentile(times, 99) if enough else None,
            "images_per_s": row["batch_size"] / median, "runs": len(times),
            "matches_eager": row["max_abs_diff"] <= TOLERANCE * scale}


def timed_call(run, images):
    """Seconds for one call, with the device synchronised before and after; and its output."""
    synchronize(images.device)  # work queued earlier stays out of this call's time
    start = time.perf_counter()
    outputs = run(images)  # (B, 10)
    synchronize(images.device)  # a GPU call returns once queued; wait until it is done
    return time.perf_counter() - start, outputs


def max_difference(outputs, expected):
    return (outputs.float() - expected.float()).abs().max().item()


def percentile(values, q):
    """The q-th percentile (0-100), interpolating linearly between the closest ranks (numpy's)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ----------------------------------------------------------------------------------------
# Looking at what the converters make


def look_at_a_block(model, device):
    """TorchScript's code and graph, and torch.export's graph, of the first block of layer2."""
    block = model.layer2[0]  # 64 -> 128 channels, stride 2: the shortcut is a 1x1 projection
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecation, recorded per way
        scripted = torch.jit.script(block)
    features = torch.zeros(EXAMPLE_BATCH, 64, 32, 32, device=device)  # (2, 64, 32, 32)
    exported = torch.export.export(block, (features,))
    return {"name": "layer2[0]", "script_code": scripted.code,
            "script_graph": str(scripted.graph), "export_code": exported.graph_module.code}


class SignFlip(nn.Module):
    """Doubles x when its elements sum to more than 0, else negates it: a branch on the data."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return -x


def trace_versus_script():
    """Trace SignFlip on an input that takes one branch, script it, run both on the other."""
    module = SignFlip()
    traced_on, other = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, -2.0, -3.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(module, traced_on)  # warns: the branch becomes a constant
        scripted = torch.jit.script(module)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # export prints its partial graph
            torch.export.export(module, (other,))
        export_outcome = "exported"
    except Exception as error:
        export_outcome = one_line(error)
    tracer_warnings = {one_line(w.message, False) for w in caught
                       if issubclass(w.category, torch.jit.TracerWarning)}
    return {
        "traced_on": traced_on.tolist(), "input": other.tolist(),
        "eager": module(other).tolist(), "traced": traced(other).tolist(),
        "scripted": scripted(other).tolist(),
        "tracer_warning": sorted(tracer_warnings),
        "traced_code": traced.code, "scripted_code": scripted.code,
        "export": export_outcome,
    }


# ----------------------------------------------------------------------------------------
# Printing the results, from the result alone (REPORT.md rebuilds from the file)


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
        f"before and after, the ways taking turns call by call: at each batch size every "
        f"way's first call, {plural(repeats['warmup'], 'untimed round')}, then at least "
        f"{repeats['min_runs']} timed rounds over at least {repeats['budget_s']} s per way "
        f"(at most {repeats['max_runs']}); p90 and p99 from "
        f"{result.get('min_percentile_calls', MIN_PERCENTILE_CALLS)} timed calls or more. "
        f"Outputs match eager when no call's differ by more than {result['tolerance']:g} of "
        f"eager's largest output. Whole run: {result.get('total_s', 0):.0f} s."
    )


def render_infer_conversions(result):
    rows = []
    for name, way in result["ways"].items():
        size = "-" if way["file_bytes"] is None else f"{way['file_bytes'] / 1e6:.1f}"
        if way["error"] and way["reload_matches"] is None:
            reload = "-"
        elif way["no_file"]:
            reload = way["no_file"]
        else:
            reload = (f"{'same' if way['reload_matches'] else 'DIFFERENT'} "
                      f"(max diff {way['reload_max_diff']:.1e})")
        rows.append([name, _number(way["convert_s"]), _number(way.get("load_s")), size, reload,
                     way["error"] or ""])
    startup = result.get("compiler_startup_s")
    caches = ("with TorchInductor's caches off, as on a first run on this machine (as C8 "
              "times them)" if result.get("caches") == "cold" else
              "with whatever TorchInductor's caches held (they may have been warm)")
    notes = (f"Conversions timed {caches}"
             + ("" if startup is None else f"; the compiler's start-up, once per process, took "
                f"{startup:.1f} s before them and is in no way's figure") + ". compile is "
             "torch.compile with static shapes (dynamic=False, as training compiles): it "
             f"compiled for batch {result['batch_sizes'][0]} when converted, and compiles again "
             "on its first call at each other batch size. load: AOTInductor's package read into "
             "this process; the other ways run what they made in memory.")
    return "### Conversion and saved file\n\n" + markdown_table(
        ["way", "conversion (s)", "load (s)", "file (MB)", "saved -> loaded outputs", "error"],
        rows, align="lrrrll") + "\n\n" + notes


def _number(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def render_infer_latency(result, index):
    batch_size = result["batch_sizes"][index]
    rows = [(name, way["batches"][index]) for name, way in result["ways"].items()
            if len(way["batches"]) > index]
    eager = dict(rows).get("eager")
    table = []
    for name, row in rows:
        speedup = "-" if eager is None else f"{eager['median_ms'] / row['median_ms']:.2f}x"
        table.append([name, f"{row['first_call_ms']:.1f}", f"{row['median_ms']:.2f}",
                      _number(row["p90_ms"]), _number(row["p99_ms"]),
                      f"{row['images_per_s']:,.{0 if row['images_per_s'] >= 10 else 2}f}",
                      speedup, row["runs"],
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
    every_row = [(name, row) for name, way in ways.items() for row in way["batches"]]
    spread = [f"{name} at batch {row['batch_size']}" for name, row in every_row
              if row["p90_ms"] is not None and row["p90_ms"] > 1.5 * row["median_ms"]]
    if spread:
        lines.append(f"- p90 over 1.5x the median, calls that vary a lot (another load on the "
                     f"machine?): {', '.join(spread)}.")
    few = sorted({row["batch_size"]: row["runs"] for _, row in every_row
                  if row["p90_ms"] is None}.items())
    if few:
        lines.append("- No p90, p99 or spread flag where there were fewer than "
                     f"{result.get('min_percentile_calls', MIN_PERCENTILE_CALLS)} timed calls: "
                     + ", ".join(f"batch {size}, {plural(runs, 'call')} a way"
                                 for size, runs in few) + ".")
    return "### What the numbers say\n\n" + "\n".join(lines)


def one_time_costs(way, row):
    """(conversion, load, first call beyond a timed one) in seconds: what a user pays once
    before serving at this batch size (load where the timed callable came from a package)."""
    first_s = max(row["first_call_ms"] - row["median_ms"], 0.0) / 1000
    return way["convert_s"] or 0.0, way.get("load_s") or 0.0, first_s


def _payback(rows, ways, batch_size):
    """After how many calls a way faster than eager has won back what it cost once."""
    eager, paid = rows.get("eager"), []
    for name, row in rows.items():
        convert_s, load_s, first_s = one_time_costs(ways[name], row)
        once_s = convert_s + load_s + first_s
        if name == "eager" or not eager or once_s <= 0:
            continue
        saved_ms = eager["median_ms"] - row["median_ms"]
        if saved_ms <= 0:
            continue
        load = f" + {load_s:.1f} s to load" if load_s else ""
        paid.append(f"{name} after {plural(math.ceil(1000 * once_s / saved_ms), 'call')} "
                    f"({saved_ms:.2f} ms saved a call; once: {convert_s:.1f} s to convert{load}"
                    f" + {first_s:.1f} s more in the first call)")
    if not paid:
        return []
    return [f"  - Faster than eager at batch {batch_size}, so what it cost once pays for itself: "
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
