"""Part B of the 2026 handout: the trained ResNet-18 as TorchScript, in Python and in C++.

    python lab.py --handout 2026 c1     # trains ResNet-18, keeps the last epoch's weights
    python lab.py --handout 2026 c7     # script the trained model (--trace: trace it), reload
    python lab.py --handout 2026 c8     # its TorchScript code and graphs, also as a text file
    python lab.py --handout 2026 c9     # top-1 test accuracy of the TorchScript model and eager's
    python lab.py --handout 2026 c10    # latency, eager against TorchScript, on the CPU and GPU
    python lab.py --handout 2026 ec     # extra credit: C7's file run from C++ (LibTorch)
    python lab.py --handout 2026 q5     # what a trace and a script record
    python lab.py --handout 2026 q6     # what ResNet-18 needs before it can be scripted

C7-C10 and the extra credit start from C1's weights (<out>/c1.weights.pt, or --checkpoint
FILE) and make the TorchScript model one way, `to_torchscript`: converted from the eval-mode
model, saved in the results folder and loaded back; what they look at and time is the loaded
model. Latency is infer.py's one measurement (`infer.time_in_rounds`), not a second copy.
handouts.py numbers these exercises; this file knows no handout.
"""

import collections
import contextlib
import copy
import functools
import inspect
import io
import os
import textwrap
import warnings

import torch
import torch.nn.functional as F

import report
from data import datasets_for, make_loader
from infer import (MIN_PERCENTILE_CALLS, REPEATS, TOLERANCE, Converted, InferError,
                   load_checkpoint, max_difference, render_infer_trace_versus_script,
                   time_in_rounds, trace_versus_script)
from machine import gpu_device
from parallel import weights_digest
from render import markdown_table, notice, one_line, percent, plural
from resnet import BasicBlock, ResNet18
from timing import Timer

WEIGHTS_FILE = "c1.weights.pt"     # C1 writes it after every epoch; Part B reads it
TORCHSCRIPT_FILES = {"script": "c7.scripted.pt", "trace": "c7.traced.pt"}
GRAPH_FILE = "c8.graph.txt"
BLOCK = "layer2.0"                 # 64 -> 128 channels, stride 2: the shortcut is a projection
EXAMPLE_BATCH = 2                  # the batch a trace runs on


class PartBError(InferError, report.CannotRunHere):
    """Part B cannot start: no trained weights, or no C++ compiler for the extra credit. An
    InferError, so the command line says it in one line and exits with status 2; `all` says
    it and goes on."""


# ----------------------------------------------------------------------------------------
# The trained model, and the one way Part B makes it TorchScript


def trained_model(cfg):
    """(ResNet-18 in eval mode on the CPU with the trained weights, facts about them).

    The weights are cfg.checkpoint's, else those C1 keeps in the results folder. Without
    either, PartBError names the command that trains them.
    """
    path = cfg.checkpoint or os.path.join(cfg.out, WEIGHTS_FILE)
    if cfg.checkpoint is None and not os.path.exists(path):
        handout = [] if cfg.handout == type(cfg)().handout else ["--handout", cfg.handout]
        train = " ".join(["python lab.py", *handout, "c1", *([] if cfg.batch_norm else
                                                             ["--no-bn"]), "--out", cfg.out])
        raise PartBError(f"no trained weights in {path}: `{train}` trains ResNet-18 and keeps "
                         "them there (or choose a file with --checkpoint FILE)")
    model = ResNet18(batch_norm=cfg.batch_norm)
    load_checkpoint(model, path)
    return model.eval(), {"weights": path, "weights_sha256": weights_digest(model),
                          "batch_norm": cfg.batch_norm}


def to_torchscript(cfg, model):
    """`model` (eval mode, CPU) scripted, or with cfg.trace traced on a seeded example batch;
    saved atomically in the results folder, then loaded back. (loaded module, facts)."""
    method = "trace" if cfg.trace else "script"
    path = os.path.join(cfg.out, TORCHSCRIPT_FILES[method])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Timer() as conversion:
            if cfg.trace:
                converted = torch.jit.trace(model, example_images(cfg.seed, EXAMPLE_BATCH))
            else:
                converted = torch.jit.script(model)
        buffer = io.BytesIO()
        torch.jit.save(converted, buffer)
        report.write_bytes(path, buffer.getvalue())
        with Timer() as loading:
            loaded = torch.jit.load(path, map_location="cpu")
    return loaded, {
        "method": f"torch.jit.{method}", "file": path, "file_bytes": len(buffer.getvalue()),
        "convert_s": conversion.elapsed, "load_s": loading.elapsed,
        "loaded_as": f"{type(loaded).__name__} of {loaded.original_name}",
        "warnings": sorted({f"{w.category.__name__}: {one_line(w.message, False)}"
                            for w in caught}),
    }


@contextlib.contextmanager
def quiet_deprecation():
    """TorchScript's deprecation FutureWarnings, left out: to_torchscript records them once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def example_images(seed, count):
    """`count` seeded random images, (count, 3, 32, 32): a trace or a timing needs no more."""
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def first_test_images(cfg, count):
    """The first `count` images of cfg's test set, (count, 3, 32, 32), and their labels."""
    test_set = datasets_for(cfg)[1]
    images, labels = zip(*(test_set[index] for index in range(min(count, len(test_set)))))
    return torch.stack(images), torch.tensor(labels)


def submodule(module, name):
    """module.get_submodule(name), which a loaded TorchScript module does not have."""
    return functools.reduce(getattr, name.split("."), module)


# ----------------------------------------------------------------------------------------
# C7-C10


def c7_torchscript(cfg, save=None):
    """C7: the trained model as TorchScript, saved and loaded back, and the loaded model's
    outputs checked against the eager model's on a batch of test images."""
    model, weights = trained_model(cfg)
    loaded, converted = to_torchscript(cfg, model)
    device = torch.device(cfg.device)
    images = first_test_images(cfg, cfg.test_batch_size)[0].to(device)  # (B, 3, 32, 32)
    with torch.inference_mode(), quiet_deprecation():
        eager = model.to(device)(images)       # (B, 10)
        scripted = loaded.to(device)(images)   # (B, 10)
    difference = max_difference(scripted, eager)
    return {**weights, **converted, "inference_device": str(device), "images": len(images),
            "max_abs_diff": difference, "identical": torch.equal(scripted, eager),
            "same_class": int((scripted.argmax(1) == eager.argmax(1)).sum()),
            "tolerance": TOLERANCE,
            "matches_eager": difference <= TOLERANCE * eager.abs().max().item()}


def c8_graph(cfg, save=None):
    """C8: the loaded TorchScript model's code and graph, and those of one BasicBlock, also
    written to <out>/c8.graph.txt with the whole model's graph inlined."""
    model, weights = trained_model(cfg)
    loaded, converted = to_torchscript(cfg, model)
    block = submodule(loaded, BLOCK)
    inlined = loaded.inlined_graph  # every submodule's forward pasted in: the whole network
    kinds = collections.Counter(node.kind() for node in inlined.nodes())
    result = {**weights, **converted, "model_code": loaded.code, "model_graph": str(loaded.graph),
              "block": BLOCK, "block_class": block.original_name, "block_code": block.code,
              "block_graph": str(block.graph), "inlined_nodes": sum(kinds.values()),
              "inlined_node_kinds": dict(kinds.most_common()),
              "graph_file": os.path.join(cfg.out, GRAPH_FILE)}
    report.write_text(result["graph_file"], "\n\n".join([
        render_c8_graph(result),
        f"### `{BLOCK}` with its submodules inlined (its inlined_graph)\n\n{block.inlined_graph}",
        f"### The whole model with every submodule inlined (loaded.inlined_graph)\n\n{inlined}"]))
    return result


def c9_accuracy(cfg, save=None):
    """C9: top-1 accuracy on the test set of the loaded TorchScript model and of the eager
    model, on the same batches, and how many images they classify differently."""
    model, weights = trained_model(cfg)
    loaded, converted = to_torchscript(cfg, model)
    device = torch.device(cfg.device)
    model, loaded = model.to(device), loaded.to(device)
    loader = make_loader(datasets_for(cfg)[1], cfg.test_batch_size, shuffle=False,
                         num_workers=cfg.num_workers, seed=cfg.seed)
    result = {**weights, **converted, "inference_device": str(device), "images": 0,
              "eager_correct": 0, "torchscript_correct": 0, "differing_predictions": 0,
              "eager_accuracy": None, "torchscript_accuracy": None}
    with torch.inference_mode(), quiet_deprecation():
        for batch, (images, labels) in enumerate(loader, 1):
            images, labels = images.to(device), labels.to(device)
            eager = model(images).argmax(1)        # (B,) predicted classes
            scripted = loaded(images).argmax(1)    # (B,)
            result["images"] += len(labels)
            result["eager_correct"] += int((eager == labels).sum())
            result["torchscript_correct"] += int((scripted == labels).sum())
            result["differing_predictions"] += int((eager != scripted).sum())
            result["eager_accuracy"] = 100.0 * result["eager_correct"] / result["images"]
            result["torchscript_accuracy"] = (100.0 * result["torchscript_correct"]
                                              / result["images"])
            if save is not None:
                save(result)
            if batch % max(1, len(loader) // 10) == 0 or batch == len(loader):
                notice(f"c9: {result['images']}/{len(loader.dataset)} test images: eager "
                       f"{result['eager_accuracy']:.2f}%, TorchScript "
                       f"{result['torchscript_accuracy']:.2f}%, "
                       f"{result['differing_predictions']} predicted differently")
    return result


def c10_latency(cfg, save=None):
    """C10: latency of the eager and the loaded TorchScript model on the CPU and on the GPU,
    at each of cfg.infer_batch_sizes (batch 1 and 128 by default), on seeded
    random images. infer.time_in_rounds times single calls, the device synchronised before
    and after each, the two models taking turns; every output is checked against eager's."""
    model, weights = trained_model(cfg)
    _, converted = to_torchscript(cfg, model)
    gpu, gpu_name = gpu_device()
    skipped = (gpu_name if gpu is None else None if gpu in REPEATS else
               f"infer's latency measurement runs on {' or '.join(REPEATS)}, not {gpu}")
    devices = ["cpu"] + ([gpu] if skipped is None else [])
    result = {**weights, **converted, "threads": torch.get_num_threads(),
              "batch_sizes": [int(size) for size in cfg.infer_batch_sizes],
              "repeats": {device: dict(REPEATS[device]) for device in devices},
              "gpu": {"device": gpu, "name": gpu_name if gpu else None, "skipped": skipped},
              "rows": [], "errors": {}}
    for device in devices:
        with quiet_deprecation():
            ways = {"eager": Converted(copy.deepcopy(model).to(device), 0.0),
                    "torchscript": Converted(torch.jit.load(converted["file"],
                                                            map_location=device), 0.0)}
        for batch_size in result["batch_sizes"]:
            images = example_images(cfg.seed, batch_size).to(device)  # (B, 3, 32, 32)
            with torch.inference_mode(), quiet_deprecation():
                expected = ways["eager"].run(images)  # (B, 10): what each call is checked by
            notice(f"c10: timing eager and TorchScript on {device} at batch {batch_size}")
            outcomes = {name: {"error": None, "warnings": []} for name in ways}
            with quiet_deprecation():
                timed = time_in_rounds(ways, outcomes, images, expected, REPEATS[device])
            errors = {name: outcome["error"] for name, outcome in outcomes.items()
                      if outcome["error"]}
            if errors:  # one failed call: no row, its reason kept
                result["errors"][f"{device}, batch {batch_size}"] = errors
                continue
            result["rows"].append({"device": device, "batch_size": batch_size, **timed,
                                   "speedup": (timed["eager"]["median_ms"]
                                               / timed["torchscript"]["median_ms"])})
            if save is not None:
                save(result)
    return result


# ----------------------------------------------------------------------------------------
# Q5 and Q6, answered from the objects


def q5_trace_vs_script(cfg, save=None):
    """Q5: what torch.jit.trace and torch.jit.script record of ResNet-18, what a trace does to
    BatchNorm's train/eval switch, and a branch on the data that a trace silently fixes."""
    torch.manual_seed(cfg.seed)
    model = ResNet18(batch_norm=cfg.batch_norm).eval()
    example = example_images(cfg.seed, EXAMPLE_BATCH)
    with quiet_deprecation():
        traced, scripted = torch.jit.trace(model, example), torch.jit.script(model)
    return {"batch_norm": cfg.batch_norm, "example_shape": list(example.shape),
            "recorded": {"trace": what_is_recorded(traced), "script": what_is_recorded(scripted)},
            "train_mode": in_train_mode(model, traced, scripted, example),
            "branch": trace_versus_script()}


def what_is_recorded(module):
    """What a TorchScript module holds: its whole graph's nodes, branches and operators, and
    the code of one block."""
    graph = module.inlined_graph
    kinds = collections.Counter(node.kind() for node in graph.nodes())
    block = submodule(module, BLOCK)
    operators = sum(count for kind, count in kinds.items() if kind.startswith("aten::"))
    return {"nodes": sum(kinds.values()), "if_nodes": kinds["prim::If"], "operators": operators,
            "block_code": block.code}


def in_train_mode(model, traced, scripted, images):
    """After .train(), does each one's BatchNorm normalise with the batch's statistics, as
    eager's does? None without BatchNorm. Runs on copies: the model stays as it was."""
    if not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        return None
    with torch.no_grad(), quiet_deprecation():
        eval_mode = model(images)
        outputs = {name: copy.deepcopy(module).train()(images) for name, module in
                   (("eager", model), ("trace", traced), ("script", scripted))}
    return {name: {"max_diff_from_eager_train": max_difference(output, outputs["eager"]),
                   "max_diff_from_eval": max_difference(output, eval_mode)}
            for name, output in outputs.items()}


class FlagBasicBlock(BasicBlock):
    """resnet.BasicBlock with its optional BatchNorm tested by a flag, the way that does not
    script: Python runs it either way, torch.jit.script only with BatchNorm."""

    def __init__(self, in_planes, planes, stride=1, batch_norm=True):
        super().__init__(in_planes, planes, stride, batch_norm)
        self.batch_norm = batch_norm

    def forward(self, x):
        out = self.conv1(x)
        if self.batch_norm:
            out = self.bn1(out)
        out = F.relu(out)
        out = self.conv2(out)
        if self.batch_norm:
            out = self.bn2(out)
        out = out + self.shortcut(x)
        return F.relu(out)


def q6_scripting(cfg, save=None):
    """Q6: a block written with a flag for its optional BatchNorm, scripted with and without
    BatchNorm (torch's own error where it fails), then resnet.py's `is not None` form."""
    generator = torch.Generator().manual_seed(cfg.seed)
    features = torch.randn(EXAMPLE_BATCH, 64, 32, 32, generator=generator)  # (2, 64, 32, 32)
    attempts = []
    for block_class in (FlagBasicBlock, BasicBlock):
        for batch_norm in (True, False):
            torch.manual_seed(cfg.seed)
            block = block_class(64, 64, batch_norm=batch_norm).eval()
            attempt = {"class": block_class.__name__, "batch_norm": batch_norm, "error": None,
                       "scripted_code": None}
            try:
                with quiet_deprecation():
                    scripted = torch.jit.script(block)
            except Exception as error:  # torch.jit.frontend's errors are RuntimeErrors
                attempt["error"] = f"{type(error).__name__}: {str(error).strip()}"
                # The failed type stays in TorchScript's cache of module types, and this
                # process's next attempt would fail with "Can't redefine method" in place of
                # torch's own error: the cache starts afresh.
                torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()
            else:
                with torch.no_grad():
                    attempt["max_diff_from_python"] = max_difference(scripted(features),
                                                                     block(features))
                attempt["scripted_code"] = scripted.code
            attempts.append(attempt)
    with quiet_deprecation():
        whole = {str(bn): type(torch.jit.script(ResNet18(batch_norm=bn))).__name__
                 for bn in (True, False)}
    return {"attempts": attempts, "whole_model": whole,
            "flag_source": textwrap.dedent(inspect.getsource(FlagBasicBlock.forward)),
            "fixed_source": textwrap.dedent(inspect.getsource(BasicBlock.forward))}


# ----------------------------------------------------------------------------------------
# Printing: Markdown that also reads as plain text


def describe_model(result):
    """The line that says which TorchScript model an exercise used, and where it came from."""
    return (f"ResNet-18 {'with' if result['batch_norm'] else 'without'} BatchNorm, weights "
            f"{result['weights']} (SHA-256 {result['weights_sha256']}), in eval mode, made "
            f"TorchScript by {result['method']}, saved to {result['file']} and loaded back.")


def deprecation_lines(result):
    if not result["warnings"]:
        return ""
    return ("\n\nWhat torch warned while converting, saving and loading (TorchScript is "
            "deprecated; `python lab.py infer` shows its successors):\n\n"
            + "\n".join(f"- {warning}" for warning in result["warnings"]))


def render_c7_torchscript(result):
    if result["identical"]:
        verdict = "identical to eager's"
    elif result["matches_eager"]:
        verdict = f"within {result['tolerance']:g} of eager's largest output"
    else:
        verdict = "DIFFERENT from eager's"
    rows = [
        ["weights", f"{result['weights']} (SHA-256 {result['weights_sha256']}), eval mode"],
        ["conversion", f"{result['method']}, {result['convert_s']:.2f} s"],
        ["saved file", f"{result['file']}, {result['file_bytes'] / 1e6:.1f} MB"],
        ["loaded back", f"{result['load_s']:.2f} s, a {result['loaded_as']}: code and weights "
                        "come from the file, not from resnet.py"],
        [f"outputs on {plural(result['images'], 'test image')} ({result['inference_device']})",
         f"{verdict} (largest difference {result['max_abs_diff']:.1e}); the same class for "
         f"{result['same_class']} of {result['images']}"],
    ]
    return markdown_table(["step", "result"], rows, align="ll") + deprecation_lines(result)


def render_c8_graph(result):
    kinds = ", ".join(f"{count} {kind}" for kind, count in
                      list(result["inlined_node_kinds"].items())[:6])
    return (
        f"{describe_model(result)} In a module's graph each submodule is one call "
        "(`prim::CallMethod`) into the submodule's own graph.\n\n"
        f"### The model's code (`loaded.code`)\n\n```python\n{result['model_code'].strip()}\n"
        f"```\n\n### The model's graph (`loaded.graph`)\n\n```text\n"
        f"{result['model_graph'].strip()}\n```\n\n"
        f"### One BasicBlock in full: `{result['block']}` ({result['block_class']})\n\n"
        f"Its code:\n\n```python\n{result['block_code'].strip()}\n```\n\n"
        f"Its graph:\n\n```text\n{result['block_graph'].strip()}\n```\n\n"
        f"With every submodule inlined, the model's graph has {result['inlined_nodes']} nodes "
        f"({kinds}, ...). {result['graph_file']} holds all of the above, the block with its "
        "submodules inlined, and the whole model inlined."
    )


def render_c9_accuracy(result):
    images = result["images"]
    rows = [["eager (PyTorch)", percent(result["eager_accuracy"]),
             f"{result['eager_correct']} of {images}"],
            [f"TorchScript ({result['method']}, loaded from the file)",
             percent(result["torchscript_accuracy"]),
             f"{result['torchscript_correct']} of {images}"]]
    differ = result["differing_predictions"]
    verdict = ("The two are the same model: equal accuracy, and no image classified "
               "differently." if differ == 0 and result["eager_correct"] ==
               result["torchscript_correct"] else
               f"{plural(differ, 'image')} classified differently: the two models are not the "
               "same (see C7's largest output difference).")
    return (f"{describe_model(result)} Both models see the same batches of the test set on "
            f"{result['inference_device']}.\n\n"
            + markdown_table(["model", "top-1 test accuracy", "correct"], rows, align="lrr")
            + f"\n\nImages whose predicted class differs: {differ} of {images}. {verdict}")


def render_c10_latency(result):
    """The handout's one table: per device and batch, each model's median, p90, images/s and
    the speed-up over eager; then what it says."""
    rows = []
    for row in result["rows"]:
        for way, name in (("eager", "eager (PyTorch)"), ("torchscript", "TorchScript")):
            timing = row[way]
            speedup = 1.0 if way == "eager" else row["speedup"]
            digits = 0 if timing["images_per_s"] >= 100 else 1
            p90 = "-" if timing["p90_ms"] is None else f"{timing['p90_ms']:.2f}"
            rows.append([row["device"], row["batch_size"], name, f"{timing['median_ms']:.2f}",
                         p90, f"{timing['images_per_s']:,.{digits}f}", f"{speedup:.2f}x",
                         timing["runs"], f"{timing['max_abs_diff']:.1e}"])
    if result["gpu"]["skipped"]:
        for batch_size in result["batch_sizes"]:
            rows.append(["gpu", batch_size, "skipped", "-", "-", "-", "-", "-", "-"])
    table = markdown_table(["device", "batch", "model", "median (ms)", "p90 (ms)", "images/s",
                            "speed-up vs eager", "timed calls", "max diff vs eager"], rows,
                           align="lrlrrrrrr")
    findings = [f"- {row['device']}, batch {row['batch_size']}: TorchScript is "
                f"{compared_with_eager(row)}, {row['speedup']:.2f}x its speed (median "
                f"{row['torchscript']['median_ms']:.2f} against {row['eager']['median_ms']:.2f} "
                "ms)." for row in result["rows"]]
    if result["gpu"]["skipped"]:
        findings.append(f"- GPU skipped: {result['gpu']['skipped']}.")
    for where, failed in result.get("errors", {}).items():
        findings.append(f"- {where}: not timed; " + "; ".join(f"{way} failed: {why}"
                                                              for way, why in failed.items()))
    if any(row[way]["p90_ms"] is None for row in result["rows"]
           for way in ("eager", "torchscript")):
        findings.append(f"- No p90 where there were fewer than {MIN_PERCENTILE_CALLS} timed "
                        "calls.")
    repeats = "; ".join(f"on the {device.upper()}, each model's first call and {r['warmup']} "
                        f"more left out, then {r['min_runs']} to {r['max_runs']} timed calls "
                        f"over at least {r['budget_s']:g} s"
                        for device, r in result["repeats"].items())
    return (f"{describe_model(result)} Each latency is one call on seeded random images, the "
            f"device synchronised before and after, the two models taking turns "
            f"(infer.time_in_rounds, as `python lab.py infer` times): {repeats}. The CPU runs "
            f"{result['threads']} threads; images/s is the batch over the median.\n\n"
            + table + "\n\n" + "\n".join(findings))


def render_q5_trace_vs_script(result):
    trace, script = result["recorded"]["trace"], result["recorded"]["script"]
    shape = "x".join(map(str, result["example_shape"]))
    rows = [["how it is made", f"runs forward once, on an example batch ({shape}), and records "
             "the tensor operations that ran", "compiles forward's Python source, with its "
             "control flow, into TorchScript"],
            ["nodes in the whole graph, inlined", trace["nodes"], script["nodes"]],
            ["of which branches (`prim::If`)", trace["if_nodes"], script["if_nodes"]],
            ["ATen operators", trace["operators"], script["operators"]]]
    parts = ["### What each one records of ResNet-18\n\n"
             + markdown_table(["", "torch.jit.trace", "torch.jit.script"], rows, align="lll")
             + "\n\n" + explain_recorded(trace, script)]
    if result["train_mode"] is not None:
        parts.append(render_train_mode(result["train_mode"]))
    parts.append(f"Their code for `{BLOCK}` (a BasicBlock), the trace's:\n\n```python\n"
                 f"{trace['block_code'].strip()}\n```\n\nand the script's:\n\n```python\n"
                 f"{script['block_code'].strip()}\n```")
    parts.append(render_infer_trace_versus_script(result["branch"]))
    return "\n\n".join(parts)


def compared_with_eager(row):
    """TorchScript against eager at one device and batch: faster or slower only where one's
    p90 is below the other's median, that is, clear of the spread of the calls."""
    script, eager = row["torchscript"], row["eager"]
    if script["p90_ms"] is None or eager["p90_ms"] is None:
        return "not told apart from eager here (too few timed calls for a p90)"
    if script["p90_ms"] < eager["median_ms"]:
        return "faster than eager"
    if eager["p90_ms"] < script["median_ms"]:
        return "slower than eager"
    return ("as fast as eager within the spread of the calls (each one's p90 above the "
            "other's median)")


def explain_recorded(trace, script):
    if script["if_nodes"] <= trace["if_nodes"]:
        return ""
    return (f"The script keeps the {script['if_nodes']} branches of the Python it compiled "
            "(BatchNorm's forward tests `self.training`, F.relu tests `inplace`), both sides of "
            f"each; the trace keeps {trace['if_nodes']}: of each `if` only the side that ran "
            "was recorded, and the test itself is gone.")


def render_train_mode(train_mode):
    rows = [[name, f"{figures['max_diff_from_eager_train']:.1e}",
             f"{figures['max_diff_from_eval']:.1e}"] for name, figures in train_mode.items()]
    trace = train_mode["trace"]
    frozen = trace["max_diff_from_eval"] < 1e-6 < trace["max_diff_from_eager_train"]
    verdict = ("The trace still normalises with the running statistics: it recorded BatchNorm "
               "in eval mode, and .train() no longer reaches it. The script follows the switch, "
               "as eager does." if frozen else "The trace follows .train() here, as the script "
               "does.")
    return ("### The train/eval switch after conversion\n\nEach one, converted in eval mode, then "
            "put in train mode with .train() and run on the example batch:\n\n"
            + markdown_table(["after .train()", "largest difference from eager in train mode",
                              "from the eval-mode output"], rows)
            + f"\n\n{verdict}")


def render_q6_scripting(result):
    rows, failure = [], None
    for attempt in result["attempts"]:
        if attempt["error"]:
            failure = failure or attempt
            outcome = f"fails: {attempt['error'].splitlines()[0]}"
        else:
            outcome = (f"scripts; outputs match Python's (largest difference "
                       f"{attempt['max_diff_from_python']:.1e})")
        rows.append([attempt["class"], "with" if attempt["batch_norm"] else "without", outcome])
    fixed = next(a for a in result["attempts"]
                 if a["class"] == "BasicBlock" and not a["batch_norm"])
    parts = ["The BasicBlock written with a flag for its optional BatchNorm, as Python runs it "
             f"either way:\n\n```python\n{result['flag_source'].rstrip()}\n```",
             markdown_table(["block", "BatchNorm", "torch.jit.script"], rows, align="lll")]
    if failure:
        parts.append("torch's error:\n\n```text\n" + failure["error"] + "\n```\n\nPython never "
                     "calls `self.bn1` while the flag is False, but TorchScript compiles both "
                     "sides of every `if` whose test it cannot know in advance, and a flag is "
                     "a value it reads at run time. Without BatchNorm `self.bn1` is None, and "
                     "None cannot be called.")
    dropped = "if " not in fixed["scripted_code"]
    parts.append("The change that makes it script is resnet.py's: test the layer itself.\n\n"
                 f"```python\n{result['fixed_source'].rstrip()}\n```\n\n"
                 "TorchScript knows at compile time that a submodule attribute is None, so it "
                 + ("drops the `if` and the call in it; the scripted block without "
                    "BatchNorm:" if dropped else "compiles the test; the scripted block without "
                    "BatchNorm:")
                 + f"\n\n```python\n{fixed['scripted_code'].strip()}\n```")
    whole = " and ".join(f"{'with' if bn == 'True' else 'without'} BatchNorm to a {kind}"
                         for bn, kind in result["whole_model"].items())
    parts.append(f"With that form the whole ResNet-18 scripts, {whole}: nothing else in it "
                 "needs changing.")
    return "\n\n".join(parts)
