"""Tests for infer.py: every way against eager, the result and its rendering, checkpoints,
percentiles, and trace against script: `python -m unittest test_infer` (CPU, ~2 min).

Each way's outputs are checked against eager's, run in this file, not against infer.py's own
comparison; BatchNorm gets random statistics first, so that a conversion that dropped or
mis-folded it would show.
"""

import os
import pickle
import tempfile
import unittest
import warnings
from unittest import mock

import torch
import torch.nn as nn

import infer
import lab
from resnet import ResNet18
from testkit import TOLERANCE, network, quiet_module, relative_difference, run_lab

setUpModule = quiet_module


def config(**changes):
    """The lab's Config, timing batch sizes 1 and 3 unless told otherwise."""
    return lab.Config(**{"infer_batch_sizes": (1, 3), **changes})


class TestEveryWayMatchesEager(unittest.TestCase):
    """Convert, run at the example's batch size and another, save, load, and compare."""

    def setUp(self):
        self.enterContext(warnings.catch_warnings())
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation, on every call

    def check_way(self, name, batch_norm):
        model = network(batch_norm)
        one, three = torch.randn(1, 3, 32, 32), torch.randn(3, 3, 32, 32)  # (1|3, 3, 32, 32)
        with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
            converted = infer.WAYS[name](model, one, folder)
            for images in (one, three):  # a second batch size: the conversions are not fixed to 1
                self.assertLess(relative_difference(converted.run(images), model(images)),
                                TOLERANCE, f"{name}, batch {len(images)}, batch_norm={batch_norm}")
            if converted.path is None:
                self.assertEqual(name, "compile")  # the only way with no file
                return
            self.assertGreater(os.path.getsize(converted.path), 40e6)  # 11M float32 weights
            reloaded = converted.reload()
            self.assertTrue(torch.equal(reloaded(three), converted.run(three)), name)

    def test_eager_trace_script_export_with_and_without_batch_norm(self):
        for name in ("eager", "trace", "script", "export"):
            for batch_norm in (True, False):
                with self.subTest(way=name, batch_norm=batch_norm):
                    self.check_way(name, batch_norm)

    # Compiling takes tens of seconds a network on two CPU cores, so compile and AOTInductor are
    # checked on the lab's default network only, the one with BatchNorm to fold.
    def test_compile_with_batch_norm(self):
        self.check_way("compile", True)

    def test_aoti_with_batch_norm(self):
        self.check_way("aoti", True)

    def test_compile_compiles_on_the_first_call_at_each_new_batch_size(self):
        # What DEPRECATION and the conversion table say: static shapes, as in training. With
        # torch.compile's default, the second shape would compile one graph for all the rest.
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
        graphs = torch._dynamo.utils.counters["stats"]
        with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
            converted = infer.WAYS["compile"](model, torch.randn(1, 3, 32, 32), folder)
            compiled = [graphs["unique_graphs"]]
            for batch in (3, 5, 3):
                converted.run(torch.randn(batch, 3, 32, 32))
                compiled.append(graphs["unique_graphs"])
        self.assertEqual([count - compiled[0] for count in compiled], [0, 1, 2, 2])


class TestInfer(unittest.TestCase):
    def test_result_and_saves_after_each_way(self):
        saved = []
        few = {"cpu": {"warmup": 0, "min_runs": 2, "max_runs": 2, "budget_s": 0.0}}
        with mock.patch.dict(infer.REPEATS, few):
            result = infer.infer(config(), ways=("eager", "trace"), save=lambda r: saved.append(
                (list(r["ways"]), len(r["ways"]["eager"]["batches"]))))
        # After each way's conversion, then after each batch size's rounds.
        self.assertEqual(saved, [(["eager"], 0), (["eager", "trace"], 0),
                                 (["eager", "trace"], 1), (["eager", "trace"], 2)])
        self.assertEqual(result["batch_sizes"], [1, 3])
        for name, way in result["ways"].items():
            self.assertIsNone(way["error"], name)
            self.assertTrue(way["reload_matches"], name)
            self.assertEqual([row["batch_size"] for row in way["batches"]], [1, 3])
            for row in way["batches"]:
                self.assertEqual(row["runs"], 2)
                self.assertIsNone(row["p90_ms"])  # from 2 calls it would be about the slowest
                self.assertIsNone(row["p99_ms"])
                self.assertAlmostEqual(row["images_per_s"],
                                       row["batch_size"] * 1000 / row["median_ms"])
                self.assertTrue(row["matches_eager"])
        self.assertIn("torch.jit.trace", "".join(result["ways"]["trace"]["warnings"]))
        self.assertEqual(result["caches"], "cold")
        text = infer.render_infer(result)
        self.assertIn("### Batch size 3", text)
        self.assertIn("torch.export", text)
        self.assertIn("No p90, p99 or spread flag where there were fewer than 10 timed calls: "
                      "batch 1, 2 calls a way, batch 3, 2 calls a way.", text)
        self.assertIn("with TorchInductor's caches off", text)

    def test_unknown_way_names_the_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "eager, trace, script, export, compile, aoti"):
            infer.infer(config(), ways=("onnx",))

    def test_a_failing_way_is_one_line_and_the_others_go_on(self):
        def broken(model, example, folder):
            raise RuntimeError("no such backend\nsecond line")

        few = {"cpu": {"warmup": 0, "min_runs": 1, "max_runs": 1, "budget_s": 0.0}}
        with mock.patch.dict(infer.REPEATS, few), mock.patch.dict(infer.WAYS, {"trace": broken}):
            result = infer.infer(config(infer_batch_sizes=(1,)), ways=("trace", "eager"))
        self.assertEqual(result["ways"]["trace"]["error"], "RuntimeError: no such backend")
        self.assertIsNone(result["ways"]["eager"]["error"])
        self.assertIn("trace failed: RuntimeError: no such backend", infer.render_infer(result))


class TestTimingInRounds(unittest.TestCase):
    """time_in_rounds with stand-in ways: who is called when, and which outputs are checked."""

    repeats = {"warmup": 1, "min_runs": 3, "max_runs": 3, "budget_s": 0.0}

    def test_the_ways_take_turns_and_every_call_is_checked(self):
        images, expected = torch.zeros(2, 3, 32, 32), torch.ones(2, 10)
        calls = []

        def way(name, outputs):
            def run(batch):
                calls.append(name)
                return outputs(len(calls))
            return infer.Converted(run, 0.0)

        right = way("right", lambda count: expected)
        # Right on its first call (the one a profiling executor runs), wrong once optimised.
        later_wrong = way("later_wrong", lambda count: expected + (count > 2))
        outcomes = {"right": {"warnings": []}, "later_wrong": {"warnings": []}}
        rows = infer.time_in_rounds({"right": right, "later_wrong": later_wrong}, outcomes,
                                    images, expected, self.repeats)
        self.assertEqual(calls, ["right", "later_wrong"] * 5)  # first, warm-up, 3 timed rounds
        self.assertTrue(rows["right"]["matches_eager"])
        self.assertFalse(rows["later_wrong"]["matches_eager"])
        self.assertEqual(rows["later_wrong"]["max_abs_diff"], 1.0)
        self.assertEqual([rows[name]["runs"] for name in rows], [3, 3])


class TestPayback(unittest.TestCase):
    def test_the_payback_counts_the_first_call_at_a_new_batch_size(self):
        # The README's batch-128 figures: compile converted at batch 1, and its first call at
        # 128 compiled again: 2.37 s + (7884.9 - 704.07) ms once, 420.69 ms saved a call.
        ways = {"eager": {"convert_s": 0.0, "load_s": None},
                "compile": {"convert_s": 2.37, "load_s": None},
                "aoti": {"convert_s": 10.8, "load_s": 0.5}}
        rows = {"eager": {"first_call_ms": 1143.3, "median_ms": 1124.76},
                "compile": {"first_call_ms": 7884.9, "median_ms": 704.07},
                "aoti": {"first_call_ms": 710.0, "median_ms": 718.5}}
        self.assertAlmostEqual(sum(infer.one_time_costs(ways["compile"], rows["compile"])),
                               2.37 + 7.18083)
        (line,) = infer._payback(rows, ways, 128)
        self.assertIn("compile after 23 calls (420.69 ms saved a call; once: 2.4 s to convert "
                      "+ 7.2 s more in the first call)", line)  # not after 6, conversion alone
        self.assertIn("aoti after 28 calls", line)  # (10.8 + 0.5 s) / 406.26 ms
        self.assertIn("+ 0.5 s to load", line)


class TestCheckpoint(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.TemporaryDirectory()
        self.addCleanup(self.folder.cleanup)

    def saved(self, state):
        path = os.path.join(self.folder.name, "checkpoint.pt")
        torch.save(state, path)
        return path

    def test_plain_and_wrapped_state_dicts_load(self):
        trained = network(True)
        for state in (trained.state_dict(), {"model": trained.state_dict(), "epoch": 3}):
            model = infer.load_model(config(checkpoint=self.saved(state)))
            self.assertTrue(torch.equal(model.bn1.running_var, trained.bn1.running_var))
            self.assertFalse(model.training)

    def test_missing_file(self):
        with self.assertRaisesRegex(infer.InferError, "cannot read checkpoint .*nowhere.pt"):
            infer.load_model(config(checkpoint=os.path.join(self.folder.name, "nowhere.pt")))

    def test_weights_of_the_other_network(self):
        path = self.saved(ResNet18(batch_norm=False).state_dict())
        with self.assertRaises(infer.InferError) as caught:
            infer.load_model(config(checkpoint=path))
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertIn("missing: bn1.weight", message)
        self.assertIn("other batch_norm setting", message)

    def test_wrong_shape(self):
        path = self.saved(ResNet18(num_classes=100).state_dict())
        shapes = r"2 wrong shape: linear.weight \(100, 512\) not \(10, 512\), linear.bias"
        with self.assertRaisesRegex(infer.InferError, shapes):
            infer.load_model(config(checkpoint=path))

    def test_not_a_state_dict(self):
        with self.assertRaisesRegex(infer.InferError, "holds a list, not a state_dict"):
            infer.load_model(config(checkpoint=self.saved([1, 2, 3])))


class TestPercentile(unittest.TestCase):
    def test_known_values(self):  # numpy.percentile's defaults, worked by hand
        self.assertEqual(infer.percentile([4, 1, 3, 2], 50), 2.5)
        self.assertEqual(infer.percentile([1, 2, 3, 4], 0), 1)
        self.assertEqual(infer.percentile([1, 2, 3, 4], 100), 4)
        self.assertAlmostEqual(infer.percentile(list(range(1, 11)), 90), 9.1)
        self.assertAlmostEqual(infer.percentile([10, 20], 99), 19.9)
        self.assertEqual(infer.percentile([7.0], 99), 7.0)

    def test_no_values(self):
        with self.assertRaises(ValueError):
            infer.percentile([], 50)


class TestTraceVersusScript(unittest.TestCase):
    def test_the_trace_keeps_the_branch_it_saw(self):
        demo = infer.trace_versus_script()
        self.assertEqual(demo["input"], [-1.0, -2.0, -3.0])
        self.assertEqual(demo["eager"], [1.0, 2.0, 3.0])      # sum < 0: -x
        self.assertEqual(demo["traced"], [-2.0, -4.0, -6.0])  # the x * 2 branch, kept
        self.assertEqual(demo["scripted"], demo["eager"])
        self.assertIn("might not generalize", " ".join(demo["tracer_warning"]))
        self.assertNotIn("if", demo["traced_code"])
        self.assertIn("if", demo["scripted_code"])
        self.assertNotEqual(demo["export"], "exported")

    def test_block_listings(self):
        block = infer.look_at_a_block(network(True), torch.device("cpu"))
        self.assertIn("shortcut", block["script_code"])
        self.assertIn("prim::CallMethod", block["script_graph"])
        self.assertEqual(block["export_code"].count("aten.conv2d"), 3)  # two 3x3 and the 1x1


class CheckpointFaultTest(unittest.TestCase):
    """A checkpoint that does not hold what infer needs ends in one line, ours alone."""

    def setUp(self):
        self.folder = tempfile.TemporaryDirectory()
        self.addCleanup(self.folder.cleanup)

    def saved(self, state):
        path = os.path.join(self.folder.name, "checkpoint.pt")
        torch.save(state, path)
        return path

    def run_infer(self, path):
        with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
            warnings.simplefilter("always")  # torch's warnings, however often they were shown
            return run_lab("infer", "--checkpoint", path, "--out", out)

    def test_a_value_that_is_not_a_tensor(self):
        state = ResNet18().state_dict()
        state["conv1.weight"] = 0
        with self.assertRaisesRegex(infer.InferError, r"1 not a tensor: conv1\.weight \(int\)"):
            infer.load_model(config(checkpoint=self.saved(state)))
        status, _, err = self.run_infer(self.saved(state))
        self.assertEqual((status, len(err.strip().splitlines())), (2, 1), err)

    def test_a_plain_pickle_gets_our_line_alone(self):
        path = os.path.join(self.folder.name, "plain.pkl")
        with open(path, "wb") as file:
            pickle.dump({"conv1.weight": [0.0]}, file, protocol=4)
        status, _, err = self.run_infer(path)
        self.assertEqual(status, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)  # no UserWarning around it
        self.assertIn(f"cannot read checkpoint {path}: it is not a state_dict that torch.save "
                      "wrote", err)
        self.assertNotIn("weights_only", err)  # torch's advice would run the file's code


class BatchMemoryTest(unittest.TestCase):
    def test_a_batch_larger_than_free_memory_is_refused_before_it_is_made(self):
        huge = config(infer_batch_sizes=(1, 100_000_000))
        with mock.patch.object(torch, "randn", side_effect=AssertionError("allocated")):
            with self.assertRaisesRegex(infer.InferError, r"--batch-sizes 1,100000000 needs "
                                        r"about .* GiB of memory .* ask for smaller batches"):
                infer.infer(huge)
        with mock.patch.object(infer, "available_memory", return_value=2**30):
            infer.check_memory([1, 128], torch.device("cpu"))  # 0.13 GiB: fits in 1 GiB
            with self.assertRaisesRegex(infer.InferError, "1.0 GiB is free on cpu"):
                infer.check_memory([1, 2048], torch.device("cpu"))


if __name__ == "__main__":
    unittest.main()
