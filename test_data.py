"""Tests for data.py: synthetic data, the transforms, seeded subsets, the loaders and the device
loader, CIFAR-10 and image folders and their faults, and the fallback to synthetic data.

The device loader is checked against an oracle: the test transform, torchvision's own crop and
flip, or a statistical invariant.
"""

import contextlib
import subprocess
import sys
import tempfile
import threading
import unittest
import warnings
from multiprocessing import resource_sharer
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets

import data
from data import MEAN, STD, DataError, DeviceLoader, SyntheticCIFAR, seeded_subset, test_transform
from machine import usable_cores
from testkit import CPU, HERE, TempDirTest, one_line, quiet_module, run_lab

setUpModule = quiet_module

# A chi-square statistic over the 81 crop positions (80 degrees of freedom) exceeds this with
# probability 0.001 when the positions are uniform.
CHI2_80_P001 = 124.84


class SyntheticDataTest(unittest.TestCase):
    def test_same_seed_same_data_and_cifar_shaped(self):
        a = data.SyntheticCIFAR(200, seed=3)
        b = data.SyntheticCIFAR(200, seed=3)
        c = data.SyntheticCIFAR(200, seed=4)
        test = data.SyntheticCIFAR(200, seed=3, train=False)
        self.assertTrue(np.array_equal(a.data, b.data))
        self.assertEqual(a.targets, b.targets)
        self.assertFalse(np.array_equal(a.data, c.data))
        self.assertFalse(np.array_equal(a.data, test.data))
        self.assertEqual(a.data.shape, (200, 32, 32, 3))
        self.assertEqual(a.data.dtype, np.uint8)
        self.assertEqual(sorted(set(a.targets)), list(range(10)))
        self.assertEqual(np.bincount(a.targets).tolist(), [20] * 10)  # balanced

    def test_learnable_through_the_labs_augmentation(self):
        # A small CNN trained on augmented images must beat chance on held-out images.
        torch.manual_seed(0)
        train_set = data.SyntheticCIFAR(1000, seed=0, transform=data.train_transform())
        test_set = data.SyntheticCIFAR(300, seed=0, train=False, transform=data.test_transform())
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        criterion = nn.CrossEntropyLoss()
        images, labels = next(iter(data.make_loader(test_set, 300, False, 0)))
        with torch.no_grad():
            loss_before = criterion(model(images), labels).item()
        for _ in range(3):
            for x, y in data.make_loader(train_set, 50, True, 0):
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            outputs = model(images)
        self.assertLess(criterion(outputs, labels).item(), loss_before - 0.3)
        self.assertGreater((outputs.argmax(1) == labels).float().mean().item(), 0.3)

    def test_transforms_are_the_assignments(self):
        names = [type(t).__name__ for t in data.train_transform().transforms]
        self.assertEqual(names, ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"])
        crop, flip, _, normalize = data.train_transform().transforms
        self.assertEqual((crop.size, crop.padding, flip.p), ((32, 32), 4, 0.5))
        self.assertEqual((normalize.mean, normalize.std), (data.MEAN, data.STD))
        names = [type(t).__name__ for t in data.test_transform().transforms]
        self.assertEqual(names, ["ToTensor", "Normalize"])

    def test_seeded_subset_is_fixed(self):
        full = list(range(100))
        a = data.seeded_subset(full, 10, seed=1)
        b = data.seeded_subset(full, 10, seed=1)
        self.assertEqual(a.indices, b.indices)
        self.assertEqual(len(set(a.indices)), 10)
        self.assertNotEqual(a.indices, data.seeded_subset(full, 10, seed=2).indices)
        with self.assertRaises(data.DataError):
            data.seeded_subset(full, 101, seed=1)

    def test_workers_work_under_spawn(self):
        dataset = data.SyntheticCIFAR(8, seed=0, transform=data.train_transform())
        loader = data.make_loader(dataset, 4, True, num_workers=1,
                                  multiprocessing_context="spawn")
        batches = list(loader)
        self.assertEqual([tuple(x.shape) for x, _ in batches], [(4, 3, 32, 32)] * 2)


class DataSourceTest(TempDirTest):
    def test_auto_falls_back_to_synthetic_when_cifar_cannot_be_had(self):
        with mock.patch.object(data, "_download_cifar10", return_value="network unreachable"):
            train_set, test_set, info = data.load_datasets(
                "auto", self.tmp / "data", train_size=20, test_size=10)
        self.assertEqual(info["name"], "synthetic")
        self.assertIn("could not be downloaded", info["note"])
        self.assertEqual((len(train_set), len(test_set)), (20, 10))

    def test_cifar10_missing_and_not_downloadable_says_where_to_put_it(self):
        with mock.patch.object(data, "_download_cifar10", return_value="network unreachable"):
            with self.assertRaisesRegex(data.DataError, "cifar-10-python.tar.gz.*--data-path"):
                data.load_datasets("cifar10", self.tmp / "data")

    def test_partial_cifar10_says_how_to_fix_it(self):
        root = self.tmp / "data"
        (root / "cifar-10-batches-py").mkdir(parents=True)
        (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"truncated")
        for dataset in ("cifar10", "auto"):
            with mock.patch.object(data, "_download_cifar10", return_value="offline"):
                with self.assertRaisesRegex(data.DataError, "incomplete or corrupted.*Delete"):
                    data.load_datasets(dataset, root)

    def test_data_path_that_is_a_file_or_unwritable(self):
        afile = self.tmp / "afile"
        afile.write_text("not a folder")
        with self.assertRaisesRegex(data.DataError, "is a file"):
            data.load_datasets("cifar10", afile)
        with self.assertRaisesRegex(data.DataError, "cannot be created"):
            data.load_datasets("cifar10", afile / "data")

    def make_folder(self, root, classes):
        rng = np.random.default_rng(0)
        for split, count in (("train", 2), ("test", 1)):
            for name in classes:
                (root / split / name).mkdir(parents=True)
                for i in range(count):
                    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / split / name / f"{i}.png")

    def test_image_folder(self):
        root = self.tmp / "folder"
        self.make_folder(root, data.CIFAR10_CLASSES)
        train_set, test_set, info = data.load_datasets("folder", root)
        self.assertEqual((info["name"], len(train_set), len(test_set)), ("folder", 20, 10))
        image, label = train_set[3]
        self.assertEqual((tuple(image.shape), label), ((3, 32, 32), 1))  # alphabetical classes
        with self.assertRaisesRegex(data.DataError, "train/<class>"):
            data.load_datasets("folder", self.tmp)

    def test_image_folder_needs_ten_classes(self):
        root = self.tmp / "two"
        self.make_folder(root, ["cat", "dog"])
        with self.assertRaisesRegex(data.DataError, "2 class folders"):
            data.load_datasets("folder", root)


class ImageFolderTest(TempDirTest):
    def make_folder(self):
        root = self.tmp / "images"
        rng = np.random.default_rng(0)
        for split in ("train", "test"):
            for name in data.CIFAR10_CLASSES:
                (root / split / name).mkdir(parents=True)
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / "0.png")
        return root

    def test_a_broken_or_wrong_sized_image_is_named_at_load(self):
        root = self.make_folder()
        good = (root / "train" / "cat" / "0.png").read_bytes()
        cases = {"empty": b"", "truncated": good[:60], "not an image": b"hello"}
        for case, content in cases.items():
            with self.subTest(case):
                bad = root / "test" / "dog" / f"{case}.png"
                bad.write_bytes(content)
                with self.assertRaisesRegex(data.DataError, f"{bad} is not a readable image"):
                    data.load_datasets("folder", root)
                bad.unlink()
        Image.new("RGB", (64, 64)).save(root / "train" / "cat" / "0.png")
        with self.assertRaisesRegex(data.DataError, "0.png is 64x64; the lab's images are"):
            data.load_datasets("folder", root)
        status, _, err = run_lab("c2", "--dataset", "folder", "--data-path", str(root),
                                 "--out", self.out)
        one_line(self, status, err, "is 64x64")

    def test_a_symlink_loop_is_refused(self):
        for target in (".", "..", "../.."):
            with self.subTest(target=target):
                root = self.make_folder()
                link = root / "train" / "cat" / "loop"
                link.symlink_to(target)
                with self.assertRaisesRegex(data.DataError, f"{link} is a symbolic link back"):
                    data.load_datasets("folder", root)
                self._tmp.cleanup()
                self.tmp.mkdir()


class EnvironmentTest(TempDirTest):
    def test_auto_falls_back_to_synthetic_when_the_data_path_is_read_only(self):
        for path, unwritable in (("/proc/self", None), (self.tmp / "ro", "Permission denied")):
            with self.subTest(path=path), \
                    mock.patch.object(data, "cannot_write", return_value=unwritable) \
                    if unwritable else contextlib.nullcontext():
                _, _, info = data.load_datasets("auto", path, train_size=20, test_size=10)
                self.assertEqual(info["name"], "synthetic")
                with self.assertRaisesRegex(data.DataError, "cannot be written"):
                    data.load_datasets("cifar10", path)

    def test_more_workers_than_cores_under_warnings_as_errors(self):
        dataset = list(range(8))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loader = data.make_loader(dataset, 4, shuffle=False, num_workers=usable_cores() + 1)
            self.assertEqual([b.tolist() for b in loader], [[0, 1, 2, 3], [4, 5, 6, 7]])


class CoordinateImages(Dataset):
    """256 images whose pixels say where they came from: (row + 1, column + 1, image index).

    Zero padding reads as (0, 0, 0), so any crop, flip and image can be read back off a batch.
    """

    def __init__(self, size=256):
        rows = torch.arange(1, 33).view(1, 32, 1).expand(size, 32, 32)
        cols = torch.arange(1, 33).view(1, 1, 32).expand(size, 32, 32)
        index = torch.arange(size).view(size, 1, 1).expand(size, 32, 32)
        pixels = torch.stack([rows, cols, index], dim=3)                    # (N, 32, 32, 3)
        self.data = pixels.to(torch.uint8).numpy()
        self.targets = [i % 10 for i in range(size)]

    def __len__(self):
        return len(self.targets)


def pixels(images):
    """Undo the normalisation: (B, 3, 32, 32) float -> the uint8 values as longs."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return torch.round((images * std + mean) * 255).long()


def read_back(images):
    """(image index, dy, dx, flip) of each image of a CoordinateImages batch.

    The centre pixel is inside the image for every crop: its row says dy, its column and its
    right neighbour's say dx and whether the crop was mirrored.
    """
    values = pixels(images)
    index = values[:, 2, 16, 16]
    dy = values[:, 0, 16, 16] - 1 + 4 - 16            # padded row of output row 16, less 16
    flip = values[:, 1, 16, 17] < values[:, 1, 16, 16]
    source_column = torch.where(flip, torch.tensor(15), torch.tensor(16))  # 31 - 16 when mirrored
    dx = values[:, 1, 16, 16] - 1 + 4 - source_column
    return index, dy, dx, flip


def draws(loader, epochs):
    """Everything read back from `epochs` epochs of `loader`, concatenated."""
    parts = [read_back(images) + (labels,) for _ in range(epochs) for images, labels in loader]
    return [torch.cat(column) for column in zip(*parts)]


class DeviceLoaderTest(unittest.TestCase):
    def test_an_unaugmented_batch_equals_the_test_transform_exactly(self):
        dataset = SyntheticCIFAR(50, seed=3, transform=test_transform())
        loader = DeviceLoader(dataset, 16, CPU, shuffle=False, augment=False)
        batches = list(loader)
        self.assertEqual(len(loader), 4)
        self.assertEqual([len(labels) for _, labels in batches], [16, 16, 16, 2])
        images = torch.cat([images for images, _ in batches])
        labels = torch.cat([labels for _, labels in batches])
        self.assertEqual((images.shape, images.dtype, labels.dtype),
                         ((50, 3, 32, 32), torch.float32, torch.int64))
        expected = torch.stack([dataset[i][0] for i in range(50)])
        self.assertTrue(torch.equal(images, expected))
        self.assertEqual(labels.tolist(), dataset.targets)

    def test_channels_last_changes_the_layout_not_the_values(self):
        dataset = SyntheticCIFAR(20, seed=1)
        plain = next(iter(DeviceLoader(dataset, 20, CPU, seed=5)))[0]
        nhwc = next(iter(DeviceLoader(dataset, 20, CPU, seed=5, channels_last=True)))[0]
        self.assertTrue(nhwc.is_contiguous(memory_format=torch.channels_last))
        self.assertTrue(plain.is_contiguous())
        self.assertTrue(torch.equal(plain, nhwc))

    def test_labels_follow_images_and_each_crop_is_torchvisions(self):
        dataset = CoordinateImages()
        images, labels = next(iter(DeviceLoader(dataset, 64, CPU, seed=0)))
        index, dy, dx, flip = read_back(images)
        self.assertEqual(labels.tolist(), [dataset.targets[i] for i in index.tolist()])
        self.assertEqual(len(set(index.tolist())), 64)  # shuffled, no image twice
        normalize = test_transform().transforms[1]
        for b in range(64):  # the lab's transforms with these offsets, one image at a time
            image = TF.pad(Image.fromarray(dataset.data[int(index[b])]), 4)
            image = TF.crop(image, int(dy[b]), int(dx[b]), 32, 32)
            if flip[b]:
                image = TF.hflip(image)
            self.assertTrue(torch.equal(images[b], normalize(TF.to_tensor(image))), f"image {b}")

    def test_crop_offsets_are_uniform_over_81_positions_and_flips_half(self):
        loader = DeviceLoader(CoordinateImages(), 128, CPU, seed=0)
        _, dy, dx, flip, _ = draws(loader, epochs=40)        # 10,240 draws
        self.assertTrue(((0 <= dy) & (dy <= 8) & (0 <= dx) & (dx <= 8)).all())
        counts = torch.bincount(dy * 9 + dx, minlength=81).double()
        expected = len(dy) / 81
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        self.assertLess(chi2, CHI2_80_P001)
        self.assertGreater(counts.min().item(), 0)
        self.assertAlmostEqual(flip.double().mean().item(), 0.5, delta=0.02)  # 4 sd

    def test_a_fresh_draw_each_epoch_and_the_same_batches_from_the_same_seed(self):
        dataset = CoordinateImages()
        first = draws(DeviceLoader(dataset, 64, CPU, seed=7), epochs=2)
        again = draws(DeviceLoader(dataset, 64, CPU, seed=7), epochs=2)
        other = draws(DeviceLoader(dataset, 64, CPU, seed=8), epochs=2)
        for a, b in zip(first, again):
            self.assertTrue(torch.equal(a, b))
        self.assertFalse(torch.equal(first[0], other[0]))
        index, dy, dx, flip, _ = first
        epoch1, epoch2 = slice(0, 256), slice(256, 512)
        self.assertFalse(torch.equal(index[epoch1], index[epoch2]))  # a new order
        # Per image, its augmentation in epoch 1 against epoch 2: equal 1 time in 162.
        draw = dy * 18 + dx * 2 + flip.long()
        by_image = [torch.empty(256, dtype=torch.long) for _ in range(2)]
        for epoch, part in enumerate((epoch1, epoch2)):
            by_image[epoch][index[part]] = draw[part]
        self.assertLess((by_image[0] == by_image[1]).double().mean().item(), 0.05)

    def test_a_subset_and_an_image_folder_give_their_own_images(self):
        dataset = SyntheticCIFAR(40, seed=2, transform=test_transform())
        subset = seeded_subset(dataset, 10, seed=4)
        images, labels = next(iter(DeviceLoader(subset, 10, CPU, shuffle=False, augment=False)))
        self.assertTrue(torch.equal(images, torch.stack([image for image, _ in subset])))
        self.assertEqual(labels.tolist(), [label for _, label in subset])
        with tempfile.TemporaryDirectory() as root:
            for k, name in enumerate(["cat", "cat", "dog"]):
                folder = Path(root, name)
                folder.mkdir(exist_ok=True)
                Image.fromarray(dataset.data[k]).save(folder / f"{k}.png")  # lossless
            folder_set = datasets.ImageFolder(root, transform=test_transform())
            images, labels = next(iter(DeviceLoader(folder_set, 3, CPU, shuffle=False,
                                                    augment=False)))
            self.assertTrue(torch.equal(images, torch.stack([image for image, _ in folder_set])))
            self.assertEqual(labels.tolist(), [0, 0, 1])
            Image.new("RGB", (28, 28)).save(Path(root, "dog", "small.png"))
            with self.assertRaisesRegex(DataError, "one size"):
                DeviceLoader(datasets.ImageFolder(root), 3, CPU)

    def test_a_data_set_it_cannot_read_says_what_to_use(self):
        class Plain(Dataset):
            def __len__(self):
                return 1

        with self.assertRaisesRegex(DataError, "--loader torch"):
            DeviceLoader(Plain(), 1, CPU)


class SharedMemoryTest(TempDirTest):
    def test_a_full_dev_shm_is_one_line_that_says_what_to_do(self):
        # A private mount namespace with a /dev/shm of 64 KiB: one batch of 16 images does not fit.
        mount = "mount -t tmpfs -o size=64k tmpfs /dev/shm"
        try:
            probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True,
                                   text=True, timeout=60)
        except OSError as error:
            self.skipTest(f"unshare cannot run here: {error}")
        if probe.returncode != 0:
            self.skipTest("no private mount namespace with a small /dev/shm here (unshare -m "
                          f"and mount need root): {probe.stderr.strip()}")
        command = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$0" "$@"', sys.executable,
                   str(HERE / "lab.py"), "c2", "--dataset", "synthetic", "--train-size", "64",
                   "--test-size", "20", "--batch-size", "16", "--epochs", "1",
                   "--num-workers", "2", "--out", self.out]
        done = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
        self.assertIn("lab.py: error: the DataLoader's workers ran out of shared memory in "
                      "/dev/shm (it holds 0.0625 MiB): use --num-workers 0", done.stderr)
        self.assertIn("--shm-size", done.stderr)

    def test_a_stop_mid_handoff_leaves_no_traceback_from_the_worker(self):
        def fail(error):
            raise error

        def thread_failing_with(error):
            return threading.Thread(target=fail, args=(error,))

        printed = []
        handoff = thread_failing_with(ConnectionResetError("the main process stopped"))
        with mock.patch.object(threading, "excepthook", printed.append), \
                mock.patch.object(resource_sharer._resource_sharer, "_thread", handoff):
            data.quiet_broken_handoffs(worker_id=0)  # as each worker does when it starts
            failing = [handoff, thread_failing_with(ConnectionResetError("another thread's")),
                       thread_failing_with(EOFError("another thread's"))]
            for thread in failing:
                thread.start()
                thread.join()
            resource_sharer._resource_sharer._thread = thread_failing_with(ValueError("a bug"))
            resource_sharer._resource_sharer._thread.start()
            resource_sharer._resource_sharer._thread.join()
        self.assertEqual([str(args.exc_value) for args in printed],
                         ["another thread's", "another thread's", "a bug"])


if __name__ == "__main__":
    unittest.main()
