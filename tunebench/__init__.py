"""tunebench: measure which fine-tuning method fits a model, a task and a GPU.

The Python API (tunebench.api) is importable from here: train, evaluate, bench, write_report, plan.
It is loaded on first use, so `import tunebench` stays light (no torch).
"""

from tunebench.files import CONFIG_DIR, REPO_ROOT

__version__ = "0.1.0"

API = ("train", "evaluate", "bench", "write_report", "plan")
__all__ = ["CONFIG_DIR", "REPO_ROOT", *API]


def __getattr__(name: str):
    if name in API:
        from tunebench import api  # lazy: the API imports torch, which `import tunebench` should not

        return getattr(api, name)
    raise AttributeError(f"module 'tunebench' has no attribute {name!r}")
