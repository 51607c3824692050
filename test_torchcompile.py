"""Tests for 2025's C8 table and Q5 (torchcompile.py) and the counts C8 keeps (speed.py):
`python -m unittest test_torchcompile`.

The oracles: known epoch times and compiler counts, laid out and answered as the 2025
handout asks, and what TorchDynamo counts of a function with one graph break.
"""

import io
import shutil
import unittest
from dataclasses import replace

import torch

import lab
import report
import speed
import torchcompile
from testkit import TempDirTest, one_line, quiet_module, run_lab

setUpModule = quiet_module


def known_c8(epochs=10):
    """C8's result for known epoch times: eager 10 s an epoch, compiled 60 s and then 6 s."""
    counts = {"frames": 1, "graphs": 2, "captured_ops": 310, "graph_breaks": 0,
              "graph_break_reasons": {}, "aot_graphs": 2, "generated_kernels": 91,
              "nodes_before_fusion": 400, "library_calls": 120}
    eager = {key: 0 for key in counts} | {"graph_break_reasons": {}}
    runs = [{"mode": "eager", "epoch_times": [10.0] * epochs, "last_step_times": [1.0] * epochs,
             "error": None, "compile_counts": eager},
            {"mode": "default", "epoch_times": [60.0] + [6.0] * (epochs - 1),
             "last_step_times": [1.0] * epochs, "error": None, "compile_counts": counts}]
    result = {"note": None, "dataset": {"name": "synthetic", "source": "-", "note": "-",
                                        "train_images": 300, "test_images": 10},
              "train_images": 300, "batch_size": 128, "epochs": epochs,
              "compiler_startup_time": 2.0, "runs": runs}
    result["analysis"] = speed.analyse_compile(result)
    return result


class C8TableTest(unittest.TestCase):
    def test_the_handouts_table_has_the_first_epoch_and_the_mean_of_epochs_6_to_10(self):
        result = known_c8()
        result["runs"][1]["epoch_times"][5:10] = [5.0, 5.0, 7.0, 7.0, 6.0]
        result["analysis"] = speed.analyse_compile(result)
        default = result["analysis"][1]
        self.assertEqual(default["mean_epochs_6_10"], 6.0)
        self.assertEqual(default["first_epoch"], 60.0)
        text = torchcompile.render_c8_table(result)
        self.assertIn("| mode    | first epoch (s) | mean of epochs 6-10 (s) |", text)
        self.assertIn("| default |          60.000 |                   6.000 |", text)
        short = known_c8(epochs=3)
        self.assertIsNone(short["analysis"][1]["mean_epochs_6_10"])
        text = torchcompile.render_c8_table(short)
        self.assertIn("mean of epochs 2-3 (s)", text)
        self.assertIn("this run trained 3", text)

    @unittest.skipUnless(shutil.which("g++") or shutil.which("c++"),
                         "torch.compile on a CPU needs a C++ compiler")
    def test_compile_counts_count_graphs_breaks_and_kernels(self):
        def broken(x):
            x = torch.relu(x) + 1
            torch._dynamo.graph_break()
            return x * 2

        torch._dynamo.reset()
        speed.reset_compile_counts()
        torch.compile(broken, backend="eager")(torch.ones(4))
        counts = speed.compile_counts()
        self.assertEqual((counts["graphs"], counts["graph_breaks"]), (2, 1))
        self.assertEqual(counts["generated_kernels"], 0)  # no Inductor, no kernels
        torch._dynamo.reset()
        speed.reset_compile_counts()
        with speed.cold_compiles():
            torch.compile(lambda x: torch.sin(x) * 2 + 1)(torch.ones(8))
        counts = speed.compile_counts()
        self.assertEqual((counts["graphs"], counts["graph_breaks"]), (1, 0))
        self.assertGreaterEqual(counts["generated_kernels"], 1)


class Q5Test(TempDirTest):
    """2025's Q5 answers from C8's results file of its own handout, every figure C8's."""

    def cfg(self, **changes):
        return replace(lab.Config(dataset="synthetic", out=self.out), **changes)

    def save_c8(self, cfg, result=None):
        """A C8 results file with run_exercise's header around known figures."""
        known = replace(lab.EXERCISES["c8"], run=lambda cfg, save: result or known_c8())
        report.run_exercise("c8", known, cfg, io.StringIO())

    def test_q5_needs_c8_of_its_own_handout(self):
        status, _, err = run_lab("q5", "--handout", "2025", "--out", self.out)
        one_line(self, status, err, "python lab.py --handout 2025 c8")
        self.save_c8(self.cfg(handout="2022"))
        status, _, err = run_lab("q5", "--handout", "2025", "--out", self.out)
        one_line(self, status, err, "under another handout")

    def test_q5_answers_from_c8s_own_figures(self):
        self.save_c8(self.cfg(handout="2025"))
        status, out, err = run_lab("q5", "--handout", "2025", "--out", self.out)
        self.assertEqual(status, 0, err)
        answer = self.load("q5")
        self.assertEqual((answer["handout"], answer["config"]["handout"]), ("2025", "2025"))
        default = next(m for m in answer["modes"] if m["mode"] == "default")
        self.assertEqual(default["counts"]["graphs"], 2)
        self.assertIn("captured 2 graphs of 310 operations", out)
        self.assertIn("The last batch of each epoch has 44 images", out)  # 300 = 2 x 128 + 44
        self.assertIn("fused what it could into 91 kernels it generated in C++", out)
        self.assertIn("first epoch 60.0 s against 6.00 s for a later one; 54.0 s of it", out)
        self.assertIn("eager mode, against default 6.00 s (1.67x)", out)


if __name__ == "__main__":
    unittest.main()
