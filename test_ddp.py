"""Tests for ddp.py on the CPU (gloo), with real processes on 127.0.0.1 and tiny sizes.

    python -m unittest test_ddp

Processes are started by torchrun (`python -m torch.distributed.run`) or by
torch.multiprocessing.spawn with the variables torchrun would set; each test takes under a
minute, most of it importing torch in every process.
"""

import contextlib
import datetime
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from types import SimpleNamespace
from unittest import mock

import torch
import torch.multiprocessing as mp
import torch.nn as nn

import ddp
import machine
import parallel
import render
from resnet import ResNet18
from train import make_optimizer, train_step

HERE = os.path.dirname(os.path.abspath(__file__))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
SHORT_TIMEOUT = datetime.timedelta(seconds=60)  # a broken test fails in a minute, not five


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_environment(rank, world_size, port):
    """What torchrun would give process `rank` of a one-machine world."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}


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


class ArithmeticTest(unittest.TestCase):
    def test_scaling_figures(self):
        self.assertEqual(ddp.speedup(300.0, 200.0), 1.5)
        self.assertIsNone(ddp.speedup(300.0, None))
        self.assertIsNone(ddp.speedup(None, 200.0))
        self.assertEqual(ddp.efficiency(1.5, 2), 0.75)
        self.assertIsNone(ddp.efficiency(None, 2))
        gradient = 4 * 11_173_962  # ResNet-18's float32 gradient, 44.7 MB
        self.assertAlmostEqual(ddp.bus_bandwidth(gradient, 0.1, 2), gradient / 0.1)
        self.assertAlmostEqual(ddp.bus_bandwidth(gradient, 0.1, 4), 1.5 * gradient / 0.1)
        self.assertEqual(ddp.bus_bandwidth(gradient, 0.1, 1), 0)

    def test_summarize_record(self):
        record = {"world": {"world_size": 2, "backend": "gloo", "batch_per_rank": 8,
                            "global_batch": 16, "threads_per_rank": 1},
                  "init_time": 0.1, "steps": 2, "full_step": [0.5, 0.3],
                  "computation_step": [0.3, 0.3], "initial_weights_sha256": "0" * 16,
                  "final_loss": 2.0, "gradient_floats": 1000, "all_reduce_time": 0.002}
        run = ddp.summarize_record(record)
        self.assertAlmostEqual(run["images_per_second"], 16 * 2 / 0.8)
        self.assertAlmostEqual(run["communication_time"], 0.4 - 0.3)
        self.assertAlmostEqual(run["communication_share"], 0.25)
        self.assertAlmostEqual(run["all_reduce"]["algorithm_bandwidth"], 4000 / 0.002)
        self.assertAlmostEqual(run["all_reduce"]["bus_bandwidth"], 4000 / 0.002)

    def test_world_facts_and_their_line(self):
        world = parallel.World(rank=1, local_rank=1, world_size=2, local_world_size=2,
                          backend="gloo", device="cpu", threads=1)
        facts = parallel.world_facts(world, 128, sync_bn=False)
        self.assertEqual(facts["global_batch"], 256)
        self.assertFalse(world.is_main)
        self.assertEqual(render.describe_world(facts), "2 processes × batch 128 = global batch "
                         "256, gloo, 1 thread each; the learning rate is not scaled")

    def test_failure_reason_is_one_line(self):
        torchrun_summary = ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "
                            "\n=====\n  exitcode  : 1 (pid: 7)\n")
        worker = "Traceback (most recent call last):\n  ...\n"
        self.assertEqual(ddp.failure_reason(1, worker + ddp.ERROR_PREFIX + "rank 1: "
                                            "RuntimeError: boom\n" + torchrun_summary),
                         "rank 1: RuntimeError: boom")
        self.assertEqual(ddp.failure_reason(1, worker + "[rank0]: ModuleNotFoundError: No "
                                            "module named 'x'\n" + torchrun_summary),
                         "ModuleNotFoundError: No module named 'x'")
        self.assertEqual(ddp.failure_reason(-9, ""), "torchrun exited with status -9")

    def test_usable_cores_respects_a_cgroup_quota(self):
        affinity = len(os.sched_getaffinity(0))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "cpu.max")
            for line, expected in [("max 100000", affinity), ("150000 100000", 1),
                                   ("50000 100000", 1), (f"{100000 * (affinity + 4)} 100000",
                                                         affinity)]:
                with open(path, "w") as file:
                    file.write(line + "\n")
                self.assertEqual(machine.usable_cores(path), expected, line)
        self.assertEqual(machine.usable_cores(os.path.join(HERE, "no such file")), affinity)

    def test_check_request(self):
        parallel.check_request("cpu", False, 2, gpus=0)
        parallel.check_request("cuda", True, 2, gpus=2)
        for request in [("cpu", True, 2, 0), ("cuda", False, 3, 2), ("cuda", False, 1, 0),
                        ("mps", False, 1, 0)]:
            with self.assertRaises(parallel.DistributedError):
                parallel.check_request(*request)


class RenderTest(unittest.TestCase):
    def run_record(self, n, batch, computation, communication, ok=True):
        if not ok:
            return {"world_size": n, "batch_per_rank": batch, "global_batch": n * batch,
                    "ok": False, "reason": "out of memory"}
        step = computation + communication
        return {"world_size": n, "batch_per_rank": batch, "global_batch": n * batch,
                "ok": True, "images_per_second": n * batch / step, "speedup": None,
                "efficiency": None, "computation_time": computation,
                "communication_time": communication, "communication_share": communication / step,
                "backend": "nccl", "threads_per_rank": None, "init_time": 1.0,
                "wall_time": 9.0,
                "all_reduce": None if n == 1 else {"floats": 10, "bytes": 40, "seconds": 0.05,
                                                   "algorithm_bandwidth": 800.0,
                                                   "bus_bandwidth": 800.0}}

    def test_the_explanation_follows_the_numbers(self):
        runs = [self.run_record(1, 32, 0.010, 0.0), self.run_record(1, 512, 0.100, 0.0),
                self.run_record(2, 32, 0.010, 0.030), self.run_record(2, 512, 0.100, 0.030),
                self.run_record(4, 512, 0.1, 0, ok=False)]
        result = {"study_device": "cuda", "steps": 20, "warmup": 5, "usable_cores": 16,
                  "batch_sizes": [32, 512], "runs": runs}
        text = render.render_ddp(result)
        self.assertIn("more than half of the step at 2 × 32 (", text)  # 75%, and 23% at 512
        self.assertIn("from 75.0% to 23.1%", text)
        self.assertIn("4 × batch 512: failed: out of memory", text)
        rows = [line for line in text.splitlines() if line.startswith("| ")]
        self.assertEqual(len(rows), 5)  # the header and the 4 runs that finished
        self.assertIn("In 2 of the 2 runs with more than one process a step lost less", text)
        self.assertNotIn("read it as zero", text)
        runs[2] = self.run_record(2, 32, 0.010, 0.004)
        runs[3] = self.run_record(2, 512, 0.100, -0.002)
        text = render.render_ddp(result)
        self.assertIn("never takes half of a step", text)
        self.assertIn("read it as zero", text)
        self.assertIn("In 1 of the 2 runs with more than one process a step lost less", text)


class BadInputTest(unittest.TestCase):
    def test_every_rank_fails_with_the_same_line_before_waiting(self):
        port = free_port()
        ranks = [subprocess.Popen([sys.executable, "ddp.py", "check-start", "--sync-bn"],
                                  cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True,
                                  env={**os.environ, **torchrun_environment(r, 2, port)})
                 for r in (0, 1)]
        outputs = [rank.communicate(timeout=60) for rank in ranks]
        self.assertEqual([rank.returncode for rank in ranks], [2, 2])
        lines = [stderr.strip().splitlines() for _, stderr in outputs]
        self.assertEqual(len(lines[0]), 1, lines[0])
        self.assertEqual(lines[0], lines[1])
        self.assertIn("SyncBatchNorm needs GPU tensors", lines[0][0])

    def test_a_lone_rank_does_not_wait_for_its_partner(self):
        # Rank 0 of a declared world of 2, whose rank 1 never comes: validation comes first.
        env = {**os.environ, **torchrun_environment(0, 2, free_port())}
        status, output, seconds = run([sys.executable, "ddp.py", "check-start", "--sync-bn"],
                                      limit_s=60, env=env)
        self.assertEqual(status, 2)
        self.assertLess(seconds, 30)

    def test_under_torchrun(self):
        status, output, seconds = run(TORCHRUN + ["--standalone", "--nproc_per_node", "2",
                                                  "ddp.py", "check-start", "--sync-bn"])
        self.assertNotEqual(status, 0)
        self.assertIn(ddp.ERROR_PREFIX + "SyncBatchNorm needs GPU tensors", output)
        self.assertRegex(output, r"exitcode\s*:\s*2")  # torchrun's report names the status
        self.assertLess(seconds, 60)

    def test_not_under_torchrun(self):
        env = {k: v for k, v in os.environ.items() if k not in parallel.TORCHRUN_VARIABLES}
        status, output, _ = run([sys.executable, "ddp.py", "check-start"], env=env)
        self.assertEqual(status, 2)
        self.assertEqual(output.strip().splitlines(), [output.strip()])


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


TINY_C2 = ["c2", "--dataset", "synthetic", "--train-size", "24", "--test-size", "8",
           "--batch-size", "4", "--epochs", "1", "--num-workers", "0"]


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


class StudyTest(unittest.TestCase):
    def config(self, device):
        return SimpleNamespace(device=device, seed=0, batch_norm=True, lr=0.1, optimizer="sgd",
                               max_procs=2, ddp_batch_sizes=(2,), ddp_steps=1)

    def study(self, cfg, save=None):
        with contextlib.redirect_stderr(io.StringIO()):  # its progress lines
            return ddp.ddp_study(cfg, save)

    def test_a_tiny_study(self):
        saved = []
        result = self.study(self.config("cpu"), save=lambda r: saved.append(len(r["runs"])))
        self.assertEqual(saved, [1, 2])
        one, two = result["runs"]
        self.assertTrue(one["ok"] and two["ok"], result["runs"])
        self.assertEqual((one["world_size"], two["world_size"]), (1, 2))
        self.assertEqual(two["global_batch"], 4)
        self.assertEqual(one["speedup"], 1.0)
        self.assertAlmostEqual(two["speedup"],
                               two["images_per_second"] / one["images_per_second"])
        self.assertAlmostEqual(two["efficiency"], two["speedup"] / 2)
        self.assertIsNone(one["all_reduce"])
        self.assertEqual(two["all_reduce"]["bytes"], 4 * 11_173_962)
        self.assertIn("| processes |", render.render_ddp(result))

    @unittest.skipIf(torch.cuda.device_count() > 0, "needs a machine without a GPU")
    def test_failing_runs_are_kept_and_the_study_goes_on(self):
        result = self.study(self.config("cuda"))
        self.assertEqual([r["world_size"] for r in result["runs"]], [1, 2])
        for run in result["runs"]:
            self.assertFalse(run["ok"])
            self.assertEqual(run["reason"], "CUDA was asked for but torch sees no GPU on "
                                            "this machine")



class LauncherPortTest(unittest.TestCase):
    def test_a_launchers_busy_master_port_is_one_line(self):
        from test_lab import TINY, run_lab  # here: the processes spawned above need no lab.py
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
