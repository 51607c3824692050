"""Tests for timing.py: the epoch windows and their syncs, Timer and CudaEventTimer, NullTimer,
worker start-up in the first data window, and the profiler (Profile, profiling, summarize_events).
"""

import contextlib
import json
import os
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

import torch

import render
import timing
import train
from data import SyntheticCIFAR, train_transform
from resnet import ResNet18
from testkit import CPU, quiet_module, tiny_config
from train import fit

setUpModule = quiet_module


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

    def test_worker_start_is_charged_to_the_first_data_window(self):
        class SlowStart:
            def __iter__(self):
                time.sleep(0.05)  # like starting worker processes
                return iter([(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))] * 3)

        torch.manual_seed(0)
        model = ResNet18()
        optimizer = train.make_optimizer("sgd", model.parameters(), lr=0.01)
        result = train.train_one_epoch(model, SlowStart(), optimizer, torch.device("cpu"))
        self.assertEqual(result["images"], 6)
        self.assertGreaterEqual(result["first_batch_time"], 0.05)
        self.assertGreaterEqual(result["data_time"], result["first_batch_time"])


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


if __name__ == "__main__":
    unittest.main()
