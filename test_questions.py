"""Tests for lab.py's hand-written model summary against known figures, and the answers to Q1-Q4.

    python -m unittest test_questions -v

The ResNet-18 figures are the ones torchsummary 1.5.1 prints for this network (49 rows,
11,173,962 parameters, 0.01 / 11.25 / 42.63 / 53.89 MB; without BatchNorm 29 rows, 11,164,362,
0.01 / 6.56 / 42.59 / 49.16 MB), checked by hand; torchsummary itself is not a dependency. The
small models each hold one thing torchsummary gets wrong, with the right figure worked out in
the comments. Everything runs on the CPU in a few seconds.
"""

import inspect
import io
import json
import types
import unittest

import torch
import torch.nn as nn
import torchvision

from lab import (conv_layers, count_parameters_and_gradients, linear_input, model_summary,
                 q1_conv_layers, q2_linear_input, q3_sgd_parameters, q4_adam_parameters)
from render import format_summary, render_q1, render_q2, render_q3, render_q4
from resnet import BasicBlock, ResNet, ResNet18
from test_lab import quiet_module as setUpModule  # quiet: progress to a buffer


def summarize(model, input_size=(3, 32, 32), batch_size=-1):
    return model_summary(model, input_size, batch_size, print_table=False)


def config(batch_norm):
    return types.SimpleNamespace(batch_norm=batch_norm, device="cpu", seed=0, lr=0.1)


class TestSummaryOfResNet18(unittest.TestCase):
    """The figures torchsummary prints, where it is right."""

    def check_figures(self, summary, rows, params, mb):
        self.assertEqual(len(summary["rows"]), rows)
        self.assertEqual(summary["total_params"], params)
        self.assertEqual(summary["trainable_params"], params)
        self.assertEqual(summary["non_trainable_params"], 0)
        self.assertEqual(summary["unlisted_params"], {})
        self.assertEqual(sum(row["params"] for row in summary["rows"]), params)
        sizes = [summary[key] for key in ("input_size_mb", "forward_backward_size_mb",
                                          "params_size_mb", "total_size_mb")]
        self.assertEqual([round(size, 2) for size in sizes], mb)

    def test_with_batch_norm(self):
        summary = summarize(ResNet18())
        self.check_figures(summary, 49, 11_173_962, [0.01, 11.25, 42.63, 53.89])
        first, last = summary["rows"][0], summary["rows"][-1]
        self.assertEqual((first["layer"], first["output_shape"], first["params"]),
                         ("Conv2d-1", [-1, 64, 32, 32], 3 * 64 * 3 * 3))
        self.assertEqual((last["layer"], last["output_shape"], last["params"]),
                         ("Linear-49", [-1, 10], 512 * 10 + 10))
        self.assertEqual(sum(row["type"] == "BatchNorm2d" for row in summary["rows"]), 20)

    def test_without_batch_norm(self):
        summary = summarize(ResNet18(batch_norm=False))
        self.check_figures(summary, 29, 11_164_362, [0.01, 6.56, 42.59, 49.16])
        types_listed = {row["type"] for row in summary["rows"]}
        self.assertEqual(types_listed, {"Conv2d", "BasicBlock", "Linear"})  # no placeholders

    def test_batch_size_scales_inputs_and_outputs(self):
        summary = summarize(ResNet18(), batch_size=16)
        self.assertEqual(summary["rows"][0]["output_shape"], [16, 64, 32, 32])
        sizes = [summary[key] for key in ("input_size_mb", "forward_backward_size_mb",
                                          "params_size_mb", "total_size_mb")]
        self.assertEqual([round(size, 2) for size in sizes], [0.19, 180.00, 42.63, 222.81])

    def test_printed_table(self):
        out = io.StringIO()
        model_summary(ResNet18(), file=out)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[1].split(), ["Layer", "(type)", "Output", "Shape", "Param", "#"])
        self.assertEqual(lines[3], f"{'Conv2d-1':>20}  {'[-1, 64, 32, 32]':>25} {'1,728':>15}")
        for line in ["Total params: 11,173,962", "Trainable params: 11,173,962",
                     "Non-trainable params: 0", "Input size (MB): 0.01",
                     "Forward/backward pass size (MB): 11.25", "Params size (MB): 42.63",
                     "Estimated Total Size (MB): 53.89"]:
            self.assertIn(line, lines)
        self.assertEqual(len(lines), 3 + 49 + 10)  # header, rows, totals

    def test_format_summary_is_the_printed_table(self):
        out = io.StringIO()
        summary = model_summary(ResNet18(batch_norm=False), file=out)
        self.assertEqual(out.getvalue(), format_summary(summary) + "\n")
        self.assertNotIn("Conv2d-1", format_summary(summary, with_rows=False))

    def test_reused_activation_is_listed_per_call(self):
        # torchvision's BasicBlock calls one nn.ReLU twice: torchsummary lists both calls, and
        # so do we (68 rows, 11,181,642 parameters, 1.29 MB forward/backward on 32x32 inputs).
        summary = summarize(torchvision.models.resnet18(num_classes=10))
        self.assertEqual(len(summary["rows"]), 68)
        self.assertEqual(sum(row["type"] == "ReLU" for row in summary["rows"]), 1 + 2 * 8)
        self.assertEqual(summary["total_params"], 11_181_642)
        self.assertEqual(round(summary["forward_backward_size_mb"], 2), 1.29)

    def test_json_ready(self):
        summary = summarize(ResNet18())
        self.assertEqual(json.loads(json.dumps(summary)), summary)


class Twice(nn.Module):
    """One Linear called twice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


class SharedAcrossParents(nn.Module):
    """One Linear registered under two containers; torchsummary hooks it twice per call."""

    def __init__(self):
        super().__init__()
        fc = nn.Linear(4, 4)
        self.first, self.second = nn.Sequential(fc), nn.Sequential(fc)

    def forward(self, x):
        return self.second(self.first(x))


class Tied(nn.Module):
    """Two Linears sharing one weight, as in tied embeddings."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


class Gain(nn.Module):
    """A layer whose parameter is called neither weight nor bias."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.gain


class BareParameters(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gain = Gain()
        self.scale = nn.Parameter(torch.ones(4))  # on the model itself: no layer row holds it

    def forward(self, x):
        return self.gain(self.fc(x)) * self.scale


class Split(nn.Module):
    """Splits (N, 6) into (N, 2) and (N, 4), returned as a tuple, a list or a dict."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        a, b = x[:, :2], x[:, 2:]
        return {"tuple": (a, b), "list": [a, b], "dict": {"a": a, "b": b}}[self.kind]


class SplitThenLinear(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.split = Split(kind)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        parts = self.split(x)
        b = parts["b"] if isinstance(parts, dict) else parts[1]
        return self.fc(b)


class TestWhereTorchsummaryIsWrong(unittest.TestCase):

    def test_module_called_twice_counts_once(self):
        summary = summarize(Twice(), (4,))
        self.assertEqual([row["params"] for row in summary["rows"]], [20, 0])  # 4*4 + 4, then 0
        self.assertEqual(summary["total_params"], 20)  # torchsummary: 40
        self.assertEqual(round(summary["params_size_mb"] * 1024 ** 2), 20 * 4)

    def test_module_under_two_parents_is_one_row_per_call(self):
        summary = summarize(SharedAcrossParents(), (4,))
        self.assertEqual(len(summary["rows"]), 2)  # torchsummary: 4
        self.assertEqual(summary["total_params"], 20)

    def test_tied_parameter_counts_once(self):
        summary = summarize(Tied(), (4,))
        self.assertEqual([row["params"] for row in summary["rows"]], [20, 4])  # b adds its bias
        self.assertEqual(summary["total_params"], 16 + 4 + 4)

    def test_every_parameter_counts(self):
        summary = summarize(BareParameters(), (4,))
        self.assertEqual([(row["type"], row["params"]) for row in summary["rows"]],
                         [("Linear", 20), ("Gain", 4)])  # torchsummary: Gain 0
        self.assertEqual(summary["unlisted_params"], {"scale": 4})
        self.assertEqual(summary["total_params"], 20 + 4 + 4)  # torchsummary: 20
        self.assertIn("Params in no listed layer: 4 (scale)", format_summary(summary))

    def test_frozen_bias_is_non_trainable(self):
        model = nn.Sequential(nn.Linear(4, 4))
        model[0].bias.requires_grad_(False)
        summary = summarize(model, (4,))
        self.assertEqual((summary["trainable_params"], summary["non_trainable_params"]), (16, 4))
        self.assertEqual(summary["rows"][0]["trainable_params"], 16)  # torchsummary: 20

    def test_frozen_weight_leaves_bias_trainable(self):
        model = nn.Sequential(nn.Linear(4, 4))
        model[0].weight.requires_grad_(False)
        summary = summarize(model, (4,))
        self.assertEqual((summary["trainable_params"], summary["non_trainable_params"]), (4, 16))

    def test_frozen_batch_norm_in_resnet(self):
        model = ResNet18()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)
        summary = summarize(model)
        self.assertEqual(summary["non_trainable_params"], 11_173_962 - 11_164_362)
        self.assertEqual(summary["trainable_params"], 11_164_362)

    def test_tuple_list_and_dict_outputs(self):
        expected = {"tuple": [[-1, 2], [-1, 4]], "list": [[-1, 2], [-1, 4]],
                    "dict": {"a": [-1, 2], "b": [-1, 4]}}
        for kind, shape in expected.items():
            with self.subTest(kind=kind):
                summary = summarize(SplitThenLinear(kind), (6,))
                split, fc = summary["rows"]
                self.assertEqual(split["output_shape"], shape)
                self.assertEqual(split["output_bytes"], (2 + 4) * 4)
                self.assertEqual(fc["output_shape"], [-1, 3])
                # Two bytes counts (output and gradient) of 2 + 4 + 3 floats.
                self.assertEqual(round(summary["forward_backward_size_mb"] * 1024 ** 2),
                                 2 * (2 + 4 + 3) * 4)
                self.assertIn(str(shape), format_summary(summary))

    def test_batch_norm_statistics_and_modes_unchanged(self):
        model = ResNet18()
        model.train()
        model.layer1[0].bn1.eval()  # a mixed model must come back mixed
        before = {name: value.clone() for name, value in model.state_dict().items()}
        modes = [m.training for m in model.modules()]
        summarize(model)
        after = model.state_dict()
        for name, value in before.items():
            self.assertTrue(torch.equal(value, after[name]), name)
        self.assertEqual([m.training for m in model.modules()], modes)
        self.assertFalse(model.layer1[0].bn1.training)

    def test_forward_pass_builds_no_graph(self):
        model = ResNet18()
        seen = []

        def remember(module, args, output):
            seen.append((torch.is_grad_enabled(), output.requires_grad))

        model.linear.register_forward_hook(remember)
        summarize(model)
        self.assertEqual(seen, [(False, False)])
        self.assertTrue(all(p.grad is None for p in model.parameters()))

    def test_caller_random_stream_untouched(self):
        model = ResNet18(batch_norm=False)  # building draws from the stream; summarizing must not
        state = torch.get_rng_state()
        summarize(model)
        self.assertTrue(torch.equal(torch.get_rng_state(), state))

    def test_runs_on_the_model_device(self):
        # The meta device stands in for a GPU: an input made on the CPU would fail there.
        model = ResNet18().to("meta")
        summary = summarize(model)
        self.assertEqual(summary["total_params"], 11_173_962)
        self.assertEqual(round(summary["total_size_mb"], 2), 53.89)
        self.assertTrue(all(p.device.type == "meta" for p in model.parameters()))


class TestQ1ConvLayers(unittest.TestCase):

    def test_both_variants(self):
        for batch_norm in (True, False):
            with self.subTest(batch_norm=batch_norm):
                result = q1_conv_layers(config(batch_norm))
                self.assertEqual(result["conv_layers"], 20)
                self.assertEqual(result["by_kernel"], {"3x3": 17, "1x1": 3})
                self.assertEqual((result["main_path_convs"], result["shortcut_convs"]), (17, 3))
                self.assertEqual(result["weighted_layers_on_main_path"], 18)
                self.assertTrue(all(c["kernel"] == "1x1" for c in result["convs"]
                                    if c["path"] == "shortcut"))
                self.assertEqual(json.loads(json.dumps(result)), result)

    def test_agrees_with_the_summary(self):
        rows = summarize(ResNet18())["rows"]
        self.assertEqual(sum(row["type"] == "Conv2d" for row in rows),
                         q1_conv_layers(config(True))["conv_layers"])

    def test_counted_not_typed(self):
        # ResNet-34 (3, 4, 6, 3 blocks): 1 + 16 * 2 main-path convs, 3 shortcuts, and the name's 34.
        result = conv_layers(ResNet(BasicBlock, [3, 4, 6, 3]))
        self.assertEqual((result["conv_layers"], result["weighted_layers_on_main_path"]), (36, 34))
        text = render_q1({"batch_norm": True, **result})
        self.assertIn("36 convolutional layers", text)
        self.assertIn("Why the name says 34", text)

    def test_rendering(self):
        text = render_q1(q1_conv_layers(config(True)))
        self.assertTrue(text.startswith("**20 convolutional layers** (17 3x3, 3 1x1) in "
                                        "ResNet-18,"))  # no heading: the title is above it
        self.assertIn("Why the name says 18", text)
        self.assertIn("17 convolutions plus 1 linear layer = 18", text)
        self.assertIn("other 3 convolutions are the 1x1 projections", text)
        self.assertIn("| 8 | layer2.0.shortcut.0 | 1x1 | 64 -> 128 | 2 | shortcut |", text)


class TestQ2LinearInput(unittest.TestCase):

    def test_both_variants(self):
        for batch_norm in (True, False):
            with self.subTest(batch_norm=batch_norm):
                result = q2_linear_input(config(batch_norm))
                self.assertEqual(result["input_dimension"], 512)
                self.assertEqual(result["measured_input_shape"], [2, 512])
                self.assertEqual(result["in_features"], 512)
                self.assertEqual(result["last_feature_map_shape"], [2, 512, 4, 4])
                self.assertEqual(result["flattened_feature_map"], 512 * 4 * 4)
                self.assertEqual(json.loads(json.dumps(result)), result)

    def test_pooling_makes_it_independent_of_image_size(self):
        result = linear_input(ResNet18(), input_size=(3, 64, 64))
        self.assertEqual(result["last_feature_map_shape"], [2, 512, 8, 8])
        self.assertEqual(result["input_dimension"], 512)

    def test_measured_not_typed(self):
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(),
                              nn.Linear(8 * 32 * 32, 10))
        result = linear_input(model)
        self.assertEqual(result["input_dimension"], 8 * 32 * 32)
        self.assertEqual(result["last_feature_map_shape"], [2, 8, 32, 32])

    def test_rendering(self):
        text = render_q2(q2_linear_input(config(False)))
        self.assertTrue(text.startswith("**512** in ResNet-18 without BatchNorm,"))
        self.assertIn("without BatchNorm", text)
        self.assertIn("**512**", text)
        self.assertIn("Why not 512x4x4 = 8,192", text)


class TestQ3Q4ParametersAndGradients(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        questions = {"sgd": q3_sgd_parameters, "adam": q4_adam_parameters}
        cls.results = {(name, bn): question(config(bn))
                       for name, question in questions.items() for bn in (True, False)}

    def test_one_gradient_per_trainable_parameter(self):
        # 62 parameter tensors with BatchNorm (20 convs, 20 BatchNorms x 2, linear x 2), 22 without.
        for (name, bn), params, tensors in [(("sgd", True), 11_173_962, 62),
                                            (("adam", True), 11_173_962, 62),
                                            (("sgd", False), 11_164_362, 22),
                                            (("adam", False), 11_164_362, 22)]:
            with self.subTest(optimizer=name, batch_norm=bn):
                result = self.results[(name, bn)]
                self.assertEqual(result["trainable_parameters"], params)
                self.assertEqual(result["gradients"], params)
                self.assertEqual(result["summary_totals"]["trainable_params"], params)
                self.assertEqual(result["parameter_tensors"], tensors)
                self.assertEqual(result["gradient_tensors"], tensors)
                self.assertEqual(json.loads(json.dumps(result)), result)

    def test_sgd_keeps_one_momentum_buffer_per_parameter(self):
        for bn, params, tensors in [(True, 11_173_962, 62), (False, 11_164_362, 22)]:
            result = self.results[("sgd", bn)]
            self.assertEqual(result["optimizer_state"],
                             {"momentum_buffer": {"tensors": tensors, "elements": params}})
            self.assertEqual(result["per_weight_state"], ["momentum_buffer"])

    def test_adam_keeps_two_moments_and_a_step_counter(self):
        # exp_avg and exp_avg_sq: one number per weight each; step: one scalar per tensor.
        for bn, params, tensors in [(True, 11_173_962, 62), (False, 11_164_362, 22)]:
            result = self.results[("adam", bn)]
            self.assertEqual(result["optimizer_state"],
                             {"step": {"tensors": tensors, "elements": tensors},
                              "exp_avg": {"tensors": tensors, "elements": params},
                              "exp_avg_sq": {"tensors": tensors, "elements": params}})
            self.assertEqual(result["per_weight_state"], ["exp_avg", "exp_avg_sq"])

    def test_gradients_are_counted_from_grad(self):
        # A frozen layer has no gradient; a layer that did not take part has none yet.
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(2, 2))
        model[0].requires_grad_(False)
        model[1](model[0](torch.randn(3, 4))).sum().backward()  # model[2] is not used
        counts = count_parameters_and_gradients(model)
        self.assertEqual(counts["trainable_parameters"], (4 * 2 + 2) + (2 * 2 + 2))
        self.assertEqual(counts["gradients"], 4 * 2 + 2)
        self.assertEqual((counts["parameter_tensors"], counts["gradient_tensors"]), (4, 2))

    def test_rendering_shows_the_code_that_counted(self):
        text = render_q3(self.results[("sgd", True)])
        self.assertTrue(text.startswith("**11,173,962 trainable parameters and 11,173,962 "
                                        "gradients** in ResNet-18 with SGD:"))
        self.assertIn("**11,173,962 trainable parameters and 11,173,962 gradients**", text)
        self.assertIn(inspect.getsource(count_parameters_and_gradients).rstrip(), text)
        self.assertIn("| momentum_buffer | 62 | 11,173,962 |", text)
        self.assertIn("SGD keeps 1 number per weight (momentum_buffer).", text)

    def test_rendering_follows_the_result(self):
        text = render_q4(self.results[("adam", False)])
        self.assertTrue(text.startswith("**11,164,362 trainable parameters and 11,164,362 "
                                        "gradients** in ResNet-18 without BatchNorm with Adam:"))
        self.assertIn("11,164,362 trainable parameters", text)
        self.assertNotIn("11,173,962", text)
        self.assertIn("| exp_avg_sq | 22 | 11,164,362 |", text)
        self.assertIn("keeps 2 numbers per weight (exp_avg, exp_avg_sq)", text)
        self.assertIn("one scalar for each of the 22 parameter tensors", text)


if __name__ == "__main__":
    unittest.main()
