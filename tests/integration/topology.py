"""The production topology of docker/docker-compose.yml, built from real programs on loopback:
PostgreSQL and Redis (Debian packages), moto's S3 server (the lake and MLflow's artifacts), an
MLflow tracking server on PostgreSQL, and Airflow with the CeleryExecutor: api-server (Airflow 3
workers report through its execution API), scheduler, dag-processor, and three Celery workers, two
on the `default` queue (mapped instances spread over them) and one on the `gpu` queue.

Everything listens on 127.0.0.1 on free ports, keeps its data and logs under one work folder,
runs as its own system user where the harness runs as root, and is stopped (SIGTERM, then
SIGKILL) when the `Topology` context exits. Waits poll with deadlines; none is a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GPU_WORKER_HOST = "gpu-worker.integration"
DEFAULT_WORKER_HOST = "default-worker.integration"
DEFAULT_WORKER_2_HOST = "default-worker-2.integration"
S3_KEY = "integration-key"  # moto accepts any credentials; these never leave loopback


def missing_programs() -> list[str]:
    """System programs the topology needs that this machine lacks (see .ci/integration.sh)."""
    needed = {"postgres": _pg_bin("postgres"), "initdb": _pg_bin("initdb"), "redis-server": "redis-server"}
    return [name for name, program in needed.items() if not (program and shutil.which(program))]


def _pg_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(what: str, check: Callable[[], Any], deadline_s: float, topology: Topology | None = None) -> Any:
    """Poll `check` until it returns a truthy value; fail naming `what` after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(Exception):
            if result := check():
                return result
        if topology is not None:
            topology.raise_if_a_service_died()
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def http_json(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Topology:
    """Start with `with Topology(workdir) as topo:`; `topo.env` is what a client needs."""

    workdir: Path
    dags_folder: Path = REPO / "dags"
    services: list[Service] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    scratch: list[Path] = field(default_factory=list)

    # ---- lifecycle --------------------------------------------------------------
    def __enter__(self) -> Topology:
        try:
            self._start()
        except BaseException:
            print(self.log_tails(), file=sys.stderr)
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in ("postgres", "redis", "s3", "mlflow", "api")}
        self._start_postgres()
        self._start_redis()
        self._start_s3()
        self._start_mlflow()
        self._start_airflow()

    def stop(self) -> None:
        """SIGTERM every service, newest first; SIGKILL what is still up after 20 s."""
        for service in reversed(self.services):
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGTERM)
        for service in reversed(self.services):
            try:
                service.process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait(10)
        for service in self.services:  # children a service left behind (task runners, gunicorn)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)

    def raise_if_a_service_died(self) -> None:
        for service in self.services:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited with {service.process.returncode}")

    def log_tails(self, lines: int = 60) -> str:
        parts = []
        for service in self.services:
            text = service.log.read_text(errors="replace").splitlines() if service.log.exists() else []
            parts.append(f"===== {service.name} ({service.log}) =====\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    # ---- helpers ----------------------------------------------------------------
    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, user: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        log = self.workdir / f"{name}.log"
        handle = log.open("wb")
        as_user = user if user and os.geteuid() == 0 else None
        process = subprocess.Popen(
            argv,
            env=env or self._base_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() reaches its children
            user=as_user,
            group=pwd.getpwnam(as_user).pw_gid if as_user else None,
            extra_groups=[] if as_user else None,
            cwd=cwd or self.workdir,
        )
        handle.close()
        self.services.append(Service(name, process, log))

    def _owned_dir(self, name: str, user: str) -> Path:
        """A fresh folder `user` owns (a root-run harness gives services their own users)."""
        path = Path(tempfile.mkdtemp(prefix=f"clickstream-{name}-"))
        self.scratch.append(path)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def run(self, argv: list[str], deadline_s: float = 300) -> str:
        """Run a client command with the topology's environment; its output, or a failure with it."""
        result = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=deadline_s, check=False, cwd=self.workdir
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def _base_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
        return {k: v for k, v in os.environ.items() if k in keep} | {"PYTHONUNBUFFERED": "1"}

    # ---- services -----------------------------------------------------------------
    def _start_postgres(self) -> None:
        data = self._owned_dir("pg", "postgres")
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(data / "data"), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
            user="postgres" if os.geteuid() == 0 else None,
            cwd=data,
        )
        port = self.ports["postgres"]
        self._spawn(
            "postgres",
            [_pg_bin("postgres"), "-D", str(data / "data"), "-p", str(port), "-k", str(data),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            user="postgres",
            cwd=data,
        )
        import psycopg2

        def connect() -> Any:
            return psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")

        conn = wait_until("PostgreSQL to accept connections", connect, 60, self)
        conn.autocommit = True
        with conn.cursor() as cursor:
            for database in ("airflow", "mlflow"):
                cursor.execute(f"CREATE DATABASE {database}")
        conn.close()

    def postgres_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.ports['postgres']}/{database}"

    def _start_redis(self) -> None:
        data = self._owned_dir("redis", "redis")
        port = self.ports["redis"]
        self._spawn(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
             "--save", "", "--appendonly", "no"],
            user="redis",
            cwd=data,
        )
        import redis

        wait_until("Redis to answer PING", lambda: redis.Redis(port=port).ping(), 30, self)

    def _start_s3(self) -> None:
        port = self.ports["s3"]
        self._spawn("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)])
        endpoint = f"http://127.0.0.1:{port}"
        self.s3_env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY)
        wait_until("the S3 endpoint", lambda: client.list_buckets() is not None, 60, self)
        for bucket in ("lake", "mlflow"):
            client.create_bucket(Bucket=bucket)
        self.s3 = client

    def _start_mlflow(self) -> None:
        port = self.ports["mlflow"]
        env = self._base_env() | self.s3_env | {"MLFLOW_S3_ENDPOINT_URL": self.s3_env["AWS_ENDPOINT_URL"]}
        self._spawn(
            "mlflow",
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", self.postgres_url("mlflow"),
             "--artifacts-destination", "s3://mlflow/artifacts", "--serve-artifacts"],
            env=env,
        )
        self.tracking_uri = f"http://127.0.0.1:{port}"
        wait_until("the MLflow server", lambda: urllib.request.urlopen(f"{self.tracking_uri}/health"), 120, self)

    def _start_airflow(self) -> None:
        home = self.workdir / "airflow"
        hooks = self.workdir / "hooks"  # per-worker hostnames, so a task instance names its worker
        hooks.mkdir(exist_ok=True)
        hosts = (
            ("gpu_host", GPU_WORKER_HOST),
            ("default_host", DEFAULT_WORKER_HOST),
            ("default2_host", DEFAULT_WORKER_2_HOST),
        )
        for module, host in hosts:
            (hooks / f"{module}.py").write_text(f"def hostname() -> str:\n    return {host!r}\n")
        api = f"http://127.0.0.1:{self.ports['api']}"
        self.api = f"{api}/api/v2"
        self.env = self._base_env() | self.s3_env | {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres_url("airflow"),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": self.postgres_url("airflow", "db+postgresql+psycopg2"),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the run this test triggers
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "CLICKSTREAM_HOME": str(self.workdir / "clickstream"),
            "CLICKSTREAM_LAKE": "s3://lake/lake",
            "CLICKSTREAM_BUCKETS": "4",  # the bucket-wise tasks fan out over both default workers
            "CLICKSTREAM_LANDING": str(self.workdir / "landing"),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "PYTHONPATH": str(REPO),
        }
        airflow = str(BIN / "airflow")
        self.run([airflow, "db", "migrate"], deadline_s=300)
        self.run([airflow, "pools", "set", "gpu", "1", "training on GPU workers"])
        for name, command in (
            ("api-server", ["api-server"]),
            ("scheduler", ["scheduler"]),
            ("dag-processor", ["dag-processor"]),
        ):
            self._spawn(name, [airflow, *command], env=self.env)
        workers = (
            ("worker-default", "default", "default_host"),
            ("worker-default-2", "default", "default2_host"),
            ("worker-gpu", "gpu", "gpu_host"),
        )
        for name, queue, module in workers:
            env = self.env | {
                "PYTHONPATH": f"{hooks}:{REPO}",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{module}.hostname",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
            self._spawn(
                name,
                [airflow, "celery", "worker", "--queues", queue, "--concurrency", "1",
                 "--celery-hostname", f"{name}@%h", "--without-mingle", "--without-gossip"],
                env=env,
            )
        wait_until("the Airflow API server", lambda: http_json(f"{self.api}/version"), 180, self)

    # ---- Airflow client ---------------------------------------------------------------
    def trigger(
        self, dag_id: str, logical_date: str, run_id: str, conf: dict[str, Any] | None = None,
        deadline_s: float = 240,
    ) -> None:
        """Unpause `dag_id` once the dag-processor has serialised it, then trigger one run."""
        wait_until(f"{dag_id} to be parsed", lambda: http_json(f"{self.api}/dags/{dag_id}"), deadline_s, self)
        http_json(f"{self.api}/dags/{dag_id}", "PATCH", {"is_paused": False})
        http_json(
            f"{self.api}/dags/{dag_id}/dagRuns",
            "POST",
            {"dag_run_id": run_id, "logical_date": logical_date, "conf": conf or {}},
        )

    def wait_for_run(self, dag_id: str, run_id: str, deadline_s: float) -> str:
        """The run's final state (success or failed), polled through the REST API."""
        url = f"{self.api}/dags/{dag_id}/dagRuns/{run_id}"
        return wait_until(
            f"run {run_id} to finish",
            lambda: (state := http_json(url)["state"]) in ("success", "failed") and state,
            deadline_s,
            self,
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return http_json(f"{self.api}/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
