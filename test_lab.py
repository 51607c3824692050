"""Tests for the lab's core and its experiments: `python -m unittest` (CPU only, offline).

Each test checks something that could be wrong: a known figure, an invariant, or the same
thing computed two ways. Training runs use tiny synthetic slices so the suite takes minutes.
"""

import ast
import contextlib
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import data
import cli
import lab
import render
import report
import speed
import timing
import train
from resnet import ResNet18

HERE = Path(__file__).resolve().parent
TINY = ["--dataset", "synthetic", "--train-size", "32", "--test-size", "20",
        "--batch-size", "16", "--epochs", "1", "--num-workers", "0"]


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


setUpModule = quiet_module


def flat_keys(value, path=""):
    """Every key path in a results file ("/runs/best/summary/epoch_time"), a list by its first
    item."""
    keys = set()
    if isinstance(value, dict):
        for key, item in value.items():
            keys |= {f"{path}/{key}"} | flat_keys(item, f"{path}/{key}")
    elif isinstance(value, list) and value:
        keys |= flat_keys(value[0], path + "[]")
    return keys


def run_lab(*args):
    """lab.main(args) in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = lab.main(list(args))
    return status, out.getvalue(), err.getvalue()


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


# ------------------------------------------------------------------------------------------
# The model


class ResNetTest(unittest.TestCase):
    def test_parameter_counts(self):
        count = lambda m: sum(p.numel() for p in m.parameters())
        self.assertEqual(count(ResNet18()), 11_173_962)
        self.assertEqual(count(ResNet18(batch_norm=False)), 11_164_362)

    def test_without_batchnorm_has_no_batchnorm_state_or_placeholders(self):
        model = ResNet18(batch_norm=False)
        self.assertEqual(list(model.buffers()), [])
        kinds = {type(m).__name__ for m in model.modules()}
        self.assertFalse(kinds & {"BatchNorm2d", "Identity"}, kinds)
        self.assertFalse(any("bn" in name for name, _ in model.named_parameters()))

    def test_layer_names_follow_the_familiar_layout(self):
        names = {name for name, _ in ResNet18().named_modules()}
        for name in ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer2.0.shortcut.0",
                     "layer2.0.shortcut.1", "layer4.1.conv2", "linear"]:
            self.assertIn(name, names)
        self.assertNotIn("layer1.0.shortcut.0", names)  # identity shortcut: nothing in it

    def test_no_convolution_has_a_bias_and_output_shape(self):
        model = ResNet18()
        self.assertTrue(all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d)))
        self.assertEqual(model.linear.in_features, 512)
        for batch_norm in (True, False):
            out = ResNet18(batch_norm=batch_norm)(torch.randn(2, 3, 32, 32))
            self.assertEqual(tuple(out.shape), (2, 10))


# ------------------------------------------------------------------------------------------
# The timers


class FakeDevice:
    """Stands in for a GPU: work 'queued' on it takes `pending` seconds to finish at a sync."""

    def __init__(self):
        self.pending = 0.0
        self.syncs = 0

    def synchronize(self, device=None):
        self.syncs += 1
        time.sleep(self.pending)
        self.pending = 0.0


class TimingTest(unittest.TestCase):
    def test_windows_synchronise_a_cuda_device_at_both_ends(self):
        fake = FakeDevice()
        with mock.patch.object(torch.cuda, "synchronize", fake.synchronize):
            timer = timing.EpochTimer("cuda")
            with timer.epoch():
                with timer.data():
                    pass
                with timer.train():
                    pass
        self.assertEqual(fake.syncs, 6)  # two per window, three windows

    def test_queued_work_is_charged_to_the_window_that_queued_it(self):
        # Without the closing sync, 0.2 s of "GPU work" would land in the next data window.
        fake = FakeDevice()
        with mock.patch.object(torch.cuda, "synchronize", fake.synchronize):
            timer = timing.EpochTimer("cuda")
            with timer.epoch():
                with timer.train():
                    fake.pending = 0.2          # queue work and return at once
                with timer.data():
                    pass
        self.assertGreaterEqual(timer.train_time, 0.2)
        self.assertLess(timer.data_time, 0.1)

    def test_windows_add_up_to_the_epoch(self):
        timer = timing.EpochTimer("cpu")
        with timer.epoch():
            for _ in range(3):
                with timer.data():
                    time.sleep(0.01)
                with timer.train():
                    time.sleep(0.02)
        self.assertGreaterEqual(timer.data_time, 0.03)
        self.assertGreaterEqual(timer.train_time, 0.06)
        self.assertGreaterEqual(timer.other_time, 0.0)
        self.assertAlmostEqual(timer.data_time + timer.train_time + timer.other_time,
                               timer.epoch_time, places=12)
        self.assertLess(timer.other_time, 0.01 * timer.epoch_time + 0.005)
        self.assertGreaterEqual(timer.first_batch_time, 0.01)
        self.assertLess(timer.first_batch_time, timer.data_time)

    def test_timer_and_event_timer_measure_a_known_wait(self):
        for timer_class in (timing.Timer, timing.CudaEventTimer):
            with timer_class("cpu") as timer:
                time.sleep(0.05)
            self.assertGreaterEqual(timer.elapsed, 0.05)
            self.assertLess(timer.elapsed, 1.0)

    def test_null_timer_is_the_same_loop_untimed(self):
        # The baseline of `python speed.py overhead`: same training, nothing timed.
        batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))] * 2
        losses = {}
        for timer_class in (timing.EpochTimer, timing.NullTimer):
            torch.manual_seed(0)
            model = ResNet18()
            optimizer = train.make_optimizer("sgd", model.parameters(), lr=0.01)
            result = train.train_one_epoch(model, batches, optimizer, torch.device("cpu"),
                                           timer=timer_class("cpu"))
            losses[timer_class] = result["train_loss"]
            timed = timer_class is timing.EpochTimer
            self.assertEqual(result["train_time"] > 0, timed)
            self.assertEqual(result["epoch_time"] > 0, timed)
        self.assertEqual(losses[timing.EpochTimer], losses[timing.NullTimer])

    def test_timed_batches_charge_worker_start_to_the_first_data_window(self):
        timer = timing.EpochTimer("cpu")

        class SlowStart:
            def __iter__(self):
                time.sleep(0.05)  # like starting worker processes
                return iter([1, 2, 3])

        with timer.epoch():
            self.assertEqual(list(train.timed_batches(SlowStart(), timer)), [1, 2, 3])
        self.assertGreaterEqual(timer.first_batch_time, 0.05)


# ------------------------------------------------------------------------------------------
# The data


class SyntheticDataTest(unittest.TestCase):
    def test_same_seed_same_data_and_cifar_shaped(self):
        a = data.SyntheticCIFAR(200, seed=3)
        b = data.SyntheticCIFAR(200, seed=3)
        c = data.SyntheticCIFAR(200, seed=4)
        test = data.SyntheticCIFAR(200, seed=3, train=False)
        self.assertTrue(np.array_equal(a.data, b.data))
        self.assertEqual(a.targets, b.targets)
        self.assertFalse(np.array_equal(a.data, c.data))
        self.assertFalse(np.array_equal(a.data, test.data))
        self.assertEqual(a.data.shape, (200, 32, 32, 3))
        self.assertEqual(a.data.dtype, np.uint8)
        self.assertEqual(sorted(set(a.targets)), list(range(10)))
        self.assertEqual(np.bincount(a.targets).tolist(), [20] * 10)  # balanced

    def test_learnable_through_the_labs_augmentation(self):
        # A small CNN trained on augmented images must beat chance on held-out images.
        torch.manual_seed(0)
        train_set = data.SyntheticCIFAR(1000, seed=0, transform=data.train_transform())
        test_set = data.SyntheticCIFAR(300, seed=0, train=False, transform=data.test_transform())
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        criterion = nn.CrossEntropyLoss()
        images, labels = next(iter(data.make_loader(test_set, 300, False, 0)))
        with torch.no_grad():
            loss_before = criterion(model(images), labels).item()
        for _ in range(3):
            for x, y in data.make_loader(train_set, 50, True, 0):
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            outputs = model(images)
        self.assertLess(criterion(outputs, labels).item(), loss_before - 0.3)
        self.assertGreater((outputs.argmax(1) == labels).float().mean().item(), 0.3)

    def test_transforms_are_the_assignments(self):
        names = [type(t).__name__ for t in data.train_transform().transforms]
        self.assertEqual(names, ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"])
        crop, flip, _, normalize = data.train_transform().transforms
        self.assertEqual((crop.size, crop.padding, flip.p), ((32, 32), 4, 0.5))
        self.assertEqual((normalize.mean, normalize.std), (data.MEAN, data.STD))
        names = [type(t).__name__ for t in data.test_transform().transforms]
        self.assertEqual(names, ["ToTensor", "Normalize"])

    def test_seeded_subset_is_fixed(self):
        full = list(range(100))
        a = data.seeded_subset(full, 10, seed=1)
        b = data.seeded_subset(full, 10, seed=1)
        self.assertEqual(a.indices, b.indices)
        self.assertEqual(len(set(a.indices)), 10)
        self.assertNotEqual(a.indices, data.seeded_subset(full, 10, seed=2).indices)
        with self.assertRaises(data.DataError):
            data.seeded_subset(full, 101, seed=1)

    def test_workers_work_under_spawn(self):
        dataset = data.SyntheticCIFAR(8, seed=0, transform=data.train_transform())
        loader = data.make_loader(dataset, 4, True, num_workers=1,
                                  multiprocessing_context="spawn")
        batches = list(loader)
        self.assertEqual([tuple(x.shape) for x, _ in batches], [(4, 3, 32, 32)] * 2)


class DataSourceTest(TempDirTest):
    def test_auto_falls_back_to_synthetic_when_cifar_cannot_be_had(self):
        with mock.patch.object(data, "_download_cifar10", return_value="network unreachable"):
            train_set, test_set, info = data.load_datasets(
                "auto", self.tmp / "data", train_size=20, test_size=10)
        self.assertEqual(info["name"], "synthetic")
        self.assertIn("could not be downloaded", info["note"])
        self.assertEqual((len(train_set), len(test_set)), (20, 10))

    def test_cifar10_missing_and_not_downloadable_says_where_to_put_it(self):
        with mock.patch.object(data, "_download_cifar10", return_value="network unreachable"):
            with self.assertRaisesRegex(data.DataError, "cifar-10-python.tar.gz.*--data-path"):
                data.load_datasets("cifar10", self.tmp / "data")

    def test_partial_cifar10_says_how_to_fix_it(self):
        root = self.tmp / "data"
        (root / "cifar-10-batches-py").mkdir(parents=True)
        (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"truncated")
        for dataset in ("cifar10", "auto"):
            with mock.patch.object(data, "_download_cifar10", return_value="offline"):
                with self.assertRaisesRegex(data.DataError, "incomplete or corrupted.*Delete"):
                    data.load_datasets(dataset, root)

    def test_data_path_that_is_a_file_or_unwritable(self):
        afile = self.tmp / "afile"
        afile.write_text("not a folder")
        with self.assertRaisesRegex(data.DataError, "is a file"):
            data.load_datasets("cifar10", afile)
        with self.assertRaisesRegex(data.DataError, "cannot be created"):
            data.load_datasets("cifar10", afile / "data")

    def make_folder(self, root, classes):
        rng = np.random.default_rng(0)
        for split, count in (("train", 2), ("test", 1)):
            for name in classes:
                (root / split / name).mkdir(parents=True)
                for i in range(count):
                    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / split / name / f"{i}.png")

    def test_image_folder(self):
        root = self.tmp / "folder"
        self.make_folder(root, data.CIFAR10_CLASSES)
        train_set, test_set, info = data.load_datasets("folder", root)
        self.assertEqual((info["name"], len(train_set), len(test_set)), ("folder", 20, 10))
        image, label = train_set[3]
        self.assertEqual((tuple(image.shape), label), ((3, 32, 32), 1))  # alphabetical classes
        with self.assertRaisesRegex(data.DataError, "train/<class>"):
            data.load_datasets("folder", self.tmp)

    def test_image_folder_needs_ten_classes(self):
        root = self.tmp / "two"
        self.make_folder(root, ["cat", "dog"])
        with self.assertRaisesRegex(data.DataError, "2 class folders"):
            data.load_datasets("folder", root)


# ------------------------------------------------------------------------------------------
# C1, C2 and the command line


class TrainingTest(unittest.TestCase):
    def test_a_few_sgd_steps_on_synthetic_data_lower_the_loss(self):
        train_set = data.SyntheticCIFAR(64, seed=0, transform=data.test_transform())
        cfg = lab.Config(epochs=4, batch_size=32, num_workers=0)
        run = train.fit(replace(cfg, lr=0.02), train_set, train_set)
        losses = [e["train_loss"] for e in run["epochs"]]
        self.assertLess(losses[-1], losses[0], losses)

    def test_same_seed_same_initial_weights_and_same_data_order(self):
        cfg = lab.Config()
        a = train.make_model(cfg, torch.device("cpu")).state_dict()
        b = train.make_model(cfg, torch.device("cpu")).state_dict()
        self.assertTrue(all(torch.equal(a[k], b[k]) for k in a))
        dataset = list(range(50))
        order = lambda: [x.tolist() for x in data.make_loader(dataset, 10, True, 0, seed=5)]
        self.assertEqual(order(), order())

    def test_a_nan_loss_is_reported_as_diverged(self):
        train_set = data.SyntheticCIFAR(32, seed=0, transform=data.test_transform())
        cfg = lab.Config(epochs=3, batch_size=16, num_workers=0, lr=1e30)
        history = train.fit(cfg, train_set, train_set)["epochs"]
        self.assertTrue(history[-1]["diverged"])
        self.assertLess(len(history), 3)  # it stops at the diverged epoch


class CommandLineTest(TempDirTest):
    def test_c1_end_to_end(self):
        status, out, err = run_lab("c1", *TINY, "--epochs", "2", "--out", self.out)
        self.assertEqual(status, 0, err)
        result = self.load("c1")
        self.assertTrue(result["complete"])
        self.assertEqual(result["dataset"]["name"], "synthetic")
        self.assertEqual(result["torch_version"], torch.__version__)
        self.assertEqual(result["config"]["epochs"], 2)
        self.assertEqual([e["epoch"] for e in result["epochs"]], [1, 2])
        for epoch in result["epochs"]:
            self.assertTrue(math.isfinite(epoch["train_loss"]))
            self.assertTrue(0 <= epoch["train_accuracy"] <= 100)
            self.assertTrue(0 <= epoch["test_accuracy"] <= 100)  # on by default for C1
            self.assertEqual(epoch["images"], 32)
        self.assertIn("synthetic", out)
        self.assertIn("test top-1", out)

    def test_c2_times_add_up(self):
        status, out, err = run_lab("c2", *TINY, "--epochs", "2", "--out", self.out)
        self.assertEqual(status, 0, err)
        result = self.load("c2")
        for epoch in result["epochs"]:
            self.assertGreater(epoch["data_time"], 0)
            self.assertGreater(epoch["train_time"], 0)
            self.assertIsNone(epoch["test_accuracy"])  # off by default outside C1
            parts = epoch["data_time"] + epoch["train_time"]
            self.assertAlmostEqual(parts + epoch["other_time"], epoch["epoch_time"], places=9)
            self.assertGreaterEqual(parts, 0.99 * epoch["epoch_time"])
        self.assertIn("data+train", out)
        self.assertIn("mean", out)

    def test_bad_input_gets_one_line_and_status_2(self):
        afile = self.tmp / "afile"
        afile.write_text("x")
        cases = [
            (["c9"], "choose one of: c1, c2"),
            (["c1", "--optimizer", "rmsprop"], "choose from 'sgd', 'nesterov', 'adagrad'"),
            (["c1", "--epochs", "0"], "--epochs: must be a positive"),
            (["c1", "--train-size", "-5"], "--train-size: must be a positive"),
            (["c1", "--batch-size", "0"], "--batch-size: must be a positive"),
            (["c1", "--num-workers", "-1"], "--num-workers: must be 0 or more"),
            (["c1", "--dataset", "cifar10", "--data-path", str(afile)], "is a file"),
            (["c1", "--dataset", "cifar10", "--data-path", str(afile / "x")], "cannot be created"),
            (["c1", "--out", str(afile)], "--out"),
            (["c6", "--profile"], "--profile is for c2, c4, not c6"),
            (["c4", "--loader", "device"], "--loader device has none"),
            (["c1", "--seed", "-1"], "--seed must be"),
            (["c1", "--out", "/proc/no/such"], "cannot be created"),
        ]
        if not torch.cuda.is_available():
            cases.append((["c1", "--device", "cuda"], "no CUDA GPU"))
            cases.append((["c1", "--cuda"], "no CUDA GPU"))
        for args, message in cases:
            with self.subTest(args=args):
                if "--out" not in args:  # keep the checkout free of a results folder
                    args = [*args, "--out", self.out]
                status, out, err = run_lab(*args)
                self.assertEqual(status, 2)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                self.assertIn(message, err)
                self.assertNotIn("Traceback", err)

    def test_corrupted_cifar10_on_the_command_line(self):
        root = self.tmp / "data"
        root.mkdir()
        (root / "cifar-10-python.tar.gz").write_bytes(b"half a download")
        with mock.patch.object(data, "_download_cifar10", return_value="offline"):
            status, _, err = run_lab("c1", "--dataset", "cifar10", "--data-path", str(root),
                                    "--out", self.out)
        self.assertEqual(status, 2)
        self.assertIn("incomplete or corrupted", err)

    def test_quick_chooses_small_slices_unless_given(self):
        _, cfg, _, _ = cli.parse_args(["all", "--quick", "--epochs", "3"], lab.Config,
                                      lab.EXERCISES)
        self.assertEqual((cfg.train_size, cfg.test_size, cfg.epochs),
                         (lab.Config.QUICK["train_size"], lab.Config.QUICK["test_size"], 3))

    def test_every_option_has_help(self):
        for action in cli.build_parser(lab.Config(), lab.EXERCISES)._actions:
            self.assertTrue(action.help, action.option_strings)

    def test_ctrl_c_keeps_finished_epochs_and_exits_130(self):
        args = [sys.executable, str(HERE / "lab.py"), "c1", *TINY, "--epochs", "50",
                "--no-eval", "--out", self.out]
        process = subprocess.Popen(args, cwd=HERE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        path = Path(self.out) / "c1.json"
        deadline = time.time() + 120
        while time.time() < deadline and not path.exists():
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # an impatient second Ctrl-C, during the shutdown
        _, err = process.communicate(timeout=60)
        self.assertEqual(process.returncode, 130, err)
        self.assertIn("interrupted", err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Exception ignored", err)
        result = self.load("c1")
        self.assertFalse(result["complete"])
        self.assertGreaterEqual(len(result["epochs"]), 1)


# ------------------------------------------------------------------------------------------
# C3-C7 and `all`


class ExperimentsTest(TempDirTest):
    def cfg(self, **changes):
        base = lab.Config(dataset="synthetic", train_size=32, test_size=20, batch_size=16,
                          epochs=1, num_workers=0, out=self.out, repeats=2)
        return replace(base, **changes)

    def test_c3_best_count_is_measured_and_fastest(self):
        with mock.patch.object(lab, "usable_cores", return_value=2):
            result = lab.c3_worker_sweep(self.cfg(max_workers=4))
        counts = [p["num_workers"] for p in result["points"]]
        self.assertEqual(counts, [0, 2, 4])  # the core count joins 0, 4, 8, ...
        best = min(result["points"], key=lambda p: p["median"])
        self.assertEqual(result["best_workers"], best["num_workers"])
        for point in result["points"]:
            self.assertEqual(len(point["times"]), 2)
            self.assertLessEqual(point["min"], point["median"])
            self.assertLessEqual(point["median"], point["max"])
        self.assertIn("<- best", render.render_c3(result))

    def test_c3_without_max_stops_when_time_stops_decreasing(self):
        times = iter([5.0, 5.0, 3.0, 3.0, 4.0, 4.0])  # 0 workers, 4 workers, 8 workers
        with mock.patch.object(lab, "loader_epoch_time", lambda cfg, n: next(times)), \
                mock.patch.object(lab, "usable_cores", return_value=8):
            result = lab.c3_worker_sweep(self.cfg())
        self.assertEqual([p["num_workers"] for p in result["points"]], [0, 4, 8])
        self.assertEqual(result["best_workers"], 4)
        self.assertIn("not faster", result["stopped_because"])

    def test_c4_reads_c3s_result(self):
        # A real C3 results file (a hand-made one without run_exercise's header is rerun).
        report.run_exercise("c3", lab.EXERCISES["c3"], self.cfg(max_workers=0, repeats=1),
                            io.StringIO())
        result = lab.c4_workers_compared(self.cfg())
        self.assertEqual(result["best_workers"], 0)
        self.assertIn("c3.json", result["best_source"])
        self.assertEqual(result["runs"]["one_worker"]["num_workers"], 1)
        self.assertEqual(result["runs"]["best"]["num_workers"], 0)
        self.assertIn("With 1 worker, the loop waited", render.render_c4(result))

    def test_a_count_measured_on_another_slice_is_not_reused(self):
        # What `c3 --quick` leaves behind: a real sweep on 256 images (0 workers only).
        report.run_exercise("c3", lab.EXERCISES["c3"],
                            self.cfg(train_size=256, max_workers=0, repeats=1), io.StringIO())
        sweep = mock.Mock(return_value={"best_workers": 4})
        with mock.patch.object(lab, "c3_worker_sweep", sweep):
            best, source = lab.best_worker_count(self.cfg(train_size=32))
        self.assertEqual(best, 4)
        self.assertEqual(sweep.call_args[0][0].train_size, 32)  # swept on this run's slice
        self.assertIn("another train_size", source)
        self.assertIn("measured on 32 training images", source)
        with mock.patch.object(lab, "c3_worker_sweep", sweep):  # the same slice: reused
            self.assertEqual(lab.best_worker_count(self.cfg(train_size=256))[0], 0)

    def test_c4_explanation_follows_the_numbers(self):
        def run(data_time, first, train_time):
            return {"summary": {"data_time": data_time, "first_batch_time": first,
                                "train_time": train_time,
                                "epoch_time": data_time + train_time}}

        hidden = render.explain_c4(run(2.0, 0.1, 10.0), run(0.3, 0.25, 10.0), 4)
        self.assertIn("With 1 worker, the loop waited 2.000 s", hidden)
        self.assertIn("Loading is not hidden", hidden)  # 1.9 s after the start: 16%
        self.assertIn("After the start, loading is hidden", hidden)  # 0.05 s after the start
        self.assertIn("+1.700 s is in the wait for data and +0.000 s in training", hidden)
        self.assertIn("stayed within 5%", hidden)
        contended = render.explain_c4(run(0.1, 0.05, 12.0), run(0.1, 0.05, 10.0), 4)
        self.assertIn("changed by 17%", contended)
        self.assertIn("With no workers the main process loads every batch",
                      render.explain_c4(run(1.0, 0.1, 10.0), run(0.5, 0.01, 10.0), 0))

    def test_c3_core_explanation_only_claims_what_was_timed(self):
        point = lambda n, t, spread=0.1: {"num_workers": n, "median": t, "min": t - spread,
                                          "max": t + spread}
        untimed = [point(0, 5.0), point(2, 3.0)]
        self.assertIn("No count above 2 was timed", render.explain_cores(untimed, untimed[1], 2))
        agree = [point(0, 5.0), point(2, 3.0), point(4, 3.5)]
        self.assertIn("The sweep agrees", render.explain_cores(agree, agree[1], 2))
        noisy = [point(0, 5.0), point(2, 3.0, 0.5), point(4, 2.9, 0.5)]
        self.assertIn("spreads overlap: noise", render.explain_cores(noisy, noisy[2], 2))
        busy = [point(0, 5.0), point(2, 3.0), point(8, 2.0)]
        self.assertIn("8 workers were still 33% faster", render.explain_cores(busy, busy[2], 2))

    def test_c5_without_a_gpu_marks_the_gpu_side_skipped(self):
        with mock.patch.object(lab, "gpu_device", return_value=(None, "no GPU here")):
            result = lab.c5_cpu_vs_gpu(self.cfg(best_workers=0))
        self.assertEqual(list(result["runs"]), ["cpu"])
        self.assertEqual(result["gpu"]["skipped"], "no GPU here")
        self.assertIsNone(result["speedup"])
        self.assertIn("skipped", render.render_c5(result))

    def test_c6_five_optimizers_from_identical_weights_with_the_best_workers(self):
        result = lab.c6_optimizers(self.cfg(best_workers=1))
        self.assertEqual(list(result["runs"]), ["sgd", "nesterov", "adagrad", "adadelta", "adam"])
        self.assertEqual({run["num_workers"] for run in result["runs"].values()}, {1})
        self.assertEqual(result["best_source"], "--best-workers")
        hashes = {r["model"]["initial_weights_sha256"] for r in result["runs"].values()}
        self.assertEqual(len(hashes), 1)
        for run in result["runs"].values():
            for epoch in run["epochs"]:
                self.assertTrue(epoch["diverged"] or math.isfinite(epoch["train_loss"]))

    def test_c6_a_diverging_optimizer_does_not_stop_the_others(self):
        result = lab.c6_optimizers(self.cfg(lr=1e30, epochs=2, best_workers=0))
        self.assertEqual(len(result["runs"]), 5)
        self.assertTrue(any(r["summary"]["diverged_at"] for r in result["runs"].values()))
        self.assertIn("diverged", render.render_c6(result))

    def test_c7_model_has_no_batchnorm(self):
        result = lab.c7_without_batchnorm(self.cfg(best_workers=0))
        without, with_bn = result["runs"]["without_bn"], result["runs"]["with_bn"]
        self.assertEqual(without["model"]["batchnorm_layers"], 0)
        self.assertEqual(without["model"]["parameters"], 11_164_362)
        self.assertEqual(with_bn["model"]["batchnorm_layers"], 20)
        self.assertNotEqual(without["model"]["initial_weights_sha256"],
                            with_bn["model"]["initial_weights_sha256"])
        self.assertEqual(result["batch_norm_source"], "a fresh run")

    def test_all_writes_every_section_and_continues_after_an_interrupt(self):
        args = ["all", *TINY, "--max-workers", "0", "--repeats", "1", "--out", self.out]
        real_run = report.run_exercise
        ran = []

        def stop_at_c5(name, exercise, cfg, stream=None):
            if name == "c5":
                raise KeyboardInterrupt
            ran.append(name)
            return real_run(name, exercise, cfg, stream)

        with mock.patch.object(report, "run_exercise", stop_at_c5):
            status, _, err = run_lab(*args)
        self.assertEqual(status, 130, err)
        self.assertEqual(ran, ["c1", "c2", "c3", "c4"])
        partial = (Path(self.out) / "REPORT.md").read_text()
        self.assertIn("The sweep stopped because", partial)  # C3 made it in
        self.assertIn("## C5: training on the GPU against the CPU\n\nNot run.", partial)

        ran.clear()

        def record(name, exercise, cfg, stream=None):
            ran.append(name)
            return real_run(name, exercise, cfg, stream)

        with mock.patch.object(report, "run_exercise", record):
            status, out, err = run_lab(*args)
        self.assertEqual(status, 0, err)
        self.assertEqual(ran, ["c5", "c6", "c7", "q1", "q2", "q3", "q4", "summary"])
        self.assertEqual(out.count("skipped (--force reruns it)"), 4)
        text = (Path(self.out) / "REPORT.md").read_text()
        for exercise in lab.EXERCISES.values():
            if exercise.in_lab:
                self.assertIn(f"## {exercise.title}", text)
        self.assertNotIn("Not run.", text)
        self.assertIn("The BatchNorm run is C6's SGD run", text)
        self.assertIn("**20 convolutional layers**", text)
        c4 = self.load("c4")
        self.assertEqual(c4["best_workers"], self.load("c3")["best_workers"])
        # The oracle: every key the results files had before the layout change is still there;
        # new keys are only further settings, Q3/Q4's code listing, C6/C7's worker count and
        # each epoch's last step.
        expected = json.loads((HERE / "test_results_keys.json").read_text())
        for name, keys in expected.items():
            found = flat_keys(self.load(name))
            self.assertEqual(set(keys) - found, set(), name)
            added = {key for key in found - set(keys) if not key.startswith("/config/")
                     and not key.endswith("/last_train_time")}
            self.assertLessEqual(added, {"/code", "/best_workers", "/best_source"}, name)


class WordsTest(TempDirTest):
    """What the lab says is true: the data named as used, gradients, static shapes."""

    def test_synthetic_data_is_never_called_cifar10(self):
        _, _, info = data.load_datasets("synthetic", train_size=8, test_size=8)
        self.assertIn("not CIFAR-10's", info["note"])
        self.assertEqual(report.data_title(info), "synthetic CIFAR-shaped data (not CIFAR-10)")
        self.assertEqual(report.data_title({"name": "cifar10"}), "CIFAR-10")
        header = report.report_header(lab.Config(), {"dataset": info})
        self.assertTrue(header.startswith("# HPML lab report: ResNet-18 on synthetic"), header)

    def test_backward_accumulates_into_grad_as_q3_says(self):
        layer = nn.Linear(3, 1)
        for _ in range(2):
            layer(torch.ones(1, 3)).sum().backward()
        self.assertTrue(torch.equal(layer.weight.grad, torch.full((1, 3), 2.0)))  # 1 + 1
        text = render.render_q3(lab.q3_sgd_parameters(lab.Config()))
        self.assertIn("gradients accumulate", text)
        self.assertNotIn("rewritten", text)

    def test_a_negative_communication_time_is_not_a_broken_file(self):
        self.assertIsNone(report.MEASURE.match("communication_time"))  # a difference: may be < 0
        self.assertIsNotNone(report.MEASURE.match("train_time"))      # a duration: never < 0

    def test_options_that_cannot_apply_are_refused(self):
        for args, message in ((["all", "--loader", "device"], "c3 and c4 measure"),
                              (["c2", "--checkpoint", "w.pt"], "--checkpoint is for infer"),
                              (["c2", "--steps", "3"], "--steps is for ddp")):
            status, _, err = run_lab(*args, "--out", self.out)
            self.assertEqual(status, 2, err)
            self.assertIn(message, err)

    def test_compiled_training_uses_static_shapes(self):
        with mock.patch.object(torch, "compile") as compile_:
            train.compile_model(nn.Linear(1, 1))
        self.assertIs(compile_.call_args.kwargs["dynamic"], False)

    def test_c8_says_what_the_last_batchs_recompile_cost(self):
        runs = [{"mode": "eager", "epoch_times": [10.0, 9.0, 9.0],
                 "last_step_times": [0.5, 0.5, 0.5], "error": None},
                {"mode": "default", "epoch_times": [60.0, 6.0, 6.0],
                 "last_step_times": [20.5, 0.4, 0.4], "error": None}]
        result = {"runs": runs, "train_images": 300, "batch_size": 128, "epochs": 3,
                  "compiler_startup_time": 1.0, "note": None}
        result["analysis"] = speed.analyse_compile(result)
        text = render.explain_compile(result)
        self.assertIn("static shapes (dynamic=False)", text)
        self.assertIn("default 20.1 s", text)


class LayoutTest(unittest.TestCase):
    """The shape the project promises its readers, checked on the source itself."""

    modules = sorted(path.stem for path in HERE.glob("*.py") if not path.stem.startswith("test_"))

    def project_imports(self, name):
        tree = ast.parse((HERE / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
        return found & set(self.modules)

    def test_timing_imports_nothing_from_the_project(self):
        self.assertEqual(self.project_imports("timing"), set())

    def test_no_two_modules_import_each_other(self):
        imports = {name: self.project_imports(name) for name in self.modules}
        for name, imported in imports.items():
            for other in imported:
                self.assertNotIn(name, imports[other], f"{name} and {other}")

    def test_one_function_holds_the_training_step(self):
        holders = []
        for name in self.modules:
            for node in ast.walk(ast.parse((HERE / f"{name}.py").read_text())):
                if isinstance(node, ast.FunctionDef):
                    calls = {n.func.attr for n in ast.walk(node)
                             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
                    if {"zero_grad", "backward", "step"} <= calls:
                        holders.append(f"{name}.{node.name}")
        self.assertEqual(holders, ["train.train_step"])

    def test_progress_without_a_terminal_prints_every_tenth_of_an_epoch(self):
        stream = io.StringIO()  # not a terminal, like a log file
        progress = train.Progress("epoch 1/1", total=40, stream=stream)
        for seen in range(4, 41, 4):
            progress.batch(seen, torch.tensor(2.3 * seen), torch.tensor(seen // 10))
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 10, lines)
        self.assertTrue(all(line.startswith("epoch 1/1 [") for line in lines))

    def test_progress_survives_a_closed_stream(self):
        stream = io.StringIO()
        stream.close()
        progress = train.Progress("epoch 1/1", total=4, stream=stream)
        progress.batch(4, torch.tensor(1.0), torch.tensor(1))
        progress.done({"train_loss": 1.0, "train_accuracy": 25.0, "test_accuracy": None,
                       "data_time": 0.1, "train_time": 0.2, "epoch_time": 0.3,
                       "diverged": False})

    def test_unittest_output_has_no_progress_line_or_table(self):
        test = "test_lab.TrainingTest.test_a_nan_loss_is_reported_as_diverged"
        done = subprocess.run([sys.executable, "-m", "unittest", test], cwd=HERE,
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, "")
        self.assertNotIn("epoch 1/3", done.stderr)
        self.assertRegex(done.stderr.strip(), r"^\.\n-+\nRan 1 test in [0-9.]+s\n\nOK$")



# ------------------------------------------------------------------------------------------
# Options that cannot apply, numbers torch cannot hold, signals, a full /dev/shm


def child_processes(pid):
    """The ids of the processes whose parent is `pid`, read from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry))
    return children


def running(pid):
    """True while process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        return Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ended(process):
    """Stop `process` if it still runs, and close its pipe."""
    process.kill()
    process.wait()
    process.stderr.close()


class OptionBoundsTest(TempDirTest):
    def test_an_lr_that_float32_cannot_hold_is_refused_at_parse_time(self):
        with self.assertRaisesRegex(cli.UsageError, "1e39 is too large for float32"):
            cli.parse_args(["c2", "--lr", "1e39"], lab.Config, lab.EXERCISES)
        status, _, err = run_lab("c2", *TINY, "--lr", "1e39", "--out", self.out)
        self.assertEqual((status, len(err.strip().splitlines())), (2, 1), err)
        self.assertIn("at most 3.403e+38", err)
        self.assertFalse(os.path.exists(self.out))  # refused before anything was made
        largest = str(torch.finfo(torch.float32).max)
        self.assertEqual(cli.parse_args(["c2", "--lr", largest], lab.Config,
                                        lab.EXERCISES)[1].lr, float(largest))


class OptionApplicabilityTest(TempDirTest):
    """An option given where it cannot apply is refused, naming where it does apply."""

    def refused(self, *args):
        ran = AssertionError("the run started")  # neither data nor an exercise is touched
        runs = {name: replace(exercise, run=mock.Mock(side_effect=ran))
                for name, exercise in lab.EXERCISES.items()}
        with mock.patch.dict(lab.EXERCISES, runs), \
                mock.patch.object(report, "datasets_for", side_effect=ran):
            status, _, err = run_lab(*args, "--out", self.out)
        self.assertEqual(status, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertFalse(os.path.exists(self.out))  # refused before anything was made
        return err

    def test_infer_and_ddp_refuse_batch_size(self):
        for name in ("infer", "ddp"):
            with self.subTest(name):
                err = self.refused(name, "--batch-size", "8")
                self.assertIn(f"--batch-size is for c1, c2, c3, c4, c5, c6, c7, c8, bench, not "
                              f"{name}; {name} takes --batch-sizes", err)

    def test_sync_bn_outside_torchrun_is_refused(self):
        err = self.refused("c2", "--sync-bn", *TINY)
        self.assertIn("--sync-bn is for c1, c2, c6, c7 under torchrun; this run is one process",
                      err)

    def test_c6_refuses_optimizer(self):
        self.assertIn("--optimizer is for c1, c2, c4, c5, c8, bench, ddp, not c6",
                      self.refused("c6", "--optimizer", "adam"))

    def test_q1_refuses_compile(self):
        self.assertIn("--compile is for c1, c2, c4, c5, c6, c7, bench, not q1",
                      self.refused("q1", "--compile"))

    def test_the_hand_written_rules_now_come_from_the_registry(self):
        for args, message in ((["c2", "--checkpoint", "w.pt"], "--checkpoint is for infer, not c2"),
                              (["all", "--max-procs", "2"], "--max-procs is for ddp, not all"),
                              (["infer", "--steps", "3"], "--steps is for ddp, not infer"),
                              (["c2", "--force"], "--force is for all, not c2"),
                              (["c7", "--no-bn"], "--no-bn is for c1, c2, c4, c5, c6, q1"),
                              (["c3", "--num-workers", "2"], "--num-workers is for c1, c2, c8, "
                                                             "bench, not c3"),
                              (["q1", "--quick"], "--quick is for c1, c2, c3, c4, c5, c6, c7, "
                                                  "c8, bench, not q1")):
            with self.subTest(args=args):
                self.assertIn(message, self.refused(*args))
        _, cfg, _ = cli.parse_args(["all", "--num-workers", "0", "--best-workers", "1"],
                                   lab.Config, lab.EXERCISES)  # C1, C2 and C4-C7 take them
        self.assertEqual((cfg.num_workers, cfg.best_workers), (0, 1))

    def test_the_questions_accept_exactly_the_options_whose_fields_they_read(self):
        # The oracle: run each question on a Config that records which fields are read.
        read = set()

        class Recording(lab.Config):
            def __getattribute__(self, name):
                if not name.startswith("_"):
                    read.add(name)
                return super().__getattribute__(name)

        parser = cli.build_parser(lab.Config(), lab.EXERCISES)
        fields = {action.dest: cli.FIELD.get(action.dest, action.dest)
                  for action in parser._actions if action.option_strings
                  and action.dest != "help"}
        for name in ("q1", "q2", "q3", "q4", "summary"):
            with self.subTest(name), contextlib.redirect_stdout(io.StringIO()):
                read.clear()
                lab.EXERCISES[name].run(Recording())
                accepted = {field for dest, field in fields.items()
                            if cli.applies(dest, lab.EXERCISES[name], lab.EXERCISES)}
                self.assertEqual(accepted - {"out"}, read & set(fields.values()), name)


class SignalTest(TempDirTest):
    """SIGTERM and SIGHUP end a run as Ctrl-C does: one line, 128 + the signal's number, the
    finished epochs kept, the DataLoader's workers gone, the results folder unlocked."""

    def stop_during_an_epoch(self, signum, group=False):
        """Send `signum` to the run during an epoch with two workers: to the process alone
        (`kill`, `docker stop`), or with `group` to its whole process group, workers included
        (a closing terminal, `timeout`, Slurm, torchrun)."""
        args = [sys.executable, str(HERE / "lab.py"), "c2", "--dataset", "synthetic",
                "--train-size", "64", "--test-size", "20", "--batch-size", "16",
                "--epochs", "50", "--num-workers", "2", "--out", self.out]
        process = subprocess.Popen(args, cwd=HERE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=group)
        self.addCleanup(ended, process)
        saved, workers = Path(self.out) / "c2.json", []
        deadline = time.time() + 240
        while time.time() < deadline and len(workers) < 2:  # an epoch saved, the next one's
            workers = child_processes(process.pid) if saved.exists() else []  # workers up
            time.sleep(0.05)
        self.assertEqual(len(workers), 2, "no epoch with its two workers in 240 s")
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()
                 and not line.startswith("epoch ")]  # beside the progress of the epochs
        self.assertEqual(process.returncode, 128 + signum, err)
        self.assertEqual(lines, [f"interrupted by {signal.Signals(signum).name}: every "
                                 f"finished epoch is kept in {self.out}/"], err)
        result = self.load("c2")
        self.assertFalse(result["complete"])
        self.assertGreaterEqual(len(result["epochs"]), 1)
        deadline = time.time() + 5
        while time.time() < deadline and any(map(running, workers)):
            time.sleep(0.1)
        self.assertEqual([pid for pid in workers if running(pid)], [])
        with report.results_folder(self.out):  # unlocked
            pass

    def test_sigterm_to_the_process_group_during_an_epoch_with_workers(self):
        self.stop_during_an_epoch(signal.SIGTERM, group=True)

    def test_sighup_during_an_epoch_with_workers(self):
        self.stop_during_an_epoch(signal.SIGHUP)


class SharedMemoryTest(TempDirTest):
    def test_a_full_dev_shm_is_one_line_that_says_what_to_do(self):
        # A private mount namespace with a /dev/shm of 64 KiB: one batch of 16 images does not fit.
        mount = "mount -t tmpfs -o size=64k tmpfs /dev/shm"
        try:
            probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True,
                                   text=True, timeout=60)
        except OSError as error:
            self.skipTest(f"unshare cannot run here: {error}")
        if probe.returncode != 0:
            self.skipTest("no private mount namespace with a small /dev/shm here (unshare -m "
                          f"and mount need root): {probe.stderr.strip()}")
        command = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$0" "$@"', sys.executable,
                   str(HERE / "lab.py"), "c2", "--dataset", "synthetic", "--train-size", "64",
                   "--test-size", "20", "--batch-size", "16", "--epochs", "1",
                   "--num-workers", "2", "--out", self.out]
        done = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
        self.assertIn("lab.py: error: the DataLoader's workers ran out of shared memory in "
                      "/dev/shm (it holds 0.0625 MiB): use --num-workers 0", done.stderr)
        self.assertIn("--shm-size", done.stderr)


if __name__ == "__main__":
    unittest.main()
