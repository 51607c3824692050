"""What this machine gives the lab: usable CPU cores, the CPU's model, the GPU.

    python machine.py        # prints the three

Every file that counts cores asks `usable_cores()`, so the header, C3, the bench and the
data-parallel runs agree on one figure.
"""

import os
import platform
import tempfile

import torch


def usable_cores(cgroup_file="/sys/fs/cgroup/cpu.max"):
    """The CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota.

    A container may see 64 cores yet be allowed the time of 2: the quota ("200000 100000"
    in cgroup v2's cpu.max means 2 cores' worth of time) is what worker processes share.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        cores = os.cpu_count() or 1
    try:
        with open(cgroup_file) as file:
            quota, period = file.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return cores


def worker_limit():
    """The most DataLoader workers a run may ask for: 4 per usable core, and at least 64 (C3's
    default sweep goes that far). Beyond it a typo forks processes by the hundred."""
    return 4 * max(usable_cores(), 16)


def cannot_write(folder):
    """None if a file can be created in `folder`, else why not. The test creates and removes a
    real file: os.access says yes to root in a read-only folder, and /proc or /sys say yes
    to nobody but refuse the write."""
    try:
        handle, path = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(handle)
        os.unlink(path)
        return None
    except OSError as error:
        return error.strerror or str(error)


def available_memory(meminfo="/proc/meminfo"):
    """Bytes of memory a new allocation can have without swapping (MemAvailable), or None
    where the system does not say."""
    try:
        with open(meminfo) as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # given in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_model():
    """The CPU's model name, as /proc/cpuinfo or the platform gives it."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_device():
    """("cuda" or "mps", its name), or (None, why there is none)."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name()
    if torch.backends.mps.is_available():
        return "mps", "Apple MPS"
    return None, f"torch {torch.__version__} finds no CUDA or MPS device on this machine"


def device_name(device):
    """The device in words: the GPU's name, or the CPU model and its usable cores."""
    kind = torch.device(device).type
    if kind in ("cuda", "mps"):
        return gpu_device()[1]
    return f"{cpu_model()} ({usable_cores()} cores)"


if __name__ == "__main__":
    print(f"usable cores: {usable_cores()}\nCPU: {cpu_model()}\nGPU: {gpu_device()[1]}")
