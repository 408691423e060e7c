"""Imports what a compiled Kubeflow package runs, in the interpreter that runs this script.

`.ci/check_install` runs it with the python of a fresh virtualenv holding only the
project's wheel (isolated with `-I`, from a directory outside the checkout). Every module
and object the package names is imported from that virtualenv's site-packages: each
container's `--executor_class_path` and `python -m` module (TFX's entrypoint, the
pre-cache-check driver), and each task's `*_fn`, `module_path` and `module_file`
parameter. Then its `transferline --help` console script is run.

Usage: python -I install_imports.py PACKAGE.yaml|PACKAGE.json
Prints one line per check and a summary; exits 1 naming what failed.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

EXECUTOR_FLAG = "--executor_class_path"
MODULE_PARAMETER = "module_path"  # TFX's "module" or "module@wheel"
FILE_PARAMETER = "module_file"
FUNCTION_SUFFIX = "_fn"  # run_fn, preprocessing_fn, ...
CONSOLE_SCRIPT = "transferline"


@dataclasses.dataclass(frozen=True)
class Target:
    """One thing to import: a module, a `module.attribute` object or a file."""

    kind: str  # "executor", "module", "function" or "file"
    path: str

    @property
    def is_object(self) -> bool:
        return self.kind in ("executor", "function")


def load_spec(path: str) -> Mapping[str, Any]:
    """The PipelineSpec of a package: a YAML PipelineSpec or a JSON TFX PipelineJob."""
    with open(path) as f:
        if path.endswith(".json"):
            document = json.load(f)
        else:
            document = next(yaml.safe_load_all(f))  # a platform spec may follow
    return document.get("pipelineSpec", document)


def _command_targets(container: Mapping[str, Any]) -> Iterator[Target]:
    command = list(container.get("command", [])) + list(container.get("args", []))
    for flag, value in zip(command, command[1:], strict=False):
        if flag == "-m":
            yield Target("module", value)
        elif flag == EXECUTOR_FLAG:
            yield Target("executor", value)


def _parameter_target(name: str, value: Any) -> Target | None:
    if not isinstance(value, str):
        return None
    if name == MODULE_PARAMETER:
        return Target("module", value.split("@", 1)[0])
    if name == FILE_PARAMETER:
        return Target("file", value)
    if name.endswith(FUNCTION_SUFFIX):
        return Target("function", value)
    return None


def targets(spec: Mapping[str, Any]) -> dict[Target, list[str]]:
    """Every target of the package, with the executors or tasks that name it."""
    found: dict[Target, list[str]] = {}
    for label, executor in sorted(spec["deploymentSpec"]["executors"].items()):
        container = executor.get("container")
        if container is None:  # importers and resolvers run no code of ours
            continue
        steps = [container, *container.get("lifecycle", {}).values()]
        for step in steps:
            for target in _command_targets(step):
                found.setdefault(target, []).append(label)
    for name, task in sorted(spec["root"]["dag"]["tasks"].items()):
        for parameter, value in task.get("inputs", {}).get("parameters", {}).items():
            target = _parameter_target(parameter, value.get("runtimeValue", {}).get("constant"))
            if target is not None:
                found.setdefault(target, []).append(name)
    return found


def _site_packages() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(sorted({os.path.join(paths["purelib"], ""), os.path.join(paths["platlib"], "")}))


def _installed(module: Any) -> None:
    """Raises unless `module` was loaded from this interpreter's site-packages."""
    where = getattr(module, "__file__", None)
    if where is None or not os.path.abspath(where).startswith(_site_packages()):
        raise ImportError(f"loaded from {where}, not from {' or '.join(_site_packages())}")


def resolve(target: Target) -> None:
    """Imports `target` (and gets its attribute), or raises saying why it cannot."""
    if target.kind == "file":
        if not os.path.isfile(target.path):
            raise FileNotFoundError(f"no such file here: {target.path}")
        return
    module_name, attribute = (
        target.path.rsplit(".", 1) if target.is_object else (target.path, None)
    )
    module = importlib.import_module(module_name)
    _installed(module)
    if attribute is not None:
        getattr(module, attribute)


def _check(target: Target, names: list[str]) -> str | None:
    try:
        resolve(target)
    except Exception as error:  # each failure is reported, none hidden
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"FAIL  {target.kind:<8}  {target.path}  ({', '.join(names)}): {reason}")
        return target.path
    print(f"ok    {target.kind:<8}  {target.path}  ({', '.join(names)})")
    return None


def _check_console_script() -> str | None:
    script = os.path.join(os.path.dirname(sys.executable), CONSOLE_SCRIPT)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        result = subprocess.run([script, "--help"], capture_output=True, text=True,
                                env=environment, timeout=300, check=False)
    except OSError as error:
        print(f"FAIL  script    {script} --help: {error}")
        return f"{CONSOLE_SCRIPT} --help"
    if result.returncode != 0 or not result.stdout.startswith("usage:"):
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"FAIL  script    {script} --help: exit {result.returncode}: {last}")
        return f"{CONSOLE_SCRIPT} --help"
    print(f"ok    script    {script} --help")
    return None


def main(package: str) -> int:
    if sys.prefix == sys.base_prefix:
        print(f"error: {sys.executable} is not a virtualenv's python", file=sys.stderr)
        return 2
    try:
        import pipeline

        print(f"pipeline.__file__ = {pipeline.__file__}")
        _installed(pipeline)
    except ImportError as error:
        print(f"install check FAILED: pipeline: {error}")
        return 1
    found = targets(load_spec(package))
    if not any(target.kind == "executor" for target in found):
        print(f"error: {package} names no {EXECUTOR_FLAG}: not a compiled TFX package",
              file=sys.stderr)
        return 2
    failed = [path for target, names in found.items() if (path := _check(target, names))]
    if (script := _check_console_script()) is not None:
        failed.append(script)
    checked = len(found) + 1
    if failed:
        print(f"install check FAILED: {len(failed)} of {checked} checks: {', '.join(failed)}")
        return 1
    print(f"install check passed: {checked} of {checked} checks, "
          f"all from {' and '.join(_site_packages())}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().split("\n\n")[1])
    sys.exit(main(sys.argv[1]))
