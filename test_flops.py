"""Tests for flops.py: the summary's mult-adds against torch's FLOP counter, summary --wide, the
FLOPs of a training step, the matmul rate's count, the share arithmetic and its printout.

    python -m unittest test_flops

torch.utils.flop_counter.FlopCounterMode is the oracle: it counts 2 FLOPs per multiply-add of
every convolution and matrix product that runs, so a model's forward pass must count exactly
twice our mult-adds. Everything runs on the CPU in about a minute.
"""

import json
import tempfile
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import flops
import lab
from resnet import ResNet18
from testkit import HERE, quiet_module, run_lab

setUpModule = quiet_module
FIRST_CONV = 3 * 9 * 64 * 32 * 32  # conv1's mult-adds: 3 channels x 3x3 per output, 64x32x32


def mult_adds(model, input_size):
    return lab.model_summary(model, input_size, print_table=False)["total_mult_adds"]


def forward_flops(model, input_size):
    """FlopCounterMode's count for one sample's forward pass, in eval mode."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, *input_size))
    return counter.get_total_flops()


class MultAddsTest(unittest.TestCase):
    def assert_half_of_flop_counter(self, model, input_size):
        counted, oracle = mult_adds(model, input_size), forward_flops(model, input_size) / 2
        self.assertGreater(oracle, 0)
        self.assertLessEqual(abs(counted - oracle), 0.005 * oracle, (counted, oracle))
        return counted

    def test_resnet18_with_and_without_batch_norm(self):
        for batch_norm in (True, False):
            with self.subTest(batch_norm=batch_norm):
                model = ResNet18(batch_norm=batch_norm)
                total = self.assert_half_of_flop_counter(model, (3, 32, 32))
                self.assertEqual(total, 555_422_720)  # BatchNorm adds no multiply-adds

    def test_two_torchvision_models(self):
        # mobilenet_v3_small has depthwise (groups = channels) and squeeze-excitation layers.
        for build in (torchvision.models.resnet18, torchvision.models.mobilenet_v3_small):
            with self.subTest(model=build.__name__):
                torch.manual_seed(0)
                self.assert_half_of_flop_counter(build(weights=None), (3, 64, 64))

    def test_a_grouped_convolution_and_a_linear_layer_on_a_sequence(self):
        model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4),  # 2 input channels each
                              nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
                              nn.Flatten(2), nn.Linear(25, 6))             # (N, 16, 25) -> 6
        rows = lab.model_summary(model, (8, 5, 5), print_table=False)["rows"]
        self.assertEqual([row["mult_adds"] for row in rows],
                         [16 * 5 * 5 * 2 * 9, 16 * 5 * 5 * 1 * 9, 0, 16 * 6 * 25])
        self.assertEqual([row["kernel_size"] for row in rows], [[3, 3], [3, 3], None, None])
        self.assert_half_of_flop_counter(model, (8, 5, 5))

    def test_mult_adds_scale_with_the_batch_shown(self):
        self.assertEqual(lab.model_summary(ResNet18(), batch_size=4,
                                           print_table=False)["total_mult_adds"],
                         4 * 555_422_720)


class SummaryTableTest(unittest.TestCase):
    """`python lab.py summary` prints today's torchsummary table, byte for byte; --wide adds."""

    def summary_output(self, *options):
        with tempfile.TemporaryDirectory() as out:
            status, stdout, err = run_lab("summary", *options, "--out", out)
            self.assertEqual(status, 0, err)
            return stdout.replace(f"(saved to {out}/summary.json)", "(saved to <results file>)")

    def test_the_default_table_is_unchanged(self):
        for options, name in (((), "test_summary_resnet18.txt"),
                              (("--no-bn",), "test_summary_resnet18_no_bn.txt")):
            with self.subTest(options=options):
                expected = (HERE / name).read_text().split("\n")
                found = self.summary_output(*options).split("\n")
                self.assertTrue(found[3].startswith("device: "), found[3])
                found[3] = "<run line>"  # the machine and torch version of this run
                self.assertEqual(found, expected)

    def test_wide_adds_kernel_mult_adds_and_parameter_share(self):
        lines = self.summary_output("--wide").split("\n")
        header = next(line for line in lines if "Layer (type)" in line)
        self.assertEqual(header.split()[-5:], ["Kernel", "Shape", "Mult-Adds", "Param", "%"])
        first = next(line for line in lines if "Conv2d-1 " in line)
        self.assertEqual(first.split()[-5:], ["1,728", "[3,", "3]", f"{FIRST_CONV:,}", "0.02%"])
        self.assertIn("Total mult-adds: 555,422,720 (555.42 M)", lines)
        self.assertIn("counts 2 per mult-add: 1,110,845,440 FLOPs", "\n".join(lines))
        shares = [float(line.split()[-1][:-1]) for line in lines
                  if line.strip().endswith("%") and "-" in line.split()[0]]
        self.assertAlmostEqual(sum(shares), 100.0, delta=0.5)  # every parameter in some row

    def test_a_wide_results_file_renders_wide_again(self):  # as REPORT.md rebuilds it
        with tempfile.TemporaryDirectory() as out:
            status, _, err = run_lab("summary", "--wide", "--out", out)
            self.assertEqual(status, 0, err)
            saved = json.loads((Path(out) / "summary.json").read_text())
        render = lab.EXERCISES["summary"].render
        self.assertTrue(saved["wide"])
        self.assertIn("Total mult-adds: 555,422,720", render(saved))
        self.assertNotIn("Mult-Adds", render({**saved, "wide": False}))

    def test_wide_is_refused_where_there_is_no_summary_alone(self):
        for command in ("c2", "all", "check"):
            with self.subTest(command):
                status, out, err = run_lab(command, "--wide")
                self.assertEqual((status, out), (2, ""))
                self.assertEqual(err.strip(), f"lab.py: error: --wide is for summary, not "
                                              f"{command}")


class StepFlopsTest(unittest.TestCase):
    def test_matmul_count_is_two_n_cubed(self):
        self.assertEqual(flops.matmul_flops(2048, products=3), 3 * 2 * 2048 ** 3)
        a = torch.randn(64, 64)
        with FlopCounterMode(display=False) as counter:
            torch.mm(a, a)
        self.assertEqual(counter.get_total_flops(), flops.matmul_flops(64))

    def test_a_real_step_forward_and_backward(self):
        cfg = lab.Config()
        one, two = (flops.step_flops(cfg, torch.device("cpu"), batch) for batch in (1, 2))
        self.assertEqual(one, {**two, "batch_size": 1})  # per image, whatever the batch
        self.assertEqual(two["forward_per_image"], 2 * 555_422_720)
        # Backward: input and weight gradients, each the forward's cost, but no input
        # gradient for the first convolution: the images need none.
        self.assertEqual(two["backward_per_image"], 2 * two["forward_per_image"] - 2 * FIRST_CONV)
        self.assertEqual(two["per_image"], two["forward_per_image"] + two["backward_per_image"])
        # The speed options change how fast, not how much.
        fast = flops.step_flops(replace(cfg, channels_last=True, amp="bf16"), "cpu", 2)
        self.assertEqual(fast, two)

    def test_the_steps_dtype(self):
        self.assertEqual(flops.step_dtype("cpu", None), "float32")
        self.assertEqual(flops.step_dtype("cpu", "bf16"), "bfloat16")
        self.assertEqual(flops.step_dtype("cpu", "fp16"), "float16")

    def test_a_measured_matmul_rate_is_its_flops_over_its_time(self):
        rate = flops.matmul_rate("cpu", "float32", n=128, products=2, rounds=3)
        # A 128^3 product is 4 MFLOP: far less than a microsecond and far more than a second
        # of any CPU this runs on.
        self.assertTrue(1e6 < rate < 1e14, rate)
        with mock.patch.object(flops.Timer, "__exit__", autospec=True,
                               side_effect=lambda timer, *exc: setattr(timer, "elapsed", 0.5)):
            self.assertEqual(flops.matmul_rate("cpu", "float32", n=8, products=2, rounds=3),
                             flops.matmul_flops(8, 2) / 0.5)

    def test_a_slow_dtype_is_timed_on_smaller_products(self):
        def taking(seconds):  # every timed product takes `seconds`
            def stop(timer, *exc):
                timer.elapsed = seconds
            return mock.patch.object(flops.Timer, "__exit__", autospec=True, side_effect=stop)
        with taking(0.0):  # fast: the usual side
            self.assertEqual(flops.matmul_side("cpu", "float32", 2048), 2048)
        with taking(flops.PRODUCT_SECONDS / 8 * 1.01):  # the next side would take too long
            self.assertEqual(flops.matmul_side("cpu", "float32", 2048), 256)
        self.assertEqual(flops.matmul_side("cpu", "float32", 64), 64)  # never above the usual
        # Really measured, with a limit that no product here meets: every side is too long.
        with mock.patch.object(flops, "PRODUCT_SECONDS", 0.0):
            rates, sides = flops.matmul_rates("cpu", ["float32"])
        self.assertEqual(sides, {"float32": 256})
        self.assertGreater(rates["float32"], 0)

    def test_a_smaller_side_is_said(self):
        self.assertEqual(flops.describe_rate("float32", 173e9, 2048, 2048),
                         "float32 173.0 GFLOP/s")
        self.assertEqual(flops.describe_rate("bfloat16", 1.2e9, 512, 2048),
                         "bfloat16 1.2 GFLOP/s on 512x512 matrices, as one 2048x2048 product "
                         "would take over 1 s here")
        self.assertEqual(flops.describe_rate("tf32", None, 256, 2048), "tf32 - GFLOP/s")


class ShareTest(unittest.TestCase):
    """The share arithmetic on known figures: the ones measured on this project's CPU."""

    def test_achieved_flops_and_share(self):
        # 3.33 GFLOP per image at 39.7 images/s is 132.2 GFLOP/s: 76.4% of 173 GFLOP/s.
        figures = flops.achieved(3.33e9, 39.7, 173e9)
        self.assertAlmostEqual(figures["flops_per_s"], 132.201e9, delta=1e3)
        self.assertAlmostEqual(figures["matmul_share"], 0.76417, places=4)
        self.assertIsNone(flops.achieved(3.33e9, 39.7, None)["matmul_share"])

    def test_bench_rows_get_their_dtypes_rate(self):
        rows = [{"name": "default", "options": {}, "images_per_second": 40.0},
                {"name": "amp bf16", "options": {"amp": "bf16"}, "images_per_second": 100.0},
                {"name": "compile", "options": {"compile": True}, "images_per_second": None}]
        rates = {"float32": 200e9, "bfloat16": 400e9}
        sides = {"float32": 2048, "bfloat16": 2048}
        with mock.patch.object(flops, "matmul_rates", return_value=(rates, sides)) as measured:
            figures = flops.bench_arithmetic(replace(lab.Config(), batch_size=1), "cpu", rows)
        self.assertEqual(list(measured.call_args.args[1]), ["float32", "bfloat16"])
        per_image = figures["step_flops"]["per_image"]
        self.assertEqual(rows[0]["flops_per_s"], 40 * per_image)
        self.assertAlmostEqual(rows[0]["matmul_share"], 40 * per_image / 200e9)
        self.assertAlmostEqual(rows[1]["matmul_share"], 100 * per_image / 400e9)
        self.assertEqual((rows[2]["flops_per_s"], rows[2]["matmul_share"]), (None, None))
        self.assertEqual(figures["matmul_flops_per_s"], rates)
        self.assertEqual(figures["matmul_sides"], sides)

    def test_the_printout_follows_the_share(self):
        arithmetic = {"step_flops": {"batch_size": 128, "forward_per_image": 1.11e9,
                                     "backward_per_image": 2.22e9, "per_image": 3.33e9},
                      "dtype": "float32", "images_per_second": 39.7,
                      "matmul": {"n": 2048, "products": 3, "rounds": 3},
                      "matmul_flops_per_s": {"float32": 173e9}, "flops_per_s": 132.2e9,
                      "matmul_share": 0.764}
        text = flops.render_c2_arithmetic(arithmetic)
        for words in ("132.2 GFLOP/s", "76.4% of this device's float32 matmul rate",
                      "3.33 GFLOP per image", "dense 2048x2048", "not a data-sheet peak",
                      "bound by arithmetic"):
            self.assertIn(words, text)
        low = flops.render_c2_arithmetic({**arithmetic, "matmul_share": 0.04})
        self.assertIn("At 4% most of the step's time goes to work other than", low)
        self.assertNotIn("bound by arithmetic", low)
        self.assertIn("above 100%", flops.explain_share(1.2, "float32"))
        self.assertIn("could not be measured", flops.explain_share(None, "tf32"))
        self.assertIn("not measured: under torchrun",
                      flops.render_c2_arithmetic({"skipped": "under torchrun ..."}))


if __name__ == "__main__":
    unittest.main()
