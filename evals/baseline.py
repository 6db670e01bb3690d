"""The reference dataset: its file format, validation on load, and matching records to images.

A baseline is one file per batch, ``<batch>.jsonl`` (one JSON object per line) or
``<batch>.parquet`` (one row per record). Three kinds of record, told apart by an
optional ``record`` key:

- ``image`` (the default): one image, keyed by ``path`` (relative to the batch folder)
  and/or ``sha256`` of its bytes, with the reference fields ``primary_category``,
  ``tags``, ``description``, ``detected_objects`` (``[{name, confidence}]`` or plain
  strings), ``scene_type``, ``color_palette`` (``#RRGGBB`` or CSS colour names),
  ``suggested_cluster_name`` and ``vlm_model``. Every field is optional but one; a
  missing field is left out of scoring for that image.
- ``cluster``: a reference group, ``cluster_name`` with optional ``description``,
  ``tags``, ``primary_category`` and ``members`` (paths or sha256s). A line with
  ``cluster_name`` and no image key is a cluster record even without ``record``.
- ``source``: says what the file is (``"source": "hand-written reference"``), so a
  human-labelled file is never mistaken for model output.

Every line is validated; a malformed, oversized or duplicate line becomes a ``Problem``
(line number and reason) and the other lines still load. The bounds on sizes are the
``MAX_*`` constants below; a file over ``MAX_FILE_BYTES`` is one problem (line 0).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Iterable, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import (
    BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator,
)

from evals.parquet_schemas import CLUSTER, GEMINI_BASELINE, IMAGE, PROBLEM

BASELINE_SUFFIXES = (".jsonl", ".parquet")

# Bounds on a reference file (and on an export being imported), so that a broken or hostile one
# costs a problem line, never a crash or all the memory. Real labels stay far below them.
MAX_FILE_BYTES = 512 * 2**20
MAX_LINE_BYTES = 8 * 2**20  # one JSON Lines line: a cluster of 100,000 members named by sha256 fits
MAX_JSON_NESTING = 32  # a record nests 3 deep (detected_objects), an export's row about 6
MAX_DESCRIPTION_CHARS = 2_000  # description (of an image or a cluster) and the source record
MAX_TEXT_CHARS = 200  # every other text: a tag, an object, category or cluster name, a colour, a model id
MAX_PATH_CHARS = 1_024  # path, and each cluster member
MAX_ITEMS = 100  # tags, detected objects, palette colours
MAX_MEMBERS = 100_000  # members of one cluster record

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION_CHARS)]
PathText = Annotated[str, StringConstraints(max_length=MAX_PATH_CHARS)]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
REFERENCE_FIELDS = (
    "primary_category", "tags", "description", "detected_objects", "scene_type", "color_palette",
    "suggested_cluster_name",
)


def to_hex_color(value: str) -> str:
    """'#RGB', '#RRGGBB' or a CSS colour name -> '#RRGGBB'."""
    try:
        from matplotlib.colors import to_hex  # here: matplotlib costs every process that loads the definitions

        return to_hex(value.strip().lower(), keep_alpha=False).upper()
    except ValueError:
        raise ValueError(f"{value!r} is not a colour (#RRGGBB or a CSS colour name)") from None


def _relative_path(value: str | None) -> str | None:
    if value is None:
        return None
    path = PurePosixPath(value.replace("\\", "/").removeprefix("./"))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"{value!r} must be a path relative to the batch folder")
    return path.as_posix()


class ReferenceObject(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator("color_palette", check_fields=False)
    @classmethod
    def _colors(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [to_hex_color(c) for c in value]


class ImageReference(_Record):
    record: Literal["image"] = IMAGE
    path: PathText | None = None
    sha256: Text | None = None
    primary_category: Text | None = None
    tags: list[Text] | None = Field(default=None, max_length=MAX_ITEMS)
    description: Description | None = None
    detected_objects: list[ReferenceObject | Text] | None = Field(default=None, max_length=MAX_ITEMS)
    scene_type: Text | None = None
    color_palette: list[Text] | None = Field(default=None, max_length=MAX_ITEMS)
    suggested_cluster_name: Text | None = None
    vlm_model: Text | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return _relative_path(value)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value.lower()):
            raise ValueError("must be 64 hexadecimal digits")
        return None if value is None else value.lower()

    @field_validator("detected_objects")
    @classmethod
    def _objects(cls, value: list[ReferenceObject | str] | None) -> list[ReferenceObject] | None:
        # Older Gemini prompts returned plain names; they carry no confidence.
        return None if value is None else [ReferenceObject(name=o) if isinstance(o, str) else o for o in value]

    @model_validator(mode="after")
    def _keyed_and_labelled(self) -> ImageReference:
        if self.path is None and self.sha256 is None:
            raise ValueError("an image record needs 'path' or 'sha256'")
        if all(getattr(self, f) is None for f in REFERENCE_FIELDS):
            raise ValueError(f"an image record needs at least one of {', '.join(REFERENCE_FIELDS)}")
        return self

    @property
    def key(self) -> str:
        return f"path {self.path!r}" if self.path is not None else f"sha256 {self.sha256}"

    @property
    def object_names(self) -> list[str] | None:
        return None if self.detected_objects is None else [o.name for o in self.detected_objects]


class ClusterReference(_Record):
    record: Literal["cluster"] = CLUSTER
    cluster_name: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    description: Description | None = None
    tags: list[Text] | None = Field(default=None, max_length=MAX_ITEMS)
    primary_category: Text | None = None
    members: list[PathText] = Field(default_factory=list, max_length=MAX_MEMBERS)


class SourceRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    record: Literal["source"]
    source: str = Field(min_length=1, max_length=MAX_DESCRIPTION_CHARS)


@dataclass(frozen=True)
class Problem:
    line: int  # 0 for the file as a whole
    reason: str


@dataclass
class Baseline:
    file: Path | None = None
    source: str | None = None
    images: list[tuple[int, ImageReference]] = field(default_factory=list)  # (line, record)
    clusters: list[tuple[int, ClusterReference]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _kind(obj: dict[str, Any]) -> str:
    if "record" in obj:
        return str(obj["record"])
    if "cluster_name" in obj and "path" not in obj and "sha256" not in obj:
        return CLUSTER
    return IMAGE


def shorten(value: Any, limit: int = 60) -> str:
    """A value for a problem's reason: its repr, cut short (it may be megabytes of someone's file)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _explain(error: ValidationError, limit: int = 5) -> str:
    parts = []
    errors = error.errors(include_input=False, include_url=False)
    for e in errors[:limit]:
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    if len(errors) > limit:  # e.g. one per item of a list of 200,000 numbers
        parts.append(f"and {len(errors) - limit} more errors")
    return "; ".join(parts)


def parse_records(rows: Iterable[tuple[int, Any]], file: Path | None = None) -> Baseline:
    """Validate (line, object) pairs into a Baseline; bad and duplicate lines become problems."""
    baseline = Baseline(file=file)
    first_line: dict[str, int] = {}
    for line, obj in rows:
        if not isinstance(obj, dict):
            baseline.problems.append(Problem(line, f"not a JSON object but {type(obj).__name__}"))
            continue
        kind = _kind(obj)
        try:
            if kind == "source":
                record = SourceRecord.model_validate(obj)
                if baseline.source is not None:
                    baseline.problems.append(Problem(line, "a second 'source' record; the first one stands"))
                else:
                    baseline.source = record.source
            elif kind == CLUSTER:
                baseline.clusters.append((line, ClusterReference.model_validate(obj)))
            elif kind == IMAGE:
                image = ImageReference.model_validate(obj)
                if image.key in first_line:
                    baseline.problems.append(
                        Problem(line, f"duplicate of line {first_line[image.key]} (same {image.key})")
                    )
                    continue
                first_line[image.key] = line
                baseline.images.append((line, image))
            else:
                baseline.problems.append(
                    Problem(line, f"unknown record kind {shorten(kind)!r} (image, cluster or source)")
                )
        except ValidationError as error:
            baseline.problems.append(Problem(line, _explain(error)))
    return baseline


@dataclass(frozen=True)
class Unparsable:
    """A line that is not a JSON value, and why."""

    reason: str


_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')  # once escapes are gone a string cannot hold '"'; linear, no backtracking
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text, counted without parsing it (brackets in strings aside)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text))).encode()
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    return int(np.cumsum(np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)).max())


def parse_json(text: str) -> Any:
    """``json.loads`` for text from outside; ValueError with the reason when it is not JSON.

    Nesting is bounded before parsing: the parser recurses once per level, so 100,000 '[' would
    end in RecursionError, far from the line that caused it."""
    depth = nesting_depth(text)
    if depth > MAX_JSON_NESTING:
        raise ValueError(f"nested {depth} levels deep; a record may nest at most {MAX_JSON_NESTING}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}" if error.lineno > 1 else f"column {error.colno}"
        raise ValueError(f"invalid JSON: {error.msg} at {where}") from None
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        raise ValueError(f"invalid JSON: {error}") from None


def check_file_size(path: Path) -> None:
    """ValueError when ``path`` is larger than any reference file or export should be."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path} is {size / 2**20:.0f} MiB; a baseline or export may have at most "
                         f"{MAX_FILE_BYTES // 2**20} MiB")


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSON Lines file; a line that does not parse
    (not UTF-8, not JSON, too long, nested too deep) gives an ``Unparsable`` with the reason."""
    with path.open("rb") as handle:  # decoded line by line, so one bad byte costs one line
        number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest without holding it
                    raw = handle.readline(2**20)
                yield number, Unparsable(f"longer than {MAX_LINE_BYTES // 2**20} MiB")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, Unparsable("not UTF-8 text")
                continue
            if not text.strip():
                continue
            try:
                yield number, parse_json(text)
            except ValueError as error:
                yield number, Unparsable(str(error))


def _drop_nulls(row: dict[str, Any]) -> dict[str, Any]:
    # A Parquet column exists for every row; null there means "not given", as a missing key in JSONL.
    return {k: v for k, v in row.items() if v is not None}


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a Parquet file; ValueError when it is not one, or nests deeper than a record may."""
    try:
        schema = pq.read_schema(path)
        depth = max((_type_depth(f.type) for f in schema), default=0)
        if depth > MAX_JSON_NESTING:
            raise ValueError(f"columns nested {depth} levels deep; a record may nest at most {MAX_JSON_NESTING}")
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"not a readable Parquet file: {error}") from None


def _type_depth(data_type: pa.DataType) -> int:
    deepest, pending = 0, [(data_type, 1)]
    while pending:  # a loop, not recursion: the schema is as untrusted as the rows
        data_type, depth = pending.pop()
        deepest = max(deepest, depth)
        pending += [(data_type.field(i).type, depth + 1) for i in range(data_type.num_fields)]
    return deepest


def load_baseline(path: Path) -> Baseline:
    """Load and validate a .jsonl or .parquet baseline file; a file that cannot be read at all
    (too large, not Parquet) loads as one problem on line 0."""
    if path.suffix not in BASELINE_SUFFIXES:
        raise ValueError(f"{path}: a baseline is a .jsonl or .parquet file")
    try:
        check_file_size(path)
        if path.suffix == ".parquet":
            rows = [(i, _drop_nulls(row)) for i, row in enumerate(read_parquet_rows(path), start=1)]
        else:
            rows = read_jsonl(path)
    except ValueError as error:
        return Baseline(file=path, problems=[Problem(0, str(error))])
    parsed: list[tuple[int, Any]] = []
    unparsable: list[Problem] = []
    for line, obj in rows:
        if isinstance(obj, Unparsable):
            unparsable.append(Problem(line, obj.reason))
        else:
            parsed.append((line, obj))
    baseline = parse_records(parsed, file=path)
    baseline.problems = sorted(unparsable + baseline.problems, key=lambda p: p.line)
    return baseline


def find_baseline_file(baselines_dir: Path, batch: str) -> Path | None:
    """``<dir>/<batch>.jsonl`` or ``.parquet``; both present is an error, as it is ambiguous."""
    found = [baselines_dir / f"{batch}{suffix}" for suffix in BASELINE_SUFFIXES]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise ValueError(f"both {found[0].name} and {found[1].name} exist in {baselines_dir}; keep one")
    return found[0] if found else None


@dataclass(frozen=True)
class Coverage:
    reference: ImageReference | None
    matched_by: str | None  # 'path' or 'sha256'
    reason: str | None  # why it is not covered


def match_images(images: list[tuple[str, str]], baseline: Baseline) -> tuple[dict[str, Coverage], int]:
    """For each (path, sha256) of the batch, its reference record; and how many records matched no image.

    A record with a path applies to that path, unless its sha256 says the file has changed
    since it was labelled. A record is also found by sha256 (a renamed or copied file),
    unless its path names another image of the batch.
    """
    by_path = {r.path: r for _, r in baseline.images if r.path is not None}
    by_sha: dict[str, ImageReference] = {}
    batch_paths = {p for p, _ in images}
    for _, r in baseline.images:
        if r.sha256 is not None and (r.path is None or r.path not in batch_paths):
            by_sha.setdefault(r.sha256, r)
    used: set[int] = set()
    coverage: dict[str, Coverage] = {}
    for path, sha in images:
        ref = by_path.get(path)
        if ref is not None and ref.sha256 is not None and sha and ref.sha256 != sha:
            coverage[path] = Coverage(None, None, "file changed since it was labelled (sha256 differs)")
            used.add(id(ref))
        elif ref is not None:
            coverage[path] = Coverage(ref, "path", None)
        elif sha and sha in by_sha:
            coverage[path] = Coverage(by_sha[sha], "sha256", None)
        else:
            coverage[path] = Coverage(None, None, "no baseline record")
        if coverage[path].reference is not None:
            used.add(id(coverage[path].reference))
    orphans = sum(1 for _, r in baseline.images if id(r) not in used)
    return coverage, orphans


def baseline_table(baseline: Baseline) -> pa.Table:
    """The loaded baseline as the ``gemini_baseline`` asset: records, then problems."""
    rows: list[dict[str, Any]] = []
    for line, r in baseline.images:
        objects = None if r.detected_objects is None else [o.model_dump() for o in r.detected_objects]
        rows.append({**r.model_dump(exclude={"detected_objects"}), "detected_objects": objects, "line": line})
    for line, c in baseline.clusters:
        rows.append({**c.model_dump(), "line": line})
    rows += [{"record": PROBLEM, "line": p.line, "problem": p.reason} for p in baseline.problems]
    for row in rows:
        row["source"] = baseline.source
        row["file"] = None if baseline.file is None else str(baseline.file)
    return pa.Table.from_pylist(rows, schema=GEMINI_BASELINE)


def baseline_from_table(table: pa.Table) -> Baseline:
    """The inverse of ``baseline_table``, for assets that read the stored baseline."""
    baseline = Baseline()
    for row in table.to_pylist():
        baseline.source = row["source"]
        baseline.file = None if row["file"] is None else Path(row["file"])
        if row["record"] == PROBLEM:
            baseline.problems.append(Problem(row["line"], row["problem"]))
        elif row["record"] == CLUSTER:
            baseline.clusters.append((row["line"], ClusterReference.model_validate(_drop_nulls(row))))
        else:
            baseline.images.append((row["line"], ImageReference.model_validate(_drop_nulls(row))))
    return baseline
