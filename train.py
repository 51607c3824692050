"""Training and evaluation, written once and shared by every exercise.

    history = fit(cfg, train_set, test_set, on_epoch=save)   # one dict per finished epoch

`train_one_epoch` is the lab's loop: the five canonical lines (zero_grad, forward, loss,
backward, step) inside C2's timers. `fit` builds the model and optimizer from `cfg` (seeded,
so every run with the same seed starts from the same weights and sees the same data order),
trains for `cfg.epochs` and calls `on_epoch(history)` after each epoch, so a caller can save
finished work before the next epoch starts.

The speed options in `cfg` (channels-last, autocast, torch.compile, the device loader) are
applied here and nowhere else. The waits for data and the training steps are marked as
`data_loading` and `training_step` ranges for torch.profiler (speed.py's `Profile`); with no
profiler running a range costs a few microseconds.
"""

import math
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.profiler import record_function

from data import DeviceLoader, make_loader
from resnet import ResNet18
from timing import EpochTimer

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


def make_training(cfg, device):
    """(model, optimizer, scaler) as cfg says: the model compiled if asked, and the gradient
    scaler that float16 autocast needs (None otherwise)."""
    model = make_model(cfg, device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    if cfg.compile:
        model = torch.compile(model, mode=cfg.compile_mode)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    return model, optimizer, scaler


def make_loaders(cfg, train_set, test_set, device):
    """(train_loader, test_loader) as cfg.loader says; the test loader is None unless cfg.evaluate.

    "torch" is the lab's DataLoader with cfg.num_workers workers (pinned memory on CUDA);
    "device" is a DeviceLoader: the training set augmented on the device, and the test set
    un-augmented and in order, so its images equal the test transform's.
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
                               seed=cfg.seed, pin_memory=device.type == "cuda")
    train_loader = loader(train_set, cfg.batch_size, train=True)
    test_loader = loader(test_set, cfg.test_batch_size, train=False) if cfg.evaluate else None
    return train_loader, test_loader


def autocast(device, amp):
    """bfloat16 or float16 autocast when asked (`amp`), otherwise a context that does nothing."""
    if amp is None:
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def timed_batches(loader, timer):
    """Yield the loader's batches, timing each wait for one in `timer.data()`.

    The first window includes `iter(loader)`, which starts the worker processes; the last
    one is the `next()` that finds the epoch over and shuts them down. Each window is also a
    `data_loading` range for the profiler.
    """
    with record_function("data_loading"), timer.data():
        batches = iter(loader)
        batch = next(batches, None)
    while batch is not None:
        yield batch
        with record_function("data_loading"), timer.data():
            batch = next(batches, None)


def train_one_epoch(model, loader, optimizer, device, amp=None, channels_last=False,
                    scaler=None, progress=None, profiler=None, timer=None):
    """Train one epoch; return the average loss, top-1 accuracy and C2's three times.

    The loss and the number of correct predictions are summed on the device, inside the
    training window, so per-batch figures cost no extra synchronisation. Each training window
    is a `training_step` range for the profiler; `profiler.step()` is called after each step.
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    timer = timer or EpochTimer(device)  # timing.NullTimer: the same loop without timers
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    with timer.epoch():
        for images, labels in timed_batches(loader, timer):
            with record_function("training_step"), timer.train():
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, amp):
                    outputs = model(images)                  # (N, 10)
                    loss = criterion(outputs, labels)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:  # float16: scale the loss so small gradients do not underflow
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                loss_sum += loss.detach().float() * len(labels)
                correct += (outputs.argmax(dim=1) == labels).sum()
            seen += len(labels)
            if progress is not None:
                progress.batch(seen, loss_sum, correct, timer)
            if profiler is not None:
                profiler.step()
    train_loss = loss_sum.item() / max(seen, 1)
    return {
        "train_loss": train_loss,
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


def fit(cfg, train_set, test_set, on_epoch=None, label="", profiler=None, on_model=None):
    """Train a fresh ResNet-18 as `cfg` says; return the per-epoch history.

    Stops early, marking the epoch `diverged`, when the average loss is NaN or infinite.
    `profiler` (speed.py's `Profile`) is stepped after every training step; `on_model(model)`
    sees the model before its first step (to fingerprint its initial weights, say).
    """
    device = torch.device(cfg.device)
    step_model, optimizer, scaler = make_training(cfg, device)
    if on_model is not None:
        on_model(step_model)
    train_loader, test_loader = make_loaders(cfg, train_set, test_set, device)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        progress = Progress(f"{label}epoch {epoch}/{cfg.epochs}", len(train_loader.dataset))
        result = {"epoch": epoch}
        result.update(train_one_epoch(step_model, train_loader, optimizer, device, cfg.amp,
                                      cfg.channels_last, scaler, progress, profiler))
        result["diverged"] = not math.isfinite(result["train_loss"])
        result["test_accuracy"] = None
        if cfg.evaluate and not result["diverged"]:
            result["test_accuracy"] = evaluate(step_model, test_loader, device, cfg.amp,
                                               cfg.channels_last)
        progress.done(result)
        history.append(result)
        if on_epoch is not None:
            on_epoch(history)
        if result["diverged"]:
            break
    return history


class Progress:
    """A live line per batch on a terminal; one plain line per epoch anywhere else (logs, CI)."""

    def __init__(self, label, total, stream=None):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.live = _isatty(self.stream)
        self.start = time.perf_counter()
        self.last = self.start

    def batch(self, seen, loss_sum, correct, timer):
        if not self.live:
            return
        now = time.perf_counter()
        step, self.last = now - self.last, now
        self.stream.write(
            f"\r{self.label} [{seen:>6}/{self.total}] step {step:6.3f}s "
            f"elapsed {now - self.start:7.1f}s loss {loss_sum.item() / seen:.4f} "
            f"acc {100.0 * correct.item() / seen:5.1f}%")
        self.stream.flush()

    def done(self, result):
        test = result["test_accuracy"]
        line = (f"{self.label}: loss {result['train_loss']:.4f} "
                f"acc {result['train_accuracy']:.1f}%"
                + ("" if test is None else f" test {test:.1f}%")
                + f" | data {result['data_time']:.2f}s train {result['train_time']:.2f}s "
                f"epoch {result['epoch_time']:.2f}s" + (" DIVERGED" if result["diverged"] else ""))
        self.stream.write(("\r" + line + " " * 10 + "\n") if self.live else line + "\n")
        self.stream.flush()


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no terminal, or a closed stream
        return False
