"""Tests for render.py: the explanations of C3 and C4 follow the numbers, synthetic data is
named as such, the model summary's table, and the answers to Q1-Q4 as printed."""

import inspect
import io
import unittest

import data
import lab
import render
import report
from lab import count_parameters_and_gradients, model_summary, q1_conv_layers, q2_linear_input
from render import format_summary, render_q1, render_q2, render_q3, render_q4
from resnet import ResNet18
from testkit import TempDirTest, config, q3_q4_results, quiet_module

setUpModule = quiet_module


class ExplanationTest(TempDirTest):
    """What C3 and C4 say follows their numbers."""

    def test_c4_explanation_follows_the_numbers(self):
        def run(data_time, first, train_time):
            return {"summary": {"data_time": data_time, "first_batch_time": first,
                                "train_time": train_time,
                                "epoch_time": data_time + train_time}}

        hidden = render.explain_c4(run(2.0, 0.1, 10.0), run(0.3, 0.25, 10.0), 4)
        self.assertIn("With 1 worker, the loop waited 2.000 s", hidden)
        self.assertIn("Loading is not hidden", hidden)  # 1.9 s after the start: 16%
        self.assertIn("After the start, loading is hidden", hidden)  # 0.05 s after the start
        self.assertIn("+1.700 s is in the wait for data and +0.000 s in training", hidden)
        self.assertIn("stayed within 5%", hidden)
        contended = render.explain_c4(run(0.1, 0.05, 12.0), run(0.1, 0.05, 10.0), 4)
        self.assertIn("changed by 17%", contended)
        self.assertIn("With no workers the main process loads every batch",
                      render.explain_c4(run(1.0, 0.1, 10.0), run(0.5, 0.01, 10.0), 0))

    def test_c4_names_a_warm_up_only_where_one_ran(self):
        def run(train_time, warmed_up):
            return {"warmed_up": warmed_up,
                    "summary": {"data_time": 0.1, "first_batch_time": 0.05,
                                "train_time": train_time, "epoch_time": train_time + 0.1}}

        cpu = render.explain_c4(run(12.0, False), run(10.0, False), 4)
        self.assertIn("changed by 17%", cpu)
        self.assertNotIn("warm", cpu)  # train.warm_up does nothing on a CPU
        gpu = render.explain_c4(run(12.0, True), run(10.0, True), 4)
        self.assertIn("the device was warmed up before each timed run", gpu)

    def test_the_wait_after_the_first_batch_names_the_shutdown(self):
        run = {"summary": {"data_time": 2.0, "first_batch_time": 0.1, "train_time": 10.0,
                           "epoch_time": 12.0}}
        self.assertIn("the last `next()`, which finds the epoch over and shuts the workers down",
                      render.explain_wait(run, 2))

    def test_c2_under_torchrun_bounds_data_and_train_and_names_the_padding(self):
        epoch = {"epoch": 1, "images": 12, "data_time": 1.0, "train_time": 5.0,
                 "other_time": 0.0, "epoch_time": 6.0,
                 "rank_mean": {"data_time": 0.8, "train_time": 4.5}}
        result = {"epochs": [epoch], "summary": {**epoch, "first_batch_time": 0.1},
                  "device": {"type": "cpu"}, "distributed": {"world_size": 2},
                  "dataset": {"train_images": 10}}
        text = render.render_c2(result)
        # Slowest minus mean: 0.5 s training, 0.2 s waiting; 2 ranks x 0.2 s of a 6 s epoch.
        self.assertIn("no more than 6.7 points in this run", text)
        self.assertIn("include 2 padded duplicates", text)
        result["epochs"][0] = {**epoch, "images": 10}
        self.assertNotIn("padded", render.render_c2(result))

    def test_c7_says_when_its_batch_norm_side_is_another_process(self):
        def run(layers):
            summary = {"train_loss": 1.0, "train_accuracy": 50.0, "final_train_loss": 0.9,
                       "final_train_accuracy": 55.0, "train_time": 10.0, "epoch_time": 11.0,
                       "diverged_at": None}
            return {"model": {"batchnorm_layers": layers, "parameters": 100},
                    "summary": summary}

        result = {"runs": {"with_bn": run(20), "without_bn": run(0)},
                  "batch_norm_source": "C6's SGD run (same configuration)",
                  "batch_norm_reused_from": "2026-11-29T10:00:00"}
        self.assertIn("timed in another process, C6's (started 2026-11-29T10:00:00)",
                      render.render_c7(result))
        result.update(batch_norm_source="a fresh run", batch_norm_reused_from=None)
        self.assertNotIn("another process", render.render_c7(result))

    def test_c3_core_explanation_only_claims_what_was_timed(self):
        point = lambda n, t, spread=0.1: {"num_workers": n, "median": t, "min": t - spread,
                                          "max": t + spread}
        untimed = [point(0, 5.0), point(2, 3.0)]
        self.assertIn("No count above 2 was timed", render.explain_cores(untimed, untimed[1], 2))
        agree = [point(0, 5.0), point(2, 3.0), point(4, 3.5)]
        self.assertIn("The sweep agrees", render.explain_cores(agree, agree[1], 2))
        noisy = [point(0, 5.0), point(2, 3.0, 0.5), point(4, 2.9, 0.5)]
        self.assertIn("spreads overlap: noise", render.explain_cores(noisy, noisy[2], 2))
        busy = [point(0, 5.0), point(2, 3.0), point(8, 2.0)]
        self.assertIn("8 workers were still 33% faster", render.explain_cores(busy, busy[2], 2))


class WordsTest(TempDirTest):
    """What the lab says is true: the data named as used."""

    def test_synthetic_data_is_never_called_cifar10(self):
        _, _, info = data.load_datasets("synthetic", train_size=8, test_size=8)
        self.assertIn("not CIFAR-10's", info["note"])
        self.assertEqual(report.data_title(info), "synthetic CIFAR-shaped data (not CIFAR-10)")
        self.assertEqual(report.data_title({"name": "cifar10"}), "CIFAR-10")
        header = report.report_header(lab.Config(), {"dataset": info})
        self.assertTrue(header.startswith("# HPML lab report: ResNet-18 on synthetic"), header)


class TestSummaryTable(unittest.TestCase):

    def test_format_summary_is_the_printed_table(self):
        out = io.StringIO()
        summary = model_summary(ResNet18(batch_norm=False), file=out)
        self.assertEqual(out.getvalue(), format_summary(summary) + "\n")
        self.assertNotIn("Conv2d-1", format_summary(summary, with_rows=False))


class TestQ1Rendering(unittest.TestCase):

    def test_rendering(self):
        text = render_q1(q1_conv_layers(config(True)))
        self.assertTrue(text.startswith("**20 convolutional layers** (17 3x3, 3 1x1) in "
                                        "ResNet-18,"))  # no heading: the title is above it
        self.assertIn("Why the name says 18", text)
        self.assertIn("17 convolutions plus 1 linear layer = 18", text)
        self.assertIn("other 3 convolutions are the 1x1 projections", text)
        self.assertIn("| 8 | layer2.0.shortcut.0 | 1x1 | 64 -> 128 | 2 | shortcut |", text)


class TestQ2Rendering(unittest.TestCase):

    def test_rendering(self):
        text = render_q2(q2_linear_input(config(False)))
        self.assertTrue(text.startswith("**512** in ResNet-18 without BatchNorm,"))
        self.assertIn("without BatchNorm", text)
        self.assertIn("**512**", text)
        self.assertIn("Why not 512x4x4 = 8,192", text)


class TestQ3Q4Rendering(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.results = q3_q4_results()

    def test_rendering_shows_the_code_that_counted(self):
        text = render_q3(self.results[("sgd", True)])
        self.assertTrue(text.startswith("**11,173,962 trainable parameters and 11,173,962 "
                                        "gradients** in ResNet-18 with SGD:"))
        self.assertIn("**11,173,962 trainable parameters and 11,173,962 gradients**", text)
        self.assertIn(inspect.getsource(count_parameters_and_gradients).rstrip(), text)
        self.assertIn("| momentum_buffer | 62 | 11,173,962 |", text)
        self.assertIn("SGD keeps 1 number per weight (momentum_buffer).", text)

    def test_rendering_follows_the_result(self):
        text = render_q4(self.results[("adam", False)])
        self.assertTrue(text.startswith("**11,164,362 trainable parameters and 11,164,362 "
                                        "gradients** in ResNet-18 without BatchNorm with Adam:"))
        self.assertIn("11,164,362 trainable parameters", text)
        self.assertNotIn("11,173,962", text)
        self.assertIn("| exp_avg_sq | 22 | 11,164,362 |", text)
        self.assertIn("keeps 2 numbers per weight (exp_avg, exp_avg_sq)", text)
        self.assertIn("one scalar for each of the 22 parameter tensors", text)


class ExplanationsTest(unittest.TestCase):
    """render.py: C1's and C6's explanations follow the numbers."""

    @staticmethod
    def run_of(losses, accuracies, images=32, diverged_at=None, test=None):
        epochs = [{"epoch": i, "train_loss": loss, "train_accuracy": accuracy,
                   "test_accuracy": test, "train_time": 1.0, "epoch_time": 1.0,
                   "images": images, "diverged": i == diverged_at}
                  for i, (loss, accuracy) in enumerate(zip(losses, accuracies), 1)]
        summary = {"diverged_at": diverged_at, "train_time": 1.0, "train_loss": losses[0],
                   "train_accuracy": accuracies[0], "final_train_loss": losses[-1],
                   "final_train_accuracy": accuracies[-1]}
        return {"epochs": epochs, "summary": summary, "model": {"initial_weights_sha256": "ab"}}

    def test_c6_names_what_diverged_stalled_and_learned_at_the_shared_lr(self):
        runs = {"sgd": self.run_of([2.0, 1.2], [30.0, 55.0], images=50_000),
                "nesterov": self.run_of([2.0, 1.1], [30.0, 58.0], images=50_000),
                "adagrad": self.run_of([18.4, 9.0], [9.0, 10.0], images=50_000),
                "adadelta": self.run_of([2.1, 2.2], [20.0, 19.0], images=50_000),
                "adam": self.run_of([float("nan")], [10.0], images=50_000, diverged_at=1)}
        text = render.render_c6({"runs": runs, "lr": 0.1, "seed": 0})
        self.assertIn("- Diverged at lr 0.1: adam (in epoch 1)", text)
        self.assertIn("- Stalled at lr 0.1: adagrad (last loss 9.0000), adadelta (last loss "
                      "2.2000)", text)
        self.assertIn("- Learned at lr 0.1: sgd (last loss 1.2000), nesterov", text)
        self.assertIn("100x adam's usual 0.001 and 10x adagrad's usual 0.01: a known trap, "
                      "and adam and adagrad fell into it here", text)
        self.assertIn("| last top-1 | diverged ", text)
        self.assertNotIn("a test that the code runs", text)  # full epochs

    def test_c6_tables_have_no_empty_column_and_small_runs_are_called_so(self):
        runs = {name: self.run_of([2.4, 2.35], [10.0, 11.0]) for name in ("sgd", "adam")}
        text = render.render_c6({"runs": runs, "lr": 0.001, "seed": 0})
        for line in text.splitlines():
            if line.startswith("|"):
                self.assertNotRegex(line, r"\|\s*\|$", line)  # no unnamed, empty last cell
        self.assertIn("- Stalled at lr 0.001: sgd", text)
        self.assertIn("At lr 0.001, below SGD's 0.1", text)
        self.assertNotIn("known trap", text)
        self.assertIn("Each run saw at most 64 training images", text)

    def test_c1_reads_the_trend_chance_and_the_test_gap(self):
        learning = self.run_of([2.0, 1.0], [30.0, 70.0], images=50_000, test=50.0)["epochs"]
        text = render.render_c1({"epochs": learning})
        self.assertIn("The training loss fell from 2.0000 in epoch 1 to 1.0000 in epoch 2", text)
        self.assertIn("20.0 points better on the images it trains on", text)
        self.assertNotIn("guessing", text)
        self.assertNotIn("a test that the code runs", text)
        stuck = self.run_of([3.5, 8.8], [9.8, 13.1], images=512, test=20.0)["epochs"]
        text = render.render_c1({"epochs": stuck})
        self.assertIn("The training loss rose from 3.5000 in epoch 1 to 8.8000", text)
        self.assertIn("no better than guessing yet", text)
        self.assertIn("Higher on the test set is usual early on", text)
        self.assertIn("The run saw 1,024 training images in all: a test that the code runs",
                      text)


if __name__ == "__main__":
    unittest.main()
