"""Where the time goes: timers that measure what the device has finished, not what the host
has queued, and the profiler that says which operators the time went to.

CUDA runs kernels asynchronously: `loss.backward()` returns once the work is queued, long
before the GPU is done. A clock read straight after it measures the queueing, and the missing
time shows up in whatever is timed next (often the data loader). So every window here calls
`synchronize(device)` before it reads the clock; on the CPU that does nothing.

    timer = EpochTimer(device)
    with timer.epoch():
        with timer.data(): batch = next(batches)       # waiting for the DataLoader
        with timer.train(): ...                        # copy, forward, loss, backward, step

    python lab.py c2 --profile   # C2 with a torch.profiler trace of its first steps (Profile)
"""

import os
import time
from bisect import bisect_right
from contextlib import contextmanager

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

PROFILED_STEPS = 10   # a whole epoch of CIFAR-10 would make a trace of gigabytes
TOP_OPERATORS = 10
PHASES = {"data_loading": "data loading", "training_step": "training step"}


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


# ----------------------------------------------------------------------------------------
# The profiler (--profile): which operators the time goes to


class Profile:
    """torch.profiler over the first `max_steps` training steps, saved as a Chrome trace.

        with Profile("results/c2.trace.json", device) as profile:
            fit(cfg, train_set, test_set, profiler=profile)  # fit calls profile.step()
        profile.summary()     # JSON-ready: the costliest operators, data loading vs training

    Recording stops after `max_steps` steps, so the trace stays small and the rest of the
    run goes at full speed; the profiled steps themselves run slower than unprofiled ones.
    The trace is written when the block ends. Each operator is put in the phase whose range
    (`data_loading` or `training_step`) was open when it started; "other" is neither (the
    loop's bookkeeping, evaluation). With DataLoader workers the decoding and augmenting run
    in the worker processes, which are not profiled: data loading shows as the wait.
    """

    def __init__(self, trace_path, device="cpu", max_steps=PROFILED_STEPS):
        self.trace_path = trace_path
        self.device = torch.device(device)
        self.max_steps = max_steps
        self.steps = 0
        self._profiler = None
        self._recording = False
        self._summary = None

    def __enter__(self):
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.start()
        self._recording = True
        return self

    def step(self):
        """Mark the end of a training step; stop recording after `max_steps` of them."""
        if not self._recording:
            return
        self.steps += 1
        if self.steps < self.max_steps:
            self._profiler.step()
        else:
            self._stop()

    def _stop(self):
        synchronize(self.device)  # the last step's GPU kernels belong in the trace
        self._profiler.stop()
        self._recording = False

    def __exit__(self, *exc):
        if self._recording:
            self._stop()
        os.makedirs(os.path.dirname(os.path.abspath(self.trace_path)), exist_ok=True)
        self._profiler.export_chrome_trace(self.trace_path)
        self._summary = summarize_events(self._profiler.events(), self.device)
        self._summary.update(trace=self.trace_path, steps=self.steps, max_steps=self.max_steps)
        self._profiler = None  # its events can take a lot of memory
        return False

    def summary(self):
        """The figures of the finished profile (see `summarize_events`)."""
        return self._summary


@contextmanager
def profiling(trace_path, device="cpu", max_steps=PROFILED_STEPS):
    """`Profile` the block when `trace_path` is given; with None, profile nothing, yield None."""
    if trace_path is None:
        yield None
        return
    with Profile(trace_path, device, max_steps) as profile:
        yield profile


def summarize_events(events, device, top=TOP_OPERATORS):
    """The profile's costliest operators, each in its phase, and the time in each phase.

    Operators are ranked by self time (their own, without the operators they call) on the
    device that did the work: CUDA time on a GPU, CPU time otherwise. `top=None` keeps all.
    Times are in seconds.
    """
    ranges = sorted((e.time_range.start, e.time_range.end, PHASES[e.name])
                    for e in events if e.name in PHASES)
    starts = [start for start, _, _ in ranges]

    def phase(event):
        i = bisect_right(starts, event.time_range.start) - 1
        inside = i >= 0 and event.time_range.start <= ranges[i][1]
        return ranges[i][2] if inside else "other"

    operators = {}
    for event in events:
        if (event.device_type != DeviceType.CPU or event.is_user_annotation
                or event.name.startswith("ProfilerStep")):
            continue  # CPU-side operators only: their CUDA kernels are counted in them
        key = (event.name, phase(event))
        row = operators.setdefault(key, {"name": key[0], "phase": key[1], "calls": 0,
                                         "self_cpu_time": 0.0, "self_cuda_time": 0.0,
                                         "cpu_time": 0.0})
        row["calls"] += 1
        row["self_cpu_time"] += event.self_cpu_time_total / 1e6  # microseconds -> s
        row["self_cuda_time"] += event.self_device_time_total / 1e6
        row["cpu_time"] += event.cpu_time_total / 1e6
    sort_key = "self_cuda_time" if device.type == "cuda" else "self_cpu_time"
    ranked = sorted(operators.values(), key=lambda row: row[sort_key], reverse=True)
    phase_time = {name: sum(end - start for start, end, p in ranges if p == name) / 1e6
                  for name in PHASES.values()}
    return {
        "device": device.type,
        "sorted_by": sort_key,
        "data_loading_time": phase_time["data loading"],
        "training_step_time": phase_time["training step"],
        "operators": ranked if top is None else ranked[:top],
    }
