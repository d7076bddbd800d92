"""tunebench: measure which fine-tuning method fits a model, a task and a GPU.

The Python API (tunebench.api) is importable from here: train, evaluate, bench, write_report, plan.
It is loaded on first use, so `import tunebench` stays light (no torch).
"""

from importlib import resources
from pathlib import Path

__version__ = "0.1.0"

# The default configs ship inside the package (the checkout's configs/ folder is tunebench.configs). A wheel
# installs unpacked, so they are a real folder that the registries glob.
CONFIG_DIR = Path(str(resources.files("tunebench.configs")))

# The checkout this code runs from (an editable install), or None when installed from a wheel: it is only
# asked for git provenance and for where the repository's own reports go.
_parent = Path(__file__).resolve().parent.parent
REPO_ROOT: Path | None = _parent if (_parent / "pyproject.toml").is_file() else None

API = ("train", "evaluate", "bench", "write_report", "plan")
__all__ = ["CONFIG_DIR", "REPO_ROOT", *API]


def __getattr__(name: str):
    if name in API:
        from tunebench import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunebench' has no attribute {name!r}")
