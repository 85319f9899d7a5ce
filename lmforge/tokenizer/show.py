"""The explorer: text with each token coloured, its ids, the token count and bytes per token (like Tiktokenizer).

Seeing where the boundaries fall explains most tokenizer surprises: a leading space belongs to the next word,
numbers come in groups of three, an emoji may take several tokens (shown as `⟨f0 9f⟩`-style byte pieces when a
token holds only part of a character), rare words break into many pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from lmforge.tokenizer.tokenizer import Tokenizer

# The explorer is for reading: rich lays out about 40 KB of coloured tokens a second, so a 50 MB line would take
# twenty minutes. It reads, shows and counts the start of a longer text and says so; `tokenizer encode` takes any
# length.
MAX_SHOWN_CHARS = 20_000

# Light backgrounds with dark text: readable in light and dark terminals, and in the saved HTML.
PALETTE = ("#f9d5e5", "#c6e2ff", "#d4f4dd", "#ffe6b3", "#e2d4f9", "#ffd1c1", "#cdeff0", "#f0f0b0")


@dataclass
class TokenView:
    id: int
    text: str  # what to print for it (byte pieces of a split character as ⟨hex⟩)
    nbytes: int
    partial: bool  # holds only part of a character's bytes


def token_views(tok: Tokenizer, ids: list[int]) -> list[TokenView]:
    views = []
    for i in ids:
        data = tok.token_bytes(i)
        try:
            text, partial = data.decode("utf-8"), False
        except UnicodeDecodeError:
            text, partial = "⟨" + " ".join(f"{b:02x}" for b in data) + "⟩", True
        views.append(TokenView(i, text, len(data), partial))
    return views


def render(tok: Tokenizer, text: str, console: Console, allowed_special: str | tuple = (),
           max_chars: int = MAX_SHOWN_CHARS) -> dict:
    """Print the coloured tokens, the ids and the statistics of `text` on `console`; return the statistics.

    Only the first `max_chars` characters are shown and counted; a note (and `stats["cut"]`) says when the text
    was longer.
    """
    from rich.panel import Panel
    from rich.text import Text

    cut = len(text) > max_chars
    text = text[:max_chars]
    ids = tok.encode(text, allowed_special=allowed_special)
    views = token_views(tok, ids)
    coloured = Text()
    for k, v in enumerate(views):
        shown = v.text.replace("\t", "→\t").replace("\n", "↵\n")
        style = f"black on {PALETTE[k % len(PALETTE)]}"
        if tok.is_special(v.id):
            style = "bold white on #7a3e9d"
        coloured.append(shown, style=style)
    nbytes = len(text.encode("utf-8", "surrogatepass"))
    stats = {
        "tokens": len(ids),
        "characters": len(text),
        "bytes": nbytes,
        "bytes_per_token": round(nbytes / len(ids), 3) if ids else 0.0,
        "vocab_size": tok.vocab_size,
    }
    console.print(Panel(coloured, title="tokens", title_align="left"))
    console.print(Panel(Text(", ".join(map(str, ids))), title="ids", title_align="left"))
    console.print(
        f"[bold]{stats['tokens']}[/] tokens, {stats['characters']} characters, {stats['bytes']} bytes, "
        f"[bold]{stats['bytes_per_token']}[/] bytes/token (vocabulary {stats['vocab_size']})"
    )
    if cut:
        console.print(f"showing the first {len(text):,} characters only; the rest is cut (`lmforge tokenizer "
                      "encode` encodes a text of any length)", style="bold")
    stats["cut"] = cut
    if any(v.partial for v in views):
        console.print("⟨e2 82⟩: a token holding only part of a character's UTF-8 bytes (shown in hex)", style="dim")
    return stats


def save_explorer(tok: Tokenizer, text: str, folder: Path, name: str = "explorer") -> dict:
    """Render `text` once, print it, and save the same recording as `folder/NAME.txt` and `folder/NAME.html` (the
    page a browser shows with the tokens coloured); return the statistics.

    A recording console clears its record on every export unless told not to, so both files come from one record
    exported with `clear=False`: exporting the text first used to leave the HTML page an empty `<code>`.
    """
    from rich.console import Console

    from lmforge.utils import atomic_write

    console = Console(record=True, width=100)
    stats = render(tok, text, console)
    with atomic_write(folder / f"{name}.txt") as f:
        f.write(console.export_text(clear=False))
    with atomic_write(folder / f"{name}.html") as f:
        f.write(console.export_html(clear=False))
    return stats
