"""Tests for the speed options, the device loader and the profiler: `python -m unittest test_speed`.

CPU only, offline, a couple of minutes on 2 cores (most of it compiling ResNet-18 once). Each
test checks an oracle (the test transform, torchvision's own crop and flip, the default
training path), a known figure, or a statistical invariant.
"""

import contextlib
import json
import math
import os
import shutil
import tempfile
import unittest
from dataclasses import replace
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets

import render
import speed
import timing
from data import (MEAN, STD, DataError, DeviceLoader, SyntheticCIFAR, make_loader, seeded_subset,
                  test_transform, train_transform)
from lab import Config
from test_lab import quiet_module as setUpModule  # quiet: progress to a buffer
from train import evaluate, fit, make_model, make_training

CPU = torch.device("cpu")
# A chi-square statistic over the 81 crop positions (80 degrees of freedom) exceeds this with
# probability 0.001 when the positions are uniform.
CHI2_80_P001 = 124.84


class CoordinateImages(Dataset):
    """256 images whose pixels say where they came from: (row + 1, column + 1, image index).

    Zero padding reads as (0, 0, 0), so any crop, flip and image can be read back off a batch.
    """

    def __init__(self, size=256):
        rows = torch.arange(1, 33).view(1, 32, 1).expand(size, 32, 32)
        cols = torch.arange(1, 33).view(1, 1, 32).expand(size, 32, 32)
        index = torch.arange(size).view(size, 1, 1).expand(size, 32, 32)
        pixels = torch.stack([rows, cols, index], dim=3)                    # (N, 32, 32, 3)
        self.data = pixels.to(torch.uint8).numpy()
        self.targets = [i % 10 for i in range(size)]

    def __len__(self):
        return len(self.targets)


def pixels(images):
    """Undo the normalisation: (B, 3, 32, 32) float -> the uint8 values as longs."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return torch.round((images * std + mean) * 255).long()


def read_back(images):
    """(image index, dy, dx, flip) of each image of a CoordinateImages batch.

    The centre pixel is inside the image for every crop: its row says dy, its column and its
    right neighbour's say dx and whether the crop was mirrored.
    """
    values = pixels(images)
    index = values[:, 2, 16, 16]
    dy = values[:, 0, 16, 16] - 1 + 4 - 16            # padded row of output row 16, less 16
    flip = values[:, 1, 16, 17] < values[:, 1, 16, 16]
    source_column = torch.where(flip, torch.tensor(15), torch.tensor(16))  # 31 - 16 when mirrored
    dx = values[:, 1, 16, 16] - 1 + 4 - source_column
    return index, dy, dx, flip


def draws(loader, epochs):
    """Everything read back from `epochs` epochs of `loader`, concatenated."""
    parts = [read_back(images) + (labels,) for _ in range(epochs) for images, labels in loader]
    return [torch.cat(column) for column in zip(*parts)]


class DeviceLoaderTest(unittest.TestCase):
    def test_an_unaugmented_batch_equals_the_test_transform_exactly(self):
        dataset = SyntheticCIFAR(50, seed=3, transform=test_transform())
        loader = DeviceLoader(dataset, 16, CPU, shuffle=False, augment=False)
        batches = list(loader)
        self.assertEqual(len(loader), 4)
        self.assertEqual([len(labels) for _, labels in batches], [16, 16, 16, 2])
        images = torch.cat([images for images, _ in batches])
        labels = torch.cat([labels for _, labels in batches])
        self.assertEqual((images.shape, images.dtype, labels.dtype),
                         ((50, 3, 32, 32), torch.float32, torch.int64))
        expected = torch.stack([dataset[i][0] for i in range(50)])
        self.assertTrue(torch.equal(images, expected))
        self.assertEqual(labels.tolist(), dataset.targets)

    def test_channels_last_changes_the_layout_not_the_values(self):
        dataset = SyntheticCIFAR(20, seed=1)
        plain = next(iter(DeviceLoader(dataset, 20, CPU, seed=5)))[0]
        nhwc = next(iter(DeviceLoader(dataset, 20, CPU, seed=5, channels_last=True)))[0]
        self.assertTrue(nhwc.is_contiguous(memory_format=torch.channels_last))
        self.assertTrue(plain.is_contiguous())
        self.assertTrue(torch.equal(plain, nhwc))

    def test_labels_follow_images_and_each_crop_is_torchvisions(self):
        dataset = CoordinateImages()
        images, labels = next(iter(DeviceLoader(dataset, 64, CPU, seed=0)))
        index, dy, dx, flip = read_back(images)
        self.assertEqual(labels.tolist(), [dataset.targets[i] for i in index.tolist()])
        self.assertEqual(len(set(index.tolist())), 64)  # shuffled, no image twice
        normalize = test_transform().transforms[1]
        for b in range(64):  # the lab's transforms with these offsets, one image at a time
            image = TF.pad(Image.fromarray(dataset.data[int(index[b])]), 4)
            image = TF.crop(image, int(dy[b]), int(dx[b]), 32, 32)
            if flip[b]:
                image = TF.hflip(image)
            self.assertTrue(torch.equal(images[b], normalize(TF.to_tensor(image))), f"image {b}")

    def test_crop_offsets_are_uniform_over_81_positions_and_flips_half(self):
        loader = DeviceLoader(CoordinateImages(), 128, CPU, seed=0)
        _, dy, dx, flip, _ = draws(loader, epochs=40)        # 10,240 draws
        self.assertTrue(((0 <= dy) & (dy <= 8) & (0 <= dx) & (dx <= 8)).all())
        counts = torch.bincount(dy * 9 + dx, minlength=81).double()
        expected = len(dy) / 81
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        self.assertLess(chi2, CHI2_80_P001)
        self.assertGreater(counts.min().item(), 0)
        self.assertAlmostEqual(flip.double().mean().item(), 0.5, delta=0.02)  # 4 sd

    def test_a_fresh_draw_each_epoch_and_the_same_batches_from_the_same_seed(self):
        dataset = CoordinateImages()
        first = draws(DeviceLoader(dataset, 64, CPU, seed=7), epochs=2)
        again = draws(DeviceLoader(dataset, 64, CPU, seed=7), epochs=2)
        other = draws(DeviceLoader(dataset, 64, CPU, seed=8), epochs=2)
        for a, b in zip(first, again):
            self.assertTrue(torch.equal(a, b))
        self.assertFalse(torch.equal(first[0], other[0]))
        index, dy, dx, flip, _ = first
        epoch1, epoch2 = slice(0, 256), slice(256, 512)
        self.assertFalse(torch.equal(index[epoch1], index[epoch2]))  # a new order
        # Per image, its augmentation in epoch 1 against epoch 2: equal 1 time in 162.
        draw = dy * 18 + dx * 2 + flip.long()
        by_image = [torch.empty(256, dtype=torch.long) for _ in range(2)]
        for epoch, part in enumerate((epoch1, epoch2)):
            by_image[epoch][index[part]] = draw[part]
        self.assertLess((by_image[0] == by_image[1]).double().mean().item(), 0.05)

    def test_a_subset_and_an_image_folder_give_their_own_images(self):
        dataset = SyntheticCIFAR(40, seed=2, transform=test_transform())
        subset = seeded_subset(dataset, 10, seed=4)
        images, labels = next(iter(DeviceLoader(subset, 10, CPU, shuffle=False, augment=False)))
        self.assertTrue(torch.equal(images, torch.stack([image for image, _ in subset])))
        self.assertEqual(labels.tolist(), [label for _, label in subset])
        with tempfile.TemporaryDirectory() as root:
            for k, name in enumerate(["cat", "cat", "dog"]):
                folder = Path(root, name)
                folder.mkdir(exist_ok=True)
                Image.fromarray(dataset.data[k]).save(folder / f"{k}.png")  # lossless
            folder_set = datasets.ImageFolder(root, transform=test_transform())
            images, labels = next(iter(DeviceLoader(folder_set, 3, CPU, shuffle=False,
                                                    augment=False)))
            self.assertTrue(torch.equal(images, torch.stack([image for image, _ in folder_set])))
            self.assertEqual(labels.tolist(), [0, 0, 1])
            Image.new("RGB", (28, 28)).save(Path(root, "dog", "small.png"))
            with self.assertRaisesRegex(DataError, "one size"):
                DeviceLoader(datasets.ImageFolder(root), 3, CPU)

    def test_a_data_set_it_cannot_read_says_what_to_use(self):
        class Plain(Dataset):
            def __len__(self):
                return 1

        with self.assertRaisesRegex(DataError, "--loader torch"):
            DeviceLoader(Plain(), 1, CPU)


def tiny_config(**changes):
    return replace(Config(dataset="synthetic", num_workers=0, batch_size=16, lr=0.01,
                          epochs=2, test_batch_size=16), **changes)


# Relative tolerances on the loss, from the same weights and batches. Float32 paths do the same
# sums in another order (measured: under 1e-4); bfloat16 keeps 8 bits of mantissa (under 1e-2).
# Training amplifies a difference about a hundredfold per step here, so the test stops at two.
FLOAT32_TOLERANCE = 5e-4
BFLOAT16_TOLERANCE = 3e-2


class SpeedOptionsTest(unittest.TestCase):
    """Two steps (one 16-image batch per epoch) with each option against the default path: the
    first loss tests the forward pass, the second the backward pass and the update too."""

    @classmethod
    def setUpClass(cls):
        # No augmentation, so every run sees exactly the same batches.
        cls.train_set = SyntheticCIFAR(16, seed=0, transform=test_transform())
        cls.default = cls.losses(tiny_config())

    @classmethod
    def losses(cls, cfg):
        run = fit(cfg, cls.train_set, cls.train_set)
        return [epoch["train_loss"] for epoch in run["epochs"]]

    def assertClose(self, losses, tolerance):
        self.assertEqual(len(losses), 2)
        for loss, reference in zip(losses, self.default):
            self.assertLess(abs(loss - reference), tolerance * reference, (losses, self.default))

    def test_the_default_path_learns(self):
        self.assertAlmostEqual(self.default[0], math.log(10), delta=0.5)  # about chance at first
        self.assertLess(self.default[-1], self.default[0])

    def test_channels_last(self):
        model, _, _ = make_training(tiny_config(channels_last=True), CPU)
        self.assertTrue(model.conv1.weight.is_contiguous(memory_format=torch.channels_last))
        self.assertClose(self.losses(tiny_config(channels_last=True)), FLOAT32_TOLERANCE)

    def test_bf16_autocast(self):
        losses = self.losses(tiny_config(amp="bf16"))
        self.assertNotEqual(losses, self.default)  # autocast did run in bfloat16
        self.assertClose(losses, BFLOAT16_TOLERANCE)

    def test_channels_last_with_bf16(self):
        self.assertClose(self.losses(tiny_config(channels_last=True, amp="bf16")),
                         BFLOAT16_TOLERANCE)

    @unittest.skipUnless(shutil.which("g++") or shutil.which("c++"),
                         "torch.compile on a CPU needs a C++ compiler")
    def test_compile(self):
        model, _, _ = make_training(tiny_config(compile=True), CPU)
        self.assertIsInstance(model, torch._dynamo.eval_frame.OptimizedModule)
        self.assertClose(self.losses(tiny_config(compile=True)), FLOAT32_TOLERANCE)

    def test_device_loader_in_fit(self):
        cfg = tiny_config(loader="device", evaluate=True, epochs=1)
        history = fit(cfg, self.train_set, self.train_set)["epochs"]
        self.assertEqual(history[0]["images"], 16)
        # Same model, same test images through both loaders: the same accuracy.
        model = make_model(cfg, CPU)
        through_device = evaluate(model, DeviceLoader(self.train_set, 5, CPU, shuffle=False,
                                                      augment=False), CPU)
        through_torch = evaluate(model, make_loader(self.train_set, 5, False, 0), CPU)
        self.assertEqual(through_device, through_torch)
        with self.assertRaisesRegex(ValueError, "torch, device"):
            fit(tiny_config(loader="disk"), self.train_set, self.train_set)


@contextlib.contextmanager
def native_stderr_to(path):
    """Send what C++ writes to file descriptor 2 (the profiler's log lines) into `path`."""
    saved = os.dup(2)
    with open(path, "w") as file:
        os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class ProfileTest(unittest.TestCase):
    def profile(self, num_workers, steps, max_steps):
        train_set = SyntheticCIFAR(8 * steps, seed=0, transform=train_transform())
        cfg = tiny_config(batch_size=8, epochs=1, num_workers=num_workers)
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder, "run.trace.json"))
            with native_stderr_to(os.path.join(folder, "profiler.log")), \
                    timing.profiling(path, CPU, max_steps) as profile:
                fit(cfg, train_set, train_set, profiler=profile)
            with open(path) as file:
                trace = json.load(file)  # valid JSON, or this raises
        return profile.summary(), trace

    def test_trace_is_capped_and_phases_are_told_apart(self):
        summary, trace = self.profile(num_workers=0, steps=4, max_steps=3)
        names = [event.get("name") for event in trace["traceEvents"]]
        self.assertEqual(names.count("training_step"), 3)  # the 4th step was not recorded
        self.assertEqual(summary["steps"], 3)
        self.assertGreater(summary["data_loading_time"], 0)
        self.assertGreater(summary["training_step_time"], summary["data_loading_time"])
        operators = summary["operators"]
        self.assertEqual(len(operators), timing.TOP_OPERATORS)
        times = [op["self_cpu_time"] for op in operators]
        self.assertEqual(times, sorted(times, reverse=True))
        # With no workers the transforms run in this process: ToTensor's /255 is data loading.
        phases = {(op["name"], op["phase"]) for op in self.all_operators(summary, trace)}
        self.assertIn(("aten::div", "data loading"), phases)
        self.assertIn(("aten::convolution", "training step"), phases)
        self.assertNotIn(("aten::convolution", "data loading"), phases)
        self.assertIn("data loading", render.render_profile(summary))

    def test_with_a_worker_the_transforms_leave_the_profile(self):
        summary, trace = self.profile(num_workers=1, steps=2, max_steps=10)
        self.assertEqual(summary["steps"], 2)
        phases = {(op["name"], op["phase"]) for op in self.all_operators(summary, trace)}
        self.assertNotIn(("aten::div", "data loading"), phases)
        self.assertIn(("aten::convolution", "training step"), phases)

    def test_no_trace_path_profiles_nothing(self):
        with timing.profiling(None) as profile:
            self.assertIsNone(profile)

    @staticmethod
    def all_operators(summary, trace):
        """Every operator in the trace with its phase, by the same rule as the summary."""
        events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
        ranges = [(e["ts"], e["ts"] + e["dur"], timing.PHASES[e["name"]])
                  for e in events if e["name"] in timing.PHASES]
        rows = []
        for e in events:
            if e.get("cat") != "cpu_op":
                continue
            phase = next((p for start, end, p in ranges if start <= e["ts"] <= end), "other")
            rows.append({"name": e["name"], "phase": phase})
        return rows


class BenchFiguresTest(unittest.TestCase):
    def test_worker_counts(self):
        self.assertEqual(speed.worker_counts(2, 2), [0, 1, 2])
        self.assertEqual(speed.worker_counts(16, 2), [0, 1, 2, 4, 8, 16])
        self.assertEqual(speed.worker_counts(2, 3), [0, 1, 2, 3])

    def test_pipeline_rows_and_ratios(self):
        train_set = SyntheticCIFAR(64, seed=0, transform=train_transform())
        sizes = {"pipeline_repeats": 2}
        result = speed.bench_pipeline(tiny_config(num_workers=1), CPU, train_set, sizes)
        names = [row["name"] for row in result["rows"]]
        self.assertEqual(names[-1], "device loader")
        self.assertEqual(result["reference"], "DataLoader, 1 worker")
        reference = next(row for row in result["rows"] if row["name"] == result["reference"])
        self.assertEqual(reference["ratio"], 1.0)
        for row in result["rows"]:
            self.assertEqual(len(row["rates"]), 2)
            self.assertGreater(row["images_per_second"], 0)

    def test_render_bench_marks_the_best_and_a_failed_row(self):
        row = {"warmup_time": 1.0, "rates": [], "error": None}
        result = {"sizes": speed.BENCH_SIZES["cpu"], "step": {
            "batch_size": 32, "compiler_startup_time": 9.0, "best": "amp bf16", "rows": [
                {**row, "name": "default", "images_per_second": 10.0, "ratio": 1.0},
                {**row, "name": "amp bf16", "images_per_second": 21.0, "ratio": 2.1},
                {**row, "name": "compile", "images_per_second": None, "ratio": None,
                 "error": "BackendCompilerFailed: no C++ compiler"}]}}
        text = speed.render_bench(result)
        self.assertIn("| amp bf16 (best) |", text)
        self.assertIn("2.10x", text)
        self.assertIn("compile failed: BackendCompilerFailed: no C++ compiler", text)

    def test_compile_payback_from_known_epoch_times(self):
        result = {"train_images": 256, "batch_size": 128, "compiler_startup_time": 10.0,
                  "runs": [{"mode": "eager", "epoch_times": [10.0, 6.0, 6.0], "error": None},
                           {"mode": "default", "epoch_times": [40.0, 5.0, 5.0], "error": None},
                           {"mode": "max-autotune", "epoch_times": [50.0, 7.0, 7.0],
                            "error": None}]}
        eager, default, autotune = speed.analyse_compile(result)
        self.assertEqual(eager["later_epochs"], 6.0)
        self.assertEqual(default["compile_cost"], 31.0)  # (40 - 5) - (10 - 6)
        self.assertEqual(default["saving"], 1.0)
        self.assertEqual(default["payback_epochs"], 31.0)
        self.assertEqual(default["payback_images"], 31 * 256)
        self.assertIsNone(autotune["payback_epochs"])   # slower than eager: never
        result["analysis"] = [eager, default, autotune]
        text = speed.explain_compile(result)
        self.assertIn("pays back after 31.0 epochs", text)
        self.assertIn("does not pay back", text)

    def test_one_epoch_has_nothing_to_compare(self):
        result = {"train_images": 256, "batch_size": 128, "compiler_startup_time": 1.0,
                  "runs": [{"mode": "eager", "epoch_times": [10.0], "error": None}]}
        result["analysis"] = speed.analyse_compile(result)
        self.assertIn("--epochs 2", speed.explain_compile(result))


if __name__ == "__main__":
    unittest.main()
