"""The extra credit of the 2026 handout: the trained model run from C++ with LibTorch, built
against the torch that Python uses, and its outputs compared with Python's.

    python lab.py --handout 2026 ec   # build cpp/run_torchscript.cpp once, run C7's file there
    python libtorch.py                # the g++ command that builds each program in cpp/

The torch wheel carries LibTorch: its headers in torch/include, its libraries in torch/lib. So
g++ builds against those directly, and the C++ side is always the same version as the Python
side. (CMake's find_package(Torch) refuses a CUDA wheel on a machine without the CUDA toolkit;
cpp/CMakeLists.txt is for a separately downloaded LibTorch.) A build is kept in a cache folder
under the name of its source's hash, so it is compiled once per source and torch version.
Python and C++ exchange images and outputs as raw float32 files (cpp/float32_io.h).
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from infer import export_program, max_difference
from render import markdown_table, notice, one_line, plural
from timing import Timer
from torchscript import (PartBError, describe_model, first_test_images, quiet_deprecation,
                         to_torchscript, trained_model)

CPP_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpp")
PROGRAMS = {"torchscript": "run_torchscript.cpp", "aoti": "run_aoti.cpp"}
COMPILERS = ("g++", "c++", "clang++")  # tried in this order after $CXX
BUILD_TIMEOUT_S = 900  # a build takes 20-70 s on 2 cores; far more means something is wrong
RUN_TIMEOUT_S = 300
CPP_CACHE = "cpp-build"  # in the results folder: the built programs, one per source and torch
CPP_IMAGES = 4           # test images the C++ programs run on


class BuildError(Exception):
    """A program did not build or did not run; the message is one line, the compiler's or the
    program's first error."""


def find_compiler():
    """The C++ compiler to use ($CXX, else the first of COMPILERS on PATH), or None."""
    for name in (os.environ.get("CXX"), *COMPILERS):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def build_command(compiler, source, program):
    """The command that builds `source` into `program` against the installed torch.

    This torch's headers need C++20, and the program must use the same C++ string ABI as the
    libraries (torch._C._GLIBCXX_USE_CXX11_ABI); the rpath lets it find them when run.
    """
    torch_dir = os.path.dirname(torch.__file__)
    include, lib = os.path.join(torch_dir, "include"), os.path.join(torch_dir, "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [compiler, "-std=c++20", "-O2", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", source,
            "-I", include, "-I", os.path.join(include, "torch", "csrc", "api", "include"),
            "-L", lib, "-ltorch", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{lib}", "-o", program]


def build(name, cache, compiler, announce=print):
    """(path of program `name` built from cpp/, facts about the build), built into `cache`
    unless a build of the same sources, torch and command is there already; `announce(line)`
    says so before a build starts."""
    source = os.path.join(CPP_FOLDER, PROGRAMS[name])
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted([source, *header_files()]):  # the program and what it may include
        with open(path, "rb") as file:
            digest.update(file.read())
    digest.update(" ".join(build_command(compiler, source, "")).encode())
    stem = os.path.splitext(PROGRAMS[name])[0]
    program = os.path.join(cache, f"{stem}-{digest.hexdigest()[:16]}")
    facts = {"source": f"cpp/{PROGRAMS[name]}", "compiler": compiler,
             "program": program, "cached": os.path.exists(program), "build_s": None,
             "command": " ".join(build_command(compiler, source, program))}
    if facts["cached"]:
        return program, facts
    os.makedirs(cache, exist_ok=True)
    temporary = f"{program}.building-{os.getpid()}"
    announce(f"building {facts['source']} with {compiler} against torch {torch.__version__} "
             "(a minute or so on 2 cores; kept for later runs)")
    started = time.perf_counter()
    try:
        done = subprocess.run(build_command(compiler, source, temporary), capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{facts['source']}: the build took over {BUILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise BuildError(f"{facts['source']} did not build: {first_error(done.stderr)}")
    os.replace(temporary, program)  # the cache never holds a half-written program
    facts["build_s"] = time.perf_counter() - started
    return program, facts


def header_files():
    return [os.path.join(CPP_FOLDER, name) for name in os.listdir(CPP_FOLDER)
            if name.endswith(".h")]


def run(program, arguments):
    """Run a built program; its standard output, or BuildError with its first error line."""
    try:
        done = subprocess.run([program, *arguments], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{os.path.basename(program)} ran for over {RUN_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise BuildError(f"{os.path.basename(program)} failed (exit status {done.returncode}): "
                         f"{first_error(done.stderr or done.stdout)}")
    return done.stdout


def first_error(output):
    """The first line of a compiler's or program's output that says "error", else its last."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[0 if errors else -1]


# ----------------------------------------------------------------------------------------
# The extra credit: C7's file run from C++


def extra_credit(cfg, save=None):
    """Extra credit: C7's TorchScript file run by cpp/run_torchscript.cpp, built with LibTorch
    from the installed torch, on the same test images as Python; its outputs against Python's.
    Beyond the handout: infer's AOTInductor package run the same way by cpp/run_aoti.cpp."""
    compiler = find_compiler()
    if compiler is None:
        raise PartBError("the extra credit builds a C++ program, and no C++ compiler is found "
                         "($CXX, g++, c++ or clang++): install g++")
    model, weights = trained_model(cfg)
    loaded, converted = to_torchscript(cfg, model)
    images, labels = first_test_images(cfg, CPP_IMAGES)  # (N, 3, 32, 32), (N,)
    with torch.inference_mode(), quiet_deprecation():
        python, eager = loaded(images), model(images)  # (N, 10) each
    result = {**weights, **converted, "compiler": compiler, "torch_version": torch.__version__,
              "labels": labels.tolist(), "programs": {}, "max_abs_diff": None}
    cache = os.path.join(cfg.out, CPP_CACHE)
    def against_eager(outcome):  # the C++ outputs against the eager model itself too
        if outcome.get("cpp") is not None:
            outcome["eager_max_abs_diff"] = max_difference(torch.tensor(outcome["cpp"]), eager)
        return outcome

    with tempfile.TemporaryDirectory(prefix=".ec-", dir=cfg.out) as work:
        result["programs"]["torchscript"] = against_eager(in_cpp(
            "torchscript", converted["file"], images, python, cache, compiler, work))
        result["max_abs_diff"] = result["programs"]["torchscript"]["max_abs_diff"]
        if save is not None:  # the handout's part, shown whole if the rest is stopped
            save(result)
        result["programs"]["aoti"] = against_eager(aoti_in_cpp(cfg, model, images, cache,
                                                               compiler, work))
    return result


def in_cpp(name, model_file, images, expected, cache, compiler, work):
    """Build program `name` (once per source and torch), run it on `model_file` and `images`,
    and compare its outputs with `expected`, Python's. A failure is a one-line `error`."""
    outcome = {"build": None, "printed": None, "python": expected.tolist(), "cpp": None,
               "max_abs_diff": None, "error": None}
    images_file, logits_file = os.path.join(work, "images.f32"), os.path.join(work, "logits.f32")
    images.contiguous().numpy().tofile(images_file)  # raw float32, as cpp/float32_io.h reads it
    try:
        program, outcome["build"] = build(name, cache, compiler, announce=notice)
        outcome["printed"] = run(program, [model_file, images_file, str(len(images)),
                                                    logits_file]).strip()
    except BuildError as error:
        outcome["error"] = str(error)
        return outcome
    cpp = torch.from_file(logits_file, size=expected.numel(), dtype=torch.float32)
    cpp = cpp.view_as(expected)  # (N, 10)
    outcome.update(cpp=cpp.tolist(), max_abs_diff=max_difference(cpp, expected))
    return outcome


def aoti_in_cpp(cfg, model, images, cache, compiler, work):
    """infer's AOTInductor package of `model`, run from C++ and from Python, compared; or why
    not (left out under --quick, or the reason this platform cannot compile one)."""
    if cfg.quick:
        return {"skipped": "left out under --quick: compiling the AOTInductor package takes a "
                           "minute or more on a CPU (run without --quick to include it)"}
    package = os.path.join(work, "model.pt2")
    notice("ec: compiling the AOTInductor package (a minute or more on a CPU)")
    try:
        with torch.inference_mode():
            with Timer() as clock:
                torch._inductor.aoti_compile_and_package(export_program(model, images),
                                                         package_path=package)
            python = torch._inductor.aoti_load_package(package)(images)  # (N, 10)
    except Exception as error:  # no compiler torch accepts, an unsupported platform, ...
        return {"skipped": f"AOTInductor cannot compile the model here: {one_line(error)}"}
    outcome = in_cpp("aoti", package, images, python, cache, compiler, work)
    outcome["compile_s"] = clock.elapsed
    return outcome



# ----------------------------------------------------------------------------------------
# Printing


def render_extra_credit(result):
    parts = [f"{describe_model(result)} The C++ programs are built with {result['compiler']} "
             f"against the LibTorch inside the installed torch {result['torch_version']}, and "
             f"run on the first {plural(len(result['labels']), 'test image')}, the images "
             "Python runs on, exchanged as raw float32 files."]
    titles = {"torchscript": "C7's TorchScript file in C++ (cpp/run_torchscript.cpp)",
              "aoti": "Beyond the handout: infer's AOTInductor package in C++ (cpp/run_aoti.cpp)"}
    for name, outcome in result["programs"].items():
        parts.append(f"### {titles[name]}\n\n" + render_program(outcome, result["labels"]))
    if result["max_abs_diff"] is not None:
        parts.append(f"Largest difference between the C++ and the Python outputs of C7's file: "
                     f"{result['max_abs_diff']:.1e}"
                     + (" (under 1e-5: the same outputs)." if result["max_abs_diff"] < 1e-5
                        else " (1e-5 or more: the outputs differ)."))
    return "\n\n".join(parts)


def render_program(outcome, labels):
    """One C++ program's build and outputs beside Python's."""
    if outcome.get("skipped"):
        return f"Skipped: {outcome['skipped']}."
    build = outcome["build"]
    if build is None:
        built = ""
    elif build["cached"]:
        built = f"Built by an earlier run, kept in {build['program']}.\n\n"
    else:
        built = f"Built now in {build['build_s']:.0f} s:\n\n```\n{build['command']}\n```\n\n"
    if outcome["error"]:
        return f"{built}Failed: {outcome['error']}"
    python, cpp = outcome["python"], outcome["cpp"]
    classes = [[index, labels[index], max(range(10), key=python[index].__getitem__),
                max(range(10), key=cpp[index].__getitem__),
                f"{max(abs(a - b) for a, b in zip(python[index], cpp[index])):.1e}"]
               for index in range(len(labels))]
    logits = [[k, f"{python[0][k]:+.6f}", f"{cpp[0][k]:+.6f}",
               f"{abs(python[0][k] - cpp[0][k]):.1e}"] for k in range(len(python[0]))]
    compiled = (f" The package took {outcome['compile_s']:.0f} s to compile."
                if "compile_s" in outcome else "")
    return (f"{built}The program printed: `{outcome['printed']}`.{compiled}\n\n"
            + markdown_table(["image", "label", "Python's class", "C++'s class",
                              "largest difference"], classes)
            + "\n\nThe 10 outputs (logits) of image 0:\n\n"
            + markdown_table(["class", "Python", "C++", "difference"], logits)
            + f"\n\nLargest difference over all outputs: {outcome['max_abs_diff']:.1e} from "
            f"Python running the same file, {outcome['eager_max_abs_diff']:.1e} from the eager "
            "model.")


if __name__ == "__main__":
    compiler = find_compiler()
    if compiler is None:
        print("libtorch.py: no C++ compiler found ($CXX, g++, c++ or clang++)", file=sys.stderr)
        sys.exit(2)
    for source in PROGRAMS.values():
        print(" ".join(build_command(compiler, f"cpp/{source}", os.path.splitext(source)[0])))
