"""Tests for charts.py: `python -m unittest test_charts` (CPU, offline, a few minutes).

Every chart is drawn from a results file that report.run_exercise saved from a real run on a
tiny slice; where a real run would take minutes (compiling, torchrun), only its slow part is
replaced, so the file still has the shape the exercise's own code gives it. Without
matplotlib the drawing tests skip, and the test that hides matplotlib still runs.
"""

import contextlib
import errno
import io
import os
import re
import sys
import tempfile
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import charts
import cli
import ddp
import infer
import lab
import report
import speed
import torchscript
from testkit import TINY, TempDirTest, quiet_module, run_lab, trained_weights

setUpModule = quiet_module
# C3 sweeps the workers and trains nothing: TINY's --num-workers and --epochs are refused there.
SWEEP = ["--dataset", "synthetic", "--train-size", "32", "--batch-size", "16",
         "--max-workers", "0", "--repeats", "1"]

try:
    import matplotlib.image
    import matplotlib.text
except ImportError:
    matplotlib = None

needs_matplotlib = unittest.skipIf(matplotlib is None, "matplotlib is not installed, so no "
                                   "chart can be drawn: pip install matplotlib to test them")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def tiny_config(out, **changes):
    base = lab.Config(dataset="synthetic", train_size=16, test_size=16, batch_size=16,
                      epochs=2, num_workers=0, best_workers=0, max_workers=0, repeats=1,
                      out=out)
    return replace(base, **changes)


@contextlib.contextmanager
def matplotlib_hidden():
    """`import matplotlib` fails, as where it is not installed; only its own entries in
    sys.modules are touched, and put back after."""
    names = ("matplotlib", "matplotlib.pyplot")
    kept = {name: sys.modules[name] for name in names if name in sys.modules}
    sys.modules.update(dict.fromkeys(names))
    try:
        yield
    finally:
        for name in names:
            del sys.modules[name]
        sys.modules.update(kept)


def run_exercise(name, cfg):
    """report.run_exercise, as the command line runs it: (saved result, what it printed)."""
    printed = io.StringIO()
    exercise = lab.EXERCISES[name]
    report.run_exercise(name, exercise, report.exercise_config(exercise, cfg), printed)
    saved, why = report.read_result(os.path.join(cfg.out, f"{name}.json"), name,
                                    exercise.render)
    assert why is None, why
    return saved, printed.getvalue()


class ChartTest(TempDirTest):
    def assert_png(self, path):
        """A PNG that matplotlib reads back at about the width REPORT.md shows."""
        self.assertEqual(Path(path).read_bytes()[:8], PNG_SIGNATURE)
        height, width = matplotlib.image.imread(path).shape[:2]
        self.assertTrue(600 <= width <= 1400 and 250 <= height <= 1000, (width, height))

    def drawn(self, name, result, chart=None):
        """Draw `name`'s chart (or `chart`) from `result` into a fresh file; every text on the
        figure."""
        texts = []
        real_save = charts.save

        def keep_texts(plt, figure, path):
            texts.extend(t.get_text() for t in figure.findobj(matplotlib.text.Text))
            return real_save(plt, figure, path)

        path = str(self.tmp / f"redrawn-{name}.png")
        with mock.patch.object(charts, "save", keep_texts):
            self.assertTrue((chart or lab.EXERCISES[name].chart)(result, path))
        self.assert_png(path)
        return "\n" + "\n".join(texts) + "\n"

    def assert_saved_with_chart(self, name, printed):
        self.assert_saved_with_chart_in(self.out, name, printed)

    def assert_saved_with_chart_in(self, out, name, printed):
        chart = os.path.join(out, f"{name}.png")
        self.assertIn(f"(saved to {os.path.join(out, name)}.json, {chart})", printed)
        self.assert_png(chart)


@needs_matplotlib
class LabChartsTest(ChartTest):
    """C2-C7, from real runs on 16 images, 2 epochs each."""

    @classmethod
    def setUpClass(cls):
        cls.runs = tempfile.TemporaryDirectory()
        cfg = tiny_config(os.path.join(cls.runs.name, "results"))
        cls.results = {name: run_exercise(name, cfg) for name in ("c2", "c3", "c4", "c5",
                                                                 "c6", "c7")}

    @classmethod
    def tearDownClass(cls):
        cls.runs.cleanup()

    def setUp(self):
        super().setUp()
        self.out = os.path.join(self.runs.name, "results")  # where the runs saved their files

    def test_each_exercise_saves_its_chart_and_says_where(self):
        for name, (_, printed) in self.results.items():
            with self.subTest(name):
                self.assert_saved_with_chart(name, printed)

    def test_c2_stacks_the_three_windows_and_gives_the_slivers_in_seconds(self):
        result = self.results["c2"][0]
        texts = self.drawn("c2", result)
        for label in ("epoch 1", "epoch 2", "mean", "data (waiting for a batch)"):
            self.assertIn(label, texts)
        self.assertIn(f"data {result['epochs'][1]['data_time']:.3f} s", texts)

    def test_c3_marks_the_best_count(self):
        result = self.results["c3"][0]
        best = next(p for p in result["points"] if p["num_workers"] == result["best_workers"])
        self.assertIn(f"best: {best['num_workers']} workers, {best['median']:.3f} s",
                      self.drawn("c3", result))

    def test_c4_shows_both_runs_epoch_by_epoch(self):
        texts = self.drawn("c4", self.results["c4"][0])
        for label in ("1 worker\nepoch 2", "0 workers\nepoch 2",
                      "the wait for data: the first batch, then the rest"):
            self.assertIn(label, texts)

    def test_c5_says_why_the_gpu_is_missing_or_how_much_faster_it_is(self):
        result = self.results["c5"][0]
        if result["speedup"] is None:
            self.assertIn("skipped:", self.drawn("c5", result))
        # The same result as a machine with a GPU saves it: a second run, and the speed-up.
        gpu_run = {**result["runs"]["cpu"], "device": "cuda"}
        with_gpu = {**result, "runs": {"cpu": result["runs"]["cpu"], "gpu": gpu_run},
                    "gpu": {"device": "cuda", "name": "NVIDIA H200", "skipped": None},
                    "speedup": 2.0}
        texts = self.drawn("c5", with_gpu)
        self.assertIn("the GPU is 2.0x as fast", texts)
        self.assertIn("GPU\nNVIDIA H200", texts)

    def test_c6_has_a_line_per_optimizer(self):
        texts = self.drawn("c6", self.results["c6"][0])
        for name in ("sgd", "nesterov", "adagrad", "adadelta", "adam"):
            self.assertIn(f"\n{name}\n", texts)
        self.assertNotIn("diverged", texts)

    def test_c6_marks_a_run_that_diverged(self):
        cfg = tiny_config(str(self.tmp / "diverged"), lr=1e30)
        result, _ = run_exercise("c6", cfg)
        diverged = [name for name, run in result["runs"].items() if run["summary"]["diverged_at"]]
        self.assertTrue(diverged)
        texts = self.drawn("c6", result)  # its loss is null in the file: nothing to plot
        for name in diverged:
            epoch = result["runs"][name]["summary"]["diverged_at"]
            self.assertIn(f"{name} (diverged in epoch {epoch})", texts)

    def test_c7_compares_with_and_without_batchnorm(self):
        texts = self.drawn("c7", self.results["c7"][0])
        self.assertIn("with BatchNorm", texts)
        self.assertIn("without BatchNorm", texts)


@needs_matplotlib
class BeyondTheLabChartsTest(ChartTest):
    """C8, infer, ddp and bench, from results files whose slow parts were replaced."""

    def cfg(self, **changes):
        return tiny_config(self.out, **changes)

    def test_c8_shows_the_compilation_and_a_failed_mode(self):
        epochs = {"eager": [3.0, 2.0], "default": [30.0, 1.5], "reduce-overhead": [31.0, 1.6]}

        def fit(cfg, train_set, test_set, label=""):  # the epochs, without training
            mode = label.rstrip(": ")
            if mode not in epochs:
                raise RuntimeError("no such backend")
            return {"epochs": [{"epoch_time": t, "last_train_time": t / 2} for t in epochs[mode]]}

        with mock.patch.object(speed, "fit", fit), \
                mock.patch.object(speed, "start_compiler", return_value=1.0):
            result, printed = run_exercise("c8", self.cfg())
        self.assert_saved_with_chart("c8", printed)
        texts = self.drawn("c8", result)
        self.assertIn("default (compilation about 27.5 s)", texts)  # (30 - 1.5) - (3 - 2)
        self.assertIn("(max-autotune failed)", texts)
        self.assertIn("later epochs: the compiled code alone", texts)

    def test_infer_has_a_panel_per_batch_size_and_marks_a_failed_way(self):
        def broken(model, example, folder):
            raise RuntimeError("no such backend")

        few = {"cpu": {"warmup": 0, "min_runs": 2, "max_runs": 2, "budget_s": 0.0}}
        ways = {"eager": infer.WAYS["eager"], "trace": infer.WAYS["trace"], "aoti": broken}
        with mock.patch.dict(infer.REPEATS, few), mock.patch.dict(infer.WAYS, ways, clear=True):
            result, printed = run_exercise("infer", self.cfg(infer_batch_sizes=(1, 4)))
        self.assert_saved_with_chart("infer", printed)
        texts = self.drawn("infer", result)
        for label in ("batch 1", "batch 4", "trace", "no time: failed"):
            self.assertIn(label, texts)

    def test_2026s_c10_has_a_panel_per_batch_size_with_both_models(self):
        _, cfg, _ = trained_weights()
        few = {"cpu": {"warmup": 0, "min_runs": 2, "max_runs": 2, "budget_s": 0.0}}
        with mock.patch.dict(infer.REPEATS, few):
            result = torchscript.c10_latency(replace(cfg, infer_batch_sizes=(1, 4)))
        texts = self.drawn("c10", result, charts.chart_torchscript_latency)
        for label in ("batch 1", "batch 4", "cpu eager", "cpu TorchScript"):
            self.assertIn(label, texts)
        if result["gpu"]["skipped"]:
            self.assertIn("(no GPU here)", texts)
        status, out, err = run_lab("--handout", "2026", "c10", "--batch-sizes", "1",
                                   "--out", cfg.out)  # the command saves it beside its results
        self.assertEqual(status, 0, err)
        self.assert_saved_with_chart_in(cfg.out, "c10", out)

    def test_ddp_shows_throughput_and_the_step_split_with_a_failed_run(self):
        def launch_run(cfg, n):  # a worker's record, as the real one writes it
            if n == 4:
                return {"world_size": n, "batch_per_rank": cfg.batch_size, "wall_time": 3.0,
                        "global_batch": n * cfg.batch_size, "ok": False,
                        "reason": "out of memory"}
            record = {"world": {"world_size": n, "global_batch": n * cfg.batch_size,
                                "backend": "gloo", "threads_per_rank": 1},
                      "init_time": 0.5, "steps": 2, "warmup": 2, "buffer_bytes": 38_000,
                      "parameters_differ_on": [], "full_step": [0.2 * n, 0.2 * n],
                      "computation_step": [0.2, 0.2], "initial_weights_sha256": "0" * 16,
                      "final_loss": 2.3, "all_reduce_time": 0.1 if n > 1 else None,
                      "gradient_floats": 11_173_962}
            return {"world_size": n, "batch_per_rank": cfg.batch_size, "wall_time": 3.0,
                    "global_batch": n * cfg.batch_size, "ok": True,
                    **ddp.summarize_record(record)}

        with mock.patch.object(ddp, "launch_run", launch_run), \
                contextlib.redirect_stderr(io.StringIO()):
            result, printed = run_exercise("ddp", self.cfg(max_procs=4, ddp_batch_sizes=(8,)))
        self.assert_saved_with_chart("ddp", printed)
        texts = self.drawn("ddp", result)
        for label in ("2 × 8", "batch 8 per process", "(1 run failed)"):
            self.assertIn(label, texts)

    def test_ddp_draws_no_communication_bar_within_the_noise(self):
        def run(full, computation):  # one 2-process run, as summarize_record gives it
            record = {"world": {"world_size": 2, "global_batch": 16, "backend": "gloo",
                                "threads_per_rank": 1},
                      "init_time": 0.5, "steps": 2, "warmup": 2, "buffer_bytes": 38_000,
                      "parameters_differ_on": [], "full_step": full,
                      "computation_step": computation, "initial_weights_sha256": "0" * 16,
                      "final_loss": 2.3, "all_reduce_time": 0.1, "gradient_floats": 11_173_962}
            return {"world_size": 2, "batch_per_rank": 8, "wall_time": 3.0, "global_batch": 16,
                    "ok": True, **ddp.summarize_record(record)}

        noisy = run([0.30, 0.20], [0.25, 0.25])  # one pair above zero, one below
        clear = run([0.40, 0.41], [0.25, 0.25])
        self.assertFalse(noisy["exposed_communication_clear"])
        self.assertTrue(clear["exposed_communication_clear"])
        result = {"study_device": "cpu", "batch_sizes": [8], "world_sizes": [1, 2]}
        self.assertIn("\nnoise\n", self.drawn("ddp", {**result, "runs": [noisy]}))
        self.assertNotIn("\nnoise\n", self.drawn("ddp", {**result, "runs": [clear]}))

    def test_bench_ladders_each_option_against_the_default(self):
        few = {"cpu": {"warmup_steps": 1, "repeats": 2, "steps": 1, "pipeline_images": 32,
                       "pipeline_repeats": 1}}
        variants = speed.step_variants

        def without_compiling(device, compile_mode=None):
            return [row for row in variants(device, compile_mode) if "compile" not in row[0]]

        with mock.patch.dict(speed.BENCH_SIZES, few), \
                mock.patch.object(speed, "step_variants", without_compiling), \
                mock.patch.object(speed, "start_compiler", return_value=1.0), \
                mock.patch.object(speed, "worker_counts", return_value=[0]):
            result, printed = run_exercise("bench", self.cfg())
        self.assert_saved_with_chart("bench", printed)
        texts = self.drawn("bench", result)
        for label in ("default", "channels-last", "amp bf16", "device loader",
                      "DataLoader, 0 workers (reference)"):
            self.assertIn(label, texts)
        rate = result["step"]["rows"][1]["images_per_second"]
        self.assertIn(f"{rate:,.1f} images/s", texts)
        share = result["step"]["rows"][0]["matmul_share"]  # flops.py's, measured in the run
        self.assertIn(f"{100 * share:.0f}% of float32 matmul", texts)


class WithoutMatplotlibTest(TempDirTest):
    def setUp(self):
        super().setUp()
        charts.pyplot.cache_clear()  # import matplotlib afresh, here without it
        self.addCleanup(charts.pyplot.cache_clear)
        hidden = matplotlib_hidden()
        hidden.__enter__()
        self.addCleanup(hidden.__exit__, None, None, None)

    def test_one_line_says_how_to_get_the_charts_and_nothing_else_changes(self):
        args = ["c3", *SWEEP, "--out", self.out]
        no_charts = {name: replace(e, chart=None) for name, e in lab.EXERCISES.items()}
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self.assertEqual(cli.main(args, lab.Config, no_charts), 0)
        status, hidden_out, hidden_err = run_lab(*args)
        self.assertEqual(status, 0, hidden_err)
        times = re.compile(r"[0-9]+(\.[0-9]+)?")  # the figures differ from run to run
        self.assertEqual(times.sub("#", hidden_out), times.sub("#", out.getvalue()))
        lines = hidden_err.splitlines()
        self.assertEqual(lines.count(charts.NO_MATPLOTLIB), 1)
        lines.remove(charts.NO_MATPLOTLIB)
        self.assertEqual([times.sub("#", line) for line in lines],
                         [times.sub("#", line) for line in err.getvalue().splitlines()])
        status, _, err = run_lab("c2", *TINY, "--out", self.out)  # the same process: said once
        self.assertEqual(status, 0, err)
        self.assertNotIn("matplotlib", err)
        self.assertEqual(list(Path(self.out).glob("*.png")), [])

    def test_the_report_links_no_chart(self):
        run_lab("c3", *SWEEP, "--out", self.out)
        Path(self.out, "c3.png").write_bytes(PNG_SIGNATURE)  # left by an older run
        os.utime(Path(self.out, "c3.png"), (0, 0))
        text = Path(report.write_report(tiny_config(self.out), lab.EXERCISES)).read_text()
        self.assertIn("## C3", text)
        self.assertEqual(LINK.findall(text), [])


@needs_matplotlib
class FullDiskTest(TempDirTest):
    def test_a_chart_that_cannot_be_written_is_one_line_and_the_run_goes_on(self):
        full = OSError(errno.ENOSPC, "No space left on device")
        charts.pyplot()  # pyplot imported first: it wraps Figure.savefig as it loads
        with mock.patch("matplotlib.figure.Figure.savefig", side_effect=full):
            status, out, err = run_lab("c3", *SWEEP,
                                       "--out", self.out)
        self.assertEqual(status, 0, err)
        self.assertIn(f"charts: cannot save {self.out}/c3.png: No space left on device", err)
        self.assertNotIn("Traceback", err)
        self.assertIn(f"(saved to {self.out}/c3.json)", out)
        self.assertTrue(self.load("c3")["complete"])
        self.assertEqual(sorted(p.name for p in Path(self.out).iterdir()), [".lock", "c3.json"])


@needs_matplotlib
class ReportChartsTest(TempDirTest):
    def links(self):
        text = Path(report.write_report(tiny_config(self.out), lab.EXERCISES)).read_text()
        found = LINK.findall(text)
        for link in found:
            self.assertTrue(Path(self.out, link).is_file(), link)
            section = text.split(f"]({link})")[0].rsplit("\n## ", 1)[1]
            self.assertTrue(section.startswith(lab.EXERCISES[link[:-4]].title), link)
        return set(found)

    def test_the_report_links_only_charts_that_show_the_results_beside_them(self):
        for args in (["c2", *TINY], ["c3", *SWEEP]):
            status, _, err = run_lab(*args, "--out", self.out)
            self.assertEqual(status, 0, err)
        self.assertEqual(self.links(), {"c2.png", "c3.png"})
        os.remove(os.path.join(self.out, "c2.png"))
        self.assertEqual(self.links(), {"c2.png", "c3.png"})  # redrawn from c2.json
        chart = os.path.join(self.out, "c3.png")
        earlier = os.path.getmtime(os.path.join(self.out, "c3.json")) - 60
        os.utime(chart, (earlier, earlier))  # drawn before c3.json was last written
        with mock.patch.object(charts, "pyplot", return_value=None):  # and it cannot be redrawn
            self.assertEqual(self.links(), {"c2.png"})
        self.assertEqual(self.links(), {"c2.png", "c3.png"})  # where it can, it is
        self.assertGreater(os.path.getmtime(chart), earlier)


if __name__ == "__main__":
    unittest.main()
