"""Local JSON and JSONL dataset files read record by record, so that a file that is not UTF-8, not JSON, or holds
something other than objects is refused with its file, line and byte before anything is loaded."""

import codecs
import json
from collections.abc import Iterator
from pathlib import Path

from goft.data.rows import json_type
from goft.errors import RecipeError

JSON_SUFFIXES = (".json", ".jsonl")
JSON_SPACE = " \t\r\n"


def _decode(file: str, data: bytes, line: int, offset: int) -> str:
    """`data`, which starts on line `line` at byte `offset` of `file`, as UTF-8; else where it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line += data.count(b"\n", 0, error.start)
        raise RecipeError(
            f"The dataset file {file!r} is not UTF-8: the byte 0x{data[error.start]:02x} at line {line} "
            f"(byte offset {offset + error.start} in the file) cannot be decoded. Re-encode the file "
            "as UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE > NEW_FILE` if it is Latin-1."
        ) from None


def _parse(file: str, text: str, first_line: int):
    """One JSON document (a JSONL line, or a whole .json file) that starts on line `first_line`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        kind = "JSONL (one JSON object per line)" if file.endswith(".jsonl") else "JSON"
        raise RecipeError(
            f"The dataset file {file!r} is not valid {kind}: {error.msg} (line "
            f"{first_line + error.lineno - 1}, column {error.colno})."
        ) from None


def _bom_length(data: bytes) -> int:
    """A leading UTF-8 byte order mark is skipped, as the JSON loader skips it."""
    return len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0


def _jsonl_records(file: str) -> Iterator[tuple[str, object]]:
    """Each record of a JSONL file, named by its line; blank lines are skipped."""
    offset = 0
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            skip = _bom_length(raw) if number == 1 else 0
            text = _decode(file, raw[skip:], number, offset + skip).rstrip("\r\n")
            offset += len(raw)
            if text.strip():
                yield f"The dataset file {file!r}, line {number}", _parse(file, text, number)


def _array_item_lines(text: str) -> Iterator[int]:
    """The line each item of a JSON array starts on (`text` is known to be a valid JSON array)."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    line = text.count("\n", 0, position) + 1
    while True:
        start = position
        while text[start] in JSON_SPACE or text[start] == ",":
            start += 1
        if text[start] == "]":
            return
        line += text.count("\n", position, start)
        yield line
        _, position = decoder.raw_decode(text, start)
        line += text.count("\n", start, position)


def _json_array_records(file: str) -> Iterator[tuple[str, object]]:
    """Each record of a .json file, which must hold one array of records, named by its number and line."""
    data = Path(file).read_bytes()
    skip = _bom_length(data)
    text = _decode(file, data[skip:], 1, skip)
    document = _parse(file, text, 1)
    if not isinstance(document, list):
        raise RecipeError(
            f"The dataset file {file!r} holds {json_type(document)}, not an array of records: write "
            "it as [{...}, {...}], or as .jsonl with one record per line."
        )
    for number, (line, record) in enumerate(zip(_array_item_lines(text), document), start=1):
        yield f"The dataset file {file!r}, record {number} (line {line})", record


def json_rows(file: str) -> Iterator[tuple[str, object]]:
    """Each record of a local file, named by where it is; bad encoding, bad JSON and non-objects are refused."""
    records = _jsonl_records(file) if file.endswith(".jsonl") else _json_array_records(file)
    for where, record in records:
        if not isinstance(record, dict):
            raise RecipeError(
                f"{where}: the record is {json_type(record)}, not a JSON object; each record is an "
                "object whose keys are the dataset's columns."
            )
        yield where, record
