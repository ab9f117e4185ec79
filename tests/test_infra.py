"""Deployment files, checked by the tools that will read them where those run offline.

* ray_cluster.yaml: Ray's own cluster-launcher validation (`prepare_config` fills
  in the AWS defaults as `ray up` does, `validate_config` applies ray-schema.json
  and the cross-field rules); a copy with a misspelt key must be rejected.
* infra/kuberay: Ray's own KubeRay autoscaler translation of the RayCluster (it
  validates the result the same way); the RayJob's entrypoint is parsed by
  wganctl's own CLI, so a renamed option breaks this test, not the job.
* infra/mlflow: compose and Kubernetes manifests parsed and checked for what the
  deployment relies on (served artifacts, database backend, loopback ports,
  secrets only by reference); `docker compose config` too where a compose
  plugin is installed (this machine has the docker client without it).
* `wganctl server`: option checks that need no server (the running server is
  covered by tests/test_cluster.py).
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def launcher_validate(config: dict) -> dict:
    """What `ray up` does to a config before touching the cloud."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_ray_cluster_yaml_is_valid():
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    prepared = launcher_validate(config)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head, workers = types[prepared["head_node_type"]], [t for n, t in types.items() if n != prepared["head_node_type"]]
    assert head["max_workers"] == 0 and "GPU" not in head["resources"]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    assert gpu and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 8, "GPU workers must autoscale from 0"

    setup = "\n".join(prepared["setup_commands"])
    assert re.search(r"torch==[\d.]+ torchvision==[\d.]+", setup), "torch and torchvision as one pinned pair"
    assert "-e ~/wganctl" in setup and prepared["file_mounts"]["~/wganctl"] == "."
    assert "MLFLOW_TRACKING_URI=https://" in setup and "s3://" in setup and "RAY_AUTH_MODE=token" in setup
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--dashboard-host=127.0.0.1" in "\n".join(prepared["head_start_ray_commands"])
    assert not re.search(r"(?i)(password|secret|aws_access_key_id)\s*[=:]", (ROOT / "ray_cluster.yaml").read_text())

    # Ray's validation is strict: a misspelt key and a wrong type are refused.
    misspelt = copy.deepcopy(config)
    misspelt["available_node_types"]["gpu_worker"]["max_worker"] = 8
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        launcher_validate(misspelt)
    wrong_type = copy.deepcopy(config)
    wrong_type["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        launcher_validate(wrong_type)
    unknown_head = copy.deepcopy(config)
    unknown_head["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="head_node_type"):
        launcher_validate(unknown_head)


def parse_wganctl(command_line: str) -> typer.Context:
    """Parse a `wganctl ...` command line with the real CLI, without running the command."""
    from pipelines.cli import app

    args = shlex.split(command_line)
    assert args[0] == "wganctl", command_line
    group = typer.main.get_command(app)
    command = group.get_command(typer.Context(group), args[1])
    assert command is not None, f"no wganctl command {args[1]!r}"
    return command.make_context(args[1], args[2:])


def test_kuberay_manifests_pass_rays_kuberay_translation_and_the_cli():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    docs = load_all(ROOT / "infra/kuberay/raycluster.yaml")
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    autoscaling = _derive_autoscaling_config_from_ray_cr(cluster)  # validates with ray-schema.json
    head = autoscaling["available_node_types"]["headgroup"]
    gpu = autoscaling["available_node_types"]["gpu"]
    assert "GPU" not in head["resources"] and head["resources"]["CPU"] >= 1
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 8

    pods = [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http://mlflow.")
            for name, entry in env.items():
                if SECRET_NAME.search(name) or name.endswith("USERNAME"):
                    assert "valueFrom" in entry and "value" not in entry, f"{name} must come from a Secret"

    job = load_all(ROOT / "infra/kuberay/rayjob.yaml")[0]
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    params = parse_wganctl(job["spec"]["entrypoint"]).params
    assert params["workers"] == 8 and params["gpu"] is True
    assert params["data"].startswith("s3://") and params["storage_path"].startswith("s3://")

    # A wrong option in the entrypoint is caught the same way.
    with pytest.raises(typer.TyperException, match="No such option"):
        parse_wganctl(job["spec"]["entrypoint"].replace("--workers", "--worker-count"))


def compose_file() -> dict:
    return yaml.safe_load((ROOT / "infra/mlflow/docker-compose.yml").read_text())


def test_mlflow_compose_serves_artifacts_from_s3_with_secrets_from_the_environment():
    compose = compose_file()
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    command = " ".join(services["mlflow"]["command"])
    assert "--serve-artifacts" in command and "--artifacts-destination=s3://" in command
    assert "--backend-store-uri=postgresql://mlflow@postgres" in command, "no password in the URI"
    assert "--app-name=basic-auth" in command
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) or key == "MINIO_ROOT_USER" or key == "AWS_ACCESS_KEY_ID":
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}.{key}: a ${{VAR:?}} reference"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert (ROOT / "infra/mlflow" / services["mlflow"]["build"] / "Dockerfile").is_file()
    ini = (ROOT / "infra/mlflow/basic_auth.ini").read_text()
    assert "admin_password" not in ini.replace("# admin_password", "")


def test_compose_file_passes_docker_compose_config():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` plugin here; the structure is checked by the test above")
    env = {"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD": "x", "MINIO_ROOT_USER": "x", "MINIO_ROOT_PASSWORD": "x",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "x", "MLFLOW_FLASK_SERVER_SECRET_KEY": "x"}
    compose = str(ROOT / "infra/mlflow/docker-compose.yml")
    result = subprocess.run([docker, "compose", "-f", compose, "config", "-q"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([docker, "compose", "-f", compose, "config", "-q"], env={"PATH": env["PATH"]},
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


def test_mlflow_kubernetes_manifests_reference_their_secrets():
    docs = load_all(ROOT / "infra/mlflow/kubernetes.yaml")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "ConfigMap", "Deployment", "Service"}
    for doc in docs:
        assert doc["apiVersion"] in ("v1", "apps/v1") and doc["metadata"]["namespace"] == "wganctl"
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert kinds["Service"]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert kinds["Service"]["spec"]["type"] == "ClusterIP"
    container = pod["spec"]["containers"][0]
    args = " ".join(container["args"])
    assert "--serve-artifacts" in args and "--artifacts-destination=s3://" in args
    assert re.search(r"--backend-store-uri=postgresql://mlflow@[^:/]+", args) and ":5432/mlflow" in args
    for entry in container["env"]:
        if SECRET_NAME.search(entry["name"]) and entry["name"] != "MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
            assert "secretKeyRef" in entry.get("valueFrom", {}), f"{entry['name']} must come from a Secret"
    mounted = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounted["basic-auth"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert "database_uri = postgresql://mlflow@" in kinds["ConfigMap"]["data"]["basic_auth.ini"]


def test_server_settings_default_to_loopback_a_database_and_served_artifacts(tmp_path):
    from pipelines.tracking.server import ServerSettings, exposure_warning, server_command
    from wgan.errors import UserError

    settings = ServerSettings().resolved(tmp_path)
    assert settings.tracking_uri == "http://127.0.0.1:5000"
    command = server_command(settings)
    assert command[1:4] == ["-m", "mlflow", "server"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow-server.db'}"
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "mlartifacts")
    assert exposure_warning("127.0.0.1", False) is None and exposure_warning("localhost", False) is None
    assert "--basic-auth" in exposure_warning("0.0.0.0", False)
    assert "basic-auth" not in exposure_warning("10.0.0.5", True)
    with pytest.raises(UserError, match="file store"):
        ServerSettings(backend_store_uri="file:///tmp/mlruns").resolved(tmp_path)
    with pytest.raises(UserError, match="port"):
        ServerSettings(port=70000).resolved(tmp_path)


def test_wganctl_server_refuses_a_busy_port_before_starting_mlflow(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([str(Path(__import__("sys").executable).parent / "wganctl"), "server",
                                 "--port", str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "mlflow-server.db").exists()
