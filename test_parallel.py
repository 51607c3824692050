"""Tests for parallel.py on the CPU (gloo), with real processes on 127.0.0.1 and tiny sizes:
gradient averaging, the sampler, the collectives, the world, bad input and a failing rank under
torchrun, and lab.py under torchrun.

    python -m unittest test_parallel

Processes are started by torchrun (`python -m torch.distributed.run`) or by
torch.multiprocessing.spawn with the variables torchrun would set; each test takes under a
minute, most of it importing torch in every process.
"""

import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from dataclasses import asdict
from unittest import mock

import torch
import torch.multiprocessing as mp
import torch.nn as nn

import ddp
import lab
import parallel
import report
from resnet import ResNet18
from testkit import TINY, free_port, quiet_module, run_lab, torchrun_environment
from train import make_optimizer, train_step

setUpModule = quiet_module

# A string, not testkit's Path: FailureMidRunTest writes it into a script as {HERE!r}.
HERE = os.path.dirname(os.path.abspath(__file__))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TINY_C2 = ["c2", "--dataset", "synthetic", "--train-size", "24", "--test-size", "8",
           "--batch-size", "4", "--epochs", "1", "--num-workers", "0"]
SHORT_TIMEOUT = datetime.timedelta(seconds=60)  # a broken test fails in a minute, not five


def join(rank, world_size, port):
    os.environ.update(torchrun_environment(rank, world_size, port))
    return parallel.start("cpu", timeout=SHORT_TIMEOUT)


def run(command, limit_s=120, env=None):
    """(exit status, stdout + stderr, seconds) of a command run from this folder."""
    begin = time.perf_counter()
    done = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=limit_s,
                          env=env)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - begin


# ---- the processes the spawn tests start (module level, so that spawn can find them)


def images_and_labels(count):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(count, 3, 32, 32, generator=generator,
                         dtype=torch.float64)                        # (count, 3, 32, 32)
    return images, torch.randint(0, 10, (count,), generator=generator)


def fresh_model():
    # float64: the step moves the weights by ~1e-3 of their size, so the update is compared
    # too; in float32 rounding alone put it ~1.5e-6 off (measured), too near the 1e-5 bound
    # to tell; in float64 ~3e-15, leaving the bound to what DDP's averaging gets right.
    torch.manual_seed(0)
    return ResNet18(batch_norm=False).double()


def one_ddp_step(rank, port, batch, folder):
    world = join(rank, 2, port)
    try:
        model = fresh_model()
        optimizer = make_optimizer("sgd", model.parameters(), lr=0.1)
        model = parallel.wrap(model, world)
        images, labels = images_and_labels(2 * batch)
        mine = slice(rank * batch, (rank + 1) * batch)  # this rank's half of the batch
        train_step(model, optimizer, nn.CrossEntropyLoss(), images[mine], labels[mine])
        torch.save(nn.utils.parameters_to_vector(model.parameters()).detach(),
                   os.path.join(folder, f"rank{rank}.pt"))
    finally:
        parallel.stop()


def collectives(rank, port, folder):
    """reduce_epoch on known figures, and same_initial_weights with equal and unequal seeds."""
    world = join(rank, 2, port)
    try:
        figures = [
            {"train_loss": 1.0, "train_accuracy": 50.0, "images": 100, "data_time": 1.0,
             "train_time": 2.0, "other_time": 0.5, "epoch_time": 3.5, "first_batch_time": 0.1,
             "last_train_time": 0.3},
            {"train_loss": 2.0, "train_accuracy": 25.0, "images": 300, "data_time": 2.0,
             "train_time": 1.0, "other_time": 0.25, "epoch_time": 3.25, "first_batch_time": 0.2,
             "last_train_time": None},
        ][rank]
        found = {"epoch": parallel.reduce_epoch(figures, world)}
        torch.manual_seed(0)
        found["same_hash"] = parallel.same_initial_weights(nn.Linear(4, 3), world)
        torch.manual_seed(rank)  # rank 1 draws other weights
        try:
            parallel.same_initial_weights(nn.Linear(4, 3), world)
        except parallel.DistributedError as error:
            found["error"] = str(error)
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as file:
            json.dump(found, file)
    finally:
        parallel.stop()


# ---- the tests


class GradientAveragingTest(unittest.TestCase):
    def test_two_ranks_step_like_one_process_with_twice_the_batch(self):
        # DDP averages the two ranks' gradients; each is the mean over `batch` images, so the
        # average is the mean over 2 * batch: the gradient one process gets from all of them.
        batch = 4
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(one_ddp_step, args=(free_port(), batch, folder), nprocs=2)
            rank0, rank1 = (torch.load(os.path.join(folder, f"rank{r}.pt")) for r in (0, 1))
        images, labels = images_and_labels(2 * batch)
        initial = nn.utils.parameters_to_vector(fresh_model().parameters()).detach()

        def single_process(count):
            model = fresh_model()
            optimizer = make_optimizer("sgd", model.parameters(), lr=0.1)
            train_step(model, optimizer, nn.CrossEntropyLoss(), images[:count], labels[:count])
            return nn.utils.parameters_to_vector(model.parameters()).detach()

        whole = single_process(2 * batch)
        self.assertTrue(torch.equal(rank0, rank1), "the ranks took different steps")
        torch.testing.assert_close(rank0, whole, rtol=1e-5, atol=0)
        update, expected = rank0 - initial, whole - initial
        self.assertLess((update - expected).norm() / expected.norm(), 1e-5)
        # The check can fail: a process that saw only rank 0's half steps elsewhere.
        half = single_process(batch) - initial
        self.assertGreater((half - expected).norm() / expected.norm(), 1e-2)


class SamplerTest(unittest.TestCase):
    def worlds(self, size):
        return [parallel.World(rank=r, local_rank=r, world_size=size, local_world_size=size,
                          backend="gloo", device="cpu", threads=1) for r in range(size)]

    def epoch(self, samplers, epoch):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        return [list(sampler) for sampler in samplers]

    def test_every_image_once_per_epoch(self):
        dataset = list(range(12))
        samplers = [parallel.sampler(dataset, world, seed=0) for world in self.worlds(3)]
        shares = self.epoch(samplers, 0)
        self.assertEqual(sorted(sum(shares, [])), dataset)
        self.assertEqual([len(share) for share in shares], [4, 4, 4])
        self.assertNotEqual(shares, self.epoch(samplers, 1), "set_epoch did not reshuffle")
        self.assertEqual(shares, self.epoch(samplers, 0), "the same epoch, another order")

    def test_uneven_data_is_padded(self):
        # 10 images over 3 ranks: 4 each, so 2 images are seen twice (as the docstring warns).
        shares = self.epoch([parallel.sampler(list(range(10)), w, 0) for w in self.worlds(3)], 0)
        everything = sum(shares, [])
        self.assertEqual(set(everything), set(range(10)))
        self.assertEqual(len(everything), 12)


class CollectivesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(collectives, args=(free_port(), folder), nprocs=2)
            cls.found = []
            for rank in (0, 1):
                with open(os.path.join(folder, f"rank{rank}.json")) as file:
                    cls.found.append(json.load(file))

    def test_reduce_epoch_weights_by_images_and_takes_the_slowest(self):
        expected = {"train_loss": (1.0 * 100 + 2.0 * 300) / 400,
                    "train_accuracy": 100 * (50 + 75) / 400, "images": 400,
                    "data_time": 2.0, "train_time": 2.0, "other_time": 0.5,
                    "epoch_time": 3.5, "first_batch_time": 0.2,
                    "rank_mean": {"data_time": 1.5, "train_time": 1.5, "other_time": 0.375,
                                  "epoch_time": 3.375, "first_batch_time": 0.15}}
        for found in self.found:
            epoch = found["epoch"]
            for key, value in expected.items():
                if key == "rank_mean":
                    for name, mean in value.items():
                        self.assertAlmostEqual(epoch["rank_mean"][name], mean, places=12)
                else:
                    self.assertAlmostEqual(epoch[key], value, places=12, msg=key)

    def test_initial_weights_checked_across_ranks(self):
        self.assertEqual(self.found[0]["same_hash"], self.found[1]["same_hash"])
        self.assertRegex(self.found[0]["same_hash"], r"^[0-9a-f]{16}$")
        for found in self.found:  # every rank raises, naming the rank that differs
            self.assertIn("differ from rank 0's", found["error"])
            self.assertTrue(found["error"].endswith("on rank 1"), found["error"])


class WorldTest(unittest.TestCase):
    def test_world_facts_and_their_line(self):
        world = parallel.World(rank=1, local_rank=1, world_size=2, local_world_size=2,
                          backend="gloo", device="cpu", threads=1)
        facts = parallel.world_facts(world, 128, sync_bn=False)
        self.assertEqual(facts["global_batch"], 256)
        self.assertFalse(world.is_main)
        self.assertEqual(report.describe_world(facts), "2 processes × batch 128 = global batch "
                         "256, gloo, 1 thread each; the learning rate is not scaled")

    def test_check_request(self):
        parallel.check_request("cpu", False, 2, gpus=0)
        parallel.check_request("cuda", True, 2, gpus=2)
        for request in [("cpu", True, 2, 0), ("cuda", False, 3, 2), ("cuda", False, 1, 0),
                        ("mps", False, 1, 0)]:
            with self.assertRaises(parallel.DistributedError):
                parallel.check_request(*request)


def worker_command(**changes):
    """The ddp study's measuring process as ddp_study starts it, with a Config of `changes`."""
    config = json.dumps(asdict(lab.Config(**changes)))
    return [sys.executable, "lab.py", ddp.WORKER, config, os.path.join(tempfile.gettempdir(),
                                                                       "never-written.json")]


class BadInputTest(unittest.TestCase):
    def test_every_rank_fails_with_the_same_line_before_waiting(self):
        port = free_port()
        with tempfile.TemporaryDirectory() as folder:
            ranks = [subprocess.Popen([sys.executable, "lab.py", *TINY_C2, "--sync-bn",
                                       "--out", folder],
                                      cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True,
                                      env={**os.environ, **torchrun_environment(r, 2, port)})
                     for r in (0, 1)]
            outputs = [rank.communicate(timeout=90) for rank in ranks]
        self.assertEqual([rank.returncode for rank in ranks], [2, 2])
        lines = [stderr.strip().splitlines() for _, stderr in outputs]
        self.assertEqual(len(lines[0]), 1, lines[0])
        self.assertEqual(lines[0], lines[1])
        self.assertIn("SyncBatchNorm needs GPU tensors", lines[0][0])

    def test_a_lone_rank_does_not_wait_for_its_partner(self):
        # Rank 0 of a declared world of 2, whose rank 1 never comes: validation comes first,
        # so it stops without joining the process group (whose timeout is minutes); it waits
        # only parallel.STOP_WAIT for its partner to print the same line.
        env = {**os.environ, **torchrun_environment(0, 2, free_port())}
        with tempfile.TemporaryDirectory() as folder:
            status, output, seconds = run([sys.executable, "lab.py", *TINY_C2, "--sync-bn",
                                           "--out", folder], limit_s=90, env=env)
        self.assertEqual(status, 2)
        self.assertLess(seconds, parallel.STOP_WAIT.total_seconds() + 30)

    def test_under_torchrun(self):
        status, output, seconds = run(TORCHRUN + ["--standalone", "--nproc_per_node", "2",
                                                  *worker_command(device="mps")[1:]])
        self.assertNotEqual(status, 0)
        self.assertEqual(output.count(ddp.ERROR_PREFIX + "data-parallel training runs on"), 2,
                         output)
        self.assertRegex(output, r"exitcode\s*:\s*2")  # torchrun's report names the status
        self.assertLess(seconds, 60)

    def test_not_under_torchrun(self):
        env = {k: v for k, v in os.environ.items() if k not in parallel.TORCHRUN_VARIABLES}
        status, output, _ = run(worker_command(), env=env)
        self.assertEqual(status, 2)
        self.assertEqual(output.strip().splitlines(), [output.strip()])
        self.assertIn("not started by torchrun", output)


class FailureMidRunTest(unittest.TestCase):
    def test_a_failing_rank_stops_the_others(self):
        script = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {HERE!r})
            import torch.distributed as dist
            import parallel
            world = parallel.start("cpu")  # the five-minute timeout: not what stops rank 0 here
            if world.rank == 1:
                raise RuntimeError("rank 1 fails on purpose")
            dist.barrier()  # rank 0 waits here for rank 1
            print("rank 0 passed the barrier")
        """)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "fail.py")
            with open(path, "w") as file:
                file.write(script)
            status, output, seconds = run(TORCHRUN + ["--standalone", "--nproc_per_node", "2",
                                                      path])
        self.assertNotEqual(status, 0)
        self.assertIn("rank 1 fails on purpose", output)
        self.assertNotIn("rank 0 passed the barrier", output)
        self.assertLess(seconds, 60)


class LabUnderTorchrunTest(unittest.TestCase):
    """lab.py itself under torchrun: one world, rank 0 alone prints and writes."""

    def test_two_processes_train_c2_and_rank_0_alone_writes(self):
        with tempfile.TemporaryDirectory() as folder:
            status, output, _ = run(TORCHRUN + ["--standalone", "--nproc_per_node", "2",
                                                "lab.py", *TINY_C2, "--out", folder])
            self.assertEqual(status, 0, output)
            with open(os.path.join(folder, "c2.json")) as file:
                result = json.load(file)
        self.assertEqual(output.count("(saved to"), 1, output)  # rank 1 printed nothing
        self.assertEqual(result["distributed"]["world_size"], 2)
        self.assertEqual(result["distributed"]["batch_per_rank"], 4)
        self.assertEqual(result["distributed"]["global_batch"], 8)
        self.assertFalse(result["distributed"]["lr_scaled"])
        self.assertEqual(result["epochs"][0]["images"], 24)  # 12 per rank, summed
        self.assertIn("global batch 8", output)

    def test_bad_input_fails_on_every_rank_with_one_line(self):
        for args, message in ((["c3"], "c3 does not run under torchrun"),
                              ([*TINY_C2, "--sync-bn"], "SyncBatchNorm needs GPU tensors")):
            status, output, seconds = run(TORCHRUN + ["--standalone", "--nproc_per_node", "2",
                                                      "lab.py", *args])
            self.assertNotEqual(status, 0)
            self.assertEqual(output.count("lab.py: error: " + message), 2, output)
            self.assertNotIn('lab.py", line', output)  # no traceback of ours; torchrun's own
            self.assertRegex(output, r"exitcode\s*:\s*2")  # report names each rank's status
            self.assertLess(seconds, 60)

    def test_a_slow_rank_still_prints_its_line(self):
        # The race on purpose: rank 0 starts 5 s late, so rank 1 fails first. torchrun stops
        # every process once one exits; parallel.stop_together keeps rank 1 waiting until
        # rank 0 has printed its line too.
        wrapper = textwrap.dedent(f"""
            import os, runpy, sys, time
            sys.path.insert(0, {HERE!r})
            if os.environ["RANK"] == "0":
                time.sleep(5)
            sys.argv = ["lab.py", *sys.argv[1:]]
            runpy.run_path({os.path.join(HERE, "lab.py")!r}, run_name="__main__")
        """)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "slow_rank_0.py")
            with open(path, "w") as file:
                file.write(wrapper)
            status, output, seconds = run(TORCHRUN + ["--standalone", "--nproc_per_node", "2",
                                                      path, "c3"])
        self.assertNotEqual(status, 0)
        self.assertEqual(output.count("lab.py: error: c3 does not run under torchrun"), 2,
                         output)
        self.assertLess(seconds, 60)

    def test_two_torchruns_on_one_machine_make_one_world(self):
        # With the c10d rendezvous, ranks follow the order the nodes join (torchrun ignores
        # --node-rank), so both nodes name the same folder and whichever is rank 0 writes it.
        port = free_port()
        with tempfile.TemporaryDirectory() as folder:
            command = TORCHRUN + ["--nnodes", "2", "--nproc-per-node", "1",
                                  "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                                  "--rdzv-id", "test-lab", "--local-addr", "127.0.0.1",
                                  "lab.py", *TINY_C2, "--out", folder]
            nodes = [subprocess.Popen(command, cwd=HERE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for _ in range(2)]
            outputs = [node.communicate(timeout=180)[0] for node in nodes]
            self.assertEqual([node.returncode for node in nodes], [0, 0], outputs)
            with open(os.path.join(folder, "c2.json")) as file:
                result = json.load(file)
        self.assertEqual(result["distributed"]["world_size"], 2)
        self.assertTrue(result["complete"])


class LauncherPortTest(unittest.TestCase):
    def test_a_launchers_busy_master_port_is_one_line(self):
        with socket.socket() as holder, tempfile.TemporaryDirectory() as out, \
                mock.patch.dict(os.environ, torchrun_environment(0, 1, 0)):
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            os.environ["MASTER_PORT"] = str(port)
            threads = torch.get_num_threads()
            self.addCleanup(torch.set_num_threads, threads)  # start() shares out the cores
            status, _, err = run_lab("c2", *TINY, "--out", out)
        self.assertEqual(status, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(f"lab.py: error: cannot start the process group at 127.0.0.1:{port} "
                      "(MASTER_ADDR:MASTER_PORT): the port is in use by another program; "
                      "choose a free MASTER_PORT", err)
        self.assertNotIn("Traceback", err)
        self.assertFalse(torch.distributed.is_initialized())


if __name__ == "__main__":
    unittest.main()
