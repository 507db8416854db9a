"""Why a data file cannot be read, in one line: what its bytes are, where its text stops being UTF-8, which
header name repeats. `driftloop.data.read_table` asks these before and after pandas, so the user reads what to
change instead of a parser's complaint (or a traceback).

CSV text must be UTF-8 (a UTF-8 byte-order mark is fine). Other encodings are refused rather than guessed: a
Latin-1 or Windows-1252 file decoded with the wrong guess yields categories that silently differ from the ones
the model and the suite know, which is worse than an error saying how to convert the file.
"""

from __future__ import annotations

import codecs
from collections import Counter
from pathlib import Path

# Enough of the file's start to recognise it; reading more would only slow every read down.
SNIFF_BYTES = 4096
# Chunks in which a file is re-decoded to find where it stops being UTF-8.
DECODE_CHUNK_BYTES = 1 << 20
PARQUET_MAGIC = b"PAR1"
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# File signatures of what people rename to .csv or .parquet by mistake, and what to call it.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one; export it as CSV)"),
    (b"\xd0\xcf\x11\xe0", "an old Office document (an Excel .xls workbook? export it as CSV)"),
    (b"\x1f\x8b", "gzip-compressed data (decompress it first)"),
    (b"SQLite format 3\x00", "an SQLite database"),
)


def content_problem(path: Path, suffix: str) -> str | None:
    """What is wrong with the file's bytes for its suffix (.csv or .parquet), or None if it may be fine."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    for magic, what in SIGNATURES:
        if head.startswith(magic):
            return f"is {what}, not {'CSV text' if suffix == '.csv' else 'a Parquet file'}"
    if suffix != ".csv":
        if head.startswith(PARQUET_MAGIC):
            return None
        kind = "text (if it is CSV, name it .csv)" if _looks_like_text(head) else "no Parquet signature"
        return f"is not a Parquet file ({kind})"
    if head.startswith(PARQUET_MAGIC):
        return "is a Parquet file, not CSV text; name it .parquet"
    if head.startswith(UTF16_BOMS):
        return "is UTF-16 text; save the CSV as UTF-8"
    if b"\x00" in head:
        return "holds binary data (NUL bytes), not CSV text; if it is UTF-16 text, save it as UTF-8"
    return None


def _looks_like_text(head: bytes) -> bool:
    """True if the bytes decode as UTF-8 without control characters other than tabs and line ends."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not just a character cut at the end of the sniffed bytes
            return False
        text = head[: error.start].decode("utf-8")
    return not any(ord(c) < 32 and c not in "\t\r\n" for c in text)


def encoding_problem(path: Path) -> str:
    """Where a file stops being UTF-8, as one line saying how to fix it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with path.open("rb") as handle:
        while chunk := handle.read(DECODE_CHUNK_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                # The decoder may hold back up to 3 bytes of the previous chunk; the offset is close enough to find it.
                start = max(error.start, 0)
                line += chunk[:start].count(b"\n")
                byte = chunk[start] if start < len(chunk) else 0
                return (f"is not UTF-8 text (byte 0x{byte:02x} on line {line}, offset {offset + start}); save it "
                        "as UTF-8, e.g. `iconv -f latin1 -t utf-8` for a Latin-1 file")
            offset += len(chunk)
            line += chunk.count(b"\n")
    return "is not UTF-8 text; save it as UTF-8"


def repeated(names: list[object]) -> list[str]:
    """Column names that occur more than once, in order of first occurrence."""
    counts = Counter(str(n) for n in names)
    return [name for name, count in counts.items() if count > 1]
