"""Tests for cli.py: bad options and options that cannot apply end in one line and status 2,
bounds on sizes, workers and the learning rate, --quick, help, prefixes and typos, and Ctrl-C."""

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch

import cli
import data
import lab
import report
from machine import usable_cores, worker_limit
from testkit import (HERE, TINY, TempDirTest, one_line, only_these_items, quiet_module,
                     run_lab)

setUpModule = quiet_module


class CommandLineTest(TempDirTest):
    def test_bad_input_gets_one_line_and_status_2(self):
        afile = self.tmp / "afile"
        afile.write_text("x")
        cases = [
            (["c9"], "choose one of: c1, c2"),
            (["c1", "--optimizer", "rmsprop"], "choose from 'sgd', 'nesterov', 'adagrad'"),
            (["c1", "--epochs", "0"], "--epochs: must be a positive"),
            (["c1", "--train-size", "-5"], "--train-size: must be a positive"),
            (["c1", "--batch-size", "0"], "--batch-size: must be a positive"),
            (["c1", "--num-workers", "-1"], "--num-workers: must be 0 or more"),
            (["c1", "--dataset", "cifar10", "--data-path", str(afile)], "is a file"),
            (["c1", "--dataset", "cifar10", "--data-path", str(afile / "x")], "cannot be created"),
            (["c1", "--out", str(afile)], "--out"),
            (["c6", "--profile"], "--profile is for c2, c4, not c6"),
            (["c4", "--loader", "device"], "--loader device has none"),
            (["c1", "--seed", "-1"], "--seed must be"),
            (["c1", "--out", "/proc/no/such"], "cannot be created"),
        ]
        if not torch.cuda.is_available():
            cases.append((["c1", "--device", "cuda"], "no CUDA GPU"))
            cases.append((["c1", "--cuda"], "no CUDA GPU"))
        for args, message in cases:
            with self.subTest(args=args):
                if "--out" not in args:  # keep the checkout free of a results folder
                    args = [*args, "--out", self.out]
                status, out, err = run_lab(*args)
                self.assertEqual(status, 2)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                self.assertIn(message, err)
                self.assertNotIn("Traceback", err)

    def test_corrupted_cifar10_on_the_command_line(self):
        root = self.tmp / "data"
        root.mkdir()
        (root / "cifar-10-python.tar.gz").write_bytes(b"half a download")
        with mock.patch.object(data, "_download_cifar10", return_value="offline"):
            status, _, err = run_lab("c1", "--dataset", "cifar10", "--data-path", str(root),
                                    "--out", self.out)
        self.assertEqual(status, 2)
        self.assertIn("incomplete or corrupted", err)

    def test_quick_chooses_small_slices_unless_given(self):
        _, cfg, _ = cli.parse_args(["all", "--quick", "--epochs", "3"], lab.Config,
                                      lab.EXERCISES)
        self.assertEqual((cfg.train_size, cfg.test_size, cfg.epochs),
                         (lab.Config.QUICK["train_size"], lab.Config.QUICK["test_size"], 3))

    def test_every_option_has_help(self):
        for action in cli.build_parser(lab.Config(), lab.EXERCISES)._actions:
            self.assertTrue(action.help, action.option_strings)

    def test_ctrl_c_keeps_finished_epochs_and_exits_130(self):
        args = [sys.executable, str(HERE / "lab.py"), "c1", *TINY, "--epochs", "50",
                "--no-eval", "--out", self.out]
        process = subprocess.Popen(args, cwd=HERE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        path = Path(self.out) / "c1.json"
        deadline = time.time() + 120
        while time.time() < deadline and not path.exists():
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # an impatient second Ctrl-C, during the shutdown
        _, err = process.communicate(timeout=60)
        self.assertEqual(process.returncode, 130, err)
        self.assertIn("interrupted", err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Exception ignored", err)
        result = self.load("c1")
        self.assertFalse(result["complete"])
        self.assertGreaterEqual(len(result["epochs"]), 1)

    def test_options_that_cannot_apply_are_refused(self):
        for args, message in ((["all", "--loader", "device"], "c3 and c4 measure"),
                              (["c2", "--checkpoint", "w.pt"], "--checkpoint is for infer"),
                              (["c2", "--steps", "3"], "--steps is for ddp")):
            status, _, err = run_lab(*args, "--out", self.out)
            self.assertEqual(status, 2, err)
            self.assertIn(message, err)


class BoundsTest(TempDirTest):
    def test_worker_counts_are_bounded(self):
        for option in ("--num-workers", "--max-workers", "--best-workers"):
            with self.subTest(option):
                status, _, err = run_lab("c3", option, "1000", "--out", self.out)
                one_line(self, status, err, f"{option} 1000 is more workers than is sensible")
        _, cfg, _ = cli.parse_args(["c3", "--max-workers", str(worker_limit())],
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
    def test_compile_without_a_compiler_is_one_line(self):
        from torch._inductor import cpp_builder
        with mock.patch.object(cpp_builder, "get_cpp_compiler", side_effect=RuntimeError("none")):
            status, _, err = run_lab("c2", *TINY, "--compile", "--device", "cpu",
                                     "--out", self.out)
        one_line(self, status, err, "--compile on the CPU needs a C++ compiler")
        self.assertFalse(os.path.exists(self.out))  # refused before anything was made

    def test_prefixes_typos_and_a_slow_amp(self):
        _, cfg, _ = cli.parse_args(["c2", "--epoch", "2"], lab.Config, lab.EXERCISES)
        self.assertEqual(cfg.epochs, 2)
        status, _, err = run_lab("c2", "--epohcs", "2", "--out", self.out)
        one_line(self, status, err, "unrecognized arguments: --epohcs")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            cli.parse_args(["c2", "--amp", "fp16", "--device", "cpu"], lab.Config, lab.EXERCISES)
            cli.parse_args(["c2", "--amp", "bf16", "--device", "cpu"], lab.Config, lab.EXERCISES)
        self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
        self.assertIn("warning: --amp fp16 on the CPU", err.getvalue())


class CtrlCLineTest(TempDirTest):
    """cli.main: Ctrl-C's line says what of the run was kept, or that nothing had finished."""

    def run_stopped(self, name, run, *args):
        exercises = {name: replace(lab.EXERCISES[name], run=run)}
        with mock.patch.dict(lab.EXERCISES, exercises):
            return run_lab(name, *TINY, *args, "--out", self.out)

    def test_after_a_finished_epoch(self):
        def stop_after_the_first_epoch(cfg, save):
            def save_and_stop(partial):
                save(partial)
                raise KeyboardInterrupt
            return lab.c1_training(cfg, save_and_stop)

        status, _, err = self.run_stopped("c1", stop_after_the_first_epoch, "--epochs", "3")
        self.assertEqual(status, 130, err)
        path = os.path.join(self.out, "c1.json")
        self.assertEqual(err.strip().splitlines()[-1],
                         f"interrupted by Ctrl-C: c1 had finished 1 epoch, kept in {path}")
        self.assertEqual(len(self.load("c1")["epochs"]), 1)

    def test_before_any_epoch_finished(self):
        def stop_at_once(cfg, save):
            raise KeyboardInterrupt

        status, _, err = self.run_stopped("c1", stop_at_once)
        self.assertEqual(status, 130, err)
        self.assertEqual(err.strip().splitlines()[-1],
                         "interrupted by Ctrl-C: c1 had not finished its first epoch; "
                         "nothing of it was saved")
        self.assertFalse(os.path.exists(os.path.join(self.out, "c1.json")))

    def test_epochs_of_several_runs_and_of_all(self):
        save = report.Saving(os.path.join(self.out, "c6.json"), {})
        os.makedirs(self.out)
        save({"runs": {"sgd": {"epochs": [{}, {}]}, "adam": {"epochs": [{}]}}})
        self.assertEqual(save.kept("c6", lab.EXERCISES["c6"]),
                         f"c6 had finished 3 epochs (sgd 2, adam 1), kept in {save.path}")

        def stop_at_once(cfg):
            raise KeyboardInterrupt

        q2_stopped = {"q2": replace(lab.EXERCISES["q2"], run=stop_at_once)}
        with mock.patch.dict(lab.EXERCISES, q2_stopped), only_these_items("q1", "q2"):
            status, _, err = run_lab("all", "--out", self.out)
        self.assertEqual(status, 130, err)
        self.assertEqual(err.strip().splitlines()[-1],
                         f"interrupted by Ctrl-C: q1 complete in {self.out}/; "
                         "q2 had not finished yet; "
                         "nothing of it was saved")


# ------------------------------------------------------------------------------------------
# Options that cannot apply, numbers torch cannot hold, signals


def child_processes(pid):
    """The ids of the processes whose parent is `pid`, read from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry))
    return children


def running(pid):
    """True while process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        return Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ended(process):
    """Stop `process` if it still runs, and close its pipe."""
    process.kill()
    process.wait()
    process.stderr.close()


class OptionBoundsTest(TempDirTest):
    def test_an_lr_that_float32_cannot_hold_is_refused_at_parse_time(self):
        with self.assertRaisesRegex(cli.UsageError, "1e39 is too large for float32"):
            cli.parse_args(["c2", "--lr", "1e39"], lab.Config, lab.EXERCISES)
        status, _, err = run_lab("c2", *TINY, "--lr", "1e39", "--out", self.out)
        self.assertEqual((status, len(err.strip().splitlines())), (2, 1), err)
        self.assertIn("at most 3.403e+38", err)
        self.assertFalse(os.path.exists(self.out))  # refused before anything was made
        largest = str(torch.finfo(torch.float32).max)
        self.assertEqual(cli.parse_args(["c2", "--lr", largest], lab.Config,
                                        lab.EXERCISES)[1].lr, float(largest))


class OptionApplicabilityTest(TempDirTest):
    """An option given where it cannot apply is refused, naming where it does apply."""

    def refused(self, *args):
        ran = AssertionError("the run started")  # neither data nor an exercise is touched
        runs = {name: replace(exercise, run=mock.Mock(side_effect=ran))
                for name, exercise in lab.EXERCISES.items()}
        with mock.patch.dict(lab.EXERCISES, runs), \
                mock.patch.object(report, "datasets_for", side_effect=ran):
            status, _, err = run_lab(*args, "--out", self.out)
        self.assertEqual(status, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertFalse(os.path.exists(self.out))  # refused before anything was made
        return err

    def test_infer_and_ddp_refuse_batch_size(self):
        for name in ("infer", "ddp"):
            with self.subTest(name):
                err = self.refused(name, "--batch-size", "8")
                self.assertIn(f"--batch-size is for c1, c2, c3, c4, c5, c6, c7, c8, bench, not "
                              f"{name}; {name} takes --batch-sizes", err)

    def test_sync_bn_outside_torchrun_is_refused(self):
        err = self.refused("c2", "--sync-bn", *TINY)
        self.assertIn("--sync-bn is for c1, c2, c6, c7 under torchrun; this run is one process",
                      err)

    def test_c6_refuses_optimizer(self):
        self.assertIn("--optimizer is for c1, c2, c4, c5, c8, bench, ddp, not c6",
                      self.refused("c6", "--optimizer", "adam"))

    def test_q1_refuses_compile(self):
        self.assertIn("--compile is for c1, c2, c4, c5, c6, c7, bench, not q1",
                      self.refused("q1", "--compile"))

    def test_the_hand_written_rules_now_come_from_the_registry(self):
        for args, message in ((["c2", "--checkpoint", "w.pt"], "--checkpoint is for infer, not c2"),
                              (["all", "--max-procs", "2"], "--max-procs is for ddp, not all"),
                              (["infer", "--steps", "3"], "--steps is for ddp, not infer"),
                              (["c2", "--force"], "--force is for all, not c2"),
                              (["c7", "--no-bn"], "--no-bn is for c1, c2, c4, c5, c6, q1"),
                              (["c3", "--num-workers", "2"], "--num-workers is for c1, c2, c8, "
                                                             "bench, not c3"),
                              (["q1", "--quick"], "--quick is for c1, c2, c3, c4, c5, c6, c7, "
                                                  "c8, bench, not q1")):
            with self.subTest(args=args):
                self.assertIn(message, self.refused(*args))
        _, cfg, _ = cli.parse_args(["all", "--num-workers", "0", "--best-workers", "1"],
                                   lab.Config, lab.EXERCISES)  # C1, C2 and C4-C7 take them
        self.assertEqual((cfg.num_workers, cfg.best_workers), (0, 1))

    def test_the_questions_accept_exactly_the_options_whose_fields_they_read(self):
        # The oracle: run each question on a Config that records which fields are read.
        read = set()

        class Recording(lab.Config):
            def __getattribute__(self, name):
                if not name.startswith("_"):
                    read.add(name)
                return super().__getattribute__(name)

        parser = cli.build_parser(lab.Config(), lab.EXERCISES)
        fields = {action.dest: cli.FIELD.get(action.dest, action.dest)
                  for action in parser._actions if action.option_strings
                  and action.dest != "help"}
        for name in ("q1", "q2", "q3", "q4", "summary"):
            with self.subTest(name), contextlib.redirect_stdout(io.StringIO()):
                read.clear()
                lab.EXERCISES[name].run(Recording())
                accepted = {field for dest, field in fields.items()
                            if cli.applies(dest, lab.EXERCISES[name], lab.EXERCISES)}
                # --out and --handout say where the results go and how they are numbered:
                # report.py and cli.py read them, never the exercise itself.
                self.assertEqual(accepted - {"out", "handout"}, read & set(fields.values()),
                                 name)


class SignalTest(TempDirTest):
    """SIGTERM and SIGHUP end a run as Ctrl-C does: one line, 128 + the signal's number, the
    finished epochs kept, the DataLoader's workers gone, the results folder unlocked."""

    def stop_during_an_epoch(self, signum, group=False):
        """Send `signum` to the run during an epoch with two workers: to the process alone
        (`kill`, `docker stop`), or with `group` to its whole process group, workers included
        (a closing terminal, `timeout`, Slurm, torchrun)."""
        args = [sys.executable, str(HERE / "lab.py"), "c2", "--dataset", "synthetic",
                "--train-size", "64", "--test-size", "20", "--batch-size", "16",
                "--epochs", "50", "--num-workers", "2", "--out", self.out]
        process = subprocess.Popen(args, cwd=HERE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=group)
        self.addCleanup(ended, process)
        saved, workers = Path(self.out) / "c2.json", []
        deadline = time.time() + 240
        while time.time() < deadline and len(workers) < 2:  # an epoch saved, the next one's
            workers = child_processes(process.pid) if saved.exists() else []  # workers up
            time.sleep(0.05)
        self.assertEqual(len(workers), 2, "no epoch with its two workers in 240 s")
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()
                 and not line.startswith("epoch ")]  # beside the progress of the epochs
        self.assertEqual(process.returncode, 128 + signum, err)
        self.assertEqual(len(lines), 1, err)
        self.assertRegex(lines[0], rf"^interrupted by {signal.Signals(signum).name}: c2 had "
                                   rf"finished \d+ epochs?, kept in {re.escape(str(saved))}$")
        result = self.load("c2")
        self.assertFalse(result["complete"])
        self.assertGreaterEqual(len(result["epochs"]), 1)
        deadline = time.time() + 5
        while time.time() < deadline and any(map(running, workers)):
            time.sleep(0.1)
        self.assertEqual([pid for pid in workers if running(pid)], [])
        with report.results_folder(self.out):  # unlocked
            pass

    def test_sigterm_to_the_process_group_during_an_epoch_with_workers(self):
        self.stop_during_an_epoch(signal.SIGTERM, group=True)

    def test_sighup_during_an_epoch_with_workers(self):
        self.stop_during_an_epoch(signal.SIGHUP)


if __name__ == "__main__":
    unittest.main()
