"""Tests for the handouts (handouts.py, and --handout in cli.py and report.py):
`python -m unittest test_handouts` (CPU only, offline, a few minutes on 2 cores).

The oracles: each year's items as its handout numbers them (shared/HANDOUTS.md's table, typed
out here independently of handouts.py), and the 2022 numbering that every command without
--handout keeps.
"""

import contextlib
import io
import json
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch

import cli
import handouts
import lab
import libtorch
import report
import speed
import torchcompile
import torchscript
import train
from testkit import TINY, TempDirTest, one_line, quiet_module, run_lab, shared_cpp_build

setUpModule = quiet_module

# Each handout's items in its order, and the function that answers each: typed from the
# handouts themselves, not read from handouts.py.
ITEMS = {
    "2022": {"c1": lab.c1_training, "c2": lab.c2_timing, "c3": lab.c3_worker_sweep,
             "c4": lab.c4_workers_compared, "c5": lab.c5_cpu_vs_gpu, "c6": lab.c6_optimizers,
             "c7": lab.c7_without_batchnorm, "q1": lab.q1_conv_layers,
             "q2": lab.q2_linear_input, "q3": lab.q3_sgd_parameters,
             "q4": lab.q4_adam_parameters},
    "2025": {"c1": lab.c1_training, "c2": lab.c2_timing, "c3": lab.c3_worker_sweep,
             "c4": lab.c4_workers_compared, "c5": lab.c5_cpu_vs_gpu, "c6": lab.c6_optimizers,
             "c7": lab.c7_without_batchnorm, "c8": speed.c8_compile,
             "q1": lab.q1_conv_layers, "q2": lab.q2_linear_input, "q3": lab.q3_sgd_parameters,
             "q4": lab.q4_adam_parameters, "q5": torchcompile.q5_compile},
    "2026": {"c1": lab.c1_training, "c2": lab.c2_timing, "c3": lab.c3_worker_sweep,
             "c4": lab.c5_cpu_vs_gpu, "c5": lab.c6_optimizers, "c6": lab.c7_without_batchnorm,
             "c7": torchscript.c7_torchscript, "c8": torchscript.c8_graph,
             "c9": torchscript.c9_accuracy, "c10": torchscript.c10_latency,
             "ec": libtorch.extra_credit, "q1": lab.q1_conv_layers,
             "q2": lab.q2_linear_input, "q3": lab.q3_sgd_parameters,
             "q4": lab.q4_adam_parameters, "q5": torchscript.q5_trace_vs_script,
             "q6": torchscript.q6_scripting},
}
POINTS_2026 = {"c1": 10, "c2": 10, "c3": 10, "c4": 10, "c5": 10, "c6": 5, "c7": 5, "c8": 5,
               "c9": 5, "c10": 5, "ec": 10, "q1": 4, "q2": 4, "q3": 8, "q4": 4, "q5": 4,
               "q6": 4}
SMALL = [*TINY, "--train-size", "16", "--test-size", "10", "--max-workers", "0",
         "--repeats", "1"]  # one step per epoch


def exercises(year):
    return handouts.exercises_for(year, lab.EXERCISES)


def items(year):
    return {name: e for name, e in exercises(year).items()
            if name in {item.command for item in handouts.HANDOUTS[year].items}}


def parsed(*argv):
    """(exercise name, Config, --force, the handout's exercises) as cli.main reads them."""
    return cli.parse_command_line(list(argv), lab.Config, lab.EXERCISES)


def help_text(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        lab.main([*args, "--help"])
    return out.getvalue()


def eager_compile(model, mode=None):
    """torch.compile with TorchDynamo but no Inductor: the graphs are captured and counted,
    and nothing is compiled to C++, so a test takes seconds."""
    return torch.compile(model, backend="eager", dynamic=False)


class HandoutTableTest(unittest.TestCase):
    def test_each_handout_maps_every_item_exactly_once(self):
        for year, expected in ITEMS.items():
            with self.subTest(year):
                commands = [item.command for item in handouts.HANDOUTS[year].items]
                self.assertEqual(commands, list(expected))  # each once, in the handout's order
                found = {name: e.run for name, e in items(year).items()}
                self.assertEqual(found, expected)
                runs = list(found.values())
                self.assertEqual(len(set(runs)), len(runs), "one exercise answers two items")
        self.assertNotIn(lab.c4_workers_compared, {e.run for e in items("2026").values()})

    def test_titles_and_points_follow_the_handout(self):
        found = {name: e.title for name, e in items("2026").items()}
        for name, points in POINTS_2026.items():
            self.assertTrue(found[name].endswith(f" [{points} points]"), found[name])
        self.assertTrue(found["c4"].startswith("C4: training on GPUs vs CPUs"))
        self.assertEqual(exercises("2026")["c4"].heading,
                         "C4 (2026 handout): training on GPUs vs CPUs [10 points]")
        self.assertEqual(exercises("2022")["c4"].heading,
                         "C4 (2022 handout): profiling, 1 worker against the best")
        self.assertTrue(exercises("2025")["c8"].heading.startswith("C8 (2025 handout): "))
        self.assertIn("beyond the 2022 handout", exercises("2022")["c8"].heading)

    def test_help_lists_the_handouts_items(self):
        text = help_text("--handout", "2026")
        self.assertIn("c4       C4: training on GPUs vs CPUs [10 points]", text)
        self.assertIn("ec       Extra credit: run the model in C++ with LibTorch", text)
        self.assertNotIn("1 worker against the best", text)
        self.assertLess(text.index("  c10 "), text.index("  ec "))
        self.assertIn("c4       C4: profiling, 1 worker against the best", help_text())

    def test_without_handout_everything_is_lab_pys(self):
        cfg = lab.Config()
        self.assertEqual((cfg.handout, cfg.out), ("2022", "results"))
        default = exercises("2022")
        self.assertEqual(list(default), list(lab.EXERCISES))
        for name, exercise in default.items():
            self.assertEqual(replace(exercise, heading=None, settings=None),
                             lab.EXERCISES[name], name)
        _, cfg, _, named = parsed("c4")
        self.assertEqual((cfg.handout, cfg.out, cfg.epochs), ("2022", "results", 5))
        self.assertIs(named["c4"].run, lab.c4_workers_compared)
        self.assertEqual(cli.parse_args(["c4"], lab.Config, lab.EXERCISES)[1], cfg)

    def test_each_handout_has_its_own_results_folder(self):
        folders = {parsed("q1", "--handout", year)[1].out for year in handouts.HANDOUTS}
        self.assertEqual(folders, {"results", "results-2025", "results-2026"})
        self.assertEqual(parsed("q1", "--handout", "2026", "--out", "mine")[1].out, "mine")

    def test_a_handouts_settings_give_way_to_the_command_line_and_quick(self):
        def epochs(*args):
            _, cfg, _, named = parsed("c8", "--handout", "2025", *args)
            return report.exercise_config(named["c8"], cfg).epochs

        self.assertEqual(epochs(), 10)
        self.assertEqual(epochs("--epochs", "3"), 3)
        self.assertEqual(epochs("--quick"), lab.Config.QUICK["epochs"])
        _, cfg, _, named = parsed("all", "--handout", "2025")
        self.assertEqual(report.exercise_config(named["c1"], cfg).epochs, 5)
        self.assertEqual(report.exercise_config(named["c8"], cfg).epochs, 10)

    def test_an_unknown_handout_is_one_line(self):
        status, _, err = run_lab("q1", "--handout", "2030")
        one_line(self, status, err, "'2022', '2025', '2026'")

    def test_c3_of_2025_is_labelled_in_three_parts(self):
        point = {"num_workers": 0, "median": 1.0, "min": 0.9, "max": 1.1, "times": [1.0]}
        result = {"points": [point], "best_workers": 0, "repeats": 1, "cores": 2,
                  "stopped_because": "every count asked for was timed"}
        text = exercises("2025")["c3"].render(result)
        labels = [text.index(label) for label in ("C3.1", "C3.2", "C3.3")]
        self.assertEqual(labels, sorted(labels))
        self.assertLess(text.index("C3.1"), text.index("```"))
        self.assertLess(text.index("C3.2"), text.index("Best: **0 workers**"))
        self.assertNotIn("C3.1", lab.EXERCISES["c3"].render(result))


class HandoutResultsTest(TempDirTest):
    """One handout's results never answer another's."""

    def cfg(self, **changes):
        base = lab.Config(dataset="synthetic", train_size=32, test_size=20, batch_size=16,
                          epochs=1, num_workers=0, out=self.out, repeats=1)
        return replace(base, **changes)

    def test_a_results_file_of_one_handout_is_never_reused_by_another(self):
        q1 = exercises("2022")["q1"]
        report.run_exercise("q1", q1, self.cfg(), io.StringIO())
        self.assertEqual(self.load("q1")["handout"], "2022")
        self.assertIsNotNone(report.finished_result("q1", self.cfg(), q1))
        self.assertIsNone(report.finished_result("q1", self.cfg(handout="2026"),
                                                 exercises("2026")["q1"]))
        report.run_exercise("c3", lab.EXERCISES["c3"], self.cfg(max_workers=0), io.StringIO())
        self.assertEqual(lab.best_worker_count(self.cfg())[0], 0)  # same handout: reused
        sweep = mock.Mock(return_value={"best_workers": 4})
        with mock.patch.object(lab, "c3_worker_sweep", sweep):
            best, source = lab.best_worker_count(self.cfg(handout="2025"))
        self.assertEqual(best, 4)
        self.assertIn("another handout", source)

    def test_the_optimizers_run_is_read_under_the_number_its_handout_gives_it(self):
        read = mock.Mock(return_value=(None, None))
        with mock.patch.object(report, "read_result", read):
            lab.saved_result(self.cfg(handout="2026"), "c6", reader="c6")
            lab.saved_result(self.cfg(), "c6", reader="c7")
        (path_2026, name_2026, _), (path_2022, name_2022, _) = (c.args for c in read.call_args_list)
        self.assertEqual((Path(path_2026).name, name_2026), ("c5.json", "c5"))
        self.assertEqual((Path(path_2022).name, name_2022), ("c6.json", "c6"))


class EachHandoutRunsTest(TempDirTest):
    """`all` under each later handout, on a tiny slice: every item runs, in the handout's order,
    and REPORT.md has its sections so."""

    def run_all(self, year, *args):
        ran = []
        real_run = report.run_exercise

        def record(name, exercise, cfg, stream=None):
            ran.append(name)
            return real_run(name, exercise, cfg, stream)

        with mock.patch.object(report, "run_exercise", record), \
                mock.patch.object(train, "compile_model", eager_compile), shared_cpp_build():
            status, _, err = run_lab("all", "--handout", year, *SMALL, *args, "--out", self.out)
        self.assertEqual(status, 0, err)
        return ran, (Path(self.out) / "REPORT.md").read_text()

    def check_report(self, year, ran, text):
        self.assertEqual(ran, [*ITEMS[year], "summary"])
        for name in items(year):
            saved = self.load(name)
            self.assertEqual((saved["exercise"], saved["handout"], saved["config"]["handout"]),
                             (name, year, year))
            self.assertTrue(saved["complete"], name)
        headings = [f"## {e.title}\n" for e in items(year).values()]
        places = [text.index(heading) for heading in headings]
        self.assertEqual(places, sorted(places))
        self.assertIn(f"{year}: its numbers, titles and order (--handout {year})", text)

    def test_2025(self):
        ran, text = self.run_all("2025")
        self.check_report("2025", ran, text)
        self.assertIn("**C3.2, the best count**", text)
        self.assertIn("There was no graph break", text)
        c8 = self.load("c8")
        self.assertEqual(c8["epochs"], 1)  # --epochs 1 beats the handout's 10
        self.assertEqual({row["mode"] for row in c8["analysis"]
                          if {"first_epoch", "mean_epochs_6_10"} <= set(row)},
                         {"eager", *speed.COMPILE_MODES})

    def test_2026(self):
        # --quick leaves out the AOTInductor package, which takes minutes to compile here.
        ran, text = self.run_all("2026", "--quick", "--batch-sizes", "1,16")
        self.check_report("2026", ran, text)
        self.assertIn("The BatchNorm run is C5's SGD run", text)
        c9 = self.load("c9")
        self.assertEqual(c9["torchscript_accuracy"], c9["eager_accuracy"])
        self.assertEqual((c9["differing_predictions"], c9["images"]), (0, 10))
        self.assertLessEqual(self.load("ec")["max_abs_diff"], 1e-5)
        self.assertEqual(self.load("c10")["batch_sizes"], [1, 16])
        with open(Path(self.out) / "c1.json") as file:  # C1 kept the weights Part B read
            self.assertTrue(json.load(file)["complete"])
        self.assertEqual(self.load("c7")["weights"], str(Path(self.out) / "c1.weights.pt"))


if __name__ == "__main__":
    unittest.main()
