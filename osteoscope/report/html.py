"""Self-contained HTML reports: the Markdown of a report rendered to one file with its plots embedded.

A report is written once, as Markdown (``report.md``, which links its PNGs), and rendered here to
``report.html`` with every image inlined as a base64 ``data:`` URI, so the file can be mailed or archived
alone and opens without network access or the files beside it. Rendering uses markdown-it-py (already a
dependency of rich) with its table extension; raw HTML in the Markdown is not passed through, so text from
configs and manifests cannot inject markup.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }
th { background: #f0f0f0; }
img { max-width: min(100%, 40rem); margin: 0.5rem 1rem 0.5rem 0; vertical-align: top; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
code { font-size: 0.85em; }
"""


def _embedded_image(base: Path):
    """A markdown-it render rule that inlines each image file (relative to ``base``) as a data URI."""

    def render(renderer: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        file = Path(unquote(str(token.attrGet("src"))))
        file = file if file.is_absolute() else base / file
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        data = base64.b64encode(file.read_bytes()).decode("ascii")
        alt = html.escape(token.content, quote=True)
        return f'<img src="data:{kind};base64,{data}" alt="{alt}" title="{alt}">'

    return render


def render_html(title: str, markdown: str, base: Path) -> str:
    """One HTML page from a report's Markdown; images (paths relative to ``base``) are embedded."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    parser.add_render_rule("image", _embedded_image(base))
    body = parser.render(markdown)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def write_report(markdown: str, path: Path, title: str) -> tuple[Path, Path]:
    """Write ``path`` (Markdown) and its self-contained twin ``path`` with suffix ``.html``."""
    path.write_text(markdown)
    page = path.with_suffix(".html")
    page.write_text(render_html(title, markdown, path.parent))
    return path, page
