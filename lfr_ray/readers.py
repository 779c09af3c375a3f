"""Tolerant raw-text readers: input files -> work units -> documents, with every bad record counted.

``plan_units`` turns the configured inputs (files, directories, ``s3://``/``gs://`` URIs; JSONL, Parquet,
plain text, Hugging Face ``save_to_disk`` directories) into a deterministic list of ``Unit``s, the pieces
that ``data.prepare`` hands to parallel tasks. ``read_docs`` yields the usable ``Doc``s of one unit and
records each record it cannot use in a ``SkipLog`` under one of ``SKIP_REASONS``, with its ``file:line``
(JSONL, text) or ``file:row`` (Parquet, HF; rows count from 0) location. A file that cannot be opened or
parsed at all raises ``InputError`` naming it. No Ray here: the driver and the tasks both call these.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lfr_ray.config import DataConfig

SKIP_REASONS = {
    "bad_json": "line is not valid JSON",
    "not_object": "JSON line is not an object",
    "missing_text": "text field missing, null or not a string",
    "empty_text": "text is empty or whitespace only",
    "bad_utf8": "bytes are not valid UTF-8",
}

# Suffixes ``format: auto`` understands; compressed JSONL/text is decompressed by pyarrow on the fly.
_COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                   ".pq": "parquet", ".txt": "text", ".text": "text"}
_HF_MARKERS = ("state.json", "dataset_info.json")
_READ_CHUNK_BYTES = 8 << 20


class InputError(ValueError):
    """An input that cannot be used at all (missing, unreadable, corrupt); the message names it."""


@dataclass(frozen=True)
class InputFile:
    path: str
    """Absolute local path or full URI."""
    format: str
    """``jsonl``, ``parquet``, ``text`` or ``hf`` (one Arrow stream file of a ``save_to_disk`` directory)."""
    num_rows: Optional[int] = None
    """Rows of a Parquet/Arrow file; None for JSONL/text (one unit per file)."""


@dataclass(frozen=True)
class Unit:
    """One piece of work: a file, or a row range of a Parquet/Arrow file."""

    unit_idx: int
    path: str
    format: str
    role: str
    """``train`` or ``val`` (every document goes there) or ``split`` (hash each document by ``val_frac``)."""
    row_start: int = 0
    row_stop: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Unit":
        return Unit(**json.loads(text))


@dataclass(frozen=True)
class Doc:
    text: str
    domain: str
    doc_id: str


@dataclass
class SkipLog:
    """Counts of skipped records per reason and the first ``max_locations`` locations of each."""

    max_locations: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    locations: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, location: str) -> None:
        assert reason in SKIP_REASONS, reason
        self.counts[reason] = self.counts.get(reason, 0) + 1
        where = self.locations.setdefault(reason, [])
        if len(where) < self.max_locations:
            where.append(location)

    def merge(self, counts: dict[str, int], locations: dict[str, list[str]]) -> None:
        for reason, n in counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        for reason, where in locations.items():
            mine = self.locations.setdefault(reason, [])
            mine.extend(where[: self.max_locations - len(mine)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------------------------
# Inputs -> files -> units
# --------------------------------------------------------------------------------------------


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path (relative ones are made absolute) or URI."""
    if "://" not in uri:
        uri = str(Path(uri).absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(f"cannot open input {uri}: {e}") from e


def _full_name(uri: str, fs_path: str) -> str:
    """A user-facing name of ``fs_path``: the absolute local path, or the URI with its scheme."""
    if "://" not in uri or uri.startswith("file://"):
        return fs_path
    return uri.split("://", 1)[0] + "://" + fs_path.lstrip("/")


def _suffix_format(name: str) -> Optional[str]:
    lower = name.lower()
    for comp in _COMPRESSIONS:
        if lower.endswith(comp):
            lower = lower[: -len(comp)]
            break
    fmt = _SUFFIX_FORMATS.get(posixpath.splitext(lower)[1])
    if fmt == "parquet" and lower != name.lower():
        return None  # a compressed Parquet file is not a thing pyarrow reads
    return fmt


def _is_hf_dir(fs: pafs.FileSystem, path: str) -> bool:
    infos = fs.get_file_info([posixpath.join(path, m) for m in _HF_MARKERS])
    return any(info.type == pafs.FileType.File for info in infos)


def _hf_arrow_files(fs: pafs.FileSystem, path: str, name: str) -> list[str]:
    state = posixpath.join(path, "state.json")
    if fs.get_file_info(state).type == pafs.FileType.File:
        with fs.open_input_stream(state) as f:
            files = [d["filename"] for d in json.loads(f.read()).get("_data_files", [])]
        return [posixpath.join(path, f) for f in files]
    found = fs.get_file_info(pafs.FileSelector(path))
    files = sorted(i.path for i in found if i.type == pafs.FileType.File and i.path.endswith(".arrow"))
    if not files:
        raise InputError(f"{name}: a Hugging Face dataset directory without .arrow files")
    return files


def list_input_files(uri: str, fmt: str = "auto") -> list[InputFile]:
    """The files of one input in a deterministic order; a directory is expanded (recursively, sorted).

    Inside a directory, names starting with ``.`` or ``_`` are ignored (``_SUCCESS``, ``.crc``), and
    with ``format: auto`` so are files of an unknown suffix (a README next to the data).
    """
    fs, path = resolve(uri)
    name = _full_name(uri, path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {name}")
    if info.type == pafs.FileType.Directory:
        if fs.get_file_info(posixpath.join(path, "dataset_dict.json")).type == pafs.FileType.File:
            raise InputError(f"{name} is a Hugging Face DatasetDict; pass one split's directory "
                             f"(e.g. {name}/train) as the input")
        if fmt == "hf" or (fmt == "auto" and _is_hf_dir(fs, path)):
            return [_with_rows(fs, uri, p, "hf") for p in _hf_arrow_files(fs, path, name)]
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = []
        for item in sorted(found, key=lambda i: i.path):
            rel = posixpath.relpath(item.path, path)
            if item.type != pafs.FileType.File or any(p[:1] in "._" for p in rel.split("/")):
                continue
            file_fmt = fmt if fmt != "auto" else _suffix_format(item.base_name)
            if file_fmt is not None:
                files.append(_with_rows(fs, uri, item.path, file_fmt))
        if not files:
            raise InputError(f"input directory {name} holds no files of a known format "
                             f"(.jsonl[.gz], .parquet, .txt, or a save_to_disk directory)")
        return files
    if fmt == "hf":
        raise InputError(f"{name}: format 'hf' needs a directory written by datasets' save_to_disk")
    file_fmt = fmt if fmt != "auto" else _suffix_format(info.base_name)
    if file_fmt is None:
        raise InputError(f"cannot tell the format of {name} from its suffix; set data.format "
                         f"(jsonl, parquet, text)")
    return [_with_rows(fs, uri, path, file_fmt)]


def _with_rows(fs: pafs.FileSystem, uri: str, path: str, fmt: str) -> InputFile:
    name = _full_name(uri, path)
    if fmt == "parquet":
        try:
            with fs.open_input_file(path) as f:
                num_rows = pq.ParquetFile(f).metadata.num_rows
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"cannot read Parquet file {name}: {e}") from e
        return InputFile(name, fmt, num_rows)
    if fmt == "hf":
        return InputFile(name, fmt, _read_arrow(name).num_rows)
    return InputFile(name, fmt)


def plan_units(cfg: DataConfig) -> list[Unit]:
    """Every unit of work, numbered in input order (train inputs, then ``val_inputs``), then path, then row."""
    roles = [("split" if cfg.val_frac > 0 and not cfg.val_inputs else "train", cfg.resolved_inputs),
             ("val", cfg.resolved_val_inputs)]
    units: list[Unit] = []
    for role, inputs in roles:
        for uri in inputs:
            for f in list_input_files(uri, cfg.format):
                if f.num_rows is None:
                    units.append(Unit(len(units), f.path, f.format, role))
                    continue
                for start in range(0, f.num_rows, cfg.rows_per_unit):
                    stop = min(start + cfg.rows_per_unit, f.num_rows)
                    units.append(Unit(len(units), f.path, f.format, role, start, stop))
    return units


def check_columns(cfg: DataConfig, units: list[Unit]) -> list[str]:
    """Raise if a Parquet/HF file lacks the text column; return warnings for missing domain/id columns."""
    warnings, seen = [], set()
    for unit in units:
        if unit.format not in ("parquet", "hf") or unit.path in seen:
            continue
        seen.add(unit.path)
        names = _schema(unit).names
        if cfg.text_field not in names:
            raise InputError(f"{unit.path} has no column '{cfg.text_field}' (columns: {', '.join(names)}); "
                             f"set data.text_field")
        for key in ("domain_field", "id_field"):
            col = getattr(cfg, key)
            if col is not None and col not in names:
                warnings.append(f"{unit.path} has no column '{col}' (data.{key}); "
                                f"{'domain unknown' if key == 'domain_field' else 'ids are file:row'}")
    return warnings


# --------------------------------------------------------------------------------------------
# Units -> documents
# --------------------------------------------------------------------------------------------


def read_docs(unit: Unit, cfg: DataConfig, skips: SkipLog) -> Iterator[Doc]:
    """The usable documents of ``unit`` in file order; unusable records go to ``skips``."""
    if unit.format == "jsonl":
        yield from _read_jsonl(unit.path, cfg, skips)
    elif unit.format == "text":
        yield from _read_text(unit.path, skips)
    elif unit.format in ("parquet", "hf"):
        yield from _read_table(unit, cfg, skips)
    else:
        raise InputError(f"unknown format {unit.format!r} for {unit.path}")


def _open_stream(path: str) -> pa.NativeFile:
    fs, fs_path = resolve(path)
    try:
        return fs.open_input_stream(fs_path, compression="detect")
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot open {path}: {e}") from e


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the newline) of every line; I/O errors name the file."""
    lineno, carry = 0, b""
    with _open_stream(path) as stream:
        while True:
            try:
                chunk = stream.read(_READ_CHUNK_BYTES)
            except (pa.ArrowException, OSError, EOFError) as e:
                raise InputError(f"cannot read {path} after line {lineno} (corrupt or truncated?): {e}") from e
            if not chunk:
                break
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
            for line in lines:
                lineno += 1
                yield lineno, line
    if carry:
        yield lineno + 1, carry


def _label(value: Any, fallback: str) -> str:
    if value is None or value == "":
        return fallback
    return value if isinstance(value, str) else str(value)


def _check_text(text: Any, where: str, skips: SkipLog) -> bool:
    if not isinstance(text, str):
        skips.add("missing_text", where)
        return False
    if not text.strip():
        skips.add("empty_text", where)
        return False
    try:
        text.encode("utf-8")  # lone surrogates (JSON "\ud800") cannot reach the tokenizer
    except UnicodeEncodeError:
        skips.add("bad_utf8", where)
        return False
    return True


def _read_jsonl(path: str, cfg: DataConfig, skips: SkipLog) -> Iterator[Doc]:
    base = posixpath.basename(path)
    for lineno, raw in _iter_lines(path):
        where = f"{path}:{lineno}"
        if not raw.strip():
            continue  # a blank line holds no record
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            skips.add("bad_utf8", where)
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            skips.add("bad_json", where)
            continue
        if not isinstance(obj, dict):
            skips.add("not_object", where)
            continue
        text = obj.get(cfg.text_field)
        if not _check_text(text, where, skips):
            continue
        domain = _label(obj.get(cfg.domain_field) if cfg.domain_field else None, "unknown")
        doc_id = _label(obj.get(cfg.id_field) if cfg.id_field else None, f"{base}:{lineno}")
        yield Doc(text, domain, doc_id)


def _read_text(path: str, skips: SkipLog) -> Iterator[Doc]:
    """A whole text file is one document; its domain is the name of the directory holding it."""
    with _open_stream(path) as stream:
        try:
            data = stream.read()
        except (pa.ArrowException, OSError, EOFError) as e:
            raise InputError(f"cannot read {path} (corrupt or truncated?): {e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        skips.add("bad_utf8", f"{path}:{line}")
        return
    if _check_text(text, f"{path}:1", skips):
        parts = path.rstrip("/").split("/")
        yield Doc(text, parts[-2] if len(parts) > 1 and parts[-2] else "unknown", parts[-1])


def _read_arrow(path: str) -> pa.Table:
    """A whole Arrow IPC stream file (what ``save_to_disk`` writes); memory-mapped when local."""
    try:
        if "://" not in path:
            return pa.ipc.open_stream(pa.memory_map(path)).read_all()
        fs, fs_path = resolve(path)
        with fs.open_input_file(fs_path) as f:
            return pa.ipc.open_stream(f).read_all()
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read Arrow file {path} of a Hugging Face dataset: {e}") from e


def _schema(unit: Unit) -> pa.Schema:
    if unit.format == "hf":
        return _read_arrow(unit.path).schema
    fs, fs_path = resolve(unit.path)
    try:
        with fs.open_input_file(fs_path) as f:
            return pq.ParquetFile(f).schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read Parquet file {unit.path}: {e}") from e


def _read_rows(unit: Unit, columns: list[str]) -> pa.Table:
    """Rows ``[row_start, row_stop)`` of a Parquet/Arrow file, reading only the row groups needed."""
    stop = unit.row_stop
    if unit.format == "hf":
        table = _read_arrow(unit.path)
        return table.select([c for c in columns if c in table.column_names]).slice(
            unit.row_start, (stop if stop is not None else table.num_rows) - unit.row_start)
    fs, fs_path = resolve(unit.path)
    try:
        with fs.open_input_file(fs_path) as f:
            pf = pq.ParquetFile(f)
            stop = pf.metadata.num_rows if stop is None else stop
            groups, first_row, row = [], None, 0
            for i in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(i).num_rows
                if row < stop and row + n > unit.row_start:
                    groups.append(i)
                    first_row = row if first_row is None else first_row
                row += n
            present = [c for c in columns if c in pf.schema_arrow.names]
            table = pf.read_row_groups(groups, columns=present)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read Parquet file {unit.path} (rows {unit.row_start}-{stop}): {e}") from e
    return table.slice(unit.row_start - (first_row or 0), stop - unit.row_start)


def _column_values(table: pa.Table, name: Optional[str], n: int) -> list[Any]:
    if name is None or name not in table.column_names:
        return [None] * n
    col = table.column(name)
    try:
        return col.to_pylist()
    except UnicodeDecodeError:  # a string column holding invalid UTF-8: find the bad values one by one
        values = []
        for chunk in col.chunks:
            for i in range(len(chunk)):
                try:
                    values.append(chunk[i].as_py())
                except UnicodeDecodeError:
                    values.append(_BadUtf8)
        return values


class _BadUtf8:
    """Marks a value that could not be decoded."""


def _read_table(unit: Unit, cfg: DataConfig, skips: SkipLog) -> Iterator[Doc]:
    columns = [c for c in (cfg.text_field, cfg.domain_field, cfg.id_field) if c is not None]
    table = _read_rows(unit, columns)
    if cfg.text_field not in table.column_names:
        raise InputError(f"{unit.path} has no column '{cfg.text_field}' (set data.text_field)")
    n = table.num_rows
    texts = _column_values(table, cfg.text_field, n)
    domains = _column_values(table, cfg.domain_field, n)
    ids = _column_values(table, cfg.id_field, n)
    base = posixpath.basename(unit.path)
    for i, (text, domain, doc_id) in enumerate(zip(texts, domains, ids)):
        row = unit.row_start + i
        where = f"{unit.path}:{row}"
        if text is _BadUtf8:
            skips.add("bad_utf8", where)
            continue
        if not _check_text(text, where, skips):  # bytes from a binary column count as missing text
            continue
        domain = _label(None if domain is _BadUtf8 else domain, "unknown")
        doc_id = _label(None if doc_id is _BadUtf8 else doc_id, f"{base}:{row}")
        yield Doc(text, domain, doc_id)
