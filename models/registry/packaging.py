"""What a registered version holds: a trained model's ModelBundle files as the artifacts of an MLflow
pyfunc (models.pyfunc.BuyIntentModel), with a signature that says what `predict` reads and returns,
an input example, the code scoring runs and its pinned requirements, logged to the active run;
store.register then makes it a new version of `clickstream-buy-intent`.

The pyfunc is logged as code (MLflow's models from code): the version holds a copy of
models/pyfunc_code.py, which MLflow runs on every load to get the model, so no pickled Python object
is stored or unpickled. Its code paths hold only the clickstream modules that file imports, directly
or through another (served_code, read from their import statements): the pyfunc, the bundle, the
network, the feature code and the settings and schemas they read; never orchestration, training,
ingest or the DAGs. They travel as the installed namespace (`clickstream/models/pyfunc.py`, ...), so
the model loads in a fresh process, one without the project installed or one with unrelated
top-level `models` or `features` packages. Its requirements are the third-party packages those
modules import, pinned at the installed versions.

The SHA-256 of the weights file travels three ways: in the bundle's network.json, in the MLmodel's
metadata (`weights_sha256`) and, at registration, as the version's `weights_sha256` tag
(models.bundle.WEIGHTS_SHA256); every load checks the file against them (models.bundle).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema

from clickstream.models.bundle import WEIGHTS_SHA256, file_sha256
from clickstream.models.pyfunc import input_example
from clickstream.models.registry.store import MODEL_ARTIFACT

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import polars as pl
    from mlflow.models.model import ModelInfo

    from clickstream.models.bundle import ModelBundle

NAMESPACE = "clickstream"
# the folder of the `clickstream` namespace, holding pipeline/, features/ and models/: the project root
# of a checkout (an editable install) or site-packages/clickstream; this file is models/registry/packaging.py
NAMESPACE_FOLDER = Path(__file__).resolve().parents[2]
MODEL_CODE = "clickstream.models.pyfunc_code"  # the file MLflow runs to load a version
EXAMPLE_SESSIONS = 5


def log_model(bundle: ModelBundle, example_sessions: pl.DataFrame) -> ModelInfo:
    """Log `bundle` as the pyfunc `model` of the active run, as code (MODEL_CODE) with only the modules
    it runs; the input example is the first EXAMPLE_SESSIONS of `example_sessions`. The returned
    info's model_id names the MLflow 3 logged model that evaluation metrics are linked to; its
    metadata holds the weights' SHA-256 (weights_sha256(), for the registered version's tag)."""
    code = served_code()
    modules = code.keys() - {MODEL_CODE}  # MLflow copies MODEL_CODE itself beside the MLmodel
    with tempfile.TemporaryDirectory(prefix="clickstream-model-") as tmp:
        artifacts = bundle.save(Path(tmp) / "bundle")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=source_file(MODEL_CODE),
            artifacts={name: str(path) for name, path in artifacts.items()},
            code_paths=[str(code_package(modules, Path(tmp) / "code"))],
            signature=signature(),
            input_example=input_example(example_sessions.head(EXAMPLE_SESSIONS)),
            pip_requirements=requirements(code),
            metadata={WEIGHTS_SHA256: file_sha256(artifacts["weights"])},
        )


def weights_sha256(logged: ModelInfo) -> str:
    """The SHA-256 of the logged model's weights file, as log_model recorded it."""
    return str((logged.metadata or {})[WEIGHTS_SHA256])


def signature() -> ModelSignature:
    """What `predict` reads (models.pyfunc's two input forms) and returns. The columns whose type
    depends on the form (a list per session or a value per event) and the timestamps (aware,
    naive or ISO strings) are `Any`; form-specific ones are optional, the pyfunc checks that one
    form is complete. Other columns, such as the rest of a sequences/ row, are ignored."""
    anything = AnyType()
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(DataType.string, "session_id"),
                ColSpec(anything, "item_id"),  # sessions: list of item ids; events: one item id
                ColSpec(anything, "category"),  # sessions: list of categories (null items); events: one or null
                ColSpec(anything, "event_type"),  # sessions: list of EVENT_TYPE_CODE; events: a name
                ColSpec(Array(DataType.double), "log_gap_prev", required=False),  # sessions
                ColSpec(DataType.long, "start_hour", required=False),  # sessions
                ColSpec(anything, "session_start", required=False),  # sessions, instead of start_hour
                ColSpec(anything, "ts", required=False),  # events
            ]
        ),
        outputs=Schema([ColSpec(DataType.string, "session_id"), ColSpec(DataType.float, "score")]),
    )


def served_code(entry: str = MODEL_CODE) -> dict[str, frozenset[str]]:
    """`entry` and the clickstream modules it imports, directly or through another, with their packages
    (whose __init__ runs first), each with the dotted names it imports: what a loaded model runs, and
    nothing else. Read from the import statements, those inside functions included; those under
    `if TYPE_CHECKING:` never run and are left out."""
    code: dict[str, frozenset[str]] = {}
    pending = [entry]
    while pending:
        module = pending.pop()
        if module not in code:
            code[module] = imported_names(module)
            packages = [module.rsplit(".", up)[0] for up in range(1, module.count("."))]
            pending += [name for name in code[module] if _is_module(name)] + packages
    return code


def imported_names(module: str) -> frozenset[str]:
    """The dotted names the import statements of a clickstream module name: `import a.b` gives a.b,
    `from a import b` gives a and a.b (b may be a module or a name in a), relative ones resolved."""
    path = source_file(module)
    visitor = _Imports(module if path.name == "__init__.py" else module.rpartition(".")[0])
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return frozenset(visitor.names)


class _Imports(ast.NodeVisitor):
    """Collects the names of the import statements that can run, in a module of package `package`."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.package.rsplit(".", node.level - 1)[0] if node.level else ""
        module = ".".join(part for part in (base, node.module) if part)
        self.names.add(module)
        self.names.update(f"{module}.{alias.name}" for alias in node.names)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def source_file(module: str) -> Path:
    """Where a clickstream module lives: its package's __init__.py, else its .py file."""
    path = NAMESPACE_FOLDER.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(name: str) -> bool:
    """Whether `name` is a clickstream module or package (not a name defined in one)."""
    return name.startswith(f"{NAMESPACE}.") and source_file(name).is_file()


def code_package(modules: Iterable[str], folder: Path) -> Path:
    """The files of `modules` laid out as their installed namespace (`clickstream/models/pyfunc.py`, ...),
    so the shipped model imports `clickstream.models...` and never a top-level `models`."""
    package = folder / NAMESPACE
    for module in modules:
        source = source_file(module)
        target = package / source.relative_to(NAMESPACE_FOLDER)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return package


def requirements(code: Mapping[str, frozenset[str]]) -> list[str]:
    """The distributions whose packages the shipped modules import, pinned at the installed versions
    without a local label (torch's `+cpu`): a fresh environment built from them runs the same code."""
    top_level = {name.partition(".")[0] for names in code.values() for name in names}
    providers = importlib.metadata.packages_distributions()
    distributions = {
        _distribution(package, providers[package]) for package in top_level - set(sys.stdlib_module_names) - {NAMESPACE}
    }
    return sorted(f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in distributions)


def _distribution(package: str, installers: list[str]) -> str:
    """The distribution that installs top-level `package`: where several do (mlflow, mlflow-skinny
    and mlflow-tracing all install `mlflow`), the one named like it."""
    named = [name for name in installers if _canonical(name) == _canonical(package)]
    return (named or installers)[0]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
