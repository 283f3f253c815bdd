"""`bilstm-exp predict`: texts (arguments, a text file or a CSV) -> one line per text:
``label<TAB>probability<TAB>text``.

Checks run cheapest first, before MLflow is imported: the texts and the file (read by the same code
as training data, :mod:`bilstm_exp.data.tables`, so a wrong encoding, UTF-16, a binary file, an
unclosed quote or an empty file is one line naming the file, the line when known and the fix);
then the store; then the model. A text's tab, newline or other control character is printed
escaped (``\\t``, ``\\n``, a backslash as ``\\\\``), so each text stays one line of three fields.
"""

from __future__ import annotations

import argparse
import codecs
from pathlib import Path

from bilstm_exp.data import tables
from bilstm_exp.errors import DataError, UserError

OPTIONS = tables.Options(path="--file", encoding="--encoding ",
                         contents="texts, one per line (or a CSV with a 'text' column and one text per row)",
                         example="texts.txt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models:/bilstm-sentiment@champion", help="model URI")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's own default)")
    parser.add_argument("--file", default=None, help="a text file (one text per line) or a CSV with a text column")
    parser.add_argument("--encoding", default="utf-8", help="the file's text encoding, e.g. latin-1 (default: utf-8)")
    parser.add_argument("texts", nargs="*")


def command(args: argparse.Namespace) -> None:
    texts = given_texts(args.texts, Path(args.file) if args.file else None, args.encoding)
    uri = None
    if args.model.startswith(("models:/", "runs:/")) or args.tracking_uri:  # needs the store: checked first
        from bilstm_exp.tracking import store

        uri = store.existing_store(args.tracking_uri)
        store.open_store(uri)  # credentials refused; a down server fails in seconds, naming the URI
    result = _predict(_load(args.model, uri), texts)
    for text, prob, label in zip(texts, result["probability"], result["label"], strict=True):
        print(f"{label}\t{prob:.4f}\t{escape(text)}")


def given_texts(arguments: list[str], file: Path | None, encoding: str) -> list[str]:
    """The texts to classify: the arguments, then the file's; refuses none and blank ones."""
    texts = list(arguments) + (read_texts(file, encoding) if file else [])
    if not texts:
        raise DataError("no texts given. Fix: pass texts as arguments or --file PATH")
    blank = [i for i, text in enumerate(texts) if not text.strip()]
    if blank:
        raise DataError(f"text {blank[0] + 1} of {len(texts)} is empty or only whitespace: there is nothing to "
                        "classify. Fix: pass non-empty texts")
    return texts


def read_texts(path: Path, encoding: str = "utf-8") -> list[str]:
    """One text per non-blank line, or the non-empty cells of the `text` column of a CSV."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"--encoding {encoding}: unknown encoding. Fix: a Python codec name, e.g. "
                        "--encoding utf-8, latin-1 or cp1252") from None
    tables.check_file(path, OPTIONS)
    if path.suffix.lower() != ".csv":
        return tables.read_lines(path, OPTIONS, encoding)
    table, _ = tables.read_table(path, "csv", OPTIONS, encoding=encoding)
    if "text" not in table.columns:
        raise DataError(f"{path}: no 'text' column (found {', '.join(map(str, table.columns))}). "
                        "Fix: name the column 'text'")
    return table["text"].dropna().astype(str).tolist()  # an empty cell is no text, not "nan"


def escape(text: str) -> str:
    """``text`` on one line: a backslash doubled, tab, newline and other unprintable characters as
    Python escapes (``\\t``, ``\\n``, ``\\x0b``, ``\\u2028``)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text.replace("\\", "\\\\"))


def _load(model_uri: str, tracking_uri: str | None):
    import mlflow.pyfunc  # after the checks: a bad URI answers without loading MLflow's model code

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as error:
        raise UserError(f"cannot load model {model_uri}: {str(error).splitlines()[0]}. Fix: check the URI "
                        "(models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model) and the tracking "
                        "URI") from None


def _predict(model, texts: list[str]):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        return model.predict(pd.DataFrame({"text": texts}))  # matches any raw-text signature, old or new
    except MlflowException as error:
        raise DataError(f"the model refused the input: {error.message.splitlines()[0]}. Fix: pass non-empty "
                        "texts") from None
