"""Character decoding of web pages and text files: what a browser would show, never an exception.

Servers send bytes that are not in the charset they declare, and declare charsets by labels that browsers read as
supersets. The WARC reader (`warc.py`), the plain-text reader (`readers.py`) and the crawler's link extraction
decode through here, so a page reads the same wherever it comes from.
"""

from __future__ import annotations

import codecs
import re

# Labels that browsers read as a superset (WHATWG Encoding Standard): decoding with the superset is what the page
# author saw.
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "ascii": "cp1252",
                    "us-ascii": "cp1252", "iso8859-1": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
                    "x-gbk": "gb18030", "shift_jis": "cp932", "sjis": "cp932", "euc-kr": "cp949",
                    "ks_c_5601-1987": "cp949", "tis-620": "cp874", "windows-874": "cp874"}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_BOMS = [(codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().lower()
    label = _CHARSET_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_bytes(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """Text and the name of the encoding that produced it: BOM, else declared, else UTF-8, else Windows-1252.

    A page with a few bad bytes in otherwise valid UTF-8 keeps its UTF-8 reading with replacement characters
    ("utf-8+replace"); a page that is mostly not UTF-8 is read as Windows-1252, which cannot fail.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(name, "replace"), name
    codec = _codec(declared)
    if codec:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", "replace")
    if text.count("\ufffd") <= max(2, len(text) // 200):
        return text, "utf-8+replace"
    return data.decode("cp1252", "replace"), "cp1252"


def looks_binary(data: bytes) -> bool:
    """NUL bytes in the first 64 KB: text in any 8-bit or multi-byte charset has none (UTF-16 is caught by its BOM)."""
    head = data[:1 << 16]
    return head.count(b"\x00") > max(8, len(head) // 100)


def decode_html(body: bytes, content_type: str = "") -> tuple[str | None, str]:
    """Decode an HTML payload with the charset of its HTTP header or <meta>; None if it is binary, not text."""
    if looks_binary(body):
        return None, "binary"
    m = _HEADER_CHARSET.search(content_type or "")
    declared = m.group(1) if m else None
    if _codec(declared) is None:
        mm = _META_CHARSET.search(body[:4096])
        declared = mm.group(1).decode("ascii", "replace") if mm else declared
    return decode_bytes(body, declared)

