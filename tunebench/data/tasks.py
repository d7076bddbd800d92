"""Task registry (configs/tasks/*.yaml) and loading of labelled text into datasets.

A task is a name in configs/tasks/, a path to such a YAML file, a local data file
(csv, tsv, json, jsonl, parquet) or a hub dataset id (needs internet).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunebench.errors import UserError, unknown_choice
from tunebench.files import CONFIG_DIR, package_dir, read_yaml

if TYPE_CHECKING:  # pandas and datasets load in a second: `plan` and `report` never need them
    import pandas as pd
    from datasets import DatasetDict

    from tunebench.data.generate import Choices

TASK_DIR = CONFIG_DIR / "tasks"
DATA_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLITS = ("train", "validation", "test")


@dataclass
class TaskSpec:
    name: str
    description: str = ""
    files: dict[str, str] = field(default_factory=dict)  # split -> path (absolute once resolved)
    package: str | None = None
    where: dict = field(default_factory=dict)  # keep rows whose column equals value
    label_names: list[str] | None = None
    make_splits: dict | None = None
    hub_id: str | None = None
    config: dict = field(default_factory=dict)  # config layer the task contributes

    def installed(self) -> bool:
        if self.package:
            return importlib.util.find_spec(self.package) is not None
        return all(Path(p).exists() for p in self.files.values())


def registered_tasks() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def _from_yaml(path: Path, name: str) -> TaskSpec:
    raw = read_yaml(path)
    known = {"description", "source", "label_names", "make_splits", "config"}
    unknown = set(raw) - known
    if unknown:
        raise UserError(f"unknown key(s) {sorted(unknown)} in task file {path}; valid: {sorted(known)}")
    source = raw.get("source") or {}
    spec = TaskSpec(
        name=name,
        description=raw.get("description", ""),
        package=source.get("package"),
        files=dict(source.get("files") or {}),
        where=dict(source.get("where") or {}),
        hub_id=source.get("hub_id"),
        label_names=raw.get("label_names"),
        make_splits=raw.get("make_splits"),
        config=raw.get("config") or {},
    )
    base = path.parent
    if spec.package and spec.installed():
        base = package_dir(spec.package)
    spec.files = {split: str((base / f).resolve()) for split, f in spec.files.items()}
    bad = set(spec.files) - set(SPLITS)
    if bad:
        raise UserError(f"task {name!r} names unknown split(s) {sorted(bad)}; valid: {', '.join(SPLITS)}")
    return spec


def get_task(name: str) -> TaskSpec:
    path = Path(name)
    if (TASK_DIR / f"{name}.yaml").exists():
        return _from_yaml(TASK_DIR / f"{name}.yaml", name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return _from_yaml(path, path.stem)
    if path.suffix in DATA_SUFFIXES:
        if not path.exists():
            raise UserError(f"data file not found: {path}")
        return TaskSpec(
            name=path.stem,
            files={"train": str(path.resolve())},
            make_splits={"validation": 0.1, "test": 0.1, "seed": 0},
        )
    if "/" in name and not path.exists():
        return TaskSpec(name=name, hub_id=name)
    raise unknown_choice(
        "task", name, registered_tasks() + ["<file.csv|.tsv|.json|.jsonl|.parquet>", "<task.yaml>", "<hub-id>"]
    )


def read_file(path: str, encoding: str) -> pd.DataFrame:
    import pandas as pd

    suffix = Path(path).suffix
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", encoding=encoding)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, encoding=encoding)
        if suffix == ".json":
            return pd.read_json(path, encoding=encoding)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"cannot read data file {path}: it is not {encoding} text ({exc.reason} at byte {exc.start}); "
            f"set its encoding with data.encoding, e.g. --set data.encoding=latin-1"
        ) from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise UserError(f"cannot read data file {path}: {str(exc).splitlines()[0]}") from None
    raise UserError(f"unsupported data file {path}; use one of {', '.join(DATA_SUFFIXES)}")


def _load_hub(hub_id: str) -> dict[str, pd.DataFrame]:
    from datasets import load_dataset

    try:
        loaded = load_dataset(hub_id)
    except Exception as exc:  # datasets raises many types when offline or the id is wrong
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise UserError(f"cannot load hub dataset {hub_id!r}{offline}: {str(exc).splitlines()[0]}") from None
    return {("validation" if s == "dev" else s): loaded[s].to_pandas() for s in loaded}


def _stratified_splits(df: pd.DataFrame, label: str, make: dict, have: set[str]) -> dict[str, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    out = {"train": df}
    for split in ("test", "validation"):
        if split in have:
            continue
        fraction = make.get(split, 0.1)
        # fraction of the whole data, whatever was carved off before
        size = max(1, round(fraction * len(df)))  # a small file still gets a split, or a clear error below
        out["train"], out[split] = train_test_split(
            out["train"], test_size=size, stratify=out["train"][label], random_state=make.get("seed", 0)
        )
    return out


@dataclass
class TaskData:
    name: str
    splits: DatasetDict  # columns: text, [text_pair], label (int); generate tasks: prompt (messages), answer
    label_names: list[str]  # empty for generate tasks
    choices: Choices | None = None  # generate tasks answering from a closed set (data.generate.closed_set)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def load_capped(name: str, data_cfg: dict) -> TaskData:
    """The task as a run uses it: the first examples of each split, train capped at data.max_train_samples,
    validation at data.max_eval_samples, test at data.max_test_samples (or max_eval_samples when that is null)."""
    task = load_task(get_task(name), data_cfg)
    caps = {
        "train": data_cfg["max_train_samples"],
        "validation": data_cfg["max_eval_samples"],
        # .get: a run saved before the key existed, evaluated again
        "test": data_cfg.get("max_test_samples") or data_cfg["max_eval_samples"],
    }
    for split, cap in caps.items():
        if cap:
            task.splits[split] = task.splits[split].select(range(min(cap, len(task.splits[split]))))
    return task


def load_task(spec: TaskSpec, data_cfg: dict) -> TaskData:
    """Read the task's files, check them, and return train/validation/test with integer labels."""
    import pandas as pd
    from datasets import Dataset, DatasetDict

    if spec.package and not spec.installed():
        raise UserError(f"task {spec.name!r} needs the package {spec.package!r}; run `make setup`")
    encoding = data_cfg["encoding"]
    frames = _load_hub(spec.hub_id) if spec.hub_id else {s: read_file(p, encoding) for s, p in spec.files.items()}
    if "train" not in frames:
        raise UserError(f"task {spec.name!r} has no train split")
    if data_cfg["task_type"] == "generate":
        from tunebench.data.generate import closed_set, splits_from_frames

        for column, value in spec.where.items():
            frames = {s: df[df[column] == value].reset_index(drop=True) for s, df in frames.items()}
        for split, df in frames.items():
            if len(df) == 0:
                raise UserError(f"task {spec.name!r} has an empty {split} split")
        splits = splits_from_frames(spec.name, frames, data_cfg, spec)
        return TaskData(spec.name, splits, [], closed_set(spec.label_names, splits))
    text, pair, label = data_cfg["text_column"], data_cfg["text_pair_column"], data_cfg["label_column"]
    needed = [c for c in (text, pair, label, *spec.where) if c]
    for split, df in frames.items():
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise UserError(
                f"task {spec.name!r} {split} split lacks column(s) {missing}; it has "
                f"{list(df.columns)} (set data.text_column / data.label_column)"
            )
        for column, value in spec.where.items():
            df = df[df[column] == value]
        df = df.dropna(subset=needed).reset_index(drop=True)
        if pd.api.types.is_float_dtype(df[label]) and (df[label] % 1 == 0).all():
            df = df.assign(**{label: df[label].astype("int64")})  # blank labels made pandas read floats
        frames[split] = df

    for split, df in frames.items():
        if len(df) == 0:
            raise UserError(f"task {spec.name!r} has an empty {split} split")
    train_labels = frames["train"][label].unique()
    if len(train_labels) < 2:  # it would train and score 1.0 on a test split of the same label: meaningless
        raise UserError(
            f"task {spec.name!r}: every training example has the label {train_labels.tolist()[0]!r}; "
            f"a classifier needs at least two labels (column {label!r}, set with data.label_column)"
        )
    if set(frames) != set(SPLITS):
        try:
            frames.update(_stratified_splits(frames["train"], label, spec.make_splits or {}, set(frames)))
        except ValueError as exc:  # too few examples, or a label with a single example
            raise UserError(
                f"task {spec.name!r}: cannot carve stratified validation/test splits from {len(frames['train'])} "
                f"training examples ({str(exc).splitlines()[0]}); add examples or give the task its own split files"
            ) from None
    for split in SPLITS:
        if len(frames[split]) == 0:
            raise UserError(f"task {spec.name!r} has an empty {split} split")

    label_names, frames = _encode_labels(spec, frames, label)
    columns = {text: "text", label: "label"} | ({pair: "text_pair"} if pair else {})
    splits = DatasetDict(
        {s: Dataset.from_pandas(frames[s][list(columns)].rename(columns=columns), preserve_index=False) for s in SPLITS}
    )
    return TaskData(spec.name, splits, label_names)


def _encode_labels(spec: TaskSpec, frames: dict[str, pd.DataFrame], label: str):
    import pandas as pd

    train_labels = frames["train"][label]
    if pd.api.types.is_integer_dtype(train_labels):
        count = len(spec.label_names) if spec.label_names else int(train_labels.max()) + 1
        names = spec.label_names or [str(i) for i in range(count)]
        for split, df in frames.items():
            bad = df[(df[label] < 0) | (df[label] >= count)][label]
            if len(bad):
                raise UserError(
                    f"task {spec.name!r} {split} split has label {int(bad.iloc[0])} out of range 0..{count - 1}"
                )
        return names, frames
    names = spec.label_names or sorted(str(v) for v in train_labels.unique())
    ids = {name: i for i, name in enumerate(names)}
    out = {}
    for split, df in frames.items():
        unknown = set(df[label].astype(str)) - set(ids)
        if unknown:
            raise UserError(f"task {spec.name!r} {split} split has label(s) not in train: {sorted(unknown)[:5]}")
        out[split] = df.assign(**{label: df[label].astype(str).map(ids).astype("int64")})
    return names, out
