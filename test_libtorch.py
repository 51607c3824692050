"""Tests for the extra credit of 2026 (libtorch.py, cpp/): `python -m unittest test_libtorch`.

The C++ program is built once per test process (testkit.shared_cpp_build) against the torch
Python uses, and run on the weights of one tiny C1 run (testkit.trained_weights). The oracle:
the eager model's outputs and Python's run of the same TorchScript file, computed here.
"""

import os
import tempfile
import unittest
from dataclasses import replace
from unittest import mock

import torch

import libtorch
import torchscript
from resnet import ResNet18
from testkit import one_line, quiet_module, run_lab, shared_cpp_build, trained_weights

setUpModule = quiet_module


class ExtraCreditTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.out, cls.cfg, _ = trained_weights()

    def test_cpp_outputs_equal_pythons(self):
        if libtorch.find_compiler() is None:
            self.skipTest("no C++ compiler found ($CXX, g++, c++ or clang++): the C++ program "
                          "cannot be built here")
        cfg = replace(self.cfg, quick=True)  # the TorchScript program only; AOTInductor is slow
        with shared_cpp_build():
            result = libtorch.extra_credit(cfg)
            again = libtorch.extra_credit(cfg)  # the same source and torch: the same program
        program = result["programs"]["torchscript"]
        self.assertIsNone(program["error"])
        self.assertLessEqual(result["max_abs_diff"], 1e-5)
        images = torchscript.first_test_images(cfg, libtorch.CPP_IMAGES)[0]  # (4, 3, 32, 32)
        model = ResNet18()
        model.load_state_dict(torch.load(os.path.join(self.out, torchscript.WEIGHTS_FILE),
                                         weights_only=True))
        with torch.no_grad():
            eager = model.eval()(images)  # (4, 10): the oracle, computed here
        cpp = torch.tensor(program["cpp"])
        self.assertLessEqual((cpp - eager).abs().max().item(), 1e-5)
        self.assertIn(" ".join(map(str, eager.argmax(1).tolist())), program["printed"])
        self.assertIn("--quick", result["programs"]["aoti"]["skipped"])
        self.assertTrue(again["programs"]["torchscript"]["build"]["cached"])
        self.assertEqual(again["programs"]["torchscript"]["build"]["program"],
                         program["build"]["program"])
        self.assertIn("Largest difference between the C++ and the Python outputs",
                      libtorch.render_extra_credit(result))

    def test_no_compiler_is_one_line_and_status_2(self):
        with tempfile.TemporaryDirectory() as folder, \
                mock.patch.object(libtorch, "find_compiler", return_value=None):
            status, _, err = run_lab("--handout", "2026", "ec", "--dataset", "synthetic",
                                     "--test-size", "20", "--out", folder)
        one_line(self, status, err, "no C++ compiler")

    def test_build_command_matches_the_installed_torch(self):
        command = libtorch.build_command("g++", "cpp/run_torchscript.cpp", "run_torchscript")
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        self.assertIn(f"-D_GLIBCXX_USE_CXX11_ABI={abi}", command)
        lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        self.assertIn(f"-Wl,-rpath,{lib}", command)
        self.assertIn("-std=c++20", command)  # this torch's headers refuse C++17


if __name__ == "__main__":
    unittest.main()
