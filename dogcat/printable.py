"""A file name as every output writes it: printable UTF-8, whatever bytes the file system holds.

Python gives a name that is not UTF-8 (`caf\\xe9.jpg` from an old zip, in Latin-1) as a str with
surrogate escapes; such a str cannot be encoded, so Arrow, a strict UTF-8 stdout and JSON parsers
refuse it, and a CSV holding its bytes is not UTF-8. Parquet, CSV, JSON, the table and overlay
names all go through `printable`, and a batch's resume compares its rows with `printable` names.
"""

from __future__ import annotations


def printable(name: str) -> str:
    """`name` with each undecodable byte as `\\xNN` and each control character (a newline, an escape
    sequence) as its Python escape: valid UTF-8, one line, and it cannot restyle a terminal; other
    text, accents and scripts included, as is."""
    return "".join(c if c.isprintable() else _escape(c) for c in name)


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # os.fsdecode's escape for the byte ord(char) - 0xDC00
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1]
