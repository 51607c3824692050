"""Tests for report.py: the results folder (unwritable, locked, full), full or closed streams,
results files that do not fit and are rerun, `all` and REPORT.md.

Each fault must end in one line on stderr and exit status 2 (or the documented fallback), with
no traceback, and with every finished step still on disk.
"""

import contextlib
import errno
import io
import json
import os
import subprocess
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import data
import handouts
import lab
import render
import report
from machine import worker_limit
from testkit import (HERE, TINY, TempDirTest, one_line, only_these_items, quiet_module,
                     run_lab)

setUpModule = quiet_module


def flat_keys(value, path=""):
    """Every key path in a results file ("/runs/best/summary/epoch_time"), a list by its first
    item."""
    keys = set()
    if isinstance(value, dict):
        for key, item in value.items():
            keys |= {f"{path}/{key}"} | flat_keys(item, f"{path}/{key}")
    elif isinstance(value, list) and value:
        keys |= flat_keys(value[0], path + "[]")
    return keys


class Unwritable(io.StringIO):
    """A stream whose every write fails, like stdout sent to /dev/full."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


class ResultsFolderTest(TempDirTest):
    def test_unwritable_out_fails_before_any_training(self):
        with mock.patch.object(lab, "fit", side_effect=AssertionError("trained")):
            status, _, err = run_lab("c2", *TINY, "--out", "/proc/self")
            one_line(self, status, err, "--out /proc/self cannot be written")
            # A read-only folder, as a user who is not root sees it (root may write anywhere).
            denied = OSError(errno.EACCES, "Permission denied")
            with mock.patch("tempfile.mkstemp", side_effect=denied):
                status, _, err = run_lab("c2", *TINY, "--out", self.out)
            one_line(self, status, err, "cannot be written: Permission denied")

    def test_a_full_disk_keeps_the_last_complete_file(self):
        path = os.path.join(self.out, "c2.json")
        report.write_json(path, {"epochs": [1]})
        full = OSError(errno.ENOSPC, "No space left on device")
        with mock.patch("os.fdopen", side_effect=full):
            with self.assertRaisesRegex(report.OutputError, "results folder .* is full"):
                report.write_json(path, {"epochs": [1, 2]})
        self.assertEqual(json.loads(Path(path).read_text()), {"epochs": [1]})
        self.assertEqual([p.name for p in Path(self.out).iterdir()], ["c2.json"])  # no .tmp-
        with mock.patch.object(report, "_replace_atomically", side_effect=full):
            status, _, err = run_lab("c2", *TINY, "--out", self.out)
        one_line(self, status, err, "is full (no space left on the device)")

    def test_a_second_run_on_the_same_folder_is_refused_until_the_first_ends(self):
        with report.results_folder(self.out):
            status, _, err = run_lab("q1", "--out", self.out)
            one_line(self, status, err, f"--out {self.out} is in use by another lab.py run")
        status, _, err = run_lab("q1", "--out", self.out)  # released
        self.assertEqual(status, 0, err)

    def test_a_full_or_closed_stream_loses_no_epoch(self):
        status, err = None, io.StringIO()
        with contextlib.redirect_stdout(Unwritable()), contextlib.redirect_stderr(err):
            status = lab.main(["c2", *TINY, "--out", self.out])
        one_line(self, status, err.getvalue(), "cannot print the results (No space left")
        # stderr full (2>/dev/full) or closed (2>&-: sys.stderr is None): the run goes on.
        for stderr in (Unwritable(), None):
            with self.subTest(stderr=stderr), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(stderr):
                status = lab.main(["c3", "--dataset", "synthetic", "--train-size", "32",
                                   "--batch-size", "16", "--max-workers", "0", "--repeats", "1",
                                   "--out", self.out])
                self.assertEqual(status, 0)
                self.assertTrue(self.load("c3")["complete"])
                os.remove(os.path.join(self.out, "c3.json"))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(None):
            status = lab.main(["c2", *TINY, "--out", self.out])
        self.assertEqual((status, len(self.load("c2")["epochs"])), (0, 1))

    def test_non_finite_numbers_are_written_as_null_and_read_back(self):
        run = {"epochs": [], "summary": None}
        epoch = {"epoch": 1, "train_loss": float("nan"), "train_accuracy": 10.0,
                 "test_accuracy": None, "epoch_time": 1.0, "diverged": True}
        run["epochs"].append(epoch)
        path = os.path.join(self.out, "c1.json")
        report.write_json(path, {**run, "inf": float("inf")})
        text = Path(path).read_text()

        def refuse(constant):
            raise ValueError(f"not strict JSON: {constant}")

        saved = json.loads(text, parse_constant=refuse)  # a strict reader accepts it
        self.assertEqual((saved["epochs"][0]["train_loss"], saved["inf"]), (None, None))
        self.assertIn("The loss diverged (NaN or infinite) in epoch 1", render.render_c1(saved))


class ResultsFileTest(TempDirTest):
    """Any results file that does not fit is not finished: it is rerun, and the run says why."""

    def setUp(self):
        super().setUp()
        status, _, err = run_lab("c2", *TINY, "--out", self.out)
        self.assertEqual(status, 0, err)
        self.good = self.load("c2")
        self.cfg = lab.Config(**self.good["config"])
        self.path = os.path.join(self.out, "c2.json")

    def write(self, content):
        with open(self.path, "w") as file:
            file.write(content if isinstance(content, str) else json.dumps(content))

    def misfits(self):
        good = self.good
        without = lambda key: {k: v for k, v in good.items() if k != key}
        return {
            "no config": without("config"),
            "no epochs": without("epochs"),
            "a list": [good],
            "half a file": json.dumps(good)[:100],
            "empty epochs": {**good, "epochs": []},
            "negative time": {**good, "epochs": [{**good["epochs"][0], "train_time": -1.0}]},
            "another exercise": {**good, "exercise": "c1"},
            "a string for a count": {**good, "summary": {**good["summary"], "epochs": "1"}},
        }

    def test_the_oracle_a_real_results_file_fits(self):
        self.assertEqual(report.read_result(self.path, "c2", lab.EXERCISES["c2"].render),
                         (self.good, None))
        self.assertEqual(report.read_result(self.path + ".none", "c2"), (None, None))
        self.assertIsNotNone(report.finished_result("c2", self.cfg, lab.EXERCISES["c2"]))

    def test_a_misfit_is_not_finished_and_says_why(self):
        for case, content in self.misfits().items():
            with self.subTest(case):
                self.write(content)
                saved, why = report.read_result(self.path, "c2", lab.EXERCISES["c2"].render)
                self.assertIsNone(saved)
                self.assertIn(self.path, why)
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    self.assertIsNone(report.finished_result("c2", self.cfg, lab.EXERCISES["c2"]))
                self.assertIn("c2: not finished:", err.getvalue())
                text = Path(report.write_report(self.cfg, lab.EXERCISES)).read_text()
                self.assertIn("## C2: time measurement\n\nNot shown:", text)

    def test_a_folder_in_place_of_a_results_file(self):
        os.remove(self.path)
        os.mkdir(self.path)
        self.assertEqual(report.read_result(self.path, "c2")[1], f"{self.path} is not a file")
        report.write_report(self.cfg, lab.EXERCISES)  # no IsADirectoryError
        with mock.patch.object(lab, "fit", side_effect=AssertionError("trained")):
            status, _, err = run_lab("c2", *TINY, "--out", self.out)
        one_line(self, status, err, "c2.json is a folder, so c2's results cannot be saved")

    def test_c4_does_not_trust_a_bad_best_worker_count(self):
        c3 = {**{k: self.good[k] for k in report.HEADER}, "exercise": "c3", "points": [],
              "best_workers": -3}
        Path(self.out, "c3.json").write_text(json.dumps(c3))
        sweep = {"best_workers": 0}
        with mock.patch.object(lab, "c3_worker_sweep", return_value=sweep) as swept:
            best, source = lab.best_worker_count(self.cfg)
        self.assertEqual((best, swept.call_count), (0, 1))
        self.assertTrue(source.startswith("a sweep run now"), source)

    def test_the_same_folder_spelled_another_way_is_the_same_configuration(self):
        for out in (self.out + "/", os.path.relpath(self.out), os.path.abspath(self.out)):
            with self.subTest(out=out):
                self.assertIsNotNone(report.finished_result("c2", replace(self.cfg, out=out)))
        self.assertIsNone(report.finished_result("c2", replace(self.cfg, seed=1)))


class ReportTest(TempDirTest):
    def test_all_writes_every_section_and_continues_after_an_interrupt(self):
        args = ["all", *TINY, "--max-workers", "0", "--repeats", "1", "--out", self.out]
        real_run = report.run_exercise
        ran = []

        def stop_at_c5(name, exercise, cfg, stream=None):
            if name == "c5":
                raise KeyboardInterrupt
            ran.append(name)
            return real_run(name, exercise, cfg, stream)

        with mock.patch.object(report, "run_exercise", stop_at_c5):
            status, _, err = run_lab(*args)
        self.assertEqual(status, 130, err)
        self.assertEqual(ran, ["c1", "c2", "c3", "c4"])
        partial = (Path(self.out) / "REPORT.md").read_text()
        self.assertIn("The sweep stopped because", partial)  # C3 made it in
        self.assertIn("## C5: training on the GPU against the CPU\n\nNot run.", partial)

        ran.clear()

        def record(name, exercise, cfg, stream=None):
            ran.append(name)
            return real_run(name, exercise, cfg, stream)

        with mock.patch.object(report, "run_exercise", record):
            status, out, err = run_lab(*args)
        self.assertEqual(status, 0, err)
        self.assertEqual(ran, ["c5", "c6", "c7", "q1", "q2", "q3", "q4", "summary"])
        self.assertEqual(out.count("skipped (--force reruns it)"), 4)
        text = (Path(self.out) / "REPORT.md").read_text()
        for exercise in lab.EXERCISES.values():
            if exercise.in_lab:
                self.assertIn(f"## {exercise.title}", text)
        self.assertNotIn("Not run.", text)
        self.assertIn("The BatchNorm run is C6's SGD run", text)
        self.assertIn("**20 convolutional layers**", text)
        c4 = self.load("c4")
        self.assertEqual(c4["best_workers"], self.load("c3")["best_workers"])
        # The oracle: every key the results files had before the layout change, and C2's and
        # the summary's arithmetic (flops.py), is still there; new keys are only further
        # settings, Q3/Q4's code listing, C6/C7's worker count, each epoch's last step, the data
        # set used, the code's version, whether a run warmed the device up and where C7's
        # BatchNorm run came from.
        expected = json.loads((HERE / "test_results_keys.json").read_text())
        for name, keys in expected.items():
            found = flat_keys(self.load(name))
            self.assertEqual(set(keys) - found, set(), name)
            added = {key for key in found - set(keys) if not key.startswith("/config/")
                     and not key.endswith(("/last_train_time", "/warmed_up"))
                     and not key.startswith("/code_version")}
            self.assertLessEqual(added, {"/code", "/best_workers", "/best_source",
                                         "/dataset_used", "/code_version",
                                         "/batch_norm_reused_from"}, name)

    def test_a_negative_communication_time_is_not_a_broken_file(self):
        self.assertIsNone(report.MEASURE.match("exposed_communication_time"))  # may be < 0
        self.assertIsNotNone(report.MEASURE.match("train_time"))      # a duration: never < 0


SWEEP = ["--dataset", "synthetic", "--train-size", "32", "--batch-size", "16",
         "--max-workers", "0", "--repeats", "1"]


class AllGoesOnTest(TempDirTest):
    def test_an_exercise_this_machine_cannot_run_is_one_line_and_all_goes_on(self):
        def no_compiler(cfg, save):
            raise report.CannotRunHere("no C++ compiler is found: install g++")

        exercises = {"ec": replace(lab.EXERCISES["c1"], run=no_compiler),
                     "q1": lab.EXERCISES["q1"]}
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            report.run_all(lab.Config(out=self.out), exercises, stream=io.StringIO())
        self.assertEqual(err.getvalue().strip().splitlines(),
                         ["lab.py: ec skipped: no C++ compiler is found: install g++"])
        self.assertFalse(os.path.exists(os.path.join(self.out, "ec.json")))
        self.assertTrue(self.load("q1")["complete"])


class OtherHandoutTest(TempDirTest):
    def test_report_md_never_shows_another_handouts_results_under_its_titles(self):
        status, _, err = run_lab("q1", "--out", self.out)  # 2022's, the default
        self.assertEqual(status, 0, err)
        cfg = lab.Config(handout="2026", out=self.out)
        report.write_report(cfg, handouts.exercises_for("2026", lab.EXERCISES))
        text = Path(self.out, "REPORT.md").read_text()
        q1 = text.split("## Q1: convolutional layers [4 points]")[1].split("\n## ")[0]
        self.assertIn(f"Not shown: {self.out}/q1.json holds the 2022 handout's q1, not the "
                      "2026 handout's.", q1)


class ReportTrustTest(TempDirTest):
    """report.py: no run loses another configuration's results; REPORT.md warns about slices;
    every results file names the data set used and the code's version."""

    def test_all_quick_keeps_a_complete_sweep_of_another_configuration(self):
        def chart(result, path):  # as with matplotlib: a PNG beside the results file
            Path(path).write_bytes(b"png")
            return True

        c3 = lab.EXERCISES["c3"]
        with mock.patch.dict(lab.EXERCISES, {"c3": replace(c3, chart=chart)}):
            status, _, err = run_lab("c3", *SWEEP, "--out", self.out)
        self.assertEqual(status, 0, err)
        first = self.load("c3")
        # `all --quick` as it runs C3 (the rest plays no part), without matplotlib this time.
        only_c3 = {"c3": replace(c3, chart=lambda result, path: False)}
        with mock.patch.dict(lab.EXERCISES, only_c3), only_these_items("c3"):
            status, out, err = run_lab("all", "--quick", *SWEEP, "--out", self.out)
        self.assertEqual(status, 0, err)
        kept = [line for line in out.splitlines() if line.startswith("(kept ")]
        self.assertEqual(len(kept), 1, out)
        self.assertTrue(kept[0].endswith(" with its chart)"), kept[0])
        path = kept[0].split(" as ")[1].split(" with ")[0]
        self.assertEqual(os.path.dirname(path), self.out)
        self.assertTrue(os.path.basename(path).startswith("c3."), path)
        self.assertIn(".max-workers-0.repeats-1", path)  # the name says which configuration
        with open(path) as file:
            self.assertEqual(json.load(file), first)  # the first sweep, whole
        self.assertEqual(Path(path[:-len(".json")] + ".png").read_bytes(), b"png")
        self.assertTrue(self.load("c3")["config"]["quick"])
        self.assertIn(f"(saved to {self.out}/c3.json)", out)  # no chart this time
        # The same configuration again is complete: skipped, nothing more moved aside.
        with mock.patch.dict(lab.EXERCISES, only_c3), only_these_items("c3"):
            status, out, err = run_lab("all", "--quick", *SWEEP, "--out", self.out)
        self.assertNotIn("(kept ", out)
        self.assertEqual(sorted(os.listdir(self.out)),
                         sorted([".lock", "REPORT.md", "c3.json", os.path.basename(path),
                                 os.path.basename(path)[:-len(".json")] + ".png"]))

    def test_a_name_already_taken_is_not_overwritten(self):
        cfg = replace(lab.Config(dataset="synthetic", train_size=32, test_size=20,
                                 batch_size=16, out=self.out), max_workers=0, repeats=1)
        c3 = replace(lab.EXERCISES["c3"], chart=None)
        for repeats in (1, 2, 1, 2):  # each run displaces the other configuration's file
            report.run_exercise("c3", c3, replace(cfg, repeats=repeats), io.StringIO())
        kept = "c3.dataset-synthetic.train-size-32.test-size-20.batch-size-16.max-workers-0"
        self.assertEqual(sorted(os.listdir(self.out)),
                         sorted(["c3.json", f"{kept}.repeats-1.json", f"{kept}.repeats-2.json",
                                 f"{kept}.repeats-1.2.json"]))

    def test_c1s_weights_are_kept_aside_with_its_results(self):
        status, _, err = run_lab("c1", *TINY, "--out", self.out)
        self.assertEqual(status, 0, err)
        first = Path(self.out, "c1.weights.pt").read_bytes()
        status, out, err = run_lab("c1", *TINY, "--seed", "1", "--out", self.out)
        self.assertEqual(status, 0, err)
        self.assertIn(" with its weights)", out)
        kept = [name for name in os.listdir(self.out) if name.endswith(".weights.pt")
                and name != "c1.weights.pt"]
        self.assertEqual(len(kept), 1, kept)
        self.assertTrue(kept[0].startswith("c1.") and ".json" not in kept[0], kept)
        self.assertEqual(Path(self.out, kept[0]).read_bytes(), first)  # the first run's own
        self.assertNotEqual(Path(self.out, "c1.weights.pt").read_bytes(), first)

    def test_write_bytes_is_atomic(self):
        path = os.path.join(self.tmp, "file.bin")
        report.write_bytes(path, b"\x00\xffold")
        with mock.patch("os.replace", side_effect=OSError(28, "No space left on device")):
            with self.assertRaises(report.OutputError):
                report.write_bytes(path, b"new")
        self.assertEqual(Path(path).read_bytes(), b"\x00\xffold")
        self.assertEqual(os.listdir(self.tmp), ["file.bin"])

    def test_the_report_warns_when_a_run_read_a_slice(self):
        status, _, err = run_lab("c3", *SWEEP, "--out", self.out)
        self.assertEqual(status, 0, err)
        cfg = lab.Config(out=self.out)
        text = Path(report.write_report(cfg, lab.EXERCISES)).read_text()
        banner = "> **A smoke test: these figures teach nothing about CIFAR-10.** c3 ran on a"
        self.assertIn(banner, text.split("\n## ")[0])  # at the top, above the first section
        self.assertIn("slice of 32 training images", text)
        full = self.load("c3")
        full["config"]["train_size"] = None  # the same file, as a run on the whole set
        report.write_json(os.path.join(self.out, "c3.json"), full)
        text = Path(report.write_report(cfg, lab.EXERCISES)).read_text()
        self.assertNotIn("smoke test", text)

    def test_each_question_has_one_heading(self):
        cfg = lab.Config(out=self.out)
        report.run_exercise("q1", lab.EXERCISES["q1"], cfg, io.StringIO())
        text = Path(report.write_report(cfg, lab.EXERCISES)).read_text()
        self.assertEqual(text.count("Q1"), 1, text)  # "## Q1: convolutional layers" only

    def test_results_name_the_data_set_used_and_the_codes_version(self):
        with mock.patch.object(data, "_download_cifar10", return_value="offline"):
            status, _, err = run_lab("c3", *SWEEP[2:], "--data-path", str(self.tmp / "data"),
                                     "--out", self.out)
        self.assertEqual(status, 0, err)
        result = self.load("c3")
        self.assertEqual(result["config"]["dataset"], "auto")     # what was asked for
        self.assertEqual(result["dataset_used"], "synthetic")      # what was used
        self.assertEqual(result["code_version"], report.code_version())
        self.assertEqual(result["code_version"]["version"], report.__version__)
        best, source = lab.best_worker_count(lab.Config(train_size=32, test_size=20,
                                                        batch_size=16, out=self.out,
                                                        data_path=str(self.tmp / "data")))
        self.assertIn("measured on 32 training images of synthetic data", source)
        self.assertNotIn("of auto", source)

    def test_code_version_is_the_git_commit_of_a_checkout_else_the_version(self):
        plain = self.tmp / "plain"
        plain.mkdir()
        self.assertEqual(report.code_version(str(plain)),
                         {"git_commit": None, "local_changes": None,
                          "version": report.__version__})
        with mock.patch.object(subprocess, "run", side_effect=FileNotFoundError("git")):
            report.code_version.cache_clear()
            self.assertIsNone(report.code_version(str(HERE))["git_commit"])  # no git at all
        report.code_version.cache_clear()
        repo = self.tmp / "repo"
        repo.mkdir()
        git = ["git", "-c", "user.name=lab", "-c", "user.email=lab@example.com"]
        try:
            for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "one"]):
                (repo / "lab.py").write_text("print(1)\n")
                subprocess.run(git + args, cwd=repo, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            self.skipTest("git is not usable here")
        commit = subprocess.run(git + ["log", "-1", "--format=%H"], cwd=repo, text=True,
                                capture_output=True).stdout.strip()
        self.assertEqual(report.code_version(str(repo)),
                         {"git_commit": commit, "local_changes": False,
                          "version": report.__version__})
        (repo / "lab.py").write_text("print(2)\n")
        report.code_version.cache_clear()
        self.assertTrue(report.code_version(str(repo))["local_changes"])
        report.code_version.cache_clear()


class LockFolderTest(TempDirTest):
    def test_a_folder_named_lock_in_the_results_folder_is_one_line(self):
        os.makedirs(os.path.join(self.out, ".lock"))
        status, _, err = run_lab("q1", "--out", self.out)
        one_line(self, status, err, f"--out {self.out} cannot be locked: {self.out}/.lock "
                                    "cannot be opened as a file (Is a directory)")


# C6 and C3 as the tests train them: synthetic slices, no sweep.
SMALL = ["--dataset", "synthetic", "--train-size", "32", "--test-size", "20", "--batch-size",
         "16", "--epochs", "1"]


class ResultsReadBackTest(TempDirTest):
    """What a later run reads from a results file is checked as that reader uses it."""

    def test_c7_does_not_reuse_a_c6_sgd_run_trimmed_of_what_c7_prints(self):
        status, _, err = run_lab("c6", *SMALL, "--best-workers", "0", "--out", self.out)
        self.assertEqual(status, 0, err)
        c6 = self.load("c6")
        del c6["runs"]["sgd"]["model"]["batchnorm_layers"]  # C6's own tables never print it
        Path(self.out, "c6.json").write_text(json.dumps(c6))
        self.assertEqual(report.read_result(os.path.join(self.out, "c6.json"), "c6",
                                            lab.EXERCISES["c6"].render)[1], None)
        status, out, err = run_lab("c7", *SMALL, "--best-workers", "0", "--out", self.out)
        self.assertEqual(status, 0, err)
        self.assertIn("c7: not using", err)
        self.assertIn("c6.json's SGD run cannot be shown (KeyError: 'batchnorm_layers')", err)
        c7 = self.load("c7")
        self.assertEqual(c7["batch_norm_source"], "a fresh run")
        self.assertEqual(c7["runs"]["with_bn"]["model"]["batchnorm_layers"], 20)
        self.assertIn("The BatchNorm run is a fresh run.", out)

    def test_a_c3_json_naming_more_workers_than_an_option_may_is_swept_again(self):
        status, _, err = run_lab("c3", "--dataset", "synthetic", "--train-size", "32",
                                 "--batch-size", "16", "--max-workers", "0", "--repeats", "1",
                                 "--out", self.out)
        self.assertEqual(status, 0, err)
        c3 = self.load("c3")
        too_many = worker_limit() + 1
        c3["best_workers"] = c3["points"][0]["num_workers"] = too_many  # drawn, ranked, renders
        path = Path(self.out, "c3.json")
        path.write_text(json.dumps(c3))
        self.assertIsNotNone(lab.EXERCISES["c3"].render(c3))
        saved, why = report.read_result(str(path), "c3", lab.EXERCISES["c3"].render)
        self.assertIsNone(saved)
        self.assertIn(f"has num_workers = {too_many}, more workers than a run may ask for here "
                      f"(at most {worker_limit()}", why)
        cfg = lab.Config(**{**c3["config"], "out": self.out})
        err = io.StringIO()
        with mock.patch.object(lab, "c3_worker_sweep", return_value={"best_workers": 0}) as swept, \
                contextlib.redirect_stderr(err):
            best, source = lab.best_worker_count(cfg)
        self.assertEqual((best, swept.call_count), (0, 1))
        self.assertTrue(source.startswith("a sweep run now"), source)
        self.assertIn("c4-c7: not using", err.getvalue())

    def test_report_md_does_not_trust_a_file_without_its_header_line(self):
        status, _, err = run_lab("q1", "--out", self.out)
        self.assertEqual(status, 0, err)
        q1 = self.load("q1")
        del q1["device"]  # REPORT.md's line under the heading names the device
        Path(self.out, "q1.json").write_text(json.dumps(q1))
        text = Path(report.write_report(lab.Config(out=self.out), lab.EXERCISES)).read_text()
        self.assertIn("## Q1: convolutional layers\n\nNot shown:", text)
        self.assertIn("cannot be shown (KeyError: 'device')", text)


if __name__ == "__main__":
    unittest.main()
