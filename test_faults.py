"""Tests for the faults a new user meets (issue 9, part 2): `python -m unittest test_faults`.

Each bad situation must end in one line on stderr and exit status 2 (or the documented
fallback), with no traceback, and with every finished step still on disk.
"""

import contextlib
import errno
import io
import json
import os
import sys
import unittest
import warnings
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

import cli
import data
import lab
import render
import report
import train
from machine import usable_cores, worker_limit
from test_lab import TINY, TempDirTest, quiet_module, run_lab

setUpModule = quiet_module


def one_line(test, status, err, message):
    """The fault's shape: status 2, one line on stderr naming it, no traceback."""
    test.assertEqual(status, 2, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("epoch ")]
    test.assertEqual(len(lines), 1, err)  # beside the progress of an epoch that trained
    test.assertIn(message, err)
    test.assertNotIn("Traceback", err)


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


class ImageFolderTest(TempDirTest):
    def make_folder(self):
        root = self.tmp / "images"
        rng = np.random.default_rng(0)
        for split in ("train", "test"):
            for name in data.CIFAR10_CLASSES:
                (root / split / name).mkdir(parents=True)
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / "0.png")
        return root

    def test_a_broken_or_wrong_sized_image_is_named_at_load(self):
        root = self.make_folder()
        good = (root / "train" / "cat" / "0.png").read_bytes()
        cases = {"empty": b"", "truncated": good[:60], "not an image": b"hello"}
        for case, content in cases.items():
            with self.subTest(case):
                bad = root / "test" / "dog" / f"{case}.png"
                bad.write_bytes(content)
                with self.assertRaisesRegex(data.DataError, f"{bad} is not a readable image"):
                    data.load_datasets("folder", root)
                bad.unlink()
        Image.new("RGB", (64, 64)).save(root / "train" / "cat" / "0.png")
        with self.assertRaisesRegex(data.DataError, "0.png is 64x64; the lab's images are"):
            data.load_datasets("folder", root)
        status, _, err = run_lab("c2", "--dataset", "folder", "--data-path", str(root),
                                 "--out", self.out)
        one_line(self, status, err, "is 64x64")

    def test_a_symlink_loop_is_refused(self):
        for target in (".", "..", "../.."):
            with self.subTest(target=target):
                root = self.make_folder()
                link = root / "train" / "cat" / "loop"
                link.symlink_to(target)
                with self.assertRaisesRegex(data.DataError, f"{link} is a symbolic link back"):
                    data.load_datasets("folder", root)
                self._tmp.cleanup()
                self.tmp.mkdir()


class BoundsTest(TempDirTest):
    def test_worker_counts_are_bounded(self):
        for option in ("--num-workers", "--max-workers", "--best-workers"):
            with self.subTest(option):
                status, _, err = run_lab("c3", option, "1000", "--out", self.out)
                one_line(self, status, err, f"{option} 1000 is more workers than is sensible")
        _, cfg, _, _ = cli.parse_args(["c3", "--max-workers", str(worker_limit())],
                                      lab.Config, lab.EXERCISES)
        self.assertEqual(cfg.max_workers, worker_limit())
        self.assertGreaterEqual(worker_limit(), 4 * usable_cores())

    def test_sizes_are_bounded_by_memory_and_the_data_set(self):
        status, _, err = run_lab("c2", "--dataset", "synthetic", "--train-size", "10" * 12,
                                 "--out", self.out)
        one_line(self, status, err, "GiB of memory to generate")
        status, _, err = run_lab("c2", "--train-size", "1e12", "--out", self.out)
        one_line(self, status, err, "'1e12' is not a whole number")
        loader = data.make_loader(list(range(10)), 10**23, shuffle=True, num_workers=0)
        self.assertEqual([len(batch) for batch in loader], [10])  # the whole set, once

    def test_lr_must_be_finite(self):
        for value in ("inf", "nan", "-inf"):
            status, _, err = run_lab("c2", f"--lr={value}", "--out", self.out)
            one_line(self, status, err, "must be a positive, finite number")


class EnvironmentTest(TempDirTest):
    def test_auto_falls_back_to_synthetic_when_the_data_path_is_read_only(self):
        for path, unwritable in (("/proc/self", None), (self.tmp / "ro", "Permission denied")):
            with self.subTest(path=path), \
                    mock.patch.object(data, "cannot_write", return_value=unwritable) \
                    if unwritable else contextlib.nullcontext():
                _, _, info = data.load_datasets("auto", path, train_size=20, test_size=10)
                self.assertEqual(info["name"], "synthetic")
                with self.assertRaisesRegex(data.DataError, "cannot be written"):
                    data.load_datasets("cifar10", path)

    def test_more_workers_than_cores_under_warnings_as_errors(self):
        dataset = list(range(8))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loader = data.make_loader(dataset, 4, shuffle=False, num_workers=usable_cores() + 1)
            self.assertEqual([b.tolist() for b in loader], [[0, 1, 2, 3], [4, 5, 6, 7]])

    def test_compile_without_a_compiler_is_one_line(self):
        from torch._inductor import cpp_builder
        with mock.patch.object(cpp_builder, "get_cpp_compiler", side_effect=RuntimeError("none")):
            status, _, err = run_lab("c2", *TINY, "--compile", "--device", "cpu",
                                     "--out", self.out)
        one_line(self, status, err, "--compile on the CPU needs a C++ compiler")
        self.assertFalse(os.path.exists(self.out))  # refused before anything was made

    def test_prefixes_typos_and_a_slow_amp(self):
        _, cfg, _, _ = cli.parse_args(["c2", "--epoch", "2"], lab.Config, lab.EXERCISES)
        self.assertEqual(cfg.epochs, 2)
        status, _, err = run_lab("c2", "--epohcs", "2", "--out", self.out)
        one_line(self, status, err, "unrecognized arguments: --epohcs")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            cli.parse_args(["c2", "--amp", "fp16", "--device", "cpu"], lab.Config, lab.EXERCISES)
            cli.parse_args(["c2", "--amp", "bf16", "--device", "cpu"], lab.Config, lab.EXERCISES)
        self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
        self.assertIn("warning: --amp fp16 on the CPU", err.getvalue())



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
