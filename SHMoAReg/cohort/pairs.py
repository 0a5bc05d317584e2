"""The pairs of a cohort: a pairs JSON (the benchmark's format) or a CSV, with per-pair register options.

JSON: the format of ``shmoareg benchmark --pairs`` (:mod:`SHMoAReg.benchmark.pairs`); a pair may also
carry any key of :data:`OPTIONS`, which replaces the command line's option for that pair::

    {"pairs": [{"id": "case1", "fixed": "case1/fixed.nii.gz", "moving": "case1/moving.nii.gz",
                "iterations": 200, "affine": false}]}

CSV: a header row and one row per pair. ``id``, ``fixed`` and ``moving`` are required; the other
columns are any of the JSON keys (``fixed_labels``, ``moving_labels``, ``fixed_landmarks``,
``moving_landmarks``, ``true_displacement``, ``labels`` as ids separated by spaces) and of
:data:`OPTIONS`. An empty cell means "not given" (the command line's option applies)::

    id,fixed,moving,fixed_labels,moving_labels,iterations
    case1,case1/fixed.nii.gz,case1/moving.nii.gz,case1/fixed_seg.nii.gz,case1/moving_seg.nii.gz,
    case2,case2/fixed.nii.gz,case2/moving.nii.gz,,,200

In both, paths are relative to the pairs file's folder and must exist; so must a ``weights`` value that
ends in ``.pt``. A pair's ``id`` names its output folder ``OUT/runs/<id>``. Every problem is an
:class:`~SHMoAReg.errors.InputError` with a one-line message naming the file and the pair.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..benchmark.pairs import Pair, pair_from_dict
from ..errors import InputError
from ..preprocess.presets import PRESETS

__all__ = ["CohortPair", "Cohort", "OPTIONS", "load_cohort", "load_cohort_json", "load_cohort_csv"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _integer(value) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number, got {value!r}") from None


def _number(value) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def _choice(*allowed: str) -> Callable[[object], str]:
    def check(value) -> str:
        if str(value) not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return str(value)
    return check


# Per-pair register options: name -> converter of the file's value (a CSV cell is a string).
OPTIONS: dict[str, Callable[[object], object]] = {
    "preset": _choice("auto", *PRESETS), "weights": str, "iterations": _integer, "spacing": _number,
    "similarity": _choice("lncc", "mind"), "affine": _boolean, "diffeomorphic": _boolean,
    "label_weight": _number, "seed": _integer, "inverse": _boolean, "l2r_displacement": _boolean,
    "fixed_mask": str, "moving_mask": str, "fixed_series": str, "moving_series": str,
}
_OPTION_PATHS = ("fixed_mask", "moving_mask")
_PAIR_KEYS = tuple(k for k in Pair.__dataclass_fields__ if k not in OPTIONS)  # "preset" is a register option here


@dataclass
class CohortPair:
    """One pair: the benchmark's :class:`Pair` (absolute paths) and the register options of its own."""

    pair: Pair
    options: dict[str, object] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.pair.id


@dataclass
class Cohort:
    """The pairs of one file, in the file's order."""

    name: str
    pairs: list[CohortPair]
    source: Path


def _check_id(pair_id: object, where: str) -> str:
    """A pair id that can name a folder beside others: not empty, no path separator, not hidden."""
    text = str(pair_id).strip()
    if not text or "/" in text or "\\" in text or "\0" in text or text.startswith("."):
        raise InputError(f"{where}: the id {pair_id!r} cannot name a folder (it must be non-empty, hold no '/' "
                         f"or '\\' and not start with '.')")
    return text


def _resolve(value: str, root: Path, pair_id: str, key: str) -> str:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (root / path).resolve()
    if not path.exists():
        raise InputError(f"pair {pair_id!r}: {key} file {path} does not exist")
    return str(path)


def _options(entry: dict, root: Path, pair_id: str) -> dict[str, object]:
    """The register options of one pair, converted and checked; paths made absolute."""
    options = {}
    for key in OPTIONS:
        if entry.get(key) is None:
            continue
        try:
            options[key] = OPTIONS[key](entry[key])
        except (TypeError, ValueError) as error:
            raise InputError(f"pair {pair_id!r}: {key}: {error}") from None
    for key in _OPTION_PATHS:
        if key in options:
            options[key] = _resolve(str(options[key]), root, pair_id, key)
    if str(options.get("weights", "")).endswith(".pt"):
        options["weights"] = _resolve(str(options["weights"]), root, pair_id, "weights")
    return options


def _cohort_pair(entry: dict, root: Path, index: int, where: str) -> CohortPair:
    """One pair from a JSON object or a CSV row (with its empty cells left out)."""
    if "id" in entry:
        entry = {**entry, "id": _check_id(entry["id"], where)}
    unknown = set(entry) - set(_PAIR_KEYS) - set(OPTIONS)
    if unknown:
        name = entry.get("id", f"#{index}")
        raise InputError(f"{where}: pair {name!r}: unknown keys {sorted(unknown)}; allowed: {', '.join(_PAIR_KEYS)} "
                         f"and the register options {', '.join(OPTIONS)}")
    try:
        pair = pair_from_dict({k: v for k, v in entry.items() if k in _PAIR_KEYS}, root, index)
    except (TypeError, ValueError) as error:
        raise InputError(f"{where}: {error}") from None
    return CohortPair(pair, _options(entry, root, pair.id))


def _check_unique(pairs: list[CohortPair], where: Path) -> None:
    repeated = sorted(k for k, n in Counter(p.id for p in pairs).items() if n > 1)
    if repeated:
        raise InputError(f"{where}: pair ids must be unique; repeated: {', '.join(repeated)}")


def load_cohort_json(path: str | Path) -> Cohort:
    """Read a pairs JSON file (the benchmark's format plus per-pair :data:`OPTIONS`)."""
    path = Path(path).resolve()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the pairs file ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("pairs"), list) or not document["pairs"]:
        raise InputError(f"{path}: expected an object with a non-empty list 'pairs'")
    if not all(isinstance(entry, dict) for entry in document["pairs"]):
        raise InputError(f"{path}: every entry of 'pairs' must be an object")
    pairs = [_cohort_pair(entry, path.parent, i, str(path)) for i, entry in enumerate(document["pairs"])]
    _check_unique(pairs, path)
    return Cohort(str(document.get("suite", path.stem)), pairs, path)


def _csv_row(row: dict, header: list[str], line: int, where: str) -> dict:
    """A CSV row as a pairs-JSON entry: empty cells left out, ``labels`` split into ids."""
    if None in row:
        raise InputError(f"{where} line {line}: more cells than the header's {len(header)} columns")
    entry = {k: v.strip() for k, v in row.items() if v is not None and v.strip()}
    if "labels" in entry:
        try:
            entry["labels"] = [int(v) for v in entry["labels"].replace(";", " ").replace(",", " ").split()]
        except ValueError:
            raise InputError(f"{where} line {line}: labels must be whole numbers separated by spaces, "
                             f"got {entry['labels']!r}") from None
    return entry


def load_cohort_csv(path: str | Path) -> Cohort:
    """Read a pairs CSV file (columns: see the module docstring)."""
    path = Path(path).resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read the pairs file ({error})") from None
    for column in ("id", "fixed", "moving"):
        if column not in header:
            raise InputError(f"{path}: the column {column!r} is required; the header has "
                             f"{', '.join(header) or 'nothing'}")
    repeated = sorted(k for k, n in Counter(header).items() if n > 1)
    unknown = sorted(set(header) - set(_PAIR_KEYS) - set(OPTIONS))
    if repeated or unknown:
        raise InputError(f"{path}: " + (f"repeated columns {repeated}" if repeated else
                                        f"unknown columns {unknown}; allowed: {', '.join(_PAIR_KEYS)} and the "
                                        f"register options {', '.join(OPTIONS)}"))
    entries = [(line, _csv_row(row, header, line, str(path))) for line, row in rows]
    entries = [(line, entry) for line, entry in entries if entry]  # blank lines
    if not entries:
        raise InputError(f"{path}: no pairs (only a header)")
    pairs = [_cohort_pair(entry, path.parent, i, f"{path} line {line}") for i, (line, entry) in enumerate(entries)]
    _check_unique(pairs, path)
    return Cohort(path.stem, pairs, path)


def load_cohort(path: str | Path) -> Cohort:
    """Read a pairs file: CSV when its name ends in ``.csv``, else JSON."""
    return load_cohort_csv(path) if str(path).lower().endswith(".csv") else load_cohort_json(path)

