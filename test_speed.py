"""Tests for speed.py: the worker counts, the pipeline bench and its ratios, the bench's and
C8's rendering, and the compile payback (CPU only, offline)."""

import unittest

import speed
from data import SyntheticCIFAR, train_transform
from testkit import CPU, TempDirTest, quiet_module, tiny_config

setUpModule = quiet_module


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

    def test_render_bench_gives_each_row_its_flops_and_share(self):
        # The figures measured on this project's CPU (issue 18): 3.33 GFLOP per image.
        row = {"warmup_time": 1.0, "rates": [], "error": None}
        result = {"sizes": speed.BENCH_SIZES["cpu"],
                  "step_flops": {"batch_size": 128, "forward_per_image": 1.11e9,
                                 "backward_per_image": 2.22e9, "per_image": 3.33e9},
                  "matmul": {"n": 2048, "products": 3, "rounds": 5},
                  "matmul_flops_per_s": {"float32": 173e9, "bfloat16": 407e9},
                  "step": {"batch_size": 128, "compiler_startup_time": 9.0, "best": "amp bf16",
                           "rows": [{**row, "name": "default", "images_per_second": 39.7,
                                     "ratio": 1.0, "dtype": "float32", "flops_per_s": 132.2e9,
                                     "matmul_share": 0.764},
                                    {**row, "name": "amp bf16", "images_per_second": 97.4,
                                     "ratio": 2.45, "dtype": "bfloat16",
                                     "flops_per_s": 324.3e9, "matmul_share": 0.797}]}}
        text = speed.render_bench(result)
        cells = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
                 for line in text.splitlines() if line.startswith("| ")}
        self.assertEqual(cells["options"][-3:], ["GFLOP/s", "dtype", "of matmul"])
        self.assertEqual(cells["default"], ["39.7", "1.00x", "1.00", "132.2", "float32", "76.4%"])
        self.assertEqual(cells["amp bf16 (best)"][-3:], ["324.3", "bfloat16", "79.7%"])
        self.assertIn("(float32 173.0 GFLOP/s, bfloat16 407.0 GFLOP/s)", text)
        self.assertIn("The highest share is amp bf16's, 80% of the bfloat16 rate.", text)

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


class WordsTest(TempDirTest):
    """What C8 says is true: the last batch's recompile."""

    def test_c8_says_what_the_last_batchs_recompile_cost(self):
        runs = [{"mode": "eager", "epoch_times": [10.0, 9.0, 9.0],
                 "last_step_times": [0.5, 0.5, 0.5], "error": None},
                {"mode": "default", "epoch_times": [60.0, 6.0, 6.0],
                 "last_step_times": [20.5, 0.4, 0.4], "error": None}]
        result = {"runs": runs, "train_images": 300, "batch_size": 128, "epochs": 3,
                  "compiler_startup_time": 1.0, "note": None}
        result["analysis"] = speed.analyse_compile(result)
        text = speed.explain_compile(result)
        self.assertIn("static shapes (dynamic=False)", text)
        self.assertIn("default 20.1 s", text)


if __name__ == "__main__":
    unittest.main()
