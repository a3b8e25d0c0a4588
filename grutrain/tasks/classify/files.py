"""Sequence classification files: JSONL, CSV and UCR/UEA .ts, read into `Examples` (no encoding yet).

Every example is a sequence and a label:
- JSONL, one object a line: `{"x": "mary", "y": "female"}` (text), `{"x": [0.1, 0.5, ...], "y": 3}`
  (a univariate series, [T, 1]) or `{"x": [[0.1, 2.0], [0.3, 1.5], ...], "y": "a"}`
  (a multivariate series, one inner list per step: [T, C]);
- CSV with a header: one sequence per row, the label in `data.label_column`, the other
  columns the values of a univariate series in order; trailing blank cells make a row shorter;
- the .ts format of sktime/aeon (UCR/UEA archives): `@` header lines, then `@data` and one
  example a line, dimensions separated by ':', values by ',', the class label last; `?` is a
  missing value; examples may differ in length (each example's dimensions share one length).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grutrain.errors import GrutrainError
from grutrain.files.inputs import read_input

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".ts": "ts"}
TEXT, NUMERIC = "text", "numeric"
_MISSING_TS = {"?", "nan"}


@dataclass
class Examples:
    """Examples as read from a file, before any encoding.

    xs: text strings, or float64 tensors [T, C] (NaN = missing); ys: label strings, or None
    where the file gives none; where: "line 7" for messages.
    """

    source: str
    kind: str = ""  # TEXT or NUMERIC
    channels: int = 0  # NUMERIC: C
    xs: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    where: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.xs)

    def add(self, x, y: str | None, where: str) -> None:
        kind = TEXT if isinstance(x, str) else NUMERIC
        channels = 0 if kind == TEXT else x.shape[1]
        if not self.xs:
            self.kind, self.channels = kind, channels
        elif kind != self.kind:
            raise GrutrainError(f"{self.source}: {where} holds a {kind} sequence but the examples before it are "
                                f"{self.kind}; one file holds one kind (text, or numeric series)")
        elif channels != self.channels:
            raise GrutrainError(f"{self.source}: {where} has {channels} channel(s) per step but the examples before it "
                                f"have {self.channels} (mismatched dimensions); every example needs the same number")
        self.xs.append(x)
        self.ys.append(y)
        self.where.append(where)

    def subset(self, indices: list[int]) -> "Examples":
        return Examples(self.source, self.kind, self.channels, [self.xs[i] for i in indices],
                        [self.ys[i] for i in indices], [self.where[i] for i in indices])


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def file_format(path: str | Path, configured: str = "auto") -> str:
    """jsonl, csv or ts: from the extension when it says, else the configured format."""
    by_suffix = FORMATS.get(Path(path).suffix.lower())
    if by_suffix is not None and configured == "auto":
        return by_suffix
    if configured != "auto":
        return configured
    raise GrutrainError(f"cannot tell the format of {str(path)!r} from its extension; name it .jsonl, .csv or .ts "
                        "or set data.format to jsonl, csv or ts")


def read_examples(path: str | Path, fmt: str, *, label_column: str = "label", lowercase: bool = False,
                  require_labels: bool = True, what: str = "data.path") -> Examples:
    """The examples of a file; `what` names where the path came from (data.path, --input, --data)."""
    text = _read_text(path, what)
    source = str(path)
    if fmt == "jsonl":
        examples = _read_jsonl(text, source, require_labels)
    elif fmt == "csv":
        examples = _read_csv(text, source, label_column, require_labels)
    else:
        examples = _read_ts(text, source, require_labels)
    if not len(examples):
        raise GrutrainError(f"{source} holds no examples; give a {fmt} file with at least one")
    if lowercase and examples.kind == TEXT:
        examples.xs = [x.lower() for x in examples.xs]
    return examples


def _read_text(path: str | Path, what: str) -> str:
    path = Path(path)
    if path.is_dir():
        raise GrutrainError(f"{what} {str(path)!r} is a directory; give a JSONL, CSV or .ts file")
    if not path.exists():
        raise GrutrainError(f"{what} {str(path)!r} not found; give a JSONL, CSV or .ts file of examples")
    raw = read_input(path, what)  # a regular file that fits in memory; I/O errors as one line
    if not raw.strip():
        raise GrutrainError(f"{what} {str(path)!r} is empty; give a file with examples in it")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GrutrainError(f"{what} {str(path)!r} is not UTF-8 text (bad byte at offset {exc.start}); "
                            "convert it to UTF-8") from None


_WHOLE_NUMBER = re.compile(r"([+-]?\d+)\.0*")  # "1.0", "1.00": the label 1 written as a decimal


def _label(value, source: str, where: str, require: bool) -> str | None:
    """A label as a string (3 -> "3", true -> "true"); None (or an error) when missing. A whole number
    is one label however it is written: 1, 1.0 and "1.0" are all "1" (JSON, CSV and .ts alike)."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = None if not math.isfinite(value) else str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str) and (whole := _WHOLE_NUMBER.fullmatch(value.strip())):
        value = str(int(whole.group(1)))
    elif value is not None and not isinstance(value, str):
        raise GrutrainError(f"{source}: {where}: the label must be a string or a number, got {json.dumps(value)}")
    if value is None or not value.strip():
        if require:
            raise GrutrainError(f"{source}: {where} has no label; every example needs one "
                                "(JSONL: a \"y\" field, CSV: the label column, .ts: the last ':' field)")
        return None
    return value.strip()


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_jsonl(text: str, source: str, require_labels: bool) -> Examples:
    examples = Examples(source)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GrutrainError(f"{source}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                                "each line must be an object like {\"x\": \"mary\", \"y\": \"female\"}") from None
        except RecursionError:
            raise GrutrainError(f"{source}: line {number} is nested too deeply to be an example; "
                                "each line must be an object like {\"x\": \"mary\", \"y\": \"female\"}") from None
        if not isinstance(obj, dict):
            raise GrutrainError(f"{source}: line {number} is not a JSON object; "
                                "each line must be like {\"x\": \"mary\", \"y\": \"female\"}")
        if "x" not in obj:
            raise GrutrainError(f"{source}: line {number} has no \"x\" (the sequence); "
                                "each line must be like {\"x\": \"mary\", \"y\": \"female\"}")
        y = _label(obj.get("y"), source, where, require_labels)
        examples.add(_jsonl_sequence(obj["x"], source, where), y, where)
    return examples


def _jsonl_sequence(x, source: str, where: str):
    """A JSONL "x": a string (text), a list of numbers ([T, 1]) or a list of lists of numbers ([T, C])."""
    if isinstance(x, str):
        if not x:
            raise GrutrainError(f"{source}: {where} has an empty sequence (\"x\": \"\"); give at least one character")
        return x
    if not isinstance(x, list):
        raise GrutrainError(f"{source}: {where}: \"x\" must be a string, a list of numbers or a list of lists of "
                            f"numbers, got {type(x).__name__}")
    if not x:
        raise GrutrainError(f"{source}: {where} has an empty sequence (\"x\": []); give at least one step")
    if all(isinstance(step, list) for step in x):
        channels = len(x[0])
        for t, step in enumerate(x):
            if len(step) != channels or not step:
                raise GrutrainError(f"{source}: {where}: step {t} has {len(step)} values but step 0 has {channels} "
                                    "(mismatched dimensions); every step needs one value per channel")
            _check_numbers(step, source, where)
        return torch.tensor(x, dtype=torch.float64)  # [T, C]
    if any(isinstance(step, list) for step in x):
        raise GrutrainError(f"{source}: {where}: \"x\" mixes numbers and lists; give a list of numbers (univariate) "
                            "or a list of lists, one per step (multivariate)")
    _check_numbers(x, source, where)
    return torch.tensor(x, dtype=torch.float64).unsqueeze(1)  # [T, 1]


def _check_numbers(values: list, source: str, where: str) -> None:
    for v in values:
        if not _is_number(v) or not math.isfinite(v):
            raise GrutrainError(f"{source}: {where}: {json.dumps(v)} is not a number; "
                                "a numeric sequence holds finite numbers only")


def _read_csv(text: str, source: str, label_column: str, require_labels: bool) -> Examples:
    examples = Examples(source)
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error) as exc:
        raise GrutrainError(f"{source}: cannot read a CSV header row ({exc})") from None
    has_label = label_column in header
    if require_labels and not has_label:
        raise GrutrainError(f"{source}: no column {label_column!r} (data.label_column) in the header; "
                            f"the columns are {', '.join(header)}")
    label_at = header.index(label_column) if has_label else None
    value_columns = [i for i in range(len(header)) if i != label_at]
    if not value_columns:
        raise GrutrainError(f"{source}: the header has no value columns besides the label {label_column!r}")
    try:
        for cells in reader:
            number = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            where = f"line {number}"
            if len(cells) > len(header):
                raise GrutrainError(f"{source}: {where} has {len(cells)} cells but the header has {len(header)}")
            cells = cells + [""] * (len(header) - len(cells))
            y = _label(cells[label_at], source, where, require_labels) if has_label else None
            raw = [cells[i].strip() for i in value_columns]
            while raw and not raw[-1]:
                raw.pop()  # trailing blanks: a shorter sequence
            if not raw:
                raise GrutrainError(f"{source}: {where} has an empty sequence (no values); give at least one value")
            values = []
            for i, cell in zip(value_columns, raw):
                value = parse_float(cell)
                if value is None:
                    problem = "is blank between values" if not cell else f"holds {cell!r}, which is not a number"
                    raise GrutrainError(f"{source}: {where}, column {header[i]!r} {problem}; value cells hold "
                                        "finite numbers (only trailing cells may be blank, for a shorter sequence)")
                values.append(value)
            examples.add(torch.tensor(values, dtype=torch.float64).unsqueeze(1), y, where)
    except csv.Error as exc:
        raise GrutrainError(f"{source}: line {reader.line_num} is not valid CSV ({exc})") from None
    return examples


def parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_ts(text: str, source: str, require_labels: bool) -> Examples:
    """The .ts format of sktime/aeon (https://www.aeon-toolkit.org: 'Loading data into aeon')."""
    header: dict[str, str] = {}
    class_labels: list[str] | None = None
    lines = text.splitlines()
    data_at = None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise GrutrainError(f"{source}: line {number} comes before @data but is not a header line (@...); "
                                "a .ts file lists its @ header lines, then @data, then the examples")
        key, _, value = line[1:].partition(" ")
        key, value = key.lower(), value.strip()
        if key == "data":
            data_at = number
            break
        if key == "timestamps" and value.lower() == "true":
            raise GrutrainError(f"{source}: @timeStamps true is not supported; give the values without time stamps")
        if key == "targetlabel" and value.split()[:1] == ["true"]:
            raise GrutrainError(f"{source}: @targetLabel true is a regression file; task classify needs "
                                "@classLabel true with the class labels")
        if key == "classlabel":
            words = value.split()
            if not words or words[0].lower() not in ("true", "false"):
                raise GrutrainError(f"{source}: line {number}: @classLabel must be followed by true (and the labels) "
                                    "or false")
            class_labels = words[1:] if words[0].lower() == "true" else None
            if words[0].lower() == "true" and not class_labels:
                raise GrutrainError(f"{source}: line {number}: @classLabel true lists no labels; "
                                    "write @classLabel true a b c")
        header[key] = value
    if data_at is None:
        raise GrutrainError(f"{source}: no @data line; a .ts file lists its @ header lines, then @data, "
                            "then one example per line")
    labelled = class_labels is not None
    if require_labels and not labelled:
        raise GrutrainError(f"{source}: the header has no '@classLabel true <labels>' line, so the examples have no "
                            "labels; task classify trains on labelled examples")
    dimensions = _header_int(header, "dimensions", source)
    if dimensions is None and header.get("univariate", "").lower() == "true":
        dimensions = 1
    declared = dimensions is not None
    examples = Examples(source)
    for number, line in enumerate(lines[data_at:], start=data_at + 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        fields = line.split(":")
        y = None
        if labelled:
            if len(fields) < 2:
                raise GrutrainError(f"{source}: {where} has no class label after a ':' (@classLabel true)")
            y = _label(fields.pop(), source, where, require_labels)
            if y is not None and y not in class_labels:
                raise GrutrainError(f"{source}: {where}: label {y!r} is not among @classLabel's "
                                    f"({' '.join(class_labels)})")
        if dimensions is None:
            dimensions = len(fields)
        if len(fields) != dimensions:
            said = f"the header says @dimensions {dimensions}" if declared else f"the first example has {dimensions}"
            raise GrutrainError(f"{source}: {where} has {len(fields)} dimension(s) but {said} (mismatched dimensions)")
        series = [_ts_values(f, source, where, d) for d, f in enumerate(fields)]
        lengths = {len(s) for s in series}
        if len(lengths) > 1:
            raise GrutrainError(f"{source}: {where}: its dimensions have different lengths "
                                f"({', '.join(str(len(s)) for s in series)}); an example's dimensions share one length")
        x = torch.tensor(series, dtype=torch.float64).T  # [T, C]
        # Trailing steps missing in every channel are padding, not data.
        observed = (~torch.isnan(x)).any(dim=1).nonzero()
        if not len(observed):
            raise GrutrainError(f"{source}: {where} has an empty sequence (every value is missing)")
        examples.add(x[: int(observed[-1]) + 1], y, where)
    return examples


def _header_int(header: dict, key: str, source: str) -> int | None:
    if key not in header:
        return None
    try:
        value = int(header[key])
    except ValueError:
        value = 0
    if value < 1:
        raise GrutrainError(f"{source}: @{key} {header[key]!r} is not a positive integer")
    return value


def _ts_values(text: str, source: str, where: str, dimension: int) -> list[float]:
    cells = text.split(",")
    if not text.strip():
        raise GrutrainError(f"{source}: {where}: dimension {dimension + 1} has an empty sequence; give its values")
    values = []
    for cell in cells:
        cell = cell.strip()
        if cell.lower() in _MISSING_TS:
            values.append(math.nan)
            continue
        value = parse_float(cell)
        if value is None:
            raise GrutrainError(f"{source}: {where}: dimension {dimension + 1} holds {cell!r}, which is not a number "
                                "(write ? for a missing value)")
        values.append(value)
    return values
