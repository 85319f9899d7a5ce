"""Readers: real Common Crawl and dolma WARCs, damaged WARCs, WET, JSONL, parquet, text folders, charsets."""

from __future__ import annotations

import gzip
import io
import json
import random
import zlib

import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.data.base import StepStats
from lmforge.data.readers import decode_html, detect_format, expand_inputs, read_documents
from lmforge.utils import LmforgeError

WARCS = {"cc-main-2020-34-sample.warc.gz": 16, "dolma-sample-0000.warc.gz": 22, "dolma-sample-0001.warc.gz": 15}


def _read(path, **kw):
    stats = StepStats("read")
    docs = list(read_documents(path, stats=stats, **kw))
    return docs, stats


def _members(data: bytes) -> list[bytes]:
    """Split a multi-member gzip file into its members (each one WARC record here)."""
    out, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        out.append(data[pos:end])
        pos = end
    return out


def _is_response(member: bytes) -> bool:
    return b"WARC-Type: response" in gzip.decompress(member)[:2000]


@pytest.mark.parametrize("name", sorted(WARCS))
def test_real_warcs_record_counts(shared_data, name):
    path = shared_data / "pretrain" / "warc" / name
    docs, stats = _read(path)
    assert len(docs) == WARCS[name] and stats.docs_in == WARCS[name] and not stats.dropped
    with open(path, "rb") as f:  # the peer reader agrees on the HTML responses
        peer = [r.rec_headers.get_header("WARC-Record-ID") for r in ArchiveIterator(f) if r.rec_type == "response"]
    assert [f"<{d.id}>" for d in docs] == peer
    for d in docs:
        assert d.url.startswith("http") and not d.url.startswith("<")
        assert d.metadata["content_type"].startswith("text/html") and d.metadata["date"]
        assert "<" in d.text and "\ufffd" not in d.text[:2000]


def test_cc_charsets_are_decoded(shared_data):
    docs, _ = _read(shared_data / "pretrain" / "warc" / "cc-main-2020-34-sample.warc.gz")
    by_enc = {d.metadata["encoding"] for d in docs}
    assert "gb18030" in by_enc  # gb2312 pages are decoded with the superset browsers use
    zh = [d for d in docs if d.metadata["encoding"] == "gb18030"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh[0].text)


def test_chunked_responses_are_dechunked(shared_data):
    docs, _ = _read(shared_data / "pretrain" / "warc" / "dolma-sample-0001.warc.gz")
    # four responses there were sent with Transfer-Encoding: chunked; none may keep a chunk-size line in front
    assert all(d.text.lstrip()[:1] == "<" for d in docs)


@pytest.fixture()
def dolma_members(shared_data):
    return _members((shared_data / "pretrain" / "warc" / "dolma-sample-0000.warc.gz").read_bytes())


def test_garbage_between_members_is_skipped(dolma_members, tmp_path):
    rng = random.Random(0)
    garbage = bytes(rng.randrange(256) for _ in range(3000)).replace(b"\x1f\x8b", b"xx")
    path = tmp_path / "garbage.warc.gz"
    path.write_bytes(b"".join(dolma_members[:20]) + garbage + b"".join(dolma_members[20:]))
    docs, stats = _read(path)
    assert len(docs) == 22 and dict(stats.dropped) == {"garbage_bytes": 1}


def test_corrupt_member_costs_one_record(dolma_members, tmp_path):
    k = next(i for i, m in enumerate(dolma_members) if _is_response(m) and len(m) > 2000 and i > 10)
    bad = bytearray(dolma_members[k])
    bad[len(bad) // 2: len(bad) // 2 + 64] = bytes(64)  # zeros in the middle of the deflate stream
    path = tmp_path / "corrupt.warc.gz"
    path.write_bytes(b"".join(dolma_members[:k]) + bytes(bad) + b"".join(dolma_members[k + 1:]))
    docs, stats = _read(path)
    assert len(docs) == 21 and dict(stats.dropped) == {"corrupt_gzip": 1}
    assert stats.docs_in == 22


def test_truncated_gzip_file(dolma_members, tmp_path):
    k = next(i for i, m in enumerate(dolma_members) if _is_response(m) and len(m) > 2000 and i > 10)
    path = tmp_path / "trunc.warc.gz"
    path.write_bytes(b"".join(dolma_members[:k]) + dolma_members[k][: len(dolma_members[k]) // 2])
    docs, stats = _read(path)
    assert len(docs) == sum(_is_response(m) for m in dolma_members[:k])
    assert dict(stats.dropped) == {"truncated_gzip": 1}


def test_truncated_plain_warc_and_garbage_inside(dolma_members, tmp_path):
    plain = b"".join(gzip.decompress(m) for m in dolma_members)
    cut = plain.rfind(b"WARC/1.0\r\nWARC-Type: response")
    path = tmp_path / "trunc.warc"
    path.write_bytes(plain[: cut + 3000])
    docs, stats = _read(path)
    assert len(docs) == 21 and dict(stats.dropped) == {"truncated_record": 1}
    # Garbage between records of an uncompressed WARC: skipped up to the next record.
    first_resp = plain.find(b"WARC/1.0\r\nWARC-Type: response")
    path.write_bytes(plain[:first_resp] + b"this is not a WARC record\r\n" * 50 + plain[first_resp:])
    docs, stats = _read(path)
    assert len(docs) == 22 and dict(stats.dropped) == {"garbage_bytes": 1}


def _wet_and_warc(tmp_path):
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=False)
    for i, text in enumerate(["first page text", "zweite Seite \u00fcber alles"]):
        w.write_record(w.create_warc_record(f"http://example.org/{i}", "conversion",
                                            payload=io.BytesIO(text.encode()), warc_content_type="text/plain",
                                            warc_headers_dict={"WARC-Refers-To": f"<urn:uuid:{i}>"}))
    (tmp_path / "x.warc.wet").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    bodies = [(b"<html><body>ok</body></html>", "text/html; charset=utf-8", "200 OK"),
              (b"\x89PNG....", "image/png", "200 OK"),
              (b"<html>gone</html>", "text/html", "404 Not Found"),
              (b"<html><meta charset='iso-8859-1'>caf\xe9</html>", "text/html", "200 OK"),
              (gzip.compress(b"<html>zipped</html>"), "text/html", "200 OK")]
    for i, (body, ctype, status) in enumerate(bodies):
        headers = [("Content-Type", ctype)] + ([("Content-Encoding", "gzip")] if b"\x1f\x8b" in body[:2] else [])
        w.write_record(w.create_warc_record(f"http://example.org/p{i}", "response", payload=io.BytesIO(body),
                                            length=len(body),
                                            http_headers=StatusAndHeaders(status, headers, protocol="HTTP/1.1")))
    (tmp_path / "y.warc.gz").write_bytes(buf.getvalue())


def test_wet_and_response_filters(tmp_path):
    _wet_and_warc(tmp_path)
    docs, stats = _read(tmp_path / "x.warc.wet")
    assert [d.text for d in docs] == ["first page text", "zweite Seite \u00fcber alles"]
    assert docs[1].metadata["refers_to"] == "urn:uuid:1" and docs[1].url == "http://example.org/1"
    docs, stats = _read(tmp_path / "y.warc.gz")
    assert [d.text for d in docs] == ["<html><body>ok</body></html>", "<html><meta charset='iso-8859-1'>caf\u00e9</html>",
                                      "<html>zipped</html>"]
    assert docs[1].metadata["encoding"] == "cp1252"
    assert dict(stats.dropped) == {"non_html": 1, "http_status": 1}
    docs, _ = _read(tmp_path / "y.warc.gz", html_only=False)
    assert len(docs) == 4


def test_jsonl_plain_gz_and_bad_lines(tmp_path):
    rows = [{"text": f"document {i}", "id": f"d{i}", "url": f"http://x.org/{i}", "dump": "CC-MAIN"} for i in range(5)]
    lines = [json.dumps(r).encode() for r in rows] + [b"{not json", json.dumps({"id": "no text"}).encode(),
                                                       b'{"text": "bad \xff byte"}', b"", b'{"text": "last"}']
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines))  # no final newline
    for name in ("a.jsonl", "b.jsonl.gz"):
        docs, stats = _read(tmp_path / name)
        assert [d.text for d in docs] == [f"document {i}" for i in range(5)] + ["last"]
        assert docs[0].id == "d0" and docs[0].url == "http://x.org/0" and docs[0].metadata["dump"] == "CC-MAIN"
        assert docs[-1].id == f"{name}:10"
        assert dict(stats.dropped) == {"bad_json": 1, "missing_text": 1, "invalid_utf8": 1}
    (tmp_path / "c.jsonl").write_text(json.dumps({"content": "hi", "doc_id": 7}) + "\n")
    docs, _ = _read(tmp_path / "c.jsonl", text_field="content", id_field="doc_id")
    assert docs[0].text == "hi" and docs[0].id == "7"


def test_parquet_fineweb_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 25
    table = pa.table({"text": [f"text {i}" for i in range(n)], "id": [f"<urn:uuid:{i}>" for i in range(n)],
                      "dump": ["CC-MAIN-2024-10"] * n, "url": [f"https://site{i}.org/" for i in range(n)],
                      "date": ["2024-02-20T00:00:00Z"] * n, "file_path": ["s3://x"] * n, "language": ["en"] * n,
                      "language_score": [0.9] * n, "token_count": list(range(n))})
    pq.write_table(table, tmp_path / "fw.parquet", row_group_size=7)
    docs, stats = _read(tmp_path / "fw.parquet")
    assert [d.text for d in docs] == [f"text {i}" for i in range(n)] and stats.docs_in == n
    assert docs[3].id == "<urn:uuid:3>" and docs[3].url == "https://site3.org/"
    assert docs[3].metadata["language_score"] == 0.9 and docs[3].metadata["token_count"] == 3
    with pytest.raises(LmforgeError, match="no column 'body'"):
        _read(tmp_path / "fw.parquet", text_field="body")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    docs, stats = _read(tmp_path / "bad.parquet")
    assert docs == [] and list(stats.dropped) == ["corrupt_parquet"]


def test_text_folder_and_encodings(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("plain text\n", encoding="utf-8")
    (d / "sub" / "b.html").write_bytes(b'<html><head><meta charset="iso-8859-1"></head><body>caf\xe9</body></html>')
    (d / "c.txt").write_bytes(("mostly valid UTF-8 \u00e9t\u00e9 " * 40).encode() + b"\xff")
    (d / "d.txt").write_bytes(b"\xe9t\xe9 \xe0 la plage, " * 20)  # Latin-1 throughout
    (d / "e.txt").write_bytes(b"\x00\x01\x02\x03" * 100)  # binary
    (d / ".hidden.txt").write_text("skip me")
    (d / "notes.bin").write_bytes(b"unknown suffix, not read from a folder")
    docs, stats = _read(d)
    by_name = {p.split("/")[-1]: doc for p, doc in ((doc.id, doc) for doc in docs)}
    assert sorted(by_name) == ["a.txt", "b.html", "c.txt", "d.txt"]
    assert by_name["b.html"].text.endswith("caf\u00e9</body></html>") and by_name["b.html"].metadata["encoding"] == "cp1252"
    assert by_name["c.txt"].metadata["encoding"] == "utf-8+replace" and by_name["c.txt"].text.endswith("\ufffd")
    assert by_name["d.txt"].metadata["encoding"] == "cp1252" and by_name["d.txt"].text.startswith("\u00e9t\u00e9 \u00e0")
    assert dict(stats.dropped) == {"undecodable": 1}
    assert stats.docs_in == 5 and stats.docs_out == 4


def test_format_detection_and_limits(tmp_path):
    with gzip.open(tmp_path / "noext", "wt") as f:
        f.write('{"text": "a"}\n{"text": "b"}\n')
    assert detect_format(tmp_path / "noext") == "jsonl"
    (tmp_path / "w").write_bytes(b"WARC/1.1\r\nWARC-Type: warcinfo\r\nContent-Length: 0\r\n\r\n\r\n\r\n")
    assert detect_format(tmp_path / "w") == "warc"
    docs, _ = _read([tmp_path / "noext", tmp_path / "noext"], limit=1)
    assert [d.text for d in docs] == ["a"]
    assert len(expand_inputs([str(tmp_path / "no*")])) == 1
    with pytest.raises(LmforgeError, match="input not found"):
        list(read_documents(tmp_path / "missing.jsonl"))
    with pytest.raises(LmforgeError, match="unknown input format"):
        list(read_documents(tmp_path / "noext", format="csv"))


def test_decode_html_charset_order():
    assert decode_html(b"\xef\xbb\xbf<p>x</p>", "text/html; charset=latin-1") == ("<p>x</p>", "utf-8")  # BOM wins
    assert decode_html("<p>\u00e9</p>".encode("cp1252"), "text/html; charset=windows-1252")[1] == "cp1252"
    assert decode_html("<p>\u00e9</p>".encode(), "text/html; charset=nonsense")[1] == "utf-8"
    text, enc = decode_html(b'<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">\xf0\xd2\xc9')
    assert enc == "koi8-r" and text.endswith("\u041f\u0440\u0438")


def test_bad_header_and_long_garbage_in_plain_warc(dolma_members, tmp_path):
    records = [gzip.decompress(m) for m in dolma_members]
    k = next(i for i, r in enumerate(records) if b"WARC-Type: response" in r[:300] and i > 5)
    bad = records[k].replace(b"Content-Length: ", b"Content-Length: x", 1)  # one record's length unreadable
    filler = b"".join(b"noise line %d without any record marker\n" % i for i in range(40_000))  # > 1 MB
    path = tmp_path / "bad.warc"
    path.write_bytes(b"".join(records[:k]) + bad + filler + b"".join(records[k + 1:]))
    docs, stats = _read(path)
    assert len(docs) == 21 and dict(stats.dropped) == {"bad_warc_header": 1}


def test_unreadable_file_is_counted_not_fatal(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "a.jsonl").write_text('{"text": "kept"}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "locked"}\n')
    (tmp_path / "c").write_text('{"text": "locked, no suffix"}\n')

    def guarded_open(file, *args, **kwargs):  # as for a file without read permission (the tests may run as root)
        if str(file).endswith(("b.jsonl", "/c")):
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr("lmforge.data.readers.open", guarded_open, raising=False)  # format sniffing
    monkeypatch.setattr("lmforge.data.warc.open", guarded_open, raising=False)  # the byte streams
    docs, stats = _read([tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c"])
    assert [d.text for d in docs] == ["kept"] and dict(stats.dropped) == {"unreadable_file": 2}
