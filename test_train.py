"""Tests for train.py: training lowers the loss, seeds, divergence, the speed options in fit
against the default path, progress lines, static-shape compile and gradient accumulation."""

import io
import math
import shutil
import unittest
from dataclasses import replace
from unittest import mock

import torch
import torch.nn as nn

import data
import lab
import render
import train
from data import DeviceLoader, SyntheticCIFAR, make_loader, test_transform
from testkit import CPU, TempDirTest, quiet_module, tiny_config
from train import evaluate, fit, make_model, make_training

setUpModule = quiet_module


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
