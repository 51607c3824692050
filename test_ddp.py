"""Tests for ddp.py: the scaling arithmetic, torchrun's failure in one line, the study's
rendering, and a tiny study on the CPU (gloo) with real processes.

    python -m unittest test_ddp
"""

import contextlib
import io
import unittest

import torch

import ddp
import lab
from testkit import quiet_module

setUpModule = quiet_module


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

    def test_summarize_record(self):
        record = {"world": {"world_size": 2, "backend": "gloo", "batch_per_rank": 8,
                            "global_batch": 16, "threads_per_rank": 1},
                  "init_time": 0.1, "steps": 2, "full_step": [0.5, 0.3],
                  "computation_step": [0.3, 0.3], "initial_weights_sha256": "0" * 16,
                  "final_loss": 2.0, "gradient_floats": 1000, "all_reduce_time": 0.002}
        run = ddp.summarize_record(record)
        self.assertAlmostEqual(run["images_per_second"], 16 * 2 / 0.8)
        self.assertAlmostEqual(run["communication_time"], 0.4 - 0.3)
        self.assertAlmostEqual(run["communication_share"], 0.25)
        self.assertAlmostEqual(run["all_reduce"]["algorithm_bandwidth"], 4000 / 0.002)
        self.assertAlmostEqual(run["all_reduce"]["bus_bandwidth"], 4000 / 0.002)

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
    def run_record(self, n, batch, computation, communication, ok=True):
        if not ok:
            return {"world_size": n, "batch_per_rank": batch, "global_batch": n * batch,
                    "ok": False, "reason": "out of memory"}
        step = computation + communication
        return {"world_size": n, "batch_per_rank": batch, "global_batch": n * batch,
                "ok": True, "images_per_second": n * batch / step, "speedup": None,
                "efficiency": None, "computation_time": computation,
                "communication_time": communication, "communication_share": communication / step,
                "backend": "nccl", "threads_per_rank": None, "init_time": 1.0,
                "wall_time": 9.0,
                "all_reduce": None if n == 1 else {"floats": 10, "bytes": 40, "seconds": 0.05,
                                                   "algorithm_bandwidth": 800.0,
                                                   "bus_bandwidth": 800.0}}

    def test_the_explanation_follows_the_numbers(self):
        runs = [self.run_record(1, 32, 0.010, 0.0), self.run_record(1, 512, 0.100, 0.0),
                self.run_record(2, 32, 0.010, 0.030), self.run_record(2, 512, 0.100, 0.030),
                self.run_record(4, 512, 0.1, 0, ok=False)]
        result = {"study_device": "cuda", "steps": 20, "warmup": 5, "usable_cores": 16,
                  "batch_sizes": [32, 512], "runs": runs}
        text = ddp.render_ddp(result)
        self.assertIn("more than half of the step at 2 × 32 (", text)  # 75%, and 23% at 512
        self.assertIn("from 75.0% to 23.1%", text)
        self.assertIn("4 × batch 512: failed: out of memory", text)
        rows = [line for line in text.splitlines() if line.startswith("| ")]
        self.assertEqual(len(rows), 5)  # the header and the 4 runs that finished
        self.assertIn("In 2 of the 2 runs with more than one process a step lost less", text)
        self.assertNotIn("read it as zero", text)
        runs[2] = self.run_record(2, 32, 0.010, 0.004)
        runs[3] = self.run_record(2, 512, 0.100, -0.002)
        text = ddp.render_ddp(result)
        self.assertIn("never takes half of a step", text)
        self.assertIn("read it as zero", text)
        self.assertIn("In 1 of the 2 runs with more than one process a step lost less", text)


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
