"""Timers that measure what the device has finished, not what the host has queued.

CUDA runs kernels asynchronously: `loss.backward()` returns once the work is queued, long
before the GPU is done. A clock read straight after it measures the queueing, and the missing
time shows up in whatever is timed next (often the data loader). So every window here calls
`synchronize(device)` before it reads the clock; on the CPU that does nothing.

    timer = EpochTimer(device)
    with timer.epoch():
        with timer.data(): batch = next(batches)       # waiting for the DataLoader
        with timer.train(): ...                        # copy, forward, loss, backward, step
"""

import time
from contextlib import contextmanager

import torch


def synchronize(device):
    """Wait until every kernel queued on `device` has finished (a CPU-GPU sync point)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Timer:
    """Wall-clock time of a `with` block, device synchronised at both ends.

    Synchronising on entry keeps work queued *before* the block out of it; synchronising
    on exit puts all the work queued *inside* the block into it.
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.elapsed = 0.0

    def __enter__(self):
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.elapsed = time.perf_counter() - self._start
        return False


class EpochTimer:
    """Per-epoch accumulators for the lab's three figures (C2).

    - `data_time`: the sum of the `data()` windows, the time the training loop is blocked
      waiting for the next batch: creating the loader's iterator (which starts the worker
      processes) and every `next()`, including the last one that finds the epoch over and
      shuts the workers down.
    - `train_time`: the sum of the `train()` windows: host-to-device copy, forward, loss,
      backward and optimizer step, ending when the device has finished them.
    - `epoch_time`: the whole `epoch()` window.
    - `other_time`: `epoch_time - data_time - train_time`, the loop's own bookkeeping between
      the windows (the Python loop, the progress line). It is small but not zero, so it is
      reported rather than hidden.

    Each window starts and ends with the device synchronised, so no GPU work leaks from one
    window into the next. `first_batch_time` is the first `data()` window of the epoch: with
    worker processes it is mostly their start-up. `last_train_time` is the last `train()`
    window: a partial last batch's step on its own.
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.data_time = 0.0
        self.train_time = 0.0
        self.epoch_time = 0.0
        self.first_batch_time = None
        self.last_train_time = None

    @property
    def other_time(self):
        return self.epoch_time - self.data_time - self.train_time

    @contextmanager
    def _window(self, name):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - start
            setattr(self, name, getattr(self, name) + elapsed)
            if name == "data_time" and self.first_batch_time is None:
                self.first_batch_time = elapsed
            if name == "train_time":
                self.last_train_time = elapsed

    def epoch(self):
        return self._window("epoch_time")

    def data(self):
        return self._window("data_time")

    def train(self):
        return self._window("train_time")

    def as_dict(self):
        return {
            "data_time": self.data_time,
            "train_time": self.train_time,
            "other_time": self.other_time,
            "epoch_time": self.epoch_time,
            "first_batch_time": self.first_batch_time,
            "last_train_time": self.last_train_time,
        }


class CudaEventTimer:
    """GPU time between entering and leaving a `with` block, measured with CUDA events.

    The events are recorded into the CUDA stream, so the GPU itself timestamps the start and
    the end of the queued work and the host is not stalled inside the window. Reading
    `elapsed` waits for the end event only. On a device other than CUDA it falls back to a
    synchronised wall clock (`Timer`).
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self._fallback = None if self.device.type == "cuda" else Timer(self.device)

    def __enter__(self):
        if self._fallback is not None:
            self._fallback.__enter__()
        else:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        return self

    def __exit__(self, *exc):
        if self._fallback is not None:
            return self._fallback.__exit__(*exc)
        self._end.record()
        return False

    @property
    def elapsed(self):
        """Seconds between the two events (waits for the end event to complete)."""
        if self._fallback is not None:
            return self._fallback.elapsed
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1000.0  # elapsed_time is in ms


class NullTimer(EpochTimer):
    """An EpochTimer whose windows do nothing: no synchronisation, no clock.

    Training with it is the lab's loop without timers, the baseline that the timers'
    overhead benchmark (`python speed.py overhead`) compares the timed loop against.
    """

    @contextmanager
    def _window(self, name):
        yield
