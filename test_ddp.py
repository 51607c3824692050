"""Tests for ddp.py: the scaling arithmetic, torchrun's failure in one line, the study's
rendering, what happens inside the timed steps (spied on in two real ranks), and a tiny study
on the CPU (gloo) with real processes.

    python -m unittest test_ddp
"""

import contextlib
import datetime
import io
import json
import os
import tempfile
import unittest
from unittest import mock

import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import ddp
import lab
import parallel
from testkit import free_port, quiet_module, torchrun_environment

setUpModule = quiet_module
SPIED_STEPS = 2


def spy_on_steps(rank, port, folder):
    """One rank of ddp.measure_steps with spies: per forward pass, whether it was synchronised
    and timed, whether DDP rebuilt its buckets in it, and how often it broadcast buffers; and
    this rank's parameters' hash at the end."""
    os.environ.update(torchrun_environment(rank, 2, port))
    world = parallel.start("cpu", timeout=datetime.timedelta(seconds=60))
    passes, timing, models = [], [False], []
    real_forward, real_sync = DistributedDataParallel.forward, DistributedDataParallel._sync_buffers
    real_timed, real_wrap = ddp.timed, ddp.wrap

    def forward(self, *args, **kwargs):
        before = self._has_rebuilt_buckets
        passes.append({"synchronised": self.require_backward_grad_sync, "timed": timing[0],
                       "buffer_broadcasts": 0})
        output = real_forward(self, *args, **kwargs)
        passes[-1]["rebuilt"] = self._has_rebuilt_buckets and not before
        return output

    def sync_buffers(self):
        passes[-1]["buffer_broadcasts"] += 1
        return real_sync(self)

    def timed(step, world):
        timing[0] = True
        try:
            return real_timed(step, world)
        finally:
            timing[0] = False

    def wrap(*args, **kwargs):
        models.append(real_wrap(*args, **kwargs))
        return models[-1]

    cfg = lab.Config(batch_size=2, ddp_steps=SPIED_STEPS)
    try:
        with mock.patch.object(DistributedDataParallel, "forward", forward), \
                mock.patch.object(DistributedDataParallel, "_sync_buffers", sync_buffers), \
                mock.patch.object(ddp, "timed", timed), mock.patch.object(ddp, "wrap", wrap):
            ddp.measure_steps(cfg, world, ddp.STUDY_WARMUP["cpu"])
        found = {"passes": passes,
                 "parameters": parallel.weights_digest(models[0].module, buffers=False)}
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as file:
            json.dump(found, file)
    finally:
        parallel.stop()


class ArithmeticTest(unittest.TestCase):
    def test_scaling_figures(self):
        self.assertEqual(ddp.speedup(300.0, 200.0), 1.5)
        self.assertIsNone(ddp.speedup(300.0, None))
        self.assertIsNone(ddp.speedup(None, 200.0))
        self.assertEqual(ddp.efficiency(1.5, 2), 0.75)
        self.assertIsNone(ddp.efficiency(None, 2))
        gradient = 4 * 11_173_962  # ResNet-18's float32 gradient, 44.7 MB
        self.assertAlmostEqual(ddp.bus_bandwidth(gradient, 0.1, 2), gradient / 0.1)
        self.assertAlmostEqual(ddp.bus_bandwidth(gradient, 0.1, 4), 1.5 * gradient / 0.1)
        self.assertEqual(ddp.bus_bandwidth(gradient, 0.1, 1), 0)

    def record(self, n, full, computation):
        return {"world": {"world_size": n, "backend": "gloo", "batch_per_rank": 8,
                          "global_batch": 8 * n, "threads_per_rank": 1},
                "init_time": 0.1, "steps": len(full), "warmup": 2, "full_step": full,
                "computation_step": computation, "initial_weights_sha256": "0" * 16,
                "final_loss": 2.0, "gradient_floats": 1000, "buffer_bytes": 40,
                "parameters_differ_on": [], "all_reduce_time": 0.002 if n > 1 else None}

    def test_summarize_record_takes_medians_of_the_pairs(self):
        run = ddp.summarize_record(self.record(2, [0.5, 0.3, 0.4], [0.3, 0.25, 0.1]))
        self.assertAlmostEqual(run["step_time"], 0.4)
        self.assertAlmostEqual(run["images_per_second"], 16 / 0.4)
        self.assertAlmostEqual(run["computation_time"], 0.25)
        self.assertEqual(run["step_spread"], [0.3, 0.5])
        # The pairs differ by 0.2, 0.05 and 0.3: the median of the pairs, not of the medians.
        self.assertAlmostEqual(run["exposed_communication_time"], 0.2)
        self.assertEqual([round(x, 6) for x in run["exposed_communication_spread"]], [0.05, 0.3])
        self.assertTrue(run["exposed_communication_clear"])
        self.assertAlmostEqual(run["exposed_communication_share"], 0.5)
        self.assertAlmostEqual(run["all_reduce"]["algorithm_bandwidth"], 4000 / 0.002)
        self.assertAlmostEqual(run["all_reduce"]["bus_bandwidth"], 4000 / 0.002)
        noisy = ddp.summarize_record(self.record(2, [0.5, 0.3, 0.4], [0.3, 0.35, 0.1]))
        self.assertFalse(noisy["exposed_communication_clear"])  # one pair went the other way

    def test_one_process_has_no_exposed_communication(self):
        run = ddp.summarize_record(self.record(1, [0.5, 0.6], [0.3, 0.3]))
        self.assertIsNone(run["exposed_communication_time"])
        self.assertIsNone(run["exposed_communication_share"])
        self.assertIsNone(run["all_reduce"])

    def test_two_synchronised_steps_and_one_no_sync_step_before_timing(self):
        for device, warmup in ddp.STUDY_WARMUP.items():
            steps = ddp.schedule(warmup, ddp.STUDY_STEPS[device])
            first_timed = next(i for i, (_, timed) in enumerate(steps) if timed)
            untimed = [kind for kind, _ in steps[:first_timed]]
            self.assertGreaterEqual(untimed.count("full"), 2, device)
            self.assertGreaterEqual(untimed.count("no_sync"), 1, device)
            timed = [kind for kind, timed in steps if timed]
            self.assertEqual(timed, ["full", "no_sync"] * ddp.STUDY_STEPS[device])
        self.assertGreaterEqual(ddp.STUDY_STEPS["cpu"], 5)

    def test_failure_reason_is_one_line(self):
        torchrun_summary = ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "
                            "\n=====\n  exitcode  : 1 (pid: 7)\n")
        worker = "Traceback (most recent call last):\n  ...\n"
        self.assertEqual(ddp.failure_reason(1, worker + ddp.ERROR_PREFIX + "rank 1: "
                                            "RuntimeError: boom\n" + torchrun_summary),
                         "rank 1: RuntimeError: boom")
        self.assertEqual(ddp.failure_reason(1, worker + "[rank0]: ModuleNotFoundError: No "
                                            "module named 'x'\n" + torchrun_summary),
                         "ModuleNotFoundError: No module named 'x'")
        self.assertEqual(ddp.failure_reason(-9, ""), "torchrun exited with status -9")


class RenderTest(unittest.TestCase):
    def run_record(self, n, batch, computation, communication, ok=True, spread=0.001):
        """A finished run whose pairs differ by `communication` give or take `spread`."""
        if not ok:
            return {"world_size": n, "batch_per_rank": batch, "global_batch": n * batch,
                    "ok": False, "reason": "out of memory"}
        step = computation + communication
        exposed = {"exposed_communication_time": None, "exposed_communication_spread": None,
                   "exposed_communication_clear": None, "exposed_communication_share": None}
        if n > 1:
            low, high = communication - spread, communication + spread
            exposed = {"exposed_communication_time": communication,
                       "exposed_communication_spread": [low, high],
                       "exposed_communication_clear": low > 0 or high < 0,
                       "exposed_communication_share": communication / step}
        return {"world_size": n, "batch_per_rank": batch, "global_batch": n * batch,
                "ok": True, "images_per_second": n * batch / step, "speedup": None,
                "efficiency": None, "step_time": step, "step_spread": [step, step],
                "computation_time": computation, "computation_spread": [computation] * 2,
                **exposed, "buffer_bytes": 38_500, "parameters_differ_on": [],
                "backend": "nccl", "threads_per_rank": None, "init_time": 1.0,
                "wall_time": 9.0,
                "all_reduce": None if n == 1 else {"floats": 10, "bytes": 40, "seconds": 0.05,
                                                   "algorithm_bandwidth": 800.0,
                                                   "bus_bandwidth": 800.0}}

    def result(self, runs):
        return {"study_device": "cuda", "steps": 20, "warmup": 5, "usable_cores": 16,
                "batch_sizes": [32, 512], "runs": runs}

    def table_rows(self, text):
        return [line for line in text.splitlines() if line.startswith("| ")]

    def test_the_explanation_follows_the_numbers(self):
        runs = [self.run_record(1, 32, 0.010, 0.0), self.run_record(1, 512, 0.100, 0.0),
                self.run_record(2, 32, 0.010, 0.030), self.run_record(2, 512, 0.100, 0.030),
                self.run_record(4, 512, 0.1, 0, ok=False)]
        text = ddp.render_ddp(self.result(runs))
        self.assertIn("| exposed communication (ms) |", text)
        self.assertIn("Exposed communication takes more than half of the step at 2 × 32.", text)
        self.assertIn("falls from 75.0% to 23.1%", text)
        self.assertIn("4 × batch 512: failed: out of memory", text)
        self.assertEqual(len(self.table_rows(text)), 5)  # the header and the 4 runs that finished
        self.assertIn("At 2 × 32, 2 × 512 a step exposed less than one standalone", text)
        self.assertNotIn("within the noise:", text)
        runs[2] = self.run_record(2, 32, 0.010, 0.004)
        text = ddp.render_ddp(self.result(runs))
        self.assertIn("never takes half of a step", text)

    def test_a_difference_within_its_spread_is_within_the_noise(self):
        runs = [self.run_record(1, 32, 0.010, 0.0), self.run_record(2, 32, 0.010, 0.004,
                                                                    spread=0.010)]
        text = ddp.render_ddp(self.result(runs))
        one, two = (row.split("|") for row in self.table_rows(text)[1:])
        self.assertEqual(two[9].strip(), "within the noise")  # not +4.0
        self.assertEqual(two[10].strip(), "-6.0 to 14.0")
        self.assertEqual(two[11].strip(), "-")
        self.assertEqual(one[9].strip(), "none: 1 process")
        self.assertNotIn("4.0 ", two[9])
        self.assertIn("At 2 × 32 (processes × batch per process) the exposed communication is "
                      "within the noise", text)
        self.assertNotIn("standalone all-reduce:", text)  # no mechanism stated for noise
        self.assertIn("no exposed communication is given for it", text)

    def test_drifted_replicas_are_flagged(self):
        runs = [self.run_record(2, 32, 0.010, 0.004)]
        self.assertIn("parameters were equal", ddp.render_ddp(self.result(runs)))
        runs[0]["parameters_differ_on"] = [1]
        self.assertIn("(!) After the run at 2 × 32", ddp.render_ddp(self.result(runs)))


class TimedStepsTest(unittest.TestCase):
    """Two real ranks through ddp.measure_steps, spied on (see spy_on_steps)."""

    @classmethod
    def setUpClass(cls):
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(spy_on_steps, args=(free_port(), folder), nprocs=2)
            cls.found = []
            for rank in (0, 1):
                with open(os.path.join(folder, f"rank{rank}.json")) as file:
                    cls.found.append(json.load(file))

    def test_the_buckets_are_rebuilt_before_timing(self):
        for passes in (found["passes"] for found in self.found):
            self.assertEqual(sum(p["rebuilt"] for p in passes), 1)  # once, in the warm-up
            self.assertFalse([p for p in passes if p["timed"] and p["rebuilt"]])
            timed = [p["synchronised"] for p in passes if p["timed"]]
            self.assertEqual(timed, [True, False] * SPIED_STEPS)

    def test_no_buffer_broadcast_in_either_kind_of_timed_step(self):
        for passes in (found["passes"] for found in self.found):
            for synchronised in (True, False):
                broadcasts = [p["buffer_broadcasts"] for p in passes
                              if p["timed"] and p["synchronised"] == synchronised]
                self.assertEqual(broadcasts, [0] * SPIED_STEPS, f"synchronised={synchronised}")

    def test_the_replicas_end_equal(self):
        self.assertEqual(self.found[0]["parameters"], self.found[1]["parameters"])


class StudyTest(unittest.TestCase):
    def config(self, device):
        return lab.Config(device=device, max_procs=2, ddp_batch_sizes=(2,), ddp_steps=1)

    def study(self, cfg, save=None):
        with contextlib.redirect_stderr(io.StringIO()):  # its progress lines
            return ddp.ddp_study(cfg, save)

    def test_a_tiny_study(self):
        saved = []
        result = self.study(self.config("cpu"), save=lambda r: saved.append(len(r["runs"])))
        self.assertEqual(saved, [1, 2])
        one, two = result["runs"]
        self.assertTrue(one["ok"] and two["ok"], result["runs"])
        self.assertEqual((one["world_size"], two["world_size"]), (1, 2))
        self.assertEqual(two["global_batch"], 4)
        self.assertEqual(one["speedup"], 1.0)
        self.assertAlmostEqual(two["speedup"],
                               two["images_per_second"] / one["images_per_second"])
        self.assertAlmostEqual(two["efficiency"], two["speedup"] / 2)
        self.assertIsNone(one["all_reduce"])
        self.assertEqual(two["all_reduce"]["bytes"], 4 * 11_173_962)
        self.assertIsNone(one["exposed_communication_time"])
        self.assertEqual(two["parameters_differ_on"], [])
        self.assertIn("| processes |", ddp.render_ddp(result))

    @unittest.skipIf(torch.cuda.device_count() > 0, "needs a machine without a GPU")
    def test_failing_runs_are_kept_and_the_study_goes_on(self):
        result = self.study(self.config("cuda"))
        self.assertEqual([r["world_size"] for r in result["runs"]], [1, 2])
        for run in result["runs"]:
            self.assertFalse(run["ok"])
            self.assertEqual(run["reason"], "CUDA was asked for but torch sees no GPU on "
                                            "this machine")


if __name__ == "__main__":
    unittest.main()
