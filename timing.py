"""Timers that measure what the device has finished, not what the host has queued.

CUDA (and MPS) run kernels asynchronously: `loss.backward()` returns as soon as the work is
queued, long before the GPU is done. A clock read straight after it measures the queueing,
not the work, and the missing time then shows up in whatever is timed next (often the data
loader). So every timer here calls `synchronize(device)` before it reads the clock. On the
CPU there is nothing to wait for and `synchronize` does nothing.

    timer = EpochTimer(device)
    with timer.epoch():
        with timer.data():
            batch = next(batches)      # waiting for the DataLoader
        with timer.train():
            ...                        # copy, forward, loss, backward, step
    timer.data_time, timer.train_time, timer.epoch_time, timer.other_time

`CudaEventTimer` times a stretch of GPU work with CUDA events instead: it measures the time
the GPU spent between two points in its own stream, without stalling the host inside the
window, which is the better tool for the speed of a training step on its own.

Run `python timing.py` to measure, on this machine, what the timers cost an epoch.
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
    worker processes it is mostly their start-up.
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.data_time = 0.0
        self.train_time = 0.0
        self.epoch_time = 0.0
        self.first_batch_time = None

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

    Training with it is the lab's loop without timers, the baseline that
    `python timing.py` compares the timed loop against.
    """

    @contextmanager
    def _window(self, name):
        yield


def overhead_benchmark(batches=8, batch_size=32, repeats=5):
    """What the timers cost: the same training epoch with EpochTimer and with NullTimer.

    The two alternate (timed, bare, timed, bare, ...) so that a load coming and going on a
    shared machine hits both alike; the medians are compared. Also prints what one empty
    synchronised window costs, the timers' own overhead with no training around it.
    """
    from data import SyntheticCIFAR, test_transform
    from train import make_optimizer, train_one_epoch
    from resnet import ResNet18

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        batch_size, batches = 128, 50
    timer = EpochTimer(device)
    start = time.perf_counter()
    for _ in range(1000):
        with timer.train():
            pass
    window = (time.perf_counter() - start) / 1000
    print(f"{device}: one empty timed window costs {window * 1e6:.1f} us")

    dataset = SyntheticCIFAR(batches * batch_size, seed=0, transform=test_transform())
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor(dataset.targets)
    loader = list(zip(images.split(batch_size), labels.split(batch_size)))  # no loading cost
    torch.manual_seed(0)
    model = ResNet18().to(device)
    optimizer = make_optimizer("sgd", model.parameters(), lr=0.01)
    train_one_epoch(model, loader[:2], optimizer, device)  # warm-up
    times = {"timed": [], "bare": []}
    for _ in range(repeats):
        for name, timer_class in (("timed", EpochTimer), ("bare", NullTimer)):
            synchronize(device)
            start = time.perf_counter()
            train_one_epoch(model, loader, optimizer, device, timer=timer_class(device))
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    timed, bare = (sorted(times[k])[repeats // 2] for k in ("timed", "bare"))
    print(f"{device}: an epoch of {batches} batches of {batch_size}: timed {timed:.3f} s, "
          f"bare {bare:.3f} s (medians of {repeats}); the timers cost "
          f"{100 * (timed / bare - 1):+.2f}%")
    spread = {k: f"{min(v):.3f}-{max(v):.3f}" for k, v in times.items()}
    print(f"spread: timed {spread['timed']} s, bare {spread['bare']} s; windows per epoch: "
          f"{2 * batches + 2}, so their own cost is {100 * window * (2 * batches + 2) / bare:.4f}%")


if __name__ == "__main__":
    overhead_benchmark()
