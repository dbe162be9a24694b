"""cluster.yaml against Ray's own validation, its security settings (with deploy/*.json), and what
`ray job submit --working-dir .` uploads."""

from __future__ import annotations

import copy
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
WORLD = ("0.0.0.0/0", "::/0")
DASHBOARD_PORT = 8265


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


def _load_json(name: str):
    return json.loads((DEPLOY / name).read_text())


def _opens(rule: dict, port: int) -> bool:
    """Whether an EC2 ingress rule (IpPermissions entry) admits TCP ``port``."""
    if rule["IpProtocol"] in ("-1", "all"):
        return True
    return rule["IpProtocol"] == "tcp" and rule.get("FromPort", 0) <= port <= rule.get("ToPort", 65535)


def _security_problems(config: dict, ingress: list[dict], worker_policy: dict) -> list[str]:
    """What would expose the cluster: each problem one line, none for a config safe to `ray up`."""
    from ray.autoscaler._private.aws.config import DEFAULT_RAY_INSTANCE_PROFILE

    problems = []
    for rule in ingress:
        cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])] + [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
        for port in (22, DASHBOARD_PORT):
            if _opens(rule, port) and set(cidrs) & set(WORLD):
                problems.append(f"port {port} open to the internet")
        if set(cidrs) - {"ADMIN_CIDR"}:
            problems.append(f"ingress from {sorted(set(cidrs) - {'ADMIN_CIDR'})}, not only ADMIN_CIDR")
        if cidrs and (rule["IpProtocol"] != "tcp" or (rule.get("FromPort"), rule.get("ToPort")) != (22, 22)):
            problems.append("ADMIN_CIDR reaches more than SSH")
        groups = {g["GroupId"] for g in rule.get("UserIdGroupPairs", [])}
        if groups - {"CLUSTER_SG_ID"}:
            problems.append(f"ingress from other security groups {sorted(groups - {'CLUSTER_SG_ID'})}")
    if not any(g["GroupId"] == "CLUSTER_SG_ID" for r in ingress for g in r.get("UserIdGroupPairs", [])
               if r["IpProtocol"] == "-1"):
        problems.append("no all-traffic rule between the cluster's nodes")

    if "--dashboard-host=127.0.0.1" not in " ".join(config["head_start_ray_commands"]):
        problems.append("dashboard not on the head's loopback")
    provider = config["provider"]
    if not provider.get("use_internal_ips"):
        problems.append("the launcher uses public IPs (provider.use_internal_ips)")
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        interfaces = node.get("NetworkInterfaces", [])
        groups = node.get("SecurityGroupIds", []) + [g for i in interfaces for g in i.get("Groups", [])]
        if groups != ["CLUSTER_SG_ID"]:
            # Without one, the launcher creates its default group, which opens SSH to 0.0.0.0/0.
            problems.append(f"{name}: security group {groups}, not the cluster's own")
        if name != config["head_node_type"]:
            if not interfaces or any(i.get("AssociatePublicIpAddress", True) for i in interfaces):
                problems.append(f"{name}: workers get public IPs")
            profile = node.get("IamInstanceProfile", {})
            if not profile or DEFAULT_RAY_INSTANCE_PROFILE in (profile.get("Name", "") + profile.get("Arn", "")):
                problems.append(f"{name}: the launcher's default instance profile (EC2 and S3 full access)")
        metadata = node.get("MetadataOptions", {})
        if metadata.get("HttpTokens") != "required" or metadata.get("HttpPutResponseHopLimit") != 1:
            problems.append(f"{name}: IMDSv2 not required with hop limit 1")

    for statement in worker_policy["Statement"]:
        actions, resources = statement["Action"], statement["Resource"]
        if statement["Effect"] != "Allow" or not all(a.startswith("s3:") and "*" not in a for a in actions):
            problems.append(f"worker policy: {actions}, not only named S3 actions")
        if not all(r.startswith(("arn:aws:s3:::INPUT_BUCKET", "arn:aws:s3:::OUTPUT_BUCKET")) for r in resources):
            problems.append(f"worker policy: {resources}, not only the two buckets")
        if set(actions) - {"s3:GetObject", "s3:ListBucket"} and any("INPUT_BUCKET" in r for r in resources):
            problems.append("worker policy: the input bucket is writable")
    return problems


@pytest.fixture(scope="module")
def security() -> tuple[list[dict], dict]:
    return _load_json("security-group-ingress.json"), _load_json("worker-policy.json")


def test_cluster_is_closed_to_the_internet_and_least_privilege(cluster_config, security):
    assert _security_problems(cluster_config, *security) == []


def _node(c: dict, name: str) -> dict:
    return c["available_node_types"][name]["node_config"]


@pytest.mark.parametrize(
    "break_it, problem",
    [
        (lambda c, i, p: i[0]["IpRanges"].append({"CidrIp": "0.0.0.0/0"}), "port 22 open to the internet"),
        (lambda c, i, p: i.append({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
                                   "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}), "port 8265 open to the internet"),
        (lambda c, i, p: i[0].update(FromPort=0, ToPort=65535), "ADMIN_CIDR reaches more than SSH"),
        (lambda c, i, p: _node(c, "head").pop("NetworkInterfaces"), "head: security group []"),
        (lambda c, i, p: c["head_start_ray_commands"].__setitem__(
            1, c["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")), "dashboard not on the head's loopback"),
        (lambda c, i, p: _node(c, "gpu")["NetworkInterfaces"][0].update(AssociatePublicIpAddress=True),
         "gpu: workers get public IPs"),
        (lambda c, i, p: _node(c, "gpu")["NetworkInterfaces"][0].pop("AssociatePublicIpAddress"),
         "gpu: workers get public IPs"),
        (lambda c, i, p: c["provider"].pop("use_internal_ips"), "provider.use_internal_ips"),
        (lambda c, i, p: _node(c, "gpu")["MetadataOptions"].update(HttpTokens="optional"), "gpu: IMDSv2"),
        (lambda c, i, p: _node(c, "head")["MetadataOptions"].update(HttpPutResponseHopLimit=2), "head: IMDSv2"),
        (lambda c, i, p: _node(c, "gpu").update(IamInstanceProfile={"Name": "ray-autoscaler-v1"}),
         "gpu: the launcher's default instance profile"),
        (lambda c, i, p: _node(c, "gpu").pop("IamInstanceProfile"), "gpu: the launcher's default instance profile"),
        (lambda c, i, p: p["Statement"][1]["Action"].append("s3:PutObject"), "the input bucket is writable"),
        (lambda c, i, p: p["Statement"][3].update(Action=["s3:*"]), "not only named S3 actions"),
        (lambda c, i, p: p["Statement"][3].update(Resource=["*"]), "not only the two buckets"),
    ],
)
def test_security_check_catches_an_exposed_copy(cluster_config, security, break_it, problem):
    config, ingress, policy = copy.deepcopy((cluster_config, *security))
    break_it(config, ingress, policy)
    assert any(problem in p for p in _security_problems(config, ingress, policy)), problem


def test_launcher_takes_the_network_interfaces_as_given(cluster_config):
    """The launcher's own first step for NetworkInterfaces (no AWS call): subnet and groups from each
    interface, so it neither picks a subnet nor creates its default security group."""
    from ray.autoscaler._private.aws.config import _configure_from_network_interfaces

    configured = _configure_from_network_interfaces(_validate(cluster_config))
    for name, subnet in (("head", "PUBLIC_SUBNET_ID"), ("gpu", "PRIVATE_SUBNET_ID")):
        node = configured["available_node_types"][name]["node_config"]
        assert node["SubnetIds"] == [subnet] and node["SecurityGroupIds"] == ["CLUSTER_SG_ID"]


def test_deploy_files_use_the_documented_placeholders():
    scaling = (REPO / "docs" / "scaling.md").read_text()
    for name, placeholders in [
        ("security-group-ingress.json", ["ADMIN_CIDR", "CLUSTER_SG_ID"]),
        ("worker-policy.json", ["INPUT_BUCKET", "OUTPUT_BUCKET"]),
        ("head-pass-role-policy.json", ["ACCOUNT_ID"]),
    ]:
        text = (DEPLOY / name).read_text()
        assert f"deploy/{name}" in scaling, f"docs/scaling.md does not say how to apply deploy/{name}"
        for placeholder in placeholders:
            assert placeholder in text and placeholder in scaling, (name, placeholder)
    assert "0.0.0.0/0" not in (DEPLOY / "security-group-ingress.json").read_text()


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
