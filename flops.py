"""How much arithmetic: the mult-adds of each layer (the model summary's counter), the FLOPs of
a training step counted by torch, and their rate against a dense matrix product that this
device runs in the same run.

    python lab.py summary --wide   # each layer's kernel shape, mult-adds and share of parameters
    python lab.py bench            # every row's images/s, FLOP/s and share of the matmul rate
    python lab.py c2               # the same figures for C2's training windows

The FLOPs are torch's own count (torch.utils.flop_counter.FlopCounterMode) over one real
training step, forward and backward: 2 per multiply-add of the convolutions and the linear
layer. BatchNorm, ReLU, pooling, the additions, the loss and the optimizer's update are not
counted; they are elementwise and small beside the convolutions, and FlopCounterMode counts
none of them. The denominator is not a data-sheet peak: it is the rate at which this device
ran dense n x n matrix products in the step's dtype, timed here, in the same run. The
render_* functions below print these figures, each from a result alone.
"""

import math
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import parallel
import render
from timing import Timer
from train import make_model, make_optimizer, train_step

# The matrix products timed for the denominator: `rounds` rounds of `products` n x n products,
# the fastest round's rate. On a CPU 2048^3 is 17 GFLOP, a tenth of a second on two cores; a
# GPU needs larger products to reach its rate (8192^3 is 1.1 TFLOP, a millisecond or two).
MATMUL_SIZES = {"cpu": {"n": 2048, "products": 3, "rounds": 5},
                "cuda": {"n": 8192, "products": 10, "rounds": 5}}
# The dtypes whose matmul rate the bench measures: TF32 is float32 on the tensor cores.
DEVICE_DTYPES = {"cpu": ("float32", "bfloat16"),
                 "cuda": ("float32", "tf32", "bfloat16", "float16")}
AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
# The longest one timed product may take. A dtype that this device multiplies slowly is timed
# on smaller products: on a CPU without bfloat16 instructions (AVX2 only), bfloat16 ran 2048^3
# products at 0.27 GFLOP/s, a minute each, 17 minutes for the untimed one and five rounds.
PRODUCT_SECONDS = 1.0


def layer_arithmetic(module, output, batch):
    """A layer call's kernel size and multiply-adds for `batch` samples, for the model summary:
    per output element, one per input channel of its group per kernel position in a
    convolution, one per input feature in a linear layer. Nothing else counts: not biases,
    BatchNorm, activations, pooling or additions (elementwise; torch's FlopCounterMode counts
    none of them), nor transposed convolutions."""
    kernel, per_output = None, module.in_features if isinstance(module, nn.Linear) else 0
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        kernel = list(module.kernel_size)
        per_output = module.in_channels // module.groups * math.prod(kernel)
    return {"kernel_size": kernel,
            "mult_adds": per_output * math.prod(output.shape[1:]) * batch if per_output else 0}


def matmul_flops(n, products=1):
    """FLOPs of `products` products of two n x n matrices: n^2 outputs, n multiply-adds each."""
    return 2 * n ** 3 * products


def achieved(flops_per_image, images_per_second, matmul_rate):
    """A step's FLOP/s at `images_per_second`, and its share of `matmul_rate` (1.0: all of it)."""
    flops_per_s = flops_per_image * images_per_second
    return {"flops_per_s": flops_per_s,
            "matmul_share": flops_per_s / matmul_rate if matmul_rate else None}


def step_dtype(device, amp):
    """The dtype a training step's convolutions run in, whose matmul rate it is held to.

    With autocast, its dtype. Without, float32, except on a CUDA GPU of compute capability 8
    (Ampere) or newer, where cuDNN runs float32 convolutions in TF32 unless told otherwise.
    """
    if amp is not None:
        return AMP_DTYPES[amp]
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        conv = getattr(torch.backends.cudnn, "conv", None)
        tf32 = (conv.fp32_precision == "tf32" if conv is not None
                else torch.backends.cudnn.allow_tf32)
        return "tf32" if tf32 else "float32"
    return "float32"


@contextmanager
def tf32_matmuls(enabled):
    """On CUDA, float32 matrix products in TF32 (enabled) or in full float32 inside the block.

    torch 2.9 and later set this with `fp32_precision`; torch refuses to mix it with the older
    `allow_tf32`, which is used only where there is no `fp32_precision`.
    """
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    saved = getattr(matmul, name)
    setattr(matmul, name, ("tf32" if enabled else "ieee") if name == "fp32_precision" else enabled)
    try:
        yield
    finally:
        setattr(matmul, name, saved)


def matmul_operands(device, dtype, n):
    """Two seeded n x n matrices in `dtype` on `device`, and the context their products run in
    (TF32 switched on or off on a GPU)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    torch_dtype = torch.float32 if dtype == "tf32" else getattr(torch, dtype)
    a, b = (torch.randn(n, n, generator=generator).to(device, torch_dtype) for _ in range(2))
    precision = tf32_matmuls(dtype == "tf32") if device.type == "cuda" else nullcontext()
    return a, b, precision


def matmul_side(device, dtype, largest):
    """The side of the products to time in `dtype`: `largest`, unless one product that size
    would take over PRODUCT_SECONDS here; then the largest power of two below it that would
    not. From 256 up, each side is multiplied twice and the second product timed; doubling
    the side costs eight times the arithmetic, so that time times eight says whether the next
    side fits."""
    side = min(256, largest)
    while side < largest:
        a, b, precision = matmul_operands(device, dtype, side)
        with precision:
            torch.mm(a, b)  # untimed: library start-up, kernel choice
            with Timer(device) as timer:
                torch.mm(a, b)
        if 8 * timer.elapsed > PRODUCT_SECONDS:
            break
        side = min(2 * side, largest)
    return side


def matmul_rate(device, dtype, n, products, rounds):
    """FLOP/s of dense n x n matrix products in `dtype` ("float32", "tf32", "bfloat16", ...) on
    `device`: the fastest of `rounds` synchronised rounds of `products` products, after one
    untimed product (library start-up, kernel choice). The fastest, not the median: the
    denominator is what the device reaches, and on a shared machine a round that another job
    slowed says nothing about that.
    """
    a, b, precision = matmul_operands(device, dtype, n)
    rates = []
    with precision:
        torch.mm(a, b)
        for _ in range(rounds):
            with Timer(device) as timer:  # synchronised: every product queued has finished
                for _ in range(products):
                    torch.mm(a, b)
            rates.append(matmul_flops(n, products) / timer.elapsed)
    return max(rates)


def matmul_sizes(device):
    """The products timed on this device (MATMUL_SIZES): a GPU's, or a CPU's elsewhere."""
    return MATMUL_SIZES["cuda" if torch.device(device).type == "cuda" else "cpu"]


def matmul_rates(device, dtypes):
    """Two dicts over `dtypes`: the FLOP/s of each on `device` (None for a dtype it cannot
    multiply), and the side of the products that rate was timed on (matmul_side)."""
    sizes = matmul_sizes(device)
    rates, sides = {}, {}
    for dtype in dtypes:
        try:
            sides[dtype] = matmul_side(device, dtype, sizes["n"])
            rates[dtype] = matmul_rate(device, dtype, **{**sizes, "n": sides[dtype]})
        except (RuntimeError, TypeError):  # a dtype this device or build has no matmul for
            rates[dtype] = None
    return rates, sides


def step_flops(cfg, device, batch_size):
    """FLOPs of one real training step of the run's ResNet-18 at `batch_size`, counted by
    torch's FlopCounterMode, per image: forward, backward and their sum.

    A fresh model takes the step, in float32 and eager: channels-last, autocast and
    torch.compile change how fast the same arithmetic runs, not how much of it there is. The
    forward pass ends where the model's forward hook fires; the rest is the backward pass
    (the optimizer's update counts nothing). Every counted operation scales with the batch,
    so the count per image holds for every batch size.
    """
    plain = replace(cfg, channels_last=False, amp=None, compile=False, compile_mode=None)
    model = make_model(plain, device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn(batch_size, 3, 32, 32, generator=generator).to(device)   # (B, 3, 32, 32)
    labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device)  # (B,)
    with FlopCounterMode(display=False) as counter:
        forward = []
        hook = model.register_forward_hook(
            lambda module, args, output: forward.append(counter.get_total_flops()))
        try:
            train_step(model, optimizer, nn.CrossEntropyLoss(), images, labels)
        finally:
            hook.remove()
    total = counter.get_total_flops()
    return {"batch_size": batch_size, "forward_per_image": forward[0] / batch_size,
            "backward_per_image": (total - forward[0]) / batch_size,
            "per_image": total / batch_size}


def c2_arithmetic(cfg, epochs):
    """C2's figures: the step's FLOPs, the FLOP/s of its training windows over every epoch
    (images trained over the time in the `train` windows), and that rate's share of this
    device's matmul rate in the step's dtype, measured now."""
    if parallel.current_world() is not None:
        return {"skipped": "under torchrun the ranks share the work and the devices; run C2 "
                           "in one process for the step's share of the device's matmul rate"}
    device = torch.device(cfg.device)
    counted = step_flops(cfg, device, cfg.batch_size)
    dtype = step_dtype(device, cfg.amp)
    rates, sides = matmul_rates(device, [dtype])
    train_time = sum(epoch["train_time"] for epoch in epochs)
    images_per_second = sum(epoch["images"] for epoch in epochs) / train_time if train_time else 0
    return {"step_flops": counted, "dtype": dtype, "images_per_second": images_per_second,
            "matmul": matmul_sizes(device), "matmul_flops_per_s": rates, "matmul_sides": sides,
            **achieved(counted["per_image"], images_per_second, rates[dtype])}


def bench_arithmetic(cfg, device, rows):
    """The bench's figures: the step's FLOPs and this device's matmul rate in each dtype; and
    to each row of the step table, its dtype, FLOP/s and share of that dtype's matmul rate."""
    device = torch.device(device)
    counted = step_flops(cfg, device, cfg.batch_size)
    for row in rows:
        row["dtype"] = step_dtype(device, row["options"].get("amp"))
    dtypes = DEVICE_DTYPES.get(device.type, ("float32",))
    rates, sides = matmul_rates(device, dict.fromkeys([*dtypes, *(row["dtype"] for row in rows)]))
    for row in rows:
        measured = row["images_per_second"] is not None
        row.update(achieved(counted["per_image"], row["images_per_second"], rates[row["dtype"]])
                   if measured else {"flops_per_s": None, "matmul_share": None})
    return {"step_flops": counted, "matmul": matmul_sizes(device), "matmul_flops_per_s": rates,
            "matmul_sides": sides}


# ----------------------------------------------------------------------------------------
# Printing, each from a result alone: the summary's --wide, C2's and the bench's arithmetic


def gflops(value):
    return "-" if value is None else f"{value / 1e9:,.1f}"


def render_summary(result):
    """The model summary as torchsummary prints it; with --wide, torchinfo's columns too."""
    wide = result.get("wide", False)
    text = "```\n" + render.format_summary(result, wide=wide) + "\n```"
    if wide:
        text += ("\n\nMult-Adds: per image, one multiply and one add each time a weight is used, "
                 "in the convolutions and the linear layer only (BatchNorm, ReLU, pooling and the "
                 "shortcut additions are not counted). A FLOP counter such as torch's "
                 f"FlopCounterMode counts 2 per mult-add: {2 * result['total_mult_adds']:,} "
                 "FLOPs for one image's forward pass. Param %: each row's share of the total "
                 "parameters.")
    return text


def render_c2(result):
    """C2's table and what it says (render.render_c2), then how much of the device its
    training windows used."""
    text = render.render_c2(result)
    if result.get("arithmetic"):
        text += "\n\n" + render_c2_arithmetic(result["arithmetic"])
    return text


def render_c2_arithmetic(arithmetic):
    """How much of the device C2's training windows used: FLOP/s, share of the matmul rate."""
    if "skipped" in arithmetic:
        return f"FLOP/s: not measured: {arithmetic['skipped']}."
    share, dtype = arithmetic["matmul_share"], arithmetic["dtype"]
    return (f"Arithmetic: the training windows trained {arithmetic['images_per_second']:,.1f} "
            f"images/s over all epochs, {gflops(arithmetic['flops_per_s'])} GFLOP/s, "
            f"{render.percent(None if share is None else 100 * share)} of this device's {dtype} "
            "matmul rate. " + describe_arithmetic(arithmetic) + " The training window also "
            "holds the copy of each batch to the device and, on a GPU, the wait for the device "
            "to finish the step."
            + explain_share(share, dtype))


def describe_arithmetic(figures):
    """What FLOP/s and the share are: torch's count of the step, and the matmul measured here."""
    step, matmul = figures["step_flops"], figures["matmul"]
    sides = figures.get("matmul_sides", {})  # none in a result from before sides were kept
    rates = ", ".join(describe_rate(dtype, rate, sides.get(dtype, matmul["n"]), matmul["n"])
                      for dtype, rate in figures["matmul_flops_per_s"].items())
    return (f"FLOP/s is images/s times the step's {step['per_image'] / 1e9:.2f} GFLOP per image "
            f"(forward {step['forward_per_image'] / 1e9:.2f}, backward "
            f"{step['backward_per_image'] / 1e9:.2f}), counted by torch's FlopCounterMode over "
            "one real training step: the convolutions and the linear layer (BatchNorm, ReLU, "
            "the loss and the optimizer's update are not counted). The share is that rate over "
            f"the rate at which this device multiplied dense {matmul['n']}x{matmul['n']} "
            f"matrices in the step's dtype in this same run ({rates}): a rate it really "
            "reached, not a data-sheet peak.")


def describe_rate(dtype, rate, side, largest):
    """One dtype's matmul rate, and the side it was timed on where that is not the usual."""
    text = f"{dtype} {gflops(rate)} GFLOP/s"
    if rate is not None and side < largest:
        text += (f" on {side}x{side} matrices, as one {largest}x{largest} product would take "
                 f"over {PRODUCT_SECONDS:g} s here")
    return text


def explain_share(share, dtype):
    """What a step's share of the matmul rate says about where its time goes, from its size."""
    if share is None:
        return f" There is no {dtype} matmul rate to compare with: it could not be measured."
    if share > 1:
        return (" A share above 100% means the step's convolutions ran faster than this "
                "matrix product (their library is tuned apart from the matmul's), or did fewer "
                "multiplications than counted (fast algorithms such as Winograd's), or the "
                "matrix products were timed while the machine was busier than during the step.")
    if share >= 0.5:
        return (f" At {100 * share:.0f}% of a dense matrix product's rate the step is bound "
                "by arithmetic: what is left to gain is mostly a lower precision (a faster "
                "matmul rate) or less work, not the data pipeline or the overhead around the "
                "kernels.")
    return (f" At {100 * share:.0f}% most of the step's time goes to work other than dense "
            "arithmetic: memory traffic (BatchNorm, ReLU, the optimizer's update), launching "
            "kernels from Python, waiting on the device; that is the room that channels-last, "
            "torch.compile and a larger batch can take.")


def explain_bench_arithmetic(result):
    """The paragraph under the bench's step table: what its GFLOP/s and "of matmul" columns
    are, and what the highest share says."""
    shares = [row for row in result["step"]["rows"] if row.get("matmul_share") is not None]
    text = "GFLOP/s and of matmul: " + describe_arithmetic(result)
    if shares:
        top = max(shares, key=lambda row: row["matmul_share"])
        text += (f" The highest share is {top['name']}'s, {100 * top['matmul_share']:.0f}% of "
                 f"the {top['dtype']} rate." + explain_share(top["matmul_share"], top["dtype"]))
    return text
