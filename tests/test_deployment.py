"""The production stack in docker/ is well formed: every service the topology needs is there,
health-checked and started in dependency order, the GPU worker reserves a GPU and serves only
the `gpu` queue, the lake and MLflow are configuration (S3 and the tracking server), secrets
come only from the .env file, and the Kubernetes pod template asks for a GPU.

Checked at the YAML level always; `docker compose config` and kubectl's local parse run where
those clients exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
POD_TEMPLATE = DOCKER / "k8s" / "pod-template-train.yaml"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "gpu-worker",
)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _env_example() -> dict[str, str]:
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_the_stack_has_every_service_of_the_topology(services: dict[str, Any]) -> None:
    expected = {"postgres", "redis", "minio", "minio-init", "mlflow", "airflow-init", *AIRFLOW_SERVICES}
    assert expected <= set(services)


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    one_shot = {"minio-init", "airflow-init"}
    for name, service in services.items():
        if name not in one_shot:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_services_start_only_after_what_they_need_is_healthy_or_done(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        needs = services[name]["depends_on"]
        assert needs["postgres"]["condition"] == "service_healthy", name
        assert needs["redis"]["condition"] == "service_healthy", name
        assert needs["airflow-init"]["condition"] == "service_completed_successfully", name
        assert needs["minio-init"]["condition"] == "service_completed_successfully", name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["gpu-worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    for name, service in services.items():  # no service waits on one that is not defined
        assert set(service.get("depends_on", {})) <= set(services), name


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_serves_only_the_gpu_queue(services: dict[str, Any]) -> None:
    gpu = services["gpu-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu-worker"
    command = gpu["command"]
    assert command[:2] == ["celery", "worker"]
    assert command[command.index("--queues") + 1] == "gpu"
    default = services["airflow-worker"]["command"]
    assert default[default.index("--queues") + 1] == "default"
    assert "deploy" not in services["airflow-worker"]


def test_lake_landing_and_tracking_are_configuration_pointing_at_the_stack(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["CLICKSTREAM_LAKE"].startswith("s3://")
        assert env["CLICKSTREAM_LANDING"] == "/data/landing"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert "/data/landing" in " ".join(services[name]["volumes"])
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


def test_uis_listen_on_localhost_only(services: dict[str, Any]) -> None:
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published, "the UIs should be reachable from the host"
    assert all(port.startswith("127.0.0.1:") for port in published)


def test_secrets_come_only_from_the_env_file_which_documents_each_one() -> None:
    text = COMPOSE.read_text()
    required = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+):\?", text))
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))  # $${X} is the container's
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_FERNET_KEY"} <= required
    assert used <= set(_env_example())
    for line in text.splitlines():  # a secret-looking key never has a literal value
        match = re.match(r"\s*([A-Z_]*(PASSWORD|SECRET|KEY)[A-Z_]*):\s*(\S+)", line)
        if match:
            assert match.group(3).startswith(("${", "'${", '"${')), line


@pytest.mark.parametrize("dockerfile", ["Dockerfile.airflow", "Dockerfile.gpu-worker", "Dockerfile.mlflow"])
def test_images_install_the_tested_pins(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    assert "constraints.txt" in text
    if dockerfile == "Dockerfile.airflow":
        assert text.startswith("#") and "FROM apache/airflow:3.3.2-python3.11" in text
    if dockerfile == "Dockerfile.gpu-worker":
        assert "nvidia/cuda:" in text and "download.pytorch.org/whl/${TORCH_CUDA}" in text
        assert '"--queues", "gpu"' in text


def test_docker_compose_config_accepts_the_stack() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker client without the compose plugin (`docker compose` unavailable)")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_training_pod_template_requests_a_gpu_for_the_base_container() -> None:
    pod = yaml.safe_load(POD_TEMPLATE.read_text())
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]  # the name Airflow requires
    assert base["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert base["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["restartPolicy"] == "Never"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    assert {"secretRef"} <= {key for source in base["envFrom"] for key in source}
    mounts = {m["name"] for m in base["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["spec"]["volumes"]}


def test_kubectl_parses_the_training_pod_template_offline() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl on this machine")
    result = subprocess.run(
        ["kubectl", "label", "--local", "-f", str(POD_TEMPLATE), "checked=yes", "-o", "name"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pod/clickstream-train"


def test_the_training_image_preloads_the_jemalloc_it_installs() -> None:
    text = (DOCKER / "Dockerfile.gpu-worker").read_text()
    preload = re.search(r"^ENV LD_PRELOAD=(\S+)$", text, re.M)
    assert preload is not None
    installed = text.index("libjemalloc2")
    linked = re.search(r"ln -s \"\$\(find /usr/lib -name libjemalloc\.so\.2 \| head -n 1\)\" (\S+)", text)
    assert linked is not None and linked.group(1) == preload.group(1)
    assert installed < linked.start() < preload.start()  # never preloaded before it exists
