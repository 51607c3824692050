"""The lab's questions Q1-Q4 about the network, answered from the model; and a model summary.

    summary = model_summary(ResNet18())  # prints the torchsummary-style table; rows and totals
    result = q3_sgd_parameters(cfg)      # cfg.batch_norm, cfg.device, cfg.seed, cfg.lr
    print(render_q3(result))             # Markdown: the answer, how it was counted, the code

`model_summary` is written out here instead of imported from torchsummary, so that a student can
read how every figure is obtained. On any model where torchsummary is right it prints the same
rows and figures: for ResNet-18, 49 rows, 11,173,962 parameters, and 0.01 / 11.25 / 42.63 /
53.89 MB; without BatchNorm 29 rows, 11,164,362 parameters and 0.01 / 6.56 / 42.59 / 49.16 MB.
Where torchsummary 1.5.1 is wrong, this one is right:

- A module called twice is listed twice (both outputs are kept for the backward pass), but its
  parameters count once; so does a parameter shared by two modules.
- Every parameter counts, not only `.weight` and `.bias`: a row holds all of its module's own
  parameters, and the totals walk `model.parameters()`, so a bare `nn.Parameter` on the model
  itself is counted too (the table names it below the totals, since no layer row holds it).
- A parameter is trainable when its own `requires_grad` is set, whatever its name; torchsummary
  asks `module.weight` and applies the answer to the bias as well.
- The dummy forward pass runs under `torch.no_grad()` in eval mode, so BatchNorm neither uses
  batch statistics nor updates its running ones; afterwards every module gets back the mode it
  had. torchsummary runs it with gradients in the current mode, moving BatchNorm's statistics.
- The dummy input is made on the model's device with the model's dtype (torchsummary asks for a
  `device` argument and defaults to CUDA), and sizes use each tensor's real element size.
- A layer that returns a tuple, a list or a dict is listed with one shape per tensor.

Run `python lab.py q1` ... `q4` to print an answer and save it; `--no-bn` asks about the network
without BatchNorm.
"""

import inspect
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from resnet import ResNet18
from train import make_optimizer

MB = 1024 ** 2


# ---------------------------------------------------------------------------------------------
# The model summary
# ---------------------------------------------------------------------------------------------

def model_summary(model, input_size=(3, 32, 32), batch_size=-1, print_table=True, file=None):
    """Run one dummy batch through `model`, list its layers, count its parameters, estimate memory.

    input_size is one sample's shape, or a list of shapes for a model with several inputs;
    batch_size is what the table shows as the first dimension (-1: any, sized as one sample).
    Returns a JSON-ready dict: `rows` (one per layer call: layer, type, index, name,
    output_shape, params, trainable_params, output_bytes) and the totals. Prints the table
    unless print_table is False; `file` redirects it.
    """
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    input_sizes = [input_size] if isinstance(input_size[0], int) else list(input_size)
    generator = torch.Generator().manual_seed(0)  # its own: the caller's random stream stays put
    inputs = [torch.rand(2, *size, generator=generator).to(device, dtype)  # (2, C, H, W)
              for size in input_sizes]
    batch = 1 if batch_size == -1 else batch_size  # torchsummary sizes "any batch" as one sample

    names = {module: name for name, module in model.named_modules()}
    counted = set()  # ids of the parameters already in a row: a shared one is counted once
    rows = []

    def record(module, args, output):
        own = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        counted.update(id(p) for p in own)
        type_name = type(module).__name__
        rows.append({
            "layer": f"{type_name}-{len(rows) + 1}",
            "type": type_name,
            "index": len(rows) + 1,
            "name": names[module],
            "output_shape": output_shape(output, batch_size),
            "params": sum(p.numel() for p in own),
            "trainable_params": sum(p.numel() for p in own if p.requires_grad),
            "output_bytes": output_bytes(output, batch),
        })

    # torchsummary's choice of rows: every module but the model and its plain containers,
    # whose children get rows of their own.
    layers = [m for m in model.modules()
              if m is not model and not isinstance(m, (nn.Sequential, nn.ModuleList))]
    hooks = [layer.register_forward_hook(record) for layer in layers]
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()  # BatchNorm uses, and leaves alone, its running statistics
        with torch.no_grad():  # only shapes are wanted; no graph, no gradients
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in was_training.items():
            module.training = training  # per module: a model may mix train and eval parts

    parameters = list(model.parameters())  # each parameter once, however often it is shared
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    input_bytes = sum(math.prod(size) * batch * inputs[0].element_size() for size in input_sizes)
    forward_backward_bytes = 2 * sum(row["output_bytes"] for row in rows)  # outputs and their grads
    params_bytes = sum(p.numel() * p.element_size() for p in parameters)
    summary = {
        "rows": rows,
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "unlisted_params": {name: p.numel() for name, p in model.named_parameters()
                            if id(p) not in counted},
        "input_size_mb": input_bytes / MB,
        "forward_backward_size_mb": forward_backward_bytes / MB,
        "params_size_mb": params_bytes / MB,
        "total_size_mb": (input_bytes + forward_backward_bytes + params_bytes) / MB,
    }
    if print_table:
        print(format_summary(summary), file=file)
    return summary


def output_shape(output, batch_size):
    """A layer's output shape as the table shows it: first dimension the batch, containers kept."""
    if isinstance(output, torch.Tensor):
        return [batch_size, *output.shape[1:]] if output.dim() > 0 else []
    if isinstance(output, (tuple, list)):
        return [output_shape(item, batch_size) for item in output]
    if isinstance(output, dict):
        return {str(key): output_shape(value, batch_size) for key, value in output.items()}
    return None  # not a tensor: nothing kept for the backward pass


def output_bytes(output, batch):
    """Bytes of every tensor in a layer's output, for `batch` samples."""
    if isinstance(output, torch.Tensor):
        per_sample = math.prod(output.shape[1:]) * batch if output.dim() > 0 else 1
        return per_sample * output.element_size()
    if isinstance(output, (tuple, list)):
        return sum(output_bytes(item, batch) for item in output)
    if isinstance(output, dict):
        return sum(output_bytes(value, batch) for value in output.values())
    return 0


def format_summary(summary, with_rows=True):
    """The table torchsummary prints, from `model_summary`'s result; with_rows=False: totals."""
    lines = []
    if with_rows:
        lines += ["-" * 64,
                  "{:>20}  {:>25} {:>15}".format("Layer (type)", "Output Shape", "Param #"),
                  "=" * 64]
        lines += ["{:>20}  {:>25} {:>15}".format(row["layer"], str(row["output_shape"]),
                                                 f"{row['params']:,}")
                  for row in summary["rows"]]
    lines += ["=" * 64,
              f"Total params: {summary['total_params']:,}",
              f"Trainable params: {summary['trainable_params']:,}",
              f"Non-trainable params: {summary['non_trainable_params']:,}"]
    if summary["unlisted_params"]:
        unlisted = summary["unlisted_params"]
        names = ", ".join(unlisted)
        lines.append(f"Params in no listed layer: {sum(unlisted.values()):,} ({names})")
    lines += ["-" * 64,
              f"Input size (MB): {summary['input_size_mb']:0.2f}",
              f"Forward/backward pass size (MB): {summary['forward_backward_size_mb']:0.2f}",
              f"Params size (MB): {summary['params_size_mb']:0.2f}",
              f"Estimated Total Size (MB): {summary['total_size_mb']:0.2f}",
              "-" * 64]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The counting the questions use, on any model
# ---------------------------------------------------------------------------------------------

def conv_layers(model):
    """Every nn.Conv2d in the model, split into the main path and the shortcuts."""
    convs = [{"name": name,
              "kernel": "x".join(str(k) for k in module.kernel_size),
              "in_channels": module.in_channels,
              "out_channels": module.out_channels,
              "stride": module.stride[0],
              "path": "shortcut" if "shortcut" in name.split(".") else "main"}
             for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    kernels = {}
    for conv in convs:
        kernels[conv["kernel"]] = kernels.get(conv["kernel"], 0) + 1
    main_path = sum(conv["path"] == "main" for conv in convs)
    linear = sum(isinstance(module, nn.Linear) for module in model.modules())
    return {
        "conv_layers": len(convs),
        "by_kernel": kernels,
        "main_path_convs": main_path,
        "shortcut_convs": len(convs) - main_path,
        "linear_layers": linear,
        "weighted_layers_on_main_path": main_path + linear,  # what the "18" counts
        "convs": convs,
    }


def linear_input(model, input_size=(3, 32, 32)):
    """Measure, by a forward pass, the input of the last nn.Linear and the last conv's output."""
    device = next(model.parameters()).device
    linear_name, linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    seen = {}

    def remember_conv(module, args, output):
        seen["conv"] = (conv_names[module], list(output.shape))  # the last one to run wins

    def remember_linear_input(module, args):
        seen["linear"] = list(args[0].shape)

    conv_names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    hooks = [m.register_forward_hook(remember_conv) for m in conv_names]
    hooks.append(linear.register_forward_pre_hook(remember_linear_input))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.randn(2, *input_size, device=device))  # (2, 3, 32, 32)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    conv_name, feature_map = seen["conv"]
    return {
        "linear_layer": linear_name,
        "input_dimension": seen["linear"][-1],
        "measured_input_shape": seen["linear"],        # (N, features)
        "in_features": linear.in_features,             # what the layer was built with
        "last_conv": conv_name,
        "last_feature_map_shape": feature_map,         # (N, C, H, W)
        "flattened_feature_map": math.prod(feature_map[1:]),
    }


def count_parameters_and_gradients(model):
    """Trainable parameters, and gradient elements as they sit in `.grad` after backward()."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "parameter_tensors": len(trainable),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "gradient_tensors": sum(p.grad is not None for p in trainable),
        "gradients": sum(p.grad.numel() for p in trainable if p.grad is not None),
    }


def count_optimizer_state(optimizer):
    """What the optimizer keeps between steps, per kind: how many tensors, how many numbers."""
    state = {}
    for per_parameter in optimizer.state.values():
        for key, value in per_parameter.items():
            entry = state.setdefault(key, {"tensors": 0, "elements": 0})
            entry["tensors"] += 1
            entry["elements"] += value.numel() if torch.is_tensor(value) else 1
    return state


def train_step(model, optimizer, images, labels):
    """One training step: the canonical five lines."""
    optimizer.zero_grad()
    outputs = model(images)  # (N, 10)
    loss = F.cross_entropy(outputs, labels)
    loss.backward()
    optimizer.step()


def one_training_step(cfg, optimizer_name):
    """Build the model, take one real step with the lab's optimizer, and count."""
    torch.manual_seed(cfg.seed)
    model = ResNet18(batch_norm=cfg.batch_norm).to(cfg.device)
    optimizer = make_optimizer(optimizer_name, model.parameters(), lr=cfg.lr)
    # Random images: the counts depend on the shapes, not on the pixels.
    images = torch.randn(2, 3, 32, 32, device=cfg.device)  # (N, 3, 32, 32)
    labels = torch.randint(0, 10, (2,), device=cfg.device)  # (N,)

    model.train()
    train_step(model, optimizer, images, labels)
    counts = count_parameters_and_gradients(model)  # now: the next zero_grad drops the gradients
    state = count_optimizer_state(optimizer)
    summary = model_summary(model, print_table=False)
    return {
        "batch_norm": cfg.batch_norm,
        "optimizer": type(optimizer).__name__,
        "settings": {key: list(value) if isinstance(value, tuple) else value  # betas: JSON list
                     for key, value in optimizer.defaults.items()
                     if key in ("lr", "momentum", "weight_decay", "betas")},
        **counts,
        "optimizer_state": state,
        # A kind of state with as many numbers as there are weights is one number per weight.
        "per_weight_state": [key for key, entry in state.items()
                             if entry["elements"] == counts["trainable_parameters"]],
        "summary_totals": {key: summary[key] for key in
                           ("total_params", "trainable_params", "non_trainable_params")},
    }


# ---------------------------------------------------------------------------------------------
# The four questions
# ---------------------------------------------------------------------------------------------

def q1_conv_layers(cfg):
    """Q1: how many convolutional layers ResNet-18 has, counted from the model."""
    return {"batch_norm": cfg.batch_norm, **conv_layers(ResNet18(batch_norm=cfg.batch_norm))}


def q2_linear_input(cfg):
    """Q2: the input dimension of the last linear layer, measured by a forward pass."""
    torch.manual_seed(cfg.seed)
    model = ResNet18(batch_norm=cfg.batch_norm).to(cfg.device)
    return {"batch_norm": cfg.batch_norm, **linear_input(model)}


def q3_sgd_parameters(cfg):
    """Q3: trainable parameters and gradients with SGD, and the state SGD keeps."""
    return one_training_step(cfg, "sgd")


def q4_adam_parameters(cfg):
    """Q4: trainable parameters and gradients with Adam, and the state Adam keeps."""
    return one_training_step(cfg, "adam")


# ---------------------------------------------------------------------------------------------
# Rendering: Markdown that also reads as plain text; every number comes from the result
# ---------------------------------------------------------------------------------------------

def variant(result):
    return "ResNet-18" if result["batch_norm"] else "ResNet-18 without BatchNorm"


def render_q1(result):
    kernels = ", ".join(f"{count} {kernel}" for kernel, count in result["by_kernel"].items())
    lines = [
        f"### Q1. Convolutional layers in {variant(result)}",
        "",
        f"**{result['conv_layers']} convolutional layers** ({kernels}), counted as the "
        "`nn.Conv2d` modules in `model.named_modules()`.",
        "",
        "| # | layer | kernel | channels | stride | path |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {c['name']} | {c['kernel']} | {c['in_channels']} -> {c['out_channels']} "
              f"| {c['stride']} | {c['path']} |" for i, c in enumerate(result["convs"], 1)]
    shortcut_kernels = sorted({c["kernel"] for c in result["convs"] if c["path"] == "shortcut"})
    depth = result["weighted_layers_on_main_path"]
    lines += [
        "",
        f"Why the name says {depth}: it counts the layers with weights on the main path, "
        f"{result['main_path_convs']} convolutions plus {result['linear_layers']} linear layer = "
        f"{depth}. The other {result['shortcut_convs']} convolutions are the "
        f"{'/'.join(shortcut_kernels)} projections in the shortcuts of the blocks that change "
        "shape; they sit beside the main path, not on it, so the name leaves them out.",
    ]
    return "\n".join(lines)


def render_q2(result):
    n, channels, height, width = result["last_feature_map_shape"]
    shapes = [(f"{result['last_conv']} output", result["last_feature_map_shape"]),
              (f"{result['linear_layer']} input", result["measured_input_shape"])]
    label_width = max(len(label) for label, _ in shapes)
    lines = [
        f"### Q2. Input dimension of the last linear layer in {variant(result)}",
        "",
        f"**{result['input_dimension']}**, measured by a forward pass of {n} images: the input "
        f"of `{result['linear_layer']}` has shape {tuple(result['measured_input_shape'])} "
        f"(built as `nn.Linear({result['in_features']}, ...)`).",
        "",
        "```",
        *[f"{label:<{label_width}}  {tuple(shape)}" for label, shape in shapes],
        "```",
        "",
        f"Why not {channels}x{height}x{width} = {result['flattened_feature_map']:,}: the last "
        f"stage ends with {channels} feature maps of {height}x{width}. Global average pooling "
        f"(`F.adaptive_avg_pool2d(out, 1)`) averages each {height}x{width} map to one number, "
        f"giving (N, {channels}, 1, 1), and `flatten(1)` makes that (N, {channels}). Flattening "
        f"the maps without pooling would have given {result['flattened_feature_map']:,} inputs.",
    ]
    return "\n".join(lines)


def render_optimizer_counts(result, question):
    """Q3 and Q4 read the same: the counts, the code that made them, the optimizer's state."""
    name, state = result["optimizer"], result["optimizer_state"]
    trainable = result["trainable_parameters"]
    per_weight = result["per_weight_state"]  # one number per weight each
    counters = [key for key in state if key not in per_weight]
    settings = ", ".join(f"{key}={value}" for key, value in result["settings"].items())
    code = "\n\n".join(inspect.getsource(function).rstrip() for function in
                        (train_step, count_parameters_and_gradients, count_optimizer_state))
    lines = [
        f"### {question}. Trainable parameters and gradients with {name} ({variant(result)})",
        "",
        f"**{trainable:,} trainable parameters and {result['gradients']:,} gradients**: one "
        f"gradient per trainable parameter, held in {result['gradient_tensors']} `.grad` tensors "
        f"for {result['parameter_tensors']} parameter tensors. `model_summary` agrees: "
        f"{result['summary_totals']['trainable_params']:,} trainable params.",
        "",
        f"Counted after one real training step with `{name}({settings})` on a batch of random "
        "images (the counts depend on shapes, not pixels). This is the code that ran:",
        "",
        "```python",
        code,
        "```",
        "",
        f"What {name} keeps between steps, beside the gradients:",
        "",
        "| state | tensors | numbers |",
        "|---|---|---|",
        *[f"| {key} | {entry['tensors']:,} | {entry['elements']:,} |"
          for key, entry in state.items()],
        "",
        "Gradients are rewritten by every backward pass and dropped by `zero_grad`; the "
        f"optimizer state lives as long as the optimizer. {name} keeps {len(per_weight)} "
        f"number{'' if len(per_weight) == 1 else 's'} per weight "
        f"({', '.join(per_weight) or 'none'}).",
    ]
    for key in counters:
        lines[-1] += (f" `{key}` is bookkeeping, not per-weight state: one scalar for each of "
                      f"the {state[key]['tensors']} parameter tensors, {state[key]['elements']} "
                      "numbers in all.")
    return "\n".join(lines)


def render_q3(result):
    return render_optimizer_counts(result, "Q3")


def render_q4(result):
    return render_optimizer_counts(result, "Q4")
