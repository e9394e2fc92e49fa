"""Multi-node training on plain Kubernetes: docker/k8s/train-nodes.yaml (a headless Service and an
Indexed Job, one pod per machine) rendered for one run, then applied and waited on with kubectl.

The manifest is a text template rather than objects built here so that it stays readable and
checkable on its own (`kubectl apply --dry-run=client`) next to the single-pod template; this module
only fills in the few values that change per run and refuses the ones Kubernetes would reject later,
after pods were already scheduled.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path
from string import Template

from clickstream.pipeline.core.errors import SettingError, TrainingError

TEMPLATE = Path(__file__).resolve().parents[2] / "docker" / "k8s" / "train-nodes.yaml"
# Pod hostnames are <name>-<index> and must stay DNS labels (63 characters): 40 leaves room.
MAX_NAME = 40
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# What an image reference may hold; anything else (spaces, quotes, '#') would change the YAML.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")
# The list item the window arguments replace: one item per argument, at the same indentation.
_TRAIN_ARGS = re.compile(r"^(?P<indent>[ \t]*)- \$\{TRAIN_ARGS\}[ \t]*\n", re.MULTILINE)
APPLY_TIMEOUT_S = 300  # kubectl waits on an unreachable API server without limit by default


def _check(*, name: str, nodes: int, gpus: int, start: date | None, end: date | None, epochs: int | None) -> None:
    """SettingError (one line) for values the cluster would only refuse after scheduling pods."""
    if nodes < 2:
        raise SettingError(f"nodes must be at least 2 for a multi-node training, not {nodes}")
    if gpus < 1:
        raise SettingError(f"gpus must be at least 1 per node, not {gpus}")
    if len(name) > MAX_NAME or not _DNS_LABEL.fullmatch(name):
        raise SettingError(
            f"name must be a DNS-1123 label of at most {MAX_NAME} characters "
            f"(lowercase letters, digits, '-'; a letter or digit at each end), not {name!r}"
        )
    if start is not None and end is not None and start > end:
        raise SettingError(f"start {start} is after end {end}")
    if epochs is not None and epochs < 1:
        raise SettingError(f"epochs must be at least 1, not {epochs}")


def _train_args(start: date | None, end: date | None, epochs: int | None) -> list[str]:
    """The `clickstream train` arguments that depend on the run; every node gets the same ones."""
    args: list[str] = []
    if start is not None:
        args += ["--start", start.isoformat()]
    if end is not None:
        args += ["--end", end.isoformat()]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    return args


def render_training(
    *, name: str, nodes: int, gpus: int, start: date | None, end: date | None, epochs: int | None, image: str
) -> str:
    """The Service and Indexed Job that train on `nodes` machines with `gpus` GPUs each, named `name`
    (node 0 is reached as <name>-0.<name>:29400). SettingError (one line) for a bad value."""
    _check(name=name, nodes=nodes, gpus=gpus, start=start, end=end, epochs=epochs)
    if not _IMAGE.fullmatch(image):
        raise SettingError(f"image must be an image reference such as clickstream-gpu-worker:latest, not {image!r}")
    if not TEMPLATE.is_file():
        raise SettingError(f"no training template at {TEMPLATE}: render from a clickstream checkout")
    text = TEMPLATE.read_text()

    def window(match: re.Match[str]) -> str:
        # Quoted: a bare 2024-05-01 would be read as a YAML date, not the string the CLI expects.
        indent = match["indent"]
        return "".join(f"{indent}- {json.dumps(arg)}\n" for arg in _train_args(start, end, epochs))

    text = _TRAIN_ARGS.sub(window, text)
    # safe_substitute: $(JOB_COMPLETION_INDEX) is Kubernetes' own expansion and must stay as it is.
    text = Template(text).safe_substitute(NAME=name, NODES=str(nodes), GPUS=str(gpus), IMAGE=image)
    left = re.findall(r"\$\{\w+\}", text)
    if left:
        raise SettingError(f"{TEMPLATE} has placeholders render_training does not fill: {', '.join(sorted(set(left)))}")
    return text


def _kubectl(kubectl: str, args: list[str], *, stdin: str | None, timeout_s: int, what: str) -> None:
    """Run kubectl; TrainingError with its last stderr line when it fails or outlives timeout_s."""
    try:
        result = subprocess.run(
            [kubectl, *args], input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise TrainingError(f"{what}: kubectl did not answer within {timeout_s}s") from None
    if result.returncode != 0:
        raise TrainingError(f"{what}: {_last_line(result.stderr, result.returncode)}")


def _last_line(stderr: str, code: int) -> str:
    """kubectl's reason for failing: its last line on stderr (earlier ones are warnings)."""
    lines = stderr.strip().splitlines()
    return lines[-1].strip() if lines else f"kubectl exited with code {code}"


def submit_training(manifest: str, *, name: str, timeout_s: int) -> None:
    """Apply `manifest` to the current kubectl context and wait up to `timeout_s` for Job `name` to
    complete or fail, whichever comes first. TrainingError (one line) when kubectl is missing, the
    apply is refused, the Job fails (its pods' logs say why) or it does not finish in time."""
    if timeout_s < 1:
        raise SettingError(f"timeout_s must be at least 1, not {timeout_s}")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise TrainingError("kubectl is not installed (not on PATH): it submits the multi-node training")
    _kubectl(kubectl, ["apply", "-f", "-"], stdin=manifest, timeout_s=APPLY_TIMEOUT_S, what="kubectl apply failed")
    outcome = _first_condition(kubectl, name, ("complete", "failed"), timeout_s)
    if outcome == "failed":
        raise TrainingError(f"training job {name} failed: see `kubectl logs job/{name}` and its pods' events")


def _first_condition(kubectl: str, name: str, conditions: tuple[str, ...], timeout_s: int) -> str:
    """The first of `conditions` Job `name` reaches: one `kubectl wait` per condition, at once (a
    wait takes one condition); the others are stopped. TrainingError with kubectl's last line when
    the first wait to end fails (a timeout, an unreachable server)."""
    waits = {
        condition: subprocess.Popen(
            [kubectl, "wait", f"--for=condition={condition}", f"job/{name}", f"--timeout={timeout_s}s"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for condition in conditions
    }
    try:
        with ThreadPoolExecutor(len(waits)) as pool:
            # kubectl ends each wait itself at timeout_s; the margin covers its start and last request.
            ended = {pool.submit(wait.communicate, timeout=timeout_s + 60): c for c, wait in waits.items()}
            first = next(as_completed(ended))
            for wait in waits.values():
                if wait.poll() is None:
                    wait.kill()
            condition = ended[first]
            try:
                _, stderr = first.result()
            except subprocess.TimeoutExpired:
                raise TrainingError(f"training job {name} did not finish: kubectl did not answer") from None
    finally:
        for wait in waits.values():
            if wait.poll() is None:
                wait.kill()
    code = waits[condition].returncode
    if code != 0:
        raise TrainingError(f"training job {name} did not finish: {_last_line(stderr, code)}")
    return condition
