"""Helpers shared by the test files: the quiet set-up, a temporary results folder, lab.py run
in this process, the faults' one-line shape, tiny configurations, a torchrun-like environment
for spawned ranks, the networks and answers that more than one test file checks, and the
tiny trained weights and C++ build that 2026's Part B tests share."""

import contextlib
import functools
import io
import json
import logging
import os
import socket
import tempfile
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch

import handouts
import lab
import report
from lab import Config, q3_sgd_parameters, q4_adam_parameters
from parallel import weights_digest
from resnet import ResNet18

HERE = Path(__file__).resolve().parent
TINY = ["--dataset", "synthetic", "--train-size", "32", "--test-size", "20",
        "--batch-size", "16", "--epochs", "1", "--num-workers", "0"]
CPU = torch.device("cpu")
TOLERANCE = 1e-5  # float32 on the CPU: the ways reorder sums, they compute the same thing


def only_these_items(*names):
    """The default handout cut down to lab.EXERCISES' `names`, no extras, while the `with`
    lasts: `all` runs these alone, in this order."""
    cut = handouts.Handout("stand-in", handouts.as_in_lab_py(*names), extras=())
    return mock.patch.dict(handouts.HANDOUTS, {Config.handout: cut})


def quiet_module():
    """Send the lab's progress lines and tables to a buffer while a test module runs, so that
    `python -m unittest` shows only unittest's own output (it keeps the stream it started with)."""
    quiet = contextlib.ExitStack()
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    unittest.addModuleCleanup(quiet.close)
    # torch's one note when it compiles on the CPU ("No CUDA runtime is found"), logged to the
    # stderr it found at import, past the redirection above.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_environment(rank, world_size, port):
    """What torchrun would give process `rank` of a one-machine world."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}


def run_lab(*args):
    """lab.main(args) in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = lab.main(list(args))
    return status, out.getvalue(), err.getvalue()


def one_line(test, status, err, message):
    """The fault's shape: status 2, one line on stderr naming it, no traceback."""
    test.assertEqual(status, 2, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("epoch ")]
    test.assertEqual(len(lines), 1, err)  # beside the progress of an epoch that trained
    test.assertIn(message, err)
    test.assertNotIn("Traceback", err)


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)
        self.out = str(self.tmp / "results")

    def tearDown(self):
        self._tmp.cleanup()

    def load(self, name):
        with open(os.path.join(self.out, f"{name}.json")) as file:
            return json.load(file)


def tiny_config(**changes):
    return replace(Config(dataset="synthetic", num_workers=0, batch_size=16, lr=0.01,
                          epochs=2, test_batch_size=16), **changes)


def config(batch_norm):
    """What Q1-Q4 read of a configuration."""
    return Config(batch_norm=batch_norm)


@functools.cache
def q3_q4_results():
    """Q3's and Q4's answers by (optimizer, batch_norm), worked out once for the classes that
    read them (the lab's answers and their rendering)."""
    questions = {"sgd": q3_sgd_parameters, "adam": q4_adam_parameters}
    return {(name, bn): question(config(bn))
            for name, question in questions.items() for bn in (True, False)}


def network(batch_norm):
    """A seeded ResNet-18 in eval mode whose BatchNorm layers are far from the identity."""
    torch.manual_seed(0)
    model = ResNet18(batch_norm=batch_norm)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def relative_difference(outputs, expected):
    return (outputs - expected).abs().max().item() / expected.abs().max().item()


@functools.cache
def shared_folder(purpose):
    """The path of a temporary folder kept for the whole test process (the cache holds it) and
    removed at its exit: for what more than one test file builds or trains once."""
    return tempfile.TemporaryDirectory(prefix=f"lab-test-{purpose}-")


def shared_cpp_build():
    """libtorch.CPP_CACHE patched to one folder per test process: the extra credit's C++
    program is built once, however many results folders run it."""
    import libtorch  # here: only the Part B tests need it
    return mock.patch.object(libtorch, "CPP_CACHE", shared_folder("cpp-build").name)


@functools.cache
def trained_weights():
    """(results folder, Config, digests) of one tiny C1 run (2 epochs on 32 synthetic images),
    trained once per test process: the weights 2026's Part B starts from, and the digest of
    the weights at each write, in order."""
    out = os.path.join(shared_folder("part-b").name, "results")
    kept = []
    real_write = report.write_weights

    def record(path, model):
        kept.append(weights_digest(model))
        real_write(path, model)

    with mock.patch.object(report, "write_weights", record):
        status, _, err = run_lab("c1", *TINY, "--epochs", "2", "--out", out)
    assert status == 0, err
    cfg = Config(dataset="synthetic", train_size=32, test_size=20, batch_size=16, epochs=2,
                 num_workers=0, out=out)
    return out, cfg, tuple(kept)
