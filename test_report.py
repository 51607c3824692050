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
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import lab
import render
import report
from testkit import HERE, TINY, TempDirTest, one_line, quiet_module, run_lab

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
                status = lab.main(["c3", *TINY, "--max-workers", "0", "--repeats", "1",
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
        # The oracle: every key the results files had before the layout change is still there;
        # new keys are only further settings, Q3/Q4's code listing, C6/C7's worker count,
        # each epoch's last step, whether a run warmed the device up and where C7's BatchNorm
        # run came from.
        expected = json.loads((HERE / "test_results_keys.json").read_text())
        for name, keys in expected.items():
            found = flat_keys(self.load(name))
            self.assertEqual(set(keys) - found, set(), name)
            added = {key for key in found - set(keys) if not key.startswith("/config/")
                     and not key.endswith(("/last_train_time", "/warmed_up"))}
            self.assertLessEqual(added, {"/code", "/best_workers", "/best_source",
                                         "/batch_norm_reused_from"}, name)

    def test_a_negative_communication_time_is_not_a_broken_file(self):
        self.assertIsNone(report.MEASURE.match("exposed_communication_time"))  # may be < 0
        self.assertIsNotNone(report.MEASURE.match("train_time"))      # a duration: never < 0


if __name__ == "__main__":
    unittest.main()
