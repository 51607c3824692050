"""Tests for 2026's Part B (torchscript.py): `python -m unittest test_torchscript`.

One tiny C1 run (testkit.trained_weights) trains the weights that every test here starts from.
The oracles: the eager model computed here beside the TorchScript one, train.evaluate's
accuracy, Q1's 20 convolutions in the graph, and torch's own error for a block that cannot be
scripted.
"""

import os
import tempfile
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch

import infer
import lab
import torchscript
import train
from data import datasets_for, make_loader
from parallel import weights_digest
from resnet import ResNet18
from testkit import one_line, quiet_module, run_lab, trained_weights

setUpModule = quiet_module
# 2026's Part B, each with the data options it takes
PART_B = {"c7": ["--dataset", "synthetic", "--test-size", "20"], "c8": [],
          "c9": ["--dataset", "synthetic", "--test-size", "20"], "c10": [],
          "ec": ["--dataset", "synthetic", "--test-size", "20"]}


class PartBTest(unittest.TestCase):
    """Every test reads the weights one tiny C1 run kept (2 epochs on 32 synthetic images)."""

    @classmethod
    def setUpClass(cls):
        cls.out, cls.cfg, cls.kept = trained_weights()

    def eager_model(self):
        model = ResNet18()
        model.load_state_dict(torch.load(os.path.join(self.out, torchscript.WEIGHTS_FILE),
                                         weights_only=True))
        return model.eval()

    def test_c1_keeps_the_last_epochs_weights(self):
        self.assertEqual(len(self.kept), 2)  # written after each epoch
        self.assertEqual(weights_digest(self.eager_model()), self.kept[-1])
        self.assertNotEqual(self.kept[0], self.kept[1])
        self.assertEqual([name for name in os.listdir(self.out) if name.startswith(".tmp")], [])

    def test_c7_round_trip_gives_eager_outputs(self):
        images = torchscript.first_test_images(self.cfg, 20)[0]  # (20, 3, 32, 32)
        with torch.no_grad():
            expected = self.eager_model()(images)  # the oracle, computed here
        for trace, name in ((False, "c7.scripted.pt"), (True, "c7.traced.pt")):
            result = torchscript.c7_torchscript(replace(self.cfg, trace=trace))
            self.assertEqual(result["file"], os.path.join(self.out, name))
            self.assertTrue(result["matches_eager"], result["max_abs_diff"])
            self.assertEqual(result["same_class"], 20)
            with torchscript.quiet_deprecation(), torch.no_grad():
                reloaded = torch.jit.load(result["file"])(images)
            self.assertLessEqual((reloaded - expected).abs().max().item(), 1e-5)
        self.assertIn("torch.jit.trace", torchscript.render_c7_torchscript(result))

    def test_c8_graph_holds_the_twenty_convolutions(self):
        result = torchscript.c8_graph(self.cfg)
        kinds = result["inlined_node_kinds"]
        self.assertEqual(kinds["aten::conv2d"], 20)   # Q1's 20 convolutions
        self.assertEqual(kinds["aten::batch_norm"], 20)
        self.assertEqual(result["block_class"], "BasicBlock")
        self.assertIn("prim::CallMethod", result["block_graph"])
        text = Path(result["graph_file"]).read_text()
        self.assertIn(result["block_code"].strip(), text)
        self.assertEqual(text.count("aten::conv2d("), 3 + 20)  # the block inlined, the model

    def test_c9_torchscript_accuracy_equals_eager(self):
        result = torchscript.c9_accuracy(self.cfg)
        self.assertEqual(result["images"], 20)
        self.assertEqual(result["differing_predictions"], 0)
        self.assertEqual(result["torchscript_accuracy"], result["eager_accuracy"])
        loader = make_loader(datasets_for(self.cfg)[1], 100, shuffle=False, num_workers=0)
        oracle = train.evaluate(self.eager_model(), loader, torch.device("cpu"))
        self.assertAlmostEqual(result["eager_accuracy"], oracle)
        self.assertIn("Images whose predicted class differs: 0 of 20",
                      torchscript.render_c9_accuracy(result))

    def test_c10_times_both_with_infers_one_measurement(self):
        quick = {"warmup": 0, "min_runs": 1, "max_runs": 1, "budget_s": 0.0}
        cfg = replace(self.cfg, infer_batch_sizes=(1, 16))
        with mock.patch.dict(infer.REPEATS["cpu"], quick), \
                mock.patch.object(torchscript, "time_in_rounds",
                                  wraps=infer.time_in_rounds) as timed:
            result = torchscript.c10_latency(cfg)
        devices = 2 if result["gpu"]["skipped"] is None else 1
        self.assertEqual(timed.call_count, 2 * devices)  # one round of turns per batch size
        self.assertEqual([(r["device"], r["batch_size"]) for r in result["rows"]][:2],
                         [("cpu", 1), ("cpu", 16)])
        for row in result["rows"]:
            self.assertAlmostEqual(row["speedup"], row["eager"]["median_ms"]
                                   / row["torchscript"]["median_ms"])
            self.assertLessEqual(row["torchscript"]["max_abs_diff"], 1e-5)
            self.assertEqual(row["eager"]["max_abs_diff"], 0.0)  # eager against itself
        text = torchscript.render_c10_latency(result)
        self.assertIn("| cpu    |     1 | TorchScript", text)
        if not torch.cuda.is_available():
            self.assertIn("no CUDA", result["gpu"]["skipped"])
            self.assertIn("| gpu    |     1 | skipped", text)


class LatencyVerdictTest(unittest.TestCase):
    def test_faster_or_slower_only_clear_of_the_spread(self):
        def row(script, eager, speedup=1.0):  # (median, p90) in ms of each
            timing = lambda pair: {"median_ms": pair[0], "p90_ms": pair[1]}
            return {"torchscript": timing(script), "eager": timing(eager), "speedup": speedup}

        verdict = torchscript.compared_with_eager
        self.assertEqual(verdict(row((5.0, 6.0), (7.0, 8.0))), "faster than eager")
        self.assertEqual(verdict(row((7.0, 8.0), (5.0, 6.0))), "slower than eager")
        self.assertTrue(verdict(row((5.0, 7.5), (7.0, 8.0), 1.4)).startswith("as fast as eager"))
        self.assertEqual(verdict(row((5.0, None), (7.0, None), 1.4)),
                         "not told apart from eager here (too few timed calls for a p90)")


class WithoutWeightsTest(unittest.TestCase):
    def test_missing_weights_are_one_line_naming_the_command(self):
        with tempfile.TemporaryDirectory() as folder:
            for name, data in PART_B.items():
                status, _, err = run_lab("--handout", "2026", name, *data, "--out", folder)
                one_line(self, status, err, f"python lab.py --handout 2026 c1 --out {folder}")

    def test_trace_and_checkpoint_are_refused_where_they_do_not_apply(self):
        with tempfile.TemporaryDirectory() as folder:
            for args, message in ((["c2", "--trace"], "--trace is for c7, c8, c9, c10, ec"),
                                  (["infer", "--trace"], "--trace is for c7"),
                                  (["q5", "--checkpoint", "w.pt"],
                                   "--checkpoint is for c7, c8, c9, c10, ec, infer, not q5"),
                                  (["c8", "--test-size", "5"], "--test-size is for"),
                                  (["c10", "--batch-size", "5"], "c10 takes --batch-sizes")):
                status, _, err = run_lab("--handout", "2026", *args, "--out", folder)
                one_line(self, status, err, message)
            status, _, err = run_lab("c7", "--trace", "--out", folder)  # 2022's C7 trains
            one_line(self, status, err, "--trace is for c7, c8, c9, c10, ec of --handout 2026, "
                                        "not c7")

    def test_q5_the_trace_fixes_what_the_script_keeps(self):
        result = torchscript.q5_trace_vs_script(lab.Config())
        trace, script = result["recorded"]["trace"], result["recorded"]["script"]
        self.assertEqual(trace["if_nodes"], 0)
        self.assertGreater(script["if_nodes"], 0)
        train_mode = result["train_mode"]
        self.assertEqual(train_mode["trace"]["max_diff_from_eval"], 0.0)  # BatchNorm frozen
        self.assertGreater(train_mode["trace"]["max_diff_from_eager_train"], 1e-3)
        self.assertLessEqual(train_mode["script"]["max_diff_from_eager_train"], 1e-6)
        branch = result["branch"]
        self.assertNotEqual(branch["traced"], branch["eager"])
        self.assertEqual(branch["scripted"], branch["eager"])
        self.assertIn("still normalises with the running statistics",
                      torchscript.render_q5_trace_vs_script(result))

    def test_q6_shows_the_failure_and_the_fix(self):
        with self.assertRaisesRegex(RuntimeError, "NoneType"), torchscript.quiet_deprecation():
            torch.jit.script(torchscript.FlagBasicBlock(8, 8, batch_norm=False))  # the oracle
        torchscript.q6_scripting(lab.Config())
        result = torchscript.q6_scripting(lab.Config())  # again: each run shows torch's error
        failed = [(a["class"], a["batch_norm"]) for a in result["attempts"] if a["error"]]
        self.assertEqual(failed, [("FlagBasicBlock", False)])
        error = next(a["error"] for a in result["attempts"] if a["error"])
        self.assertIn("cannot call a value of type 'NoneType'", error)
        self.assertTrue(all(a["max_diff_from_python"] == 0.0
                            for a in result["attempts"] if not a["error"]))
        self.assertEqual(set(result["whole_model"].values()), {"RecursiveScriptModule"})
        self.assertIn("if self.bn1 is not None:", result["fixed_source"])
        self.assertIn(error.splitlines()[0], torchscript.render_q6_scripting(result))


if __name__ == "__main__":
    unittest.main()
