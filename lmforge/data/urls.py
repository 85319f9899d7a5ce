"""URLs as the crawler sees them: one canonical form per page, a seen-set key, and the links of a page.

The same page is reached by many spellings (`HTTP://Host:80/a/./b`, escapes in either case, parameters in another
order); without one canonical form a crawl fetches pages twice and a seen-set grows without bound.
"""

from __future__ import annotations

import posixpath
import re
from html import unescape
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

ROBOTS_AGENT = "lmforge-crawler"  # the name robots.txt rules and robots <meta> tags address

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def _normalise_escapes(part: str, safe: str) -> str:
    """Upper-case percent escapes, decode those of unreserved characters, escape bytes that must be escaped."""
    def fix(m: re.Match) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()
    return quote(_PCT.sub(fix, part), safe=safe + "%")


def _remove_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    trailing = path.endswith(("/", "/.", "/.."))
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if trailing and not norm.endswith("/"):
        norm += "/"
    return norm


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The canonical form of a link (resolved against `base`), or None if it is not an http(s) URL.

    Scheme and host lower-cased, default port dropped, dot-segments removed, escapes normalised, fragment dropped,
    an empty path made "/". The query keeps its order here (some servers care); `seen_key` sorts it for the seen-set.
    """
    url = url.strip()
    if base is not None:
        url = urljoin(base, url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if not host.isascii():  # internationalised domain names travel as punycode
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _remove_dot_segments(_normalise_escapes(parts.path, "/:@!$&'()*+,;=")) or "/"
    query = _normalise_escapes(parts.query, "=&;:@!$'()*+,/?")
    return urlunsplit((scheme, netloc, path, query, ""))


def seen_key(url: str) -> str:
    """The seen-set key: the normalised URL with its query parameters sorted (same page, other parameter order)."""
    parts = urlsplit(url)
    if "&" not in parts.query:
        return url
    return urlunsplit(parts._replace(query="&".join(sorted(parts.query.split("&")))))


def url_host(url: str) -> str:
    return urlsplit(url).netloc


# Link extraction is the crawler's own main cost: html.parser took ~35 ms of CPU per pydoc page (it tokenises every
# tag); scanning only <a>, <area>, <base> and <meta> tags with two regular expressions does it in a fraction.
_LINK_TAG = re.compile(r"<(a|area|base|meta)\s([^>]*)>|<!--.*?-->", re.I | re.S)
_ATTR = re.compile(r"""([^\s=/"'<>]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")


def extract_links(html: str, page_url: str) -> list[str]:
    """Normalised absolute http(s) links of a page (<a>/<area> without rel=nofollow), in order, without repeats.

    Relative links resolve against the first <base href>, else the page URL. Links inside comments are ignored. A
    page whose robots <meta> says "nofollow" (or "none") has no links to follow.
    """
    base = page_url
    found: dict[str, None] = {}
    seen_base = False
    for m in _LINK_TAG.finditer(html):
        tag = m.group(1)
        if tag is None:  # a comment
            continue
        attrs = {a.group(1).lower(): a.group(2) if a.group(2) is not None else
                 a.group(3) if a.group(3) is not None else a.group(4) for a in _ATTR.finditer(m.group(2))}
        if tag.lower() == "meta":
            if (attrs.get("name") or "").lower() in ("robots", ROBOTS_AGENT) and \
                    re.search(r"\b(nofollow|none)\b", (attrs.get("content") or "").lower()):
                return []
            continue
        href = attrs.get("href")
        if not href:
            continue
        href = unescape(href)
        if tag.lower() == "base":
            if not seen_base:
                base, seen_base = urljoin(page_url, href), True
            continue
        if "nofollow" in (attrs.get("rel") or "").lower():
            continue
        u = normalize_url(href, base)
        if u is not None:
            found.setdefault(u, None)
    return list(found)

