"""tunebench: measure which fine-tuning method fits a model, a task and a GPU."""

from pathlib import Path

__version__ = "0.1.0"

# The repository root holds configs/; the package is installed editable (`make setup`).
REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
