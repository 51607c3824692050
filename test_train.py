"""Tests for train.py: training lowers the loss, seeds, divergence, the speed options in fit
against the default path, progress lines, static-shape compile, gradient accumulation, and
each rank's own augmentation under a two-rank world."""

import contextlib
import datetime
import io
import math
import os
import shutil
import tempfile
import unittest
from dataclasses import replace
from unittest import mock

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from PIL import Image

import data
import lab
import parallel
import render
import train
from data import DeviceLoader, SyntheticCIFAR, make_loader, test_transform
from testkit import (CPU, TempDirTest, free_port, quiet_module, tiny_config,
                     torchrun_environment)
from train import evaluate, fit, make_model, make_training

setUpModule = quiet_module


class OneImage(torch.utils.data.Dataset):
    """The same image at every index, through the lab's training augmentation: two batches
    of it differ only by their crops and flips."""

    def __init__(self, size):
        pixels = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)  # no symmetry
        self.image, self.size = Image.fromarray(pixels), size
        self.transform = data.train_transform()

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return self.transform(self.image), 0


def first_batches(rank, port, folder):
    """One rank of fit() in a two-rank world, with 0 and with 1 worker: the first batch each
    time, as the training step received it."""
    os.environ.update(torchrun_environment(rank, 2, port))
    parallel.start("cpu", timeout=datetime.timedelta(seconds=60))
    seen, real_step = [], train.train_step

    def spy(model, optimizer, criterion, images, labels, **options):
        seen.append(images.clone())
        return real_step(model, optimizer, criterion, images, labels, **options)

    try:
        with mock.patch.object(train, "train_step", spy), \
                contextlib.redirect_stderr(io.StringIO()):  # rank 0's progress line
            for workers in (0, 1):
                cfg = tiny_config(num_workers=workers, batch_size=4, epochs=1, evaluate=False)
                train.fit(cfg, OneImage(8), OneImage(8))
        torch.save([seen[0], seen[1]], os.path.join(folder, f"rank{rank}.pt"))
    finally:
        parallel.stop()


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


# Relative tolerances on the loss, from the same weights and batches. Float32 paths do the same
# sums in another order (measured: under 1e-4); bfloat16 keeps 8 bits of mantissa (under 1e-2).
# Training amplifies a difference about a hundredfold per step here, so the test stops at two.
FLOAT32_TOLERANCE = 5e-4
BFLOAT16_TOLERANCE = 3e-2


class RanksAugmentTest(unittest.TestCase):
    def test_two_ranks_augment_the_same_image_differently(self):
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(first_batches, args=(free_port(), folder), nprocs=2)
            rank0, rank1 = (torch.load(os.path.join(folder, f"rank{r}.pt")) for r in (0, 1))
        for workers, (mine, theirs) in enumerate(zip(rank0, rank1)):
            self.assertEqual(mine.shape, (4, 3, 32, 32))
            # Image k of each rank's batch: the same picture, so only augmentation can differ.
            same = [torch.equal(mine[k], theirs[k]) for k in range(4)]
            self.assertLess(sum(same), 2, f"{workers} workers: the ranks drew the same crops")


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


class ProgressTest(unittest.TestCase):
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


class WordsTest(TempDirTest):
    """What the lab says of training is true: gradients, static shapes."""

    def test_backward_accumulates_into_grad_as_q3_says(self):
        layer = nn.Linear(3, 1)
        for _ in range(2):
            layer(torch.ones(1, 3)).sum().backward()
        self.assertTrue(torch.equal(layer.weight.grad, torch.full((1, 3), 2.0)))  # 1 + 1
        text = render.render_q3(lab.q3_sgd_parameters(lab.Config()))
        self.assertIn("gradients accumulate", text)
        self.assertNotIn("rewritten", text)

    def test_compiled_training_uses_static_shapes(self):
        with mock.patch.object(torch, "compile") as compile_:
            train.compile_model(nn.Linear(1, 1))
        self.assertIs(compile_.call_args.kwargs["dynamic"], False)


if __name__ == "__main__":
    unittest.main()
