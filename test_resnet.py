"""Tests for resnet.py: parameter counts, layer names, no BatchNorm placeholders, and a network
TorchScript can compile that gives eager's outputs and the same summary rows."""

import unittest
import warnings

import torch
import torch.nn as nn

from lab import model_summary
from resnet import ResNet18
from testkit import TOLERANCE, network, quiet_module, relative_difference

setUpModule = quiet_module


class ResNetTest(unittest.TestCase):
    def test_parameter_counts(self):
        count = lambda m: sum(p.numel() for p in m.parameters())
        self.assertEqual(count(ResNet18()), 11_173_962)
        self.assertEqual(count(ResNet18(batch_norm=False)), 11_164_362)

    def test_without_batchnorm_has_no_batchnorm_state_or_placeholders(self):
        model = ResNet18(batch_norm=False)
        self.assertEqual(list(model.buffers()), [])
        kinds = {type(m).__name__ for m in model.modules()}
        self.assertFalse(kinds & {"BatchNorm2d", "Identity"}, kinds)
        self.assertFalse(any("bn" in name for name, _ in model.named_parameters()))

    def test_layer_names_follow_the_familiar_layout(self):
        names = {name for name, _ in ResNet18().named_modules()}
        for name in ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer2.0.shortcut.0",
                     "layer2.0.shortcut.1", "layer4.1.conv2", "linear"]:
            self.assertIn(name, names)
        self.assertNotIn("layer1.0.shortcut.0", names)  # identity shortcut: nothing in it

    def test_no_convolution_has_a_bias_and_output_shape(self):
        model = ResNet18()
        self.assertTrue(all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d)))
        self.assertEqual(model.linear.in_features, 512)
        for batch_norm in (True, False):
            out = ResNet18(batch_norm=batch_norm)(torch.randn(2, 3, 32, 32))
            self.assertEqual(tuple(out.shape), (2, 10))


class TestResNetScripts(unittest.TestCase):
    def test_script_gives_eager_outputs_with_and_without_batch_norm(self):
        self.enterContext(warnings.catch_warnings())
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation
        images = torch.randn(2, 3, 32, 32)  # (2, 3, 32, 32)
        for batch_norm in (True, False):
            model = network(batch_norm)
            scripted = torch.jit.script(model)
            with torch.no_grad():
                self.assertLess(relative_difference(scripted(images), model(images)), TOLERANCE)

    def test_parameter_counts(self):
        count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
        self.assertEqual(count(ResNet18()), 11_173_962)
        self.assertEqual(count(ResNet18(batch_norm=False)), 11_164_362)

    def test_no_placeholder_layers_without_batch_norm(self):
        model = ResNet18(batch_norm=False)
        self.assertIsNone(model.bn1)
        self.assertIsNone(model.layer2[0].bn2)
        types = {type(module).__name__ for module in model.modules()}
        self.assertFalse(types & {"BatchNorm2d", "Identity"}, types)

    def test_summary_rows_unchanged(self):
        self.assertEqual(len(model_summary(ResNet18(), print_table=False)["rows"]), 49)
        rows = model_summary(ResNet18(batch_norm=False), print_table=False)["rows"]
        self.assertEqual(len(rows), 29)


if __name__ == "__main__":
    unittest.main()
