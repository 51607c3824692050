"""Build and run the C++ programs in cpp/ against the torch that Python uses.

    python libtorch.py        # the g++ command that builds each program in cpp/, on this machine

The torch wheel carries LibTorch: its headers in torch/include, its libraries in torch/lib. So
g++ builds against those directly, and the C++ side is always the same version as the Python
side. (CMake's find_package(Torch) refuses a CUDA wheel on a machine without the CUDA toolkit;
cpp/CMakeLists.txt is for a separately downloaded LibTorch.) A build is kept in a cache folder
under the name of its source's hash, so it is compiled once per source and torch version.
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time

import torch

CPP_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpp")
PROGRAMS = {"torchscript": "run_torchscript.cpp", "aoti": "run_aoti.cpp"}
COMPILERS = ("g++", "c++", "clang++")  # tried in this order after $CXX
BUILD_TIMEOUT_S = 900  # a build takes 20-70 s on 2 cores; far more means something is wrong
RUN_TIMEOUT_S = 300


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


if __name__ == "__main__":
    compiler = find_compiler()
    if compiler is None:
        print("libtorch.py: no C++ compiler found ($CXX, g++, c++ or clang++)", file=sys.stderr)
        sys.exit(2)
    for source in PROGRAMS.values():
        print(" ".join(build_command(compiler, f"cpp/{source}", os.path.splitext(source)[0])))
