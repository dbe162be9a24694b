"""A detector pool that leaves no room for reading is refused before the stream starts, with the numbers;
a stream that stops moving ends with Ray Data's account of each stage instead of hanging."""

from __future__ import annotations

import time

import pytest

from detbatch.config import ConfigError
from detbatch.detect.driver import run_detect
from detbatch.detect.config import InferenceConfig
from detbatch.detect.resources import auto_pool_size, placement_problem, resolve_pool
from detbatch.errors import RunFailed

TWO_CPUS = [{"CPU": 2.0, "memory": 1e9, "node:10.0.0.1": 1.0, "object_store_memory": 1e9}]


def test_the_issues_case_two_single_cpu_actors_on_two_cpus_leave_nothing_to_decode():
    problem = placement_problem(TWO_CPUS, {"CPU": 1.0}, 2, {"CPU": 1.0})
    assert problem is not None and "leave at most 0 CPU" in problem and "inference.decode_cpus" in problem
    assert placement_problem(TWO_CPUS, {"CPU": 0.75}, 2, {"CPU": 0.5}) is None  # docs/detect.md's CPU layout
    assert placement_problem(TWO_CPUS, {"CPU": 1.0}, 1, {"CPU": 1.0}) is None


def test_actors_that_do_not_fit_are_named_with_the_cluster():
    two_nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0}]
    problem = placement_problem(two_nodes, {"CPU": 1.0, "GPU": 1.0}, 2, {"CPU": 0.5})
    assert "needs 2 actors of 1 CPU, 1 GPU each" in problem and "holds only 1" in problem
    assert placement_problem(two_nodes, {"CPU": 1.0, "GPU": 1.0}, 1, {"CPU": 0.5}) is None
    # custom resources pin actors: one slot per node means one actor per node
    slots = [{"CPU": 2.0, "slot": 1.0}, {"CPU": 2.0, "slot": 1.0}]
    assert placement_problem(slots, {"CPU": 1.0, "slot": 1.0}, 2, {"CPU": 1.0}) is None
    assert "holds only 2" in placement_problem(slots, {"CPU": 1.0, "slot": 1.0}, 3, {"CPU": 1.0})


def test_decode_room_is_looked_for_on_every_node():
    # the pool fills the first node; the second still has room to read
    nodes = [{"CPU": 2.0}, {"CPU": 1.0}]
    assert placement_problem(nodes, {"CPU": 1.0}, 2, {"CPU": 1.0}) is None
    assert placement_problem(nodes, {"CPU": 1.0}, 3, {"CPU": 1.0}) is not None


# --- the pool a cluster gets: inference's auto settings ----------------------------------------------------

GPU_NODES = [{"CPU": 16.0, "GPU": 2.0, "memory": 1e11}, {"CPU": 16.0, "GPU": 4.0, "accelerator_type:H200": 1.0},
             {"CPU": 8.0}]


def test_auto_pool_size_is_one_actor_per_gpu_and_cpus_but_decodes_on_cpu_nodes():
    assert auto_pool_size(GPU_NODES, {"CPU": 2.0, "GPU": 1.0}, 1.0) == 6  # the CPU-only node holds none
    assert auto_pool_size(GPU_NODES, {"CPU": 2.0, "GPU": 0.5}, 1.0) == 4 + 7  # (16 - 1) // 2 CPUs hold 7, not 8
    assert auto_pool_size([{"CPU": 4.0, "GPU": 8.0}], {"CPU": 1.0, "GPU": 1.0}, 1.0) == 3  # CPUs run out first
    # CPU nodes: every core but one decode task's, one single-threaded actor each (docs/detect.md)
    assert auto_pool_size([{"CPU": 16.0}, {"CPU": 8.0}], {"CPU": 1.0}, 1.0) == 15 + 7
    assert auto_pool_size(TWO_CPUS, {"CPU": 0.75}, 0.5) == 2  # the dev machine's measured layout
    assert auto_pool_size(TWO_CPUS, {"CPU": 4.0}, 1.0) == 1  # at least one
    assert auto_pool_size([{"CPU": 8.0, "slot": 1.0}, {"CPU": 8.0}], {"CPU": 1.0, "slot": 1.0}, 1.0) == 1


def test_resolve_pool_on_gpu_and_cpu_clusters():
    inf = InferenceConfig(max_actors="auto", cpus_per_actor=2)
    gpu = resolve_pool(inf, GPU_NODES)
    assert (gpu.device, gpu.gpus, gpu.max_actors, gpu.decode, gpu.overlap, gpu.threads) == ("cuda", 1.0, 6, "gpu", True, 2)
    cpu = resolve_pool(inf, [{"CPU": 9.0}])
    assert (cpu.device, cpu.gpus, cpu.max_actors, cpu.decode, cpu.overlap) == ("cpu", 0.0, 4, "cpu", False)
    assert resolve_pool(InferenceConfig(max_actors="auto", min_actors=8), [{"CPU": 4.0}]).max_actors == 8
    forced = resolve_pool(InferenceConfig(decode="gpu", overlap_commit=True, max_actors=3), [{"CPU": 4.0}])
    assert (forced.device, forced.decode, forced.overlap, forced.max_actors) == ("cpu", "gpu", True, 3)
    on_cpu = resolve_pool(InferenceConfig(device="cpu"), GPU_NODES)
    assert (on_cpu.device, on_cpu.gpus, on_cpu.decode, on_cpu.overlap) == ("cpu", 0.0, "cpu", False)
    with pytest.raises(ConfigError, match="inference.device is 'cuda' but the Ray cluster has no GPU"):
        resolve_pool(InferenceConfig(device="cuda"), [{"CPU": 4.0}])


def test_max_actors_takes_auto_or_a_number():
    assert InferenceConfig(max_actors="auto").max_actors == "auto"
    assert InferenceConfig(max_actors="4").max_actors == 4  # from --set
    with pytest.raises(ValueError):
        InferenceConfig(max_actors=0)
    with pytest.raises(ValueError):
        InferenceConfig(max_actors="many")


@pytest.fixture
def images(tmp_path):
    from detbatch.datasets.synth import synthesize

    synthesize(str(tmp_path / "shapes"), 4, seed=5)
    return str(tmp_path / "shapes" / "images")


def _config(images, out, **overrides):
    from detbatch.config import load_config
    from detbatch.detect.config import DetectConfig

    return load_config(DetectConfig, None, {
        "input.uri": images, "output.uri": out, "model.name": "ssdlite320_mobilenet_v3_large", "model.weights": "none",
        "inference.device": "cpu", **overrides})  # fmt: skip


@pytest.mark.usefixtures("ray_cluster")
def test_a_pool_that_takes_every_cpu_is_refused_before_anything_runs(images, tmp_path):
    # the shared test cluster: two nodes of 2 CPUs; four 1-CPU actors leave nothing to read with
    config = _config(images, str(tmp_path / "out"), **{"inference.min_actors": 4, "inference.max_actors": 4})
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot run on this cluster: 4 detector actors of 1 CPU leave at most 0 CPU"):
        run_detect(config)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out" / "images").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_stalled_stream_stops_and_says_what_waits(images, tmp_path):
    """With autoscaling declared, the same pool starts (nodes might come) and the stream stalls: it must stop
    after stall_timeout_s with Ray Data's per-stage account, not hang; a rerun that fits then finishes."""
    out = str(tmp_path / "out")
    stalled = _config(images, out, **{"inference.min_actors": 2, "inference.max_actors": 2, "inference.cpus_per_actor": 2,
                                      "inference.autoscaling": True, "inference.stall_timeout_s": 15})
    started = time.monotonic()
    with pytest.raises(RunFailed, match=r"(?s)made no progress for inference.stall_timeout_s=15.*Operators still running"):
        run_detect(stalled)
    assert time.monotonic() - started < 240
    summary = run_detect(_config(images, out))
    assert summary.images_ok == 4
