"""Reading the files a user hands over, with one-line errors: training data (csv, tsv, parquet,
jsonl) and the texts `bilstm-exp predict --file` classifies (a CSV, or one text per line).

Both readers share every check, so a file is judged the same way wherever it is given: a folder
or a missing, empty or unreadable file; UTF-16 or binary content; text not in the given encoding
(the line of the first bad byte); an unclosed quote (its line); other malformed lines. Messages
name the file, the line when known, and the fix in the caller's terms (:class:`Options`).
pandas is imported inside the readers only.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bilstm_exp.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
SNIFF_BYTES = 8192  # UTF-16 and binary files show themselves in their first bytes
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass(frozen=True)
class Options:
    """How the user sets what reading needs, for the fixes the messages offer."""

    path: str  # the option naming the file: "data.path" or "--file"
    encoding: str  # how an encoding is set, followed by its name: "data.encoding=" or "--encoding "
    format: str | None = None  # how the format is set ("data.format"), if it can be
    skip: str | None = None  # how malformed lines are skipped ("data.on_bad_rows=skip"), if they can be
    contents: str = "a header and rows"  # what an empty file needs
    example: str = "reviews.csv"  # a file name, for examples


def check_file(path: Path, options: Options) -> float:
    """Refuse a folder, a missing or an empty file; returns the size in MB."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file. Fix: point {options.path} at a file in it, "
                        f"e.g. {options.path}{'=' if options.path.startswith('data.') else ' '}"
                        f"{path / options.example}")
    if not path.is_file():
        raise DataError(f"{path}: no such file. Fix: point {options.path} at an existing file")
    size_mb = path.stat().st_size / 1e6
    if size_mb == 0:
        raise DataError(f"{path}: the file is empty. Fix: add {options.contents}")
    return size_mb


def table_format(path: Path, configured: str = "auto", options: Options | None = None) -> str:
    """``configured``, or the format the suffix names."""
    fmt = configured if configured != "auto" else FORMATS.get(path.suffix.lower(), "")
    if not fmt:
        how = f", or set {options.format}" if options and options.format else ""
        raise DataError(f"{path}: cannot tell the format from the suffix '{path.suffix}'. "
                        f"Fix: use .csv, .tsv, .parquet or .jsonl{how}")
    return fmt


def read_table(path: Path, fmt: str, options: Options, *, encoding: str = "utf-8", header: bool = True,
               skip_malformed: bool = False) -> tuple[Any, int]:
    """The file as a DataFrame, and the number of malformed lines skipped (``skip_malformed``)."""
    import pandas as pd

    if fmt != "parquet":
        sniff(path, encoding, options)
    try:
        if fmt in ("csv", "tsv"):
            return _read_csv(path, "\t" if fmt == "tsv" else ",", encoding, header, skip_malformed)
        if fmt == "parquet":
            return pd.read_parquet(path), 0
        return pd.read_json(path, lines=True, encoding=encoding), 0
    except UnicodeDecodeError as error:
        raise decode_error(path, encoding, error, options) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (blank lines only). Fix: add {options.contents}") from None
    except (ValueError, pd.errors.ParserError, OSError) as error:
        raise _parse_error(path, fmt, error, options, skip_malformed) from None


def _read_csv(path: Path, sep: str, encoding: str, header: bool, skip_malformed: bool) -> tuple[Any, int]:
    import warnings

    import pandas as pd

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        table = pd.read_csv(path, sep=sep, encoding=encoding, header=0 if header else None,
                            on_bad_lines="warn" if skip_malformed else "error")
    malformed = sum(str(w.message).count("Skipping line") for w in caught
                    if issubclass(w.category, pd.errors.ParserWarning))
    return table, malformed


def read_lines(path: Path, options: Options, encoding: str = "utf-8") -> list[str]:
    """The non-blank lines of a text file."""
    sniff(path, encoding, options)
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as error:
        raise decode_error(path, encoding, error, options) from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error}). Fix: check the file and its "
                        "permissions") from None
    return [line for line in text.splitlines() if line.strip()]


def sniff(path: Path, encoding: str, options: Options) -> None:
    """Refuse UTF-16 text read as another encoding, and binary content, from the file's first bytes."""
    if _codec(encoding).startswith(("utf-16", "utf-32")):
        return
    try:
        with path.open("rb") as file:
            head = file.read(SNIFF_BYTES)
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error}). Fix: check the file and its "
                        "permissions") from None
    if head.startswith(_UTF16_BOMS):
        raise DataError(f"{path}: is UTF-16 text (it starts with a UTF-16 byte order mark), not "
                        f"{_shown(encoding)}. Fix: {options.encoding}utf-16, or re-save the file as UTF-8")
    if b"\0" in head:
        raise DataError(f"{path}: is a binary file, not text (a NUL byte at byte {head.index(0)}). Fix: point "
                        f"{options.path} at a text file (UTF-16 text without a byte order mark: "
                        f"{options.encoding}utf-16-le)")


def decode_error(path: Path, encoding: str, error: UnicodeDecodeError, options: Options) -> DataError:
    """The message for text that is not in ``encoding``: the line and byte of the first bad byte."""
    where = first_undecodable(path, encoding)
    at = f"line {where[0]}, byte {where[1]}" if where else f"byte {error.start}"
    return DataError(f"{path}: not valid {_shown(encoding)} ({at}; {options.encoding}{encoding}). "
                     f"Fix: set the file's encoding, e.g. {options.encoding}latin-1 or cp1252, "
                     "or re-save the file as UTF-8")


def first_undecodable(path: Path, encoding: str) -> tuple[int, int] | None:
    """(line, byte offset in the file) of the first byte that does not decode, 1-based line; None if
    every line decodes. Line by line, which is exact for the encodings that keep ASCII newlines."""
    offset = 0
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as error:
                return number, offset + error.start
            offset += len(line)
    return None


_UNCLOSED = re.compile(r"EOF inside string starting at row (\d+)")
_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _parse_error(path: Path, fmt: str, error: Exception, options: Options, skipping: bool) -> DataError:
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    skip = f" or {options.skip} to skip such lines" if fmt in ("csv", "tsv") and options.skip and not skipping else ""
    unclosed, fields = _UNCLOSED.search(first), _FIELDS.search(first)
    if unclosed:  # pandas counts rows from 0, the header included: line N + 1
        return DataError(f"{path}, line {int(unclosed.group(1)) + 1}: a quote opened there is never closed (the "
                         "file ends inside it). Fix: close the quote; a quote inside a quoted text is written "
                         "twice (\"\")")
    if fields:
        expected, line, saw = fields.groups()
        separator = "tab" if fmt == "tsv" else "comma"
        return DataError(f"{path}, line {line}: {saw} fields where the lines before have {expected}. "
                         f"Fix: put a text that holds a {separator} in double quotes{skip}")
    fix = "check the file" + (f", set {options.format}" if options.format else "")
    return DataError(f"{path}: cannot be read as {fmt}: {first}. Fix: {fix}{skip}")


def column(table, spec: str, key: str, path: Path, header: bool):
    """The column a ``data.text_column`` / ``data.label_column`` value names: by name, or by 0-based position."""
    spec = str(spec)
    names = [str(c) for c in table.columns]
    if header and spec in names:
        return table.columns[names.index(spec)]
    if spec.isdigit() and int(spec) < len(names):
        return table.columns[int(spec)]
    found = f"{len(names)} columns (positions 0-{len(names) - 1})" if not header else ", ".join(names)
    raise DataError(f"{path}: missing column {spec!r} (data.{key}); found {found}. Fix: set data.text_column / "
                    "data.label_column to a column name or a 0-based position")


def _codec(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return encoding.lower()


def _shown(encoding: str) -> str:
    return "UTF-8" if _codec(encoding) == "utf-8" else encoding
