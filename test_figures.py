"""Tests for figures.py, `python lab.py check --bench`'s headline figures: one table row per
figure from known results, and a figure that fails is a row with its reason and the status 1.

    python -m unittest test_figures

The exercises are replaced by canned results (`canned`), so this runs in a second.
"""

import contextlib
import io
import unittest
from dataclasses import replace
from unittest import mock

import ddp
import figures
import lab
from testkit import TempDirTest, quiet_module

setUpModule = quiet_module


def canned(name, cfg):
    """A result as exercise `name` returns it, with known figures, for --bench's table."""
    arithmetic = {"dtype": "float32", "flops_per_s": 132.2e9, "matmul_share": 0.764}
    if name == "bench":
        return {"step": {"best": "amp bf16", "rows": [
            {"name": "default", "images_per_second": 39.7, "ratio": 1.0, **arithmetic},
            {"name": "amp bf16", "images_per_second": 97.4, "ratio": 2.45, "dtype": "bfloat16",
             "flops_per_s": 324.3e9, "matmul_share": 0.797}]}}
    if name == "c2":
        return {"summary": {"epoch_time": 12.0, "data_time": 0.1, "train_time": 11.8},
                "arithmetic": arithmetic}
    if name == "c5":
        return {"speedup": None, "gpu": {"skipped": "no GPU here"}}
    if name == "infer":
        return {"batch_sizes": [1, 128], "ways": {
            "eager": {"error": None, "batches": [{"median_ms": 20.0}, {"median_ms": 900.0}]},
            "compile": {"error": None, "batches": [{"median_ms": 8.0}, {"median_ms": 950.0}]},
            "aoti": {"error": "RuntimeError: no compiler", "batches": []}}}
    raise AssertionError(f"--bench ran {name}")


class BenchFiguresTest(TempDirTest):
    def measure(self, failing=None):
        def run(exercises, name, cfg, file_name=None):
            if failing is not None and file_name == failing:
                raise RuntimeError("the device fell over")
            return canned(name, cfg), f"{file_name or name}.json"

        overhead = {"window_time": 12e-6, "batches": 50, "overhead": 0.003}
        cfg = replace(lab.Config(), out=self.out, device="cpu")
        with mock.patch.object(figures, "run", run), \
                mock.patch.object(figures, "timer_overhead", return_value=overhead), \
                contextlib.redirect_stdout(io.StringIO()) as out:
            every = figures.measure_figures(cfg, lab.EXERCISES)
        rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
                for line in out.getvalue().splitlines() if line.startswith("| ")}
        return every, rows

    def test_one_table_of_the_headline_figures(self):
        every, rows = self.measure()
        self.assertTrue(every)
        self.assertEqual(rows["bench"], "default 39.7 images/s, 132 GFLOP/s = 76% of float32 "
                                        "matmul; best amp bf16 97.4 images/s (2.45x), 324 "
                                        "GFLOP/s = 80% of bfloat16 matmul")
        self.assertEqual(rows["c2 default"], "epoch 12.00 s (data 0.10, train 11.80), 132 "
                                             "GFLOP/s = 76% of float32 matmul")
        self.assertEqual([name for name in rows if name.startswith("c2 ")],
                         ["c2 default", "c2 channels-last", "c2 amp-bf16", "c2 compile",
                          "c2 device-loader"])  # no float16 on a CPU
        self.assertEqual(rows["c5"], "GPU skipped: no GPU here")
        self.assertEqual(rows["infer"], "batch 1: eager 20.00 ms, compile 8.00 ms (2.50x); "
                                        "batch 128: eager 900.00 ms, the fastest way")
        self.assertTrue(rows["ddp"].startswith("skipped: needs two or more GPUs"))
        self.assertEqual(rows["timers' overhead"], "one empty window 12.0 us; an epoch of 50 "
                                                   "batches +0.30% with the timers (speed.py "
                                                   "overhead)")

    def test_a_figure_that_fails_is_a_row_and_the_status_1(self):
        every, rows = self.measure(failing="c2-compile")
        self.assertFalse(every)
        self.assertEqual(rows["c2 compile"], "failed: RuntimeError: the device fell over")
        self.assertIn("GFLOP/s", rows["c2 default"])  # the others are still measured

    def test_the_ddp_figure_reads_what_the_study_records(self):
        record = {"world": {"world_size": 2, "global_batch": 256, "backend": "nccl",
                            "threads_per_rank": 1},
                  "init_time": 0.5, "steps": 2, "warmup": 2, "buffer_bytes": 38_000,
                  "parameters_differ_on": [], "full_step": [0.2, 0.2],
                  "computation_step": [0.19, 0.19], "initial_weights_sha256": "0" * 16,
                  "final_loss": 2.3, "all_reduce_time": 0.01, "gradient_floats": 11_173_962}
        two = {"world_size": 2, "batch_per_rank": 128, "ok": True, "speedup": 1.9,
               **ddp.summarize_record(record)}  # as ddp_study keeps a run
        study = ({"runs": [{"world_size": 1, "ok": True}, two]}, "ddp.json")
        base = replace(lab.Config(), out=self.out, device="cuda")
        with mock.patch.object(figures.torch.cuda, "device_count", return_value=2), \
                mock.patch.object(figures, "run", return_value=study):
            text, file = figures.figure_ddp(lab.EXERCISES, base)
        self.assertEqual((text, file), ("2 GPUs at batch 128 each: 1.90x one GPU's images/s, "
                                        "exposed communication 5% of the step", "ddp.json"))


if __name__ == "__main__":
    unittest.main()
