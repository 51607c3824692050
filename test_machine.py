"""Tests for machine.py: the usable cores under a cgroup quota."""

import os
import tempfile
import unittest

import machine
from testkit import HERE, quiet_module

setUpModule = quiet_module


class UsableCoresTest(unittest.TestCase):
    def test_usable_cores_respects_a_cgroup_quota(self):
        affinity = len(os.sched_getaffinity(0))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "cpu.max")
            for line, expected in [("max 100000", affinity), ("150000 100000", 1),
                                   ("50000 100000", 1), (f"{100000 * (affinity + 4)} 100000",
                                                         affinity)]:
                with open(path, "w") as file:
                    file.write(line + "\n")
                self.assertEqual(machine.usable_cores(path), expected, line)
        self.assertEqual(machine.usable_cores(os.path.join(HERE, "no such file")), affinity)


if __name__ == "__main__":
    unittest.main()
