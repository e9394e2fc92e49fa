"""The multi-node training manifest: what render_training makes of docker/k8s/train-nodes.yaml
(a headless Service and an Indexed Job that find each other), the values it refuses, and the two
kubectl calls of submit_training, against a fake kubectl (no cluster, no network)."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
import yaml

from clickstream.pipeline.core.errors import SettingError, TrainingError
from clickstream.pipeline.orchestrate.train_nodes import render_training, submit_training

NAME = "train-0512"
IMAGE = "registry.example.com/clickstream-gpu-worker:1.4"
START, END = dt.date(2014, 4, 1), dt.date(2014, 4, 28)


def _render(**overrides) -> str:
    values = {"name": NAME, "nodes": 3, "gpus": 2, "start": START, "end": END, "epochs": 7, "image": IMAGE}
    return render_training(**{**values, **overrides})


def _objects(manifest: str) -> tuple[dict, dict]:
    documents = [doc for doc in yaml.safe_load_all(manifest) if doc is not None]
    kinds = [doc["kind"] for doc in documents]
    assert sorted(kinds) == ["Job", "Service"], kinds
    by_kind = {doc["kind"]: doc for doc in documents}
    return by_kind["Service"], by_kind["Job"]


def _container(job: dict) -> dict:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _argv(container: dict) -> list[str]:
    return [str(part) for part in [*container.get("command", []), *container.get("args", [])]]


def test_given_three_nodes_when_rendered_then_a_headless_service_reaches_pod_zero_of_an_indexed_job():
    service, job = _objects(_render())

    assert service["spec"]["clusterIP"] == "None"  # the literal Kubernetes expects, not YAML null
    assert [port["port"] for port in service["spec"]["ports"]] == [29400]
    assert service["spec"]["ports"][0]["name"] == "rendezvous"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0
    pod = spec["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    selector = service["spec"]["selector"]
    assert selector, "a Service without a selector publishes no pod"
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert job["metadata"]["name"] == NAME


def test_given_three_nodes_when_rendered_then_every_pod_runs_train_with_its_index_and_pod_zeros_address():
    service, job = _objects(_render())
    container = _container(job)
    argv = _argv(container)

    assert "clickstream" in argv
    assert argv[argv.index("clickstream") + 1] == "train"
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert pairs["--nodes"] == "3"
    assert pairs["--node-rank"] == "$(JOB_COMPLETION_INDEX)"
    assert pairs["--rendezvous"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}:29400"
    assert pairs["--rendezvous"] == f"{NAME}-0.{NAME}:29400"
    assert pairs["--gpus"] == "2"
    assert pairs["--device"] == "auto"
    # $(VAR) in args expands only for variables the container declares
    declared = {env["name"]: env for env in container.get("env", [])}
    assert "JOB_COMPLETION_INDEX" in declared
    assert "job-completion-index" in declared["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]


def test_given_two_gpus_when_rendered_then_the_pod_asks_for_two_gpus_on_gpu_nodes_with_the_shared_settings():
    _, job = _objects(_render())
    pod = job["spec"]["template"]["spec"]
    container = _container(job)

    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert container["image"] == IMAGE
    assert pod["serviceAccountName"] == "clickstream-airflow-worker"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(toleration["key"] == "nvidia.com/gpu" for toleration in pod["tolerations"])
    sources = [next(iter(source.values()))["name"] for source in container["envFrom"]]
    assert sources == ["clickstream-config", "clickstream-secrets"]


def test_given_any_rendering_when_read_then_no_placeholder_is_left():
    for manifest in (_render(), _render(start=None, end=None, epochs=None)):
        assert "${" not in manifest


def test_given_a_window_and_epochs_when_rendered_then_every_node_gets_them_as_strings():
    argv = _argv(_container(_objects(_render())[1]))

    for flag, value in (("--start", "2014-04-01"), ("--end", "2014-04-28"), ("--epochs", "7")):
        assert argv[argv.index(flag) + 1] == value
    container = _container(_objects(_render())[1])
    assert all(isinstance(arg, str) for arg in container["args"]), container["args"]


def test_given_no_window_when_rendered_then_no_window_argument_is_passed():
    argv = _argv(_container(_objects(_render(start=None, end=None, epochs=None))[1]))

    assert not {"--start", "--end", "--epochs"} & set(argv)
    assert argv[-2:] == ["--device", "auto"]


def test_given_only_a_start_when_rendered_then_only_start_is_passed():
    argv = _argv(_container(_objects(_render(end=None, epochs=None))[1]))

    assert argv[argv.index("--start") + 1] == "2014-04-01"
    assert not {"--end", "--epochs"} & set(argv)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"nodes": 1}, "nodes"),
        ({"nodes": 0}, "nodes"),
        ({"gpus": 0}, "gpus"),
        ({"name": "Train-0512"}, "DNS-1123"),
        ({"name": "train_0512"}, "DNS-1123"),
        ({"name": "-train"}, "DNS-1123"),
        ({"name": "t" * 41}, "DNS-1123"),
        ({"name": ""}, "DNS-1123"),
        ({"start": END, "end": START}, "after"),
        ({"epochs": 0}, "epochs"),
        ({"image": "clickstream gpu\nkind: Pod"}, "image"),
    ],
)
def test_given_a_bad_value_when_rendered_then_a_one_line_setting_error_names_it(overrides, words):
    with pytest.raises(SettingError) as raised:
        _render(**overrides)

    message = str(raised.value)
    assert "\n" not in message
    assert words in message


def test_given_a_forty_character_name_when_rendered_then_it_is_accepted():
    name = "t" * 40
    service, job = _objects(_render(name=name))

    assert service["metadata"]["name"] == job["metadata"]["name"] == name


def _fake_kubectl(
    folder: Path, monkeypatch: pytest.MonkeyPatch, *, fail_on: str | None = None, reaches: str = "complete"
) -> Path:
    """A kubectl that appends its argv to <log>/argv, keeps the apply's stdin in <log>/stdin, and
    exits 1 with two stderr lines when its first argument is `fail_on`. A wait for a condition other
    than `reaches` never ends by itself (the Job never gets there)."""
    bin_dir, log = folder / "bin", folder / "log"
    bin_dir.mkdir()
    log.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$*" >> "$KUBE_LOG/argv"\n'
        'if [ "$1" = apply ]; then cat > "$KUBE_LOG/stdin"; fi\n'
        'if [ "$1" = "$KUBE_FAIL" ]; then\n'
        '  echo "Warning: something earlier" >&2\n'
        '  echo "error: the server refused $1" >&2\n'
        "  exit 1\n"
        "fi\n"
        'if [ "$1" = wait ] && [ "$2" != "--for=condition=$KUBE_REACHES" ]; then exec sleep 600; fi\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KUBE_LOG", str(log))
    monkeypatch.setenv("KUBE_FAIL", fail_on or "-")
    monkeypatch.setenv("KUBE_REACHES", reaches)
    return log


def _calls(log: Path) -> list[str]:
    path = log / "argv"
    return path.read_text().splitlines() if path.exists() else []


def test_given_no_kubectl_when_submitted_then_a_one_line_training_error_says_so(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    with pytest.raises(TrainingError) as raised:
        submit_training(_render(), name=NAME, timeout_s=60)

    message = str(raised.value)
    assert "\n" not in message
    assert "kubectl" in message and "not installed" in message


def test_given_kubectl_when_submitted_then_it_applies_the_manifest_from_stdin_and_waits_for_completion(
    tmp_path, monkeypatch
):
    log = _fake_kubectl(tmp_path, monkeypatch)
    manifest = _render()

    submit_training(manifest, name=NAME, timeout_s=900)

    calls = _calls(log)
    assert calls[0] == "apply -f -" and (log / "stdin").read_text() == manifest
    waits = [f"wait --for=condition={c} job/{NAME} --timeout=900s" for c in ("complete", "failed")]
    assert waits[0] in calls[1:] and set(calls[1:]) <= set(waits)  # the failed-wait may be stopped before it logs


def test_given_a_job_that_fails_when_submitted_then_a_one_line_error_at_once_not_at_the_timeout(tmp_path, monkeypatch):
    _fake_kubectl(tmp_path, monkeypatch, reaches="failed")

    with pytest.raises(TrainingError) as raised:
        submit_training(_render(), name=NAME, timeout_s=86_400)  # the complete-wait would outlive the test

    message = str(raised.value)
    assert message == f"training job {NAME} failed: see `kubectl logs job/{NAME}` and its pods' events"


def test_given_a_refused_apply_when_submitted_then_the_error_is_kubectls_last_line_and_nothing_is_awaited(
    tmp_path, monkeypatch
):
    log = _fake_kubectl(tmp_path, monkeypatch, fail_on="apply")

    with pytest.raises(TrainingError) as raised:
        submit_training(_render(), name=NAME, timeout_s=60)

    message = str(raised.value)
    assert "\n" not in message
    assert "error: the server refused apply" in message
    assert "something earlier" not in message
    assert _calls(log) == ["apply -f -"]


def test_given_a_job_that_does_not_complete_when_submitted_then_the_error_names_it_with_kubectls_last_line(
    tmp_path, monkeypatch
):
    log = _fake_kubectl(tmp_path, monkeypatch, fail_on="wait")

    with pytest.raises(TrainingError) as raised:
        submit_training(_render(), name=NAME, timeout_s=60)

    message = str(raised.value)
    assert "\n" not in message
    assert NAME in message
    assert "error: the server refused wait" in message
    calls = _calls(log)  # the apply, then a wait for each outcome (the second may be stopped before it logs)
    assert calls[0] == "apply -f -" and 2 <= len(calls) <= 3 and all(c.startswith("wait ") for c in calls[1:])
