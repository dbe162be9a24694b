"""cluster.yaml against Ray's own validation, and what `ray job submit --working-dir .` uploads."""

from __future__ import annotations

import copy
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _validate(config: dict) -> dict:
    """What `ray up` does before it touches AWS: fill in the provider's defaults, check against ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validation(cluster_config):
    prepared = _validate(cluster_config)
    assert prepared["head_node_type"] == "head" and prepared["provider"]["type"] == "aws"


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda c: c.update(max_worker=4), "Additional properties are not allowed"),
        (lambda c: c["available_node_types"]["gpu"].pop("resources"), "'resources' is a required property"),
        (lambda c: c["available_node_types"]["gpu"].update(min_workers="zero"), "is not of type 'integer'"),
    ],
)
def test_rays_validation_catches_a_broken_copy(cluster_config, break_it, message):
    import jsonschema

    broken = copy.deepcopy(cluster_config)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError, match=message):
        _validate(broken)


def test_gpu_workers_autoscale_from_zero(cluster_config):
    gpu = cluster_config["available_node_types"]["gpu"]
    assert gpu["min_workers"] == 0 and 1 <= gpu["max_workers"] <= cluster_config["max_workers"]
    assert cluster_config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert 1 <= cluster_config["idle_timeout_minutes"] <= 30


def test_nodes_run_the_tested_versions_with_token_auth(cluster_config):
    from importlib.metadata import version

    from detbatch.runtime import WORKER_ENV

    assert cluster_config["docker"]["image"].startswith(f"rayproject/ray:{version('ray')}-")
    setup = " ".join(cluster_config["setup_commands"])
    for package in ("torch", "torchvision"):  # the local build tag (+cu130, +cpu) is the wheel's, not the version's
        assert f'"{package}=={version(package).split("+")[0]}"' in setup
    assert cluster_config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cluster_config[key])
        assert "RAY_AUTH_MODE=token" in start and "ray start" in start
        # Workers run as detbatch's local Ray runs them (jemalloc, no decay).
        for name, value in WORKER_ENV.items():
            assert f"{name}={value}" in start, f"{key} must export {name}={value}"


def _upload_names(root: Path, tmp_path: Path) -> tuple[list[str], int]:
    """The files `ray job submit --working-dir ROOT` would upload, built by Ray's own packaging code."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    captured: dict = {}
    upload_working_dir_if_needed(
        {"working_dir": str(root)},
        include_gitignore=True,
        upload_fn=lambda working_dir, excludes, is_file=False: captured.update(excludes=excludes),
    )
    package = tmp_path / "package.zip"
    create_package(str(root), package, include_gitignore=True, excludes=captured["excludes"])
    return zipfile.ZipFile(package).namelist(), package.stat().st_size


def test_job_upload_leaves_out_environments_outputs_and_data(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    for name in (".gitignore", ".rayignore"):
        shutil.copy(REPO / name, root / name)
    kept = ["jobs/detect.py", "detbatch/detect/driver.py", "configs/detect.yaml", "cluster.yaml"]
    dropped = [".venv/lib/torch.py", ".git/HEAD", "demo-output/detections/a.parquet", "data/coco/img.jpg",
               "model.pt", "exports/detector.onnx", "detbatch/__pycache__/x.pyc", "shards/s-000.tar"]
    for name in kept + dropped:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    names, _ = _upload_names(root, tmp_path)
    assert set(kept) <= set(names)
    assert not [n for n in names if n in dropped], names


def test_this_checkout_uploads_small(tmp_path):
    names, size = _upload_names(REPO, tmp_path)
    assert "jobs/detect.py" in names and "configs/detect.yaml" in names
    assert not [n for n in names if n.startswith((".venv/", ".git/", "demo-output/"))]
    assert size < 2 * 2**20, f"{size / 2**20:.1f} MiB: {sorted(names)[:50]}"
