"""The pairs-JSON format: which images to register and how to score the result.

A pairs file is a JSON object::

    {"suite": "my-data",                  # a name for the table (default: the file's stem)
     "description": "free text",
     "pairs": [
       {"id": "case1",                    # unique within the file
        "fixed": "case1/fixed.nii.gz",    # paths are relative to the JSON file's folder
        "moving": "case1/moving.nii.gz",
        "fixed_labels": "...", "moving_labels": "...",   # optional: Dice and HD95
        "labels": [1, 2, 3],              # optional: the label ids to score (default: all)
        "fixed_landmarks": "...", "moving_landmarks": "...",  # optional: TRE (CSV, x,y,z LPS mm per row)
        "true_displacement": "...",       # optional: the known fixed->moving field (LPS mm, fixed grid)
        "preset": "generic"}              # SHMoAReg preset: abdomen-ct | brain-mri | generic
     ]}

Every method maps a point ``x`` of the fixed image to ``T(x)`` in the moving
image (see :mod:`SHMoAReg.conventions`); landmarks row ``n`` of the fixed file
corresponds to row ``n`` of the moving file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..preprocess.presets import PRESETS as ENGINE_PRESETS

__all__ = ["Pair", "Suite", "load_pairs", "save_pairs", "pair_from_dict", "PRESETS"]

PRESETS = tuple(ENGINE_PRESETS)  # the engine's presets (a hand-kept copy had drifted: same-modality was refused)
_PATH_KEYS = ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_landmarks", "moving_landmarks",
              "true_displacement")


@dataclass
class Pair:
    """One registration problem; paths are absolute once loaded."""

    id: str
    fixed: Path
    moving: Path
    fixed_labels: Path | None = None
    moving_labels: Path | None = None
    labels: list[int] | None = None
    fixed_landmarks: Path | None = None
    moving_landmarks: Path | None = None
    true_displacement: Path | None = None
    preset: str = "generic"


@dataclass
class Suite:
    """A named list of pairs (one table section of the report)."""

    name: str
    pairs: list[Pair]
    description: str = ""
    source: Path | None = field(default=None, compare=False)


def pair_from_dict(entry: dict, root: Path, index: int) -> Pair:
    """One pair of a pairs file (``index``: its position, for messages); paths relative to ``root`` are made
    absolute and must exist. Raises ``ValueError`` naming the pair and the problem."""
    for key in ("id", "fixed", "moving"):
        if key not in entry:
            raise ValueError(f"pair #{index}: the key {key!r} is required, got keys {sorted(entry)}")
    unknown = set(entry) - set(Pair.__dataclass_fields__)
    if unknown:
        raise ValueError(f"pair {entry['id']!r}: unknown keys {sorted(unknown)}")
    values = dict(entry)
    for key in _PATH_KEYS:
        if values.get(key) is not None:
            path = Path(values[key])
            values[key] = path if path.is_absolute() else (root / path).resolve()
            if not values[key].exists():
                raise ValueError(f"pair {entry['id']!r}: {key} file {values[key]} does not exist")
    if (values.get("fixed_labels") is None) != (values.get("moving_labels") is None):
        raise ValueError(f"pair {entry['id']!r}: give both fixed_labels and moving_labels or neither")
    if (values.get("fixed_landmarks") is None) != (values.get("moving_landmarks") is None):
        raise ValueError(f"pair {entry['id']!r}: give both fixed_landmarks and moving_landmarks or neither")
    if values.get("preset", "generic") not in PRESETS:
        raise ValueError(f"pair {entry['id']!r}: preset must be one of {PRESETS}, got {values['preset']!r}")
    if values.get("labels") is not None:
        values["labels"] = [int(label) for label in values["labels"]]
    return Pair(**values)


def load_pairs(path: str | Path) -> Suite:
    """Read and check a pairs file; raise ``ValueError`` naming the first problem."""
    path = Path(path).resolve()
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the pairs file ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("pairs"), list) or not document["pairs"]:
        raise ValueError(f"{path}: expected an object with a non-empty list 'pairs'")
    pairs = [pair_from_dict(entry, path.parent, i) for i, entry in enumerate(document["pairs"])]
    ids = [pair.id for pair in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: pair ids must be unique, got {ids}")
    return Suite(name=str(document.get("suite", path.stem)), pairs=pairs,
                 description=str(document.get("description", "")), source=path)


def save_pairs(suite: Suite, path: str | Path) -> Path:
    """Write ``suite`` as a pairs file, with paths relative to the file's folder where possible."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    for pair in suite.pairs:
        entry = {}
        for key, value in asdict(pair).items():
            if value is None:
                continue
            if key in _PATH_KEYS:
                value = Path(value)
                try:
                    value = value.resolve().relative_to(path.parent)
                except ValueError:
                    pass
                value = str(value)
            entry[key] = value
        entries.append(entry)
    document = {"suite": suite.name, "description": suite.description, "pairs": entries}
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path
