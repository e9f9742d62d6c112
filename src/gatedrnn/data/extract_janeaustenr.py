"""Rebuild the shipped corpus from Debian's ``r-cran-janeaustenr`` package.

The novels ship inside that package as an R lazy-load database
(``data/Rdata.rdx`` index + ``data/Rdata.rdb`` blobs): each blob is a 4-byte
length followed by a zlib stream holding one R character vector (one element
per printed line, in R's XDR serialization format). This script reads that
format directly, so rebuilding needs no R installation::

    apt-get download r-cran-janeaustenr
    dpkg-deb -x r-cran-janeaustenr_*.deb pkg
    python extract_janeaustenr.py pkg/usr/lib/R/site-library/janeaustenr/data .

Each novel is written as ``<name>.txt`` with the hard line wraps inside a
paragraph replaced by single spaces (paragraphs stay separated by one blank
line), so a character model sees sentences as they are, not the 70-column
layout of the printed edition. Nothing else is changed.
"""

from __future__ import annotations

import gzip
import re
import struct
import sys
import zlib
from pathlib import Path

NOVELS = ("prideprejudice", "persuasion")

_NIL, _EMPTYENV, _GLOBALENV, _REF = 254, 242, 253, 255
_SYM, _LIST, _CHAR, _INT, _LGL, _REAL, _STR, _VEC, _RAW = 1, 2, 9, 13, 10, 14, 16, 19, 24


class _XDRReader:
    """Reads the subset of R's serialization format that data frames of text use."""

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError(f"expected R XDR serialization ('X\\n'), got {data[:2]!r}")
        self.data, self.pos, self.symbols = data, 2, []
        version = self._int()
        self._int(), self._int()
        if version == 3:
            self._bytes(self._int())  # native encoding name

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def _bytes(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def read(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (_NIL, _EMPTYENV, _GLOBALENV):
            return None
        if kind == _REF:
            return self.symbols[(flags >> 8) - 1]
        if kind == _SYM:
            self.symbols.append(self.read())
            return self.symbols[-1]
        if kind == _CHAR:
            n = self._int()
            return None if n == -1 else self._bytes(n).decode("utf-8")
        if kind == _LIST:
            attr = self.read() if has_attr else None
            tag = self.read() if has_tag else None
            return {"tag": tag, "car": self.read(), "cdr": self.read(), "attr": attr}
        if kind in (_STR, _VEC, _INT, _LGL, _REAL, _RAW):
            n = self._int()
            if kind in (_STR, _VEC):
                value = [self.read() for _ in range(n)]
            elif kind == _RAW:
                value = self._bytes(n)
            else:
                fmt = ">d" if kind == _REAL else ">i"
                value = [struct.unpack_from(fmt, self.data, self.pos + k * struct.calcsize(fmt))[0] for k in range(n)]
                self.pos += n * struct.calcsize(fmt)
            attr = self.read() if has_attr else None
            return {"value": value, "attr": attr}
        raise ValueError(f"unsupported R SEXP type {kind} at byte {self.pos}")


def _names(attr) -> list[str]:
    while attr is not None:
        if attr["tag"] == "names":
            return attr["car"]["value"]
        attr = attr["cdr"]
    raise ValueError("R object has no names attribute")


def read_lazyload(data_dir: Path) -> dict[str, list[str]]:
    """Return ``{name: lines}`` for every character vector in ``Rdata.rdb``."""
    index = _XDRReader(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())).read()
    variables = index["value"][0]
    blobs = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, span in zip(_names(variables["attr"]), variables["value"]):
        offset, length = span["value"]
        obj = _XDRReader(zlib.decompress(blobs[offset + 4 : offset + length])).read()
        out[name] = ["" if line is None else line for line in obj["value"]]
    return out


def unwrap(lines: list[str]) -> str:
    """Join the printed lines of each paragraph with spaces; one blank line between paragraphs."""
    paragraphs = re.split(r"\n\s*\n", "\n".join(lines).strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: extract_janeaustenr.py PKG_DATA_DIR OUT_DIR", file=sys.stderr)
        return 2
    novels = read_lazyload(Path(argv[0]))
    for name in NOVELS:
        (Path(argv[1]) / f"{name}.txt").write_text(unwrap(novels[name]), encoding="ascii")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
