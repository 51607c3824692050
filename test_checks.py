"""Tests for `python lab.py check` (checks.py) on the CPU: it passes here, a check made to fail
says FAIL with its reason and ends with exit status 1, and the two-rank check's oracle holds.

    python -m unittest test_checks

The whole check runs once, on the tiniest slice (16 images, batch 8); infer's compiled ways
take most of its time, a minute or two on two cores.
"""

import re
import subprocess
import sys
import unittest
from dataclasses import replace
from pathlib import Path
from unittest import mock

import checks
import lab
from testkit import HERE, TempDirTest, quiet_module, run_lab

setUpModule = quiet_module
TINIEST = ["--device", "cpu", "--train-size", "16", "--test-size", "8", "--batch-size", "8"]
LINE = re.compile(r"^(PASS|FAIL|SKIP) (.+) \((\d+\.\d) s\)(: .+)?$")


def verdicts(out):
    """{check name: (verdict, detail)} from check's lines."""
    found = {}
    for line in out.splitlines():
        match = LINE.match(line)
        if match:
            found[match.group(2)] = (match.group(1), (match.group(4) or "")[2:])
    return found


class CheckOnTheCpuTest(TempDirTest):
    def test_every_check_passes_or_says_why_it_cannot_run_here(self):
        status, out, err = run_lab("check", *TINIEST, "--out", self.out)
        found = verdicts(out)
        self.assertEqual(list(found), [check.name for check in checks.CHECKS], out)
        failed = {name: detail for name, (verdict, detail) in found.items() if verdict == "FAIL"}
        self.assertEqual(failed, {})
        self.assertEqual(status, 0, err)
        skipped = {name for name, (verdict, _) in found.items() if verdict == "SKIP"}
        self.assertEqual(skipped, {check.name for check in checks.CHECKS if check.needs})
        self.assertIn("555,422,720 mult-adds", found["summary: the totals equal the model's "
                                                     "parameters and FlopCounterMode's count"][1])
        self.assertRegex(out.splitlines()[-1], r"^check: 15 passed, 0 failed, 2 skipped in "
                                               r"\d+ s; not run by the checks: c8, bench, ddp")
        self.assertTrue((Path(self.out) / "c2.json").is_file())  # --out is the check's folder


class CheckMadeToFailTest(TempDirTest):
    def run_check(self, exercises, names):
        """lab.py check with only the checks named, on the registry `exercises`."""
        chosen = [check for check in checks.CHECKS if check.name.split(":")[0] in names]
        with mock.patch.object(checks, "CHECKS", chosen), \
                mock.patch.dict(lab.EXERCISES, exercises):
            return run_lab("check", *TINIEST, "--out", self.out)

    def test_a_stand_in_whose_answer_differs_fails_with_status_1(self):
        real = lab.EXERCISES["q2"]
        wrong = replace(real, run=lambda cfg: {**real.run(cfg), "input_dimension": 8192})
        status, out, err = self.run_check({"q2": wrong}, ["q1", "q2", "results"])
        self.assertEqual(status, 1, err)
        found = verdicts(out)
        self.assertEqual([verdict for verdict, _ in found.values()], ["PASS", "FAIL", "PASS"])
        self.assertEqual(found["q2: the linear layer's input is the last feature map's "
                               "channels"][1], "Q2 says 8192; the layer takes 512")
        self.assertRegex(out.splitlines()[-1], r"^check: 2 passed, 1 failed, 0 skipped")

    def test_an_exercise_that_raises_is_a_fail_line_not_a_traceback(self):
        def broken(cfg):
            raise RuntimeError("out of cheese\nsecond line")

        status, out, err = self.run_check({"q1": replace(lab.EXERCISES["q1"], run=broken)},
                                          ["q1"])
        self.assertEqual(status, 1)
        (verdict, detail), = verdicts(out).values()
        self.assertEqual((verdict, detail), ("FAIL", "q1 failed: RuntimeError: out of cheese"))
        self.assertNotIn("Traceback", out + err)


class CheckRulesTest(TempDirTest):
    def test_two_ranks_step_like_one_process_on_the_cpu(self):
        # On two GPUs the check runs this with NCCL; here the same code runs on gloo.
        note = checks.two_ranks_step_like_one("cpu")
        difference, half = (float(x) for x in re.findall(r"\d\.\de[-+]\d+", note))
        self.assertLess(difference, 1e-6)
        self.assertGreater(half, 1e-2)

    def test_a_check_that_does_not_apply_says_why(self):
        ctx = checks.Context(replace(lab.Config(), out=self.out), lab.EXERCISES)
        self.assertIn("no queue", checks.needs_cuda(ctx))
        self.assertIn("two or more GPUs", checks.needs_two_gpus(ctx))

    def test_the_options_check_takes_and_refuses(self):
        for args, message in ((["c2", "--bench"], "--bench is for check, not c2"),
                              (["bench", "--bench"], "--bench is for check, not bench"),
                              (["check", "--quick"], "--quick is for c1, c2, c3, c4, c5, c6, "
                                                     "c7, c8, bench, not check"),
                              (["check", "--force"], "--force is for all, not check"),
                              (["check", "--checkpoint", "w.pt"], "--checkpoint is for infer, "
                                                                  "not check"),
                              (["check", "--loader", "device"], "c3 and c4 measure the "
                                                                "DataLoader's workers")):
            with self.subTest(args=args):
                status, out, err = run_lab(*args, "--out", self.out)
                self.assertEqual((status, out), (2, ""))
                self.assertIn(message, err)
        _, cfg, _ = lab.cli.parse_args(["check", "--bench", "--epochs", "2", "--no-bn"],
                                       lab.Config, lab.EXERCISES)
        self.assertEqual((cfg.check_bench, cfg.epochs, cfg.batch_norm), (True, 2, False))

    def test_help_lists_check_and_its_options(self):
        done = subprocess.run([sys.executable, "lab.py", "--help"], cwd=HERE,
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        text = " ".join(done.stdout.split())
        self.assertIn("one of: c1, c2,", text)
        self.assertIn("all, check", text)
        self.assertIn("check every exercise on a tiny slice on this device", text)
        self.assertIn("--bench check: after the checks, measure the headline figures", text)
        self.assertIn("--wide summary: add the kernel shape", text)

    def test_the_slice_defaults_unless_given_and_a_folder_of_its_own(self):
        _, cfg, _ = lab.cli.parse_args(["check", "--batch-size", "4"], lab.Config,
                                       lab.EXERCISES)
        self.assertEqual((cfg.train_size, cfg.batch_size, cfg.dataset, cfg.out),
                         (checks.SLICE["train_size"], 4, "synthetic", "results/check"))


if __name__ == "__main__":
    unittest.main()
