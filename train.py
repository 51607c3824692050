"""Training and evaluation, written once: the step, the epoch and the whole run.

    run = fit(cfg, train_set, test_set, on_epoch=save)   # save(run) after every epoch

`train_step` holds the canonical lines (zero_grad, forward, loss, backward, step); the lab's
loop, the questions, the bench and C8 all train through it. The speed options in `cfg`
(channels-last, autocast, torch.compile, the device loader) are applied here and nowhere else.
"""

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn as nn
from torch.profiler import record_function

import parallel
from data import DeviceLoader, make_loader
from resnet import ResNet18
from timing import EpochTimer, synchronize

OPTIMIZERS = ("sgd", "nesterov", "adagrad", "adadelta", "adam")
LOADERS = ("torch", "device")


def make_optimizer(name, parameters, lr, weight_decay=5e-4, momentum=0.9):
    """The lab's optimizers: one lr and weight decay for all, momentum where there is one."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=True)
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adadelta":
        return torch.optim.Adadelta(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def make_model(cfg, device):
    """ResNet-18 on `device`, its weights drawn from cfg.seed, with cfg's speed options."""
    torch.manual_seed(cfg.seed)
    model = ResNet18(batch_norm=cfg.batch_norm).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_training(cfg, device, world=None):
    """(model, optimizer, scaler) as cfg says: in DistributedDataParallel when `world` is a
    torchrun world, compiled if asked, and the gradient scaler that float16 autocast needs."""
    model = make_model(cfg, device)
    if world is not None:
        parallel.same_initial_weights(model, world)  # the evidence, before DDP copies rank 0's
        model = parallel.wrap(model, world, cfg.sync_bn)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    if cfg.compile:
        model = compile_model(model, cfg.compile_mode)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    return model, optimizer, scaler


def compile_model(model, mode=None):
    """torch.compile with static shapes: a last batch of another size gets a graph of its own,
    instead of switching every later batch to a slower dynamic-shape graph."""
    return torch.compile(model, mode=mode, dynamic=False)


def make_loaders(cfg, train_set, test_set, device, sampler=None, rank=0):
    """(train_loader, test_loader) as cfg.loader says; the test loader is None unless cfg.evaluate.

    "torch" is the lab's DataLoader with cfg.num_workers workers (pinned memory on CUDA), the
    training set split by `sampler` when one is given; "device" is a DeviceLoader: the
    training set augmented on the device, and the test set un-augmented and in order, so its
    images equal the test transform's. The DataLoader's generator, which seeds its workers'
    crops and flips, starts from cfg.seed + rank, so that the ranks of a data-parallel run
    augment differently; the sampler keeps the shared seed, which splits one order.
    """
    if cfg.loader not in LOADERS:
        raise ValueError(f"unknown loader {cfg.loader!r}; choose one of: {', '.join(LOADERS)}")
    if cfg.loader == "device":
        def loader(dataset, batch_size, train):
            return DeviceLoader(dataset, batch_size, device, shuffle=train, augment=train,
                                seed=cfg.seed, channels_last=cfg.channels_last)
    else:
        def loader(dataset, batch_size, train):
            return make_loader(dataset, batch_size, shuffle=train, num_workers=cfg.num_workers,
                               seed=cfg.seed + rank, pin_memory=device.type == "cuda",
                               sampler=sampler if train else None)
    train_loader = loader(train_set, cfg.batch_size, train=True)
    test_loader = loader(test_set, cfg.test_batch_size, train=False) if cfg.evaluate else None
    return train_loader, test_loader


def autocast(device, amp):
    """bfloat16 or float16 autocast when asked (`amp`), otherwise a context that does nothing."""
    if amp is None:
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(model, optimizer, criterion, images, labels, amp=None, scaler=None):
    """One training step, the canonical lines in their order; returns (outputs, loss).

    `amp` ("bf16" or "fp16") runs the forward pass and the loss under autocast; float16 needs
    `scaler`, a GradScaler, so that small gradients do not underflow.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, amp):
        outputs = model(images)                      # (N, 10)
        loss = criterion(outputs, labels)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return outputs, loss


def train_one_epoch(model, loader, optimizer, device, *, amp=None, channels_last=False,
                    scaler=None, progress=None, profiler=None, timer=None):
    """Train one epoch; return the average loss, top-1 accuracy and C2's three times.

    The three windows of timing.EpochTimer are all here: `timer.data()` around each wait for a
    batch, `timer.train()` around each step, `timer.epoch()` around the whole. The first data
    window includes `iter(loader)`, which starts the worker processes; the last is the `next()`
    that finds the epoch over and shuts them down. The loss and the number of correct
    predictions are summed on the device, inside the training window, so per-batch figures
    cost no extra synchronisation. The windows are also `data_loading` and `training_step`
    ranges for the profiler; `profiler.step()` is called after each step.
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    timer = timer or EpochTimer(device)  # timing.NullTimer: the same loop without timers
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    with timer.epoch():
        with record_function("data_loading"), timer.data():
            batches = iter(loader)
            batch = next(batches, None)
        while batch is not None:
            with record_function("training_step"), timer.train():
                images, labels = batch
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)
                outputs, loss = train_step(model, optimizer, criterion, images, labels,
                                           amp=amp, scaler=scaler)
                loss_sum += loss.detach().float() * len(labels)
                correct += (outputs.argmax(dim=1) == labels).sum()
            seen += len(labels)
            if progress is not None:
                progress.batch(seen, loss_sum, correct)
            if profiler is not None:
                profiler.step()
            with record_function("data_loading"), timer.data():
                batch = next(batches, None)
    return {
        "train_loss": loss_sum.item() / max(seen, 1),
        "train_accuracy": 100.0 * correct.item() / max(seen, 1),
        "images": seen,
        **timer.as_dict(),
    }


@torch.no_grad()
def evaluate(model, loader, device, amp=None, channels_last=False):
    """Top-1 accuracy (%) on `loader`, in eval mode (BatchNorm uses its running statistics)."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs = model(images)
        correct += (outputs.argmax(dim=1) == labels).sum()
        seen += len(labels)
    return 100.0 * correct.item() / max(seen, 1)


def fit(cfg, train_set, test_set, on_epoch=None, label="", profiler=None, on_weights=None):
    """Train a fresh ResNet-18 as `cfg` says; return the run, and on_epoch(run) after each epoch.

    The run is {"model": model_facts(...), "warmed_up": whether warm_up ran, "epochs": [one
    dict per epoch], "summary": ...}.
    It stops early, marking the epoch `diverged`, when the average loss is NaN or infinite.
    `profiler` (timing.py's `Profile`) is stepped after every training step. Under torchrun
    (parallel.py) each rank trains on its share of every epoch, and the epoch's figures are
    summed over the ranks; only rank 0 shows progress. `on_weights(model)`, on rank 0, gets
    the plain ResNet-18 (unwrapped from DDP and torch.compile) after every epoch that did not
    diverge, before on_epoch.
    """
    world = parallel.current_world()
    device = torch.device(world.device if world else cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the lab's base code: autotune convolutions
    warmed_up = warm_up(cfg, device, batch_size=min(cfg.batch_size, len(train_set)))
    model, optimizer, scaler = make_training(cfg, device, world)
    run = {"model": model_facts(model), "warmed_up": warmed_up, "epochs": [],
           "summary": summarize([])}
    sampler = parallel.sampler(train_set, world, cfg.seed) if world else None
    if world is not None:
        # The weights came from cfg.seed on every rank; from here each rank's random numbers
        # are its own, so that with 0 workers (augmenting in this process) crops and flips
        # differ across ranks too.
        torch.manual_seed(cfg.seed + world.rank)
    train_loader, test_loader = make_loaders(cfg, train_set, test_set, device, sampler,
                                             rank=world.rank if world else 0)
    shown = world is None or world.is_main
    for epoch in range(1, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new order each epoch, the same on every rank
        progress = Progress(f"{label}epoch {epoch}/{cfg.epochs}",
                            len(sampler) if sampler else len(train_loader.dataset), shown=shown)
        result = {"epoch": epoch}
        result.update(train_one_epoch(model, train_loader, optimizer, device, amp=cfg.amp,
                                      channels_last=cfg.channels_last, scaler=scaler,
                                      progress=progress, profiler=profiler))
        if world is not None:
            result.update(parallel.reduce_epoch(result, world))
        result["diverged"] = not math.isfinite(result["train_loss"])
        result["test_accuracy"] = None
        if cfg.evaluate and not result["diverged"]:
            result["test_accuracy"] = evaluate(model, test_loader, device, cfg.amp,
                                               cfg.channels_last)
        run["epochs"].append(result)
        run["summary"] = summarize(run["epochs"])
        if on_weights is not None and shown and not result["diverged"]:
            on_weights(plain_model(model))
        if on_epoch is not None:
            on_epoch(run)  # saved before anything is printed: a broken stderr loses nothing
        progress.done(result)
        if result["diverged"]:
            break
    return run


def plain_model(model):
    """The ResNet-18 inside torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's
    return getattr(model, "module", model)       # DDP's


def warm_up(cfg, device, batch_size, steps=3):
    """A few untimed steps of a throwaway model, before a timed run on a GPU; True if it ran.

    The first steps in a process on a GPU create the cuDNN and cuBLAS handles, load kernels
    lazily and grow the memory allocator. Without this, the first run timed (C4's 1 worker,
    C6's first optimizer, C8's eager) is charged for them; later runs pay a few fast steps.
    The model is not compiled, so that C8 still times its compilation in full. On the CPU the
    one-off cost is small against a step of seconds, so it is skipped there.
    """
    if device.type == "cpu":
        return False
    model, optimizer, scaler = make_training(replace(cfg, compile=False), device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    images = torch.randn(batch_size, 3, 32, 32, device=device)  # (B, 3, 32, 32)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    for _ in range(steps):
        train_step(model, optimizer, nn.CrossEntropyLoss(), images, labels, amp=cfg.amp,
                   scaler=scaler)
    synchronize(device)
    return True


def model_facts(model):
    """What a run's model is before its first step: size, BatchNorm layers, weights' hash."""
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batchnorm_layers": sum(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                for m in model.modules()),
        "initial_weights_sha256": parallel.weights_digest(model),
    }


def summarize(epochs):
    """Averages over the epochs of a run (diverged epochs included in the times)."""
    def mean(key):
        values = [e[key] for e in epochs if e[key] is not None]
        return sum(values) / len(values) if values else None

    last = epochs[-1] if epochs else {}
    return {
        "epochs": len(epochs),
        "train_loss": mean("train_loss"),
        "train_accuracy": mean("train_accuracy"),
        "final_train_loss": last.get("train_loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "final_test_accuracy": last.get("test_accuracy"),
        "data_time": mean("data_time"),
        "train_time": mean("train_time"),
        "other_time": mean("other_time"),
        "epoch_time": mean("epoch_time"),
        "first_batch_time": mean("first_batch_time"),
        "diverged_at": next((e["epoch"] for e in epochs if e["diverged"]), None),
    }


class Progress:
    """Progress of an epoch on stderr: on a terminal a line updated in place after every batch;
    elsewhere (a log file, a batch job) the same line printed plainly every tenth of the epoch.
    Printing never stops the training: a closed or full stream is ignored."""

    def __init__(self, label, total, stream=None, shown=True):
        self.label = label
        self.total = total
        self.stream = (stream or sys.stderr) if shown else None
        self.live = _isatty(self.stream)
        self.start = time.perf_counter()
        self.next_tenth = 1

    def batch(self, seen, loss_sum, correct):
        if not self.live:
            if seen * 10 < self.next_tenth * self.total:
                return
            self.next_tenth = seen * 10 // self.total + 1
        line = (f"{self.label} [{seen:>6}/{self.total}] "
                f"elapsed {time.perf_counter() - self.start:7.1f}s "
                f"loss {loss_sum.item() / seen:.4f} acc {100.0 * correct.item() / seen:5.1f}%")
        self._write(f"\r{line}" if self.live else line + "\n")

    def done(self, result):
        test = result["test_accuracy"]
        line = (f"{self.label}: loss {result['train_loss']:.4f} "
                f"acc {result['train_accuracy']:.1f}%"
                + ("" if test is None else f" test {test:.1f}%")
                + f" | data {result['data_time']:.2f}s train {result['train_time']:.2f}s "
                f"epoch {result['epoch_time']:.2f}s" + (" DIVERGED" if result["diverged"] else ""))
        self._write(("\r" + line + " " * 10 + "\n") if self.live else line + "\n")

    def _write(self, text):
        if self.stream is None:  # a rank other than 0
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, full, gone, or None (2>&-)
            pass


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no terminal, or a closed stream
        return False
