"""The lab's data: CIFAR-10, an image folder or a synthetic stand-in, and the loaders.

    train_set, test_set, info = load_datasets("auto", "./data", seed=0)  # info: what was used
    train_loader = make_loader(train_set, batch_size=128, shuffle=True, num_workers=2, seed=0)
    train_loader = DeviceLoader(train_set, batch_size=128, device="cuda")  # --loader device

`--dataset`: cifar10 (downloaded when missing), folder (`data_path/{train,test}/<class>/*`),
synthetic (generated in memory from a seed), or auto (CIFAR-10 when it can be had, otherwise
synthetic, and the run says so). Every source goes through the same transforms. Anything wrong
with the data raises `DataError`, whose message says how to fix it.
"""

import functools
import os
import shutil
import socket
import sys
import threading
from multiprocessing import resource_sharer
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from machine import available_memory, cannot_write

DATASETS = ("auto", "cifar10", "folder", "synthetic")
CIFAR10_TRAIN_IMAGES = 50_000
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

# The per-channel mean and standard deviation the assignment gives for CIFAR-10.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class DataError(Exception):
    """The data set cannot be used as asked; the message says why and what to do."""


def train_transform():
    """The assignment's training augmentation: random crop with 4 px padding, random flip."""
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(0.5),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def test_transform():
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


class SyntheticCIFAR(Dataset):
    """A learnable, CIFAR-shaped data set generated in memory from a seed.

    Each class has its own smooth colour pattern (a random 5x5 field, upsampled). An image is
    its class pattern, shifted by up to 4 px and sometimes mirrored, blended with a weaker
    pattern of another class, plus pixel noise. A CNN can learn it, through the lab's crop
    and flip, but not in a step: the distractor and the noise keep it from being trivial,
    so optimizers and architectures show different curves. Like torchvision's CIFAR10 it
    keeps `data` (uint8, N x 32 x 32 x 3) and `targets`, and gives PIL images to the
    transforms, so the loaders do the same per-image work as on the real data.
    """

    classes = [f"pattern{k}" for k in range(10)]

    def __init__(self, size, seed=0, train=True, transform=None):
        self.transform = transform
        generator = torch.Generator().manual_seed(seed)
        patterns = self._class_patterns(generator)  # the same for train and test
        if not train:  # a different draw of images from the same classes
            generator.manual_seed(seed + 1_000_003)
        self.data, self.targets = self._draw(patterns, size, generator)

    @staticmethod
    def _class_patterns(generator, num_classes=10):
        fields = torch.randn(num_classes, 3, 5, 5, generator=generator)
        patterns = F.interpolate(fields, size=(40, 40), mode="bicubic", align_corners=False)
        patterns = patterns - patterns.mean(dim=(1, 2, 3), keepdim=True)
        return patterns / patterns.std(dim=(1, 2, 3), keepdim=True)  # (10, 3, 40, 40)

    @staticmethod
    def _draw(patterns, size, generator, chunk=5000):
        num_classes = len(patterns)
        labels = torch.arange(size) % num_classes
        labels = labels[torch.randperm(size, generator=generator)]
        images = []
        for start in range(0, size, chunk):
            y = labels[start:start + chunk]
            n = len(y)
            other = (y + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
            weight = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.0, generator=generator)
            mix = torch.empty(n, 1, 1, 1).uniform_(0.0, 0.55, generator=generator)
            x = weight * _random_windows(patterns[y], generator)
            x = x + mix * weight * _random_windows(patterns[other], generator)
            x = x + 0.35 * torch.randn(n, 3, 32, 32, generator=generator)
            x = x + 0.3 * torch.randn(n, 3, 1, 1, generator=generator)  # colour cast
            images.append((128 + 48 * x).clamp(0, 255).to(torch.uint8))
        data = torch.cat(images).permute(0, 2, 3, 1).contiguous()  # (N, 32, 32, 3), like CIFAR10
        return data.numpy(), labels.tolist()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def _random_windows(patterns, generator):
    """A random 32x32 window of each 40x40 pattern, mirrored left-right half of the time."""
    n = len(patterns)
    rows = torch.randint(0, 9, (n, 1), generator=generator) + torch.arange(32)  # (n, 32)
    cols = torch.randint(0, 9, (n, 1), generator=generator) + torch.arange(32)
    flip = torch.rand(n, generator=generator) < 0.5
    cols[flip] = cols[flip].flip(1)
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(3)[None, :, None, None]
    windows = patterns[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    return windows  # (n, 3, 32, 32)


def seeded_subset(dataset, size, seed):
    """A fixed subset of `size` items, the same for the same seed (all of it when size is None)."""
    if size is None:
        return dataset
    if size > len(dataset):
        raise DataError(f"asked for {size} images but the data set has {len(dataset)}")
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, indices[:size].tolist())


def load_datasets(dataset="auto", data_path="./data", seed=0, train_size=None, test_size=None):
    """Return (train_set, test_set, info); `info` names the data set actually used.

    `train_size`/`test_size` take a fixed, seeded subset (synthetic data is generated at that
    size).
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown data set {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if dataset == "synthetic":
        return _synthetic(seed, train_size, test_size, note=(
            "chosen with --dataset synthetic: CIFAR-shaped data generated in memory; its "
            "accuracies are not CIFAR-10's"))
    if dataset == "folder":
        train_set, test_set, info = _image_folder(Path(data_path))
    else:
        found = _cifar10(Path(data_path), required=(dataset == "cifar10"))
        if found is None:
            return _synthetic(seed, train_size, test_size, note=(
                f"CIFAR-10 is not under {data_path} and could not be downloaded, so this run "
                "uses synthetic CIFAR-shaped data; its accuracies are not CIFAR-10's"))
        train_set, test_set, info = found
    info["train_images"] = len(train_set) if train_size is None else train_size
    info["test_images"] = len(test_set) if test_size is None else test_size
    return (seeded_subset(train_set, train_size, seed),
            seeded_subset(test_set, test_size, seed), info)


@functools.lru_cache(maxsize=2)
def _cached_datasets(dataset, data_path, seed, train_size, test_size):
    return load_datasets(dataset, data_path, seed, train_size, test_size)


def datasets_for(cfg):
    """load_datasets for cfg's data fields, loaded once per process for the same fields."""
    return _cached_datasets(cfg.dataset, cfg.data_path, cfg.seed, cfg.train_size, cfg.test_size)


def _synthetic(seed, train_size, test_size, note):
    train_size = 50_000 if train_size is None else train_size
    test_size = 10_000 if test_size is None else test_size
    _check_memory(train_size, test_size)
    train_set = SyntheticCIFAR(train_size, seed, train=True, transform=train_transform())
    test_set = SyntheticCIFAR(test_size, seed, train=False, transform=test_transform())
    info = {"name": "synthetic", "source": f"generated in memory from seed {seed}",
            "note": note, "train_images": train_size, "test_images": test_size}
    return train_set, test_set, info


# Generating a synthetic image holds its pixels about three times over (the chunks, their
# concatenation, the channels-last copy), 32 x 32 x 3 bytes each, plus its label and indices.
SYNTHETIC_BYTES_PER_IMAGE = 3 * 32 * 32 * 3 + 64


def _check_memory(train_size, test_size, available=None):
    """DataError when generating the synthetic images would need more memory than is free."""
    available = available_memory() if available is None else available
    needed = (train_size + test_size) * SYNTHETIC_BYTES_PER_IMAGE
    if available is not None and needed > available:
        raise DataError(f"{train_size} training and {test_size} test images of synthetic data "
                        f"need about {needed / 2**30:.3g} GiB of memory to generate, and "
                        f"{available / 2**30:.1f} GiB is free: ask for fewer with "
                        "--train-size and --test-size")


def _image_folder(root):
    missing = [str(root / split) for split in ("train", "test") if not (root / split).is_dir()]
    if missing:
        raise DataError(f"--dataset folder needs {root}/train/<class>/* and {root}/test/<class>/*;"
                        f" not found: {', '.join(missing)}")
    _refuse_link_loops(root)
    try:
        train_set = datasets.ImageFolder(root / "train", transform=train_transform())
        test_set = datasets.ImageFolder(root / "test", transform=test_transform())
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"cannot read the image folder {root}: {error}") from None
    if train_set.classes != test_set.classes:
        raise DataError(f"{root}/train and {root}/test have different class folders")
    if len(train_set.classes) != len(CIFAR10_CLASSES):
        raise DataError(f"{root}/train has {len(train_set.classes)} class folders; the lab's "
                        f"ResNet-18 classifies {len(CIFAR10_CLASSES)}")
    _check_images(train_set)
    _check_images(test_set)
    info = {"name": "folder", "source": str(root), "note": "image folder",
            "classes": train_set.classes}
    return train_set, test_set, info


def _refuse_link_loops(root):
    """DataError naming a symbolic link that leads back to a folder it is in.

    torchvision's walk follows links, so such a loop repeats a class until the system stops
    it (40 levels deep), and a link back to train/ itself would branch without end.
    """
    for folder, subfolders, _ in os.walk(root, followlinks=True):
        parts = Path(folder).relative_to(root).parts
        above = {os.path.realpath(root.joinpath(*parts[:i])) for i in range(len(parts) + 1)}
        for name in subfolders:
            link = os.path.join(folder, name)
            if os.path.realpath(link) in above:
                raise DataError(f"{link} is a symbolic link back to {os.path.realpath(link)}, "
                                "a folder it is in, so its images would be read again and "
                                "again; remove the link")


def _check_images(dataset):
    """Decode every image of an ImageFolder once, at load; DataError naming the first that is
    broken or not CIFAR's 32x32.

    A full decode, not only the header that Image.open reads: a truncated file has a good
    header and would fail in the middle of an epoch, or in the test after it, losing that
    epoch. At 32x32 a decode takes tens of microseconds: less than one epoch's loading.
    """
    for path, _ in dataset.samples:
        try:
            with Image.open(path) as image:
                image.load()
                width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{path} is not a readable image ({error}); remove or "
                            "replace it") from None
        if (width, height) != (32, 32):
            raise DataError(f"{path} is {width}x{height}; the lab's images are CIFAR-10's "
                            "32x32: resize the folder's images first")


def _cifar10(root, required):
    """CIFAR-10 from `root`, downloading it when missing; None if it is absent and unobtainable."""
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-path {root} is a file; it must be a folder for CIFAR-10")
    sets = _read_cifar10(root)
    if sets is None:
        files = [root / "cifar-10-batches-py", root / "cifar-10-python.tar.gz"]
        partial = [str(path) for path in files if path.exists()]
        error = _download_cifar10(root)
        if error:
            if partial:
                raise DataError(
                    f"CIFAR-10 under {root} is incomplete or corrupted and could not be "
                    f"downloaded again ({error}). Delete {' and '.join(partial)}, then run "
                    "again with internet access, or put a good copy of "
                    "cifar-10-python.tar.gz there")
            if required:
                raise DataError(
                    f"CIFAR-10 is not under {root} and could not be downloaded ({error}). Put "
                    f"cifar-10-python.tar.gz (or its extracted cifar-10-batches-py folder) in "
                    f"{root}, point --data-path at it, or use --dataset synthetic")
            return None
        sets = _read_cifar10(root)
        if sets is None:
            raise DataError(f"CIFAR-10 was downloaded to {root} but fails its checksum; "
                            "delete it and run again")
    train_set, test_set = sets
    return train_set, test_set, {"name": "cifar10", "source": str(root), "note": "CIFAR-10"}


def _read_cifar10(root):
    try:
        return (datasets.CIFAR10(root, train=True, transform=train_transform()),
                datasets.CIFAR10(root, train=False, transform=test_transform()))
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        return None
    except OSError as error:  # present but unreadable: not a case for downloading again
        raise DataError(f"cannot read CIFAR-10 under {root}: {error}") from None


def _download_cifar10(root):
    """Download CIFAR-10 into root; return None on success or the reason it failed."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"--data-path {root} cannot be created: {error.strerror}"
    unwritable = cannot_write(root)
    if unwritable:  # --dataset auto then falls back to synthetic data, as documented
        return f"--data-path {root} cannot be written: {unwritable}"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # torchvision's urllib call has no timeout of its own
    try:
        datasets.CIFAR10(root, train=True, download=True)
        return None
    except Exception as error:  # URLError, HTTPError, OSError, a checksum failure: all "failed"
        return str(error).strip() or type(error).__name__
    finally:
        socket.setdefaulttimeout(previous)


def make_loader(dataset, batch_size, shuffle, num_workers, seed=0, pin_memory=False,
                multiprocessing_context=None, sampler=None):
    """A DataLoader whose shuffling order depends only on `seed` (or on `sampler`'s, which
    then chooses the order: a DistributedSampler gives each rank its share).

    Each epoch starts fresh workers (`persistent_workers=False`, the default), which is what
    the lab measures: worker start-up is part of every epoch's data-loading time. A batch
    larger than the data set is the whole data set (and torch refuses one past sys.maxsize).
    """
    return WorkerLoader(
        dataset,
        batch_size=min(batch_size, max(len(dataset), 1)),
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
        worker_init_fn=quiet_broken_handoffs if num_workers > 0 else None,
    )


def quiet_broken_handoffs(worker_id):
    """In each DataLoader worker: leave unprinted the broken connection of a batch the main
    process stopped fetching.

    A worker hands a batch's shared memory over through multiprocessing's resource sharer, a
    thread that serves the main process's requests for it. A stop signal (Ctrl-C, SIGTERM,
    SIGHUP) can end the main process in the middle of one; that thread's connection then
    breaks, and Python would print its traceback below the run's last line, the one that says
    what was kept. Every other error, in that thread or another, is printed as before.
    """
    printed = threading.excepthook

    def hook(args):
        handoff = getattr(resource_sharer._resource_sharer, "_thread", None)
        if not (args.thread is handoff and issubclass(args.exc_type, (EOFError, OSError))):
            printed(args)

    threading.excepthook = hook


class WorkerLoader(DataLoader):
    """A DataLoader without torch's warning about more workers than its suggested maximum.

    The lab runs past the core count on purpose (C3 measures what that costs and says so).
    torch warns both when a loader is built and each time it is iterated, so under
    `python -W error` the run would fail there; this check is the one place behind both.
    """

    def check_worker_number_rationality(self):
        pass

    def __iter__(self):
        batches = super().__iter__()
        return batches if self.num_workers == 0 else _shared_memory_checked(batches)


def _shared_memory_checked(batches):
    """The batches; a worker that runs out of shared memory ends in one DataError.

    Workers hand their batches to the main process through /dev/shm, which Docker limits to
    64 MB by default: a batch that does not fit fails in the worker ("unable to allocate shared
    memory(shm)"), or the worker dies of a bus error ("out of shared memory").
    """
    try:
        yield from batches
    except RuntimeError as error:
        if "shared memory" not in str(error):
            raise
        try:
            room = f" (it holds {shutil.disk_usage('/dev/shm').total / 2**20:.3g} MiB)"
        except OSError:
            room = ""
        raise DataError(f"the DataLoader's workers ran out of shared memory in /dev/shm{room}: "
                        "use --num-workers 0, or give /dev/shm more room (docker run "
                        "--shm-size=2g, for instance)") from None


# ----------------------------------------------------------------------------------------
# The device loader (--loader device): the whole training set on the device, augmented there

CROP, PADDING = 32, 4  # RandomCrop(32, padding=4): 9 x 9 = 81 crop positions


class DeviceLoader:
    """The lab's data pipeline with the data set held on the device, one batch at a time.

        loader = DeviceLoader(train_set, batch_size=128, device="cuda", seed=0)
        for images, labels in loader:   # (128, 3, 32, 32) float32 and (128,) int64, on the device

    The images are uploaded once, as uint8, zero-padded by 4 px, each beside its mirror image.
    Each epoch then draws from a seeded generator on the device: an order (a fresh
    permutation), and per image a crop offset (dy, dx), each uniform over 0..8, and a flip
    with probability 0.5, the same distribution as the lab's RandomCrop(32, padding=4) +
    RandomHorizontalFlip(0.5). Crop and flip are a single index into a view of every 32x32
    window of the padded images and their mirrors (the crop of the mirror at dx is the mirror
    of the crop at 8 - dx). Then ToTensor's /255 and Normalize's (x - mean) / std, in their
    order, so an un-augmented batch equals `test_transform()` exactly.

    The data set's own transforms are not used: `augment=True` is the training transform,
    `augment=False` (no padding, no flip) the test transform. Nothing here waits for the
    device (no `.item()`, no boolean masks), so on a GPU the training loop never stalls on
    the loader. `len()` is the number of batches and `.dataset` the data set, as for a
    DataLoader.
    """

    def __init__(self, dataset, batch_size, device, shuffle=True, augment=True, seed=0,
                 channels_last=False):
        images, labels = image_tensors(dataset)                     # (N, 32, 32, 3) uint8
        if tuple(images.shape[1:3]) != (CROP, CROP):
            raise DataError(f"--loader device reproduces the lab's {CROP}x{CROP} crop: the images "
                            f"must be {CROP}x{CROP}, not {images.shape[1]}x{images.shape[2]}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        pad = PADDING if augment else 0
        images = images.to(self.device).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        padded = F.pad(images, (pad, pad, pad, pad))                # (N, 3, 40, 40)
        mirrors = [padded, padded.flip(3)] if augment else [padded]
        self.padded = torch.stack(mirrors, dim=1)                   # (N, 2, 3, 40, 40)
        # Every 32x32 window of every padded image, as a view (no copy): a crop is an index.
        self.windows = self.padded.unfold(3, CROP, 1).unfold(4, CROP, 1)  # (N, 2, 3, 9, 9, 32, 32)
        self.labels = labels.to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)  # the last batch may be smaller

    def __iter__(self):
        size = len(self.labels)
        if self.shuffle:
            order = torch.randperm(size, device=self.device, generator=self.generator)
        else:
            order = torch.arange(size, device=self.device)
        for start in range(0, size, self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.batch(index), self.labels[index]

    def batch(self, index):
        """The images at `index` (a 1-D tensor on the device), cropped, flipped, normalised."""
        n = len(index)
        _, mirrors, _, positions, _, _, _ = self.windows.shape      # 2 and 9; 1 and 1 if plain
        draw = dict(size=(n,), device=self.device, generator=self.generator)
        flip = torch.randint(mirrors, **draw)                       # 1: the mirror, p = 0.5
        dy = torch.randint(positions, **draw)                       # uniform over 0..8
        dx = torch.randint(positions, **draw)
        crops = self.windows[index, flip, :, dy, dx]                # (n, 3, 32, 32) uint8
        images = crops.to(torch.float32, memory_format=self.memory_format)
        return images.div_(255).sub_(self.mean).div_(self.std)     # (n, 3, 32, 32) float32


def image_tensors(dataset):
    """A whole data set as tensors: (N, H, W, 3) uint8 images and (N,) int64 labels, on the CPU.

    Reads `.data` and `.targets` (torchvision's CIFAR10, SyntheticCIFAR), follows a Subset's
    indices, and decodes an ImageFolder's files once. No transform is applied.
    """
    if isinstance(dataset, Subset):
        if isinstance(dataset.dataset, datasets.ImageFolder):  # decode only the subset's files
            return _decode_image_folder(dataset.dataset, dataset.indices)
        images, labels = image_tensors(dataset.dataset)
        index = torch.as_tensor(dataset.indices, dtype=torch.long)
        return images[index], labels[index]
    if hasattr(dataset, "data") and hasattr(dataset, "targets"):
        images = torch.as_tensor(np.asarray(dataset.data))
        labels = torch.as_tensor(dataset.targets, dtype=torch.long)
    elif isinstance(dataset, datasets.ImageFolder):
        images, labels = _decode_image_folder(dataset)
    else:
        raise DataError(f"--loader device cannot read a {type(dataset).__name__}: it needs "
                        "`.data` (uint8, N x H x W x 3) and `.targets`, like CIFAR10, a Subset "
                        "of one, or an ImageFolder; use --loader torch")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"--loader device needs uint8 images of shape (N, H, W, 3), not "
                        f"{images.dtype} {tuple(images.shape)}")
    return images, labels


def _decode_image_folder(dataset, indices=None):
    """Decode an ImageFolder's files (all, or those at `indices`) once: (N, H, W, 3) uint8."""
    samples = dataset.samples if indices is None else [dataset.samples[i] for i in indices]
    print(f"--loader device: decoding {len(samples)} images of {dataset.root} into memory, once",
          file=sys.stderr, flush=True)
    images, sizes = [], set()
    for path, _ in samples:
        image = np.asarray(dataset.loader(path).convert("RGB"))    # (H, W, 3) uint8
        sizes.add(image.shape)
        if len(sizes) > 1:
            raise DataError(f"--loader device needs images of one size; {dataset.root} has "
                            f"{' and '.join(str(s[:2]) for s in sorted(sizes))}")
        images.append(image)
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return torch.from_numpy(np.stack(images)), labels
