"""A minimal document model rendered both as one self-contained HTML file (images embedded as base64 PNG) and as
Markdown with PNG files beside it."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{color:#666;font-size:.9em}figure{margin:12px 0}figcaption{color:#555;font-size:.85em}
nav a{margin-right:12px}
"""


@dataclass
class Image:
    name: str  # file name of the PNG (Markdown) and alt text
    png: bytes
    caption: str = ""


@dataclass
class Section:
    """A titled part of the document: a list of paragraphs (str), tables (headers, rows) and images."""

    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)

    def text(self, s: str) -> None:
        self.blocks.append(("p", s))

    def note(self, s: str) -> None:
        self.blocks.append(("note", s))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", headers, rows))

    def image(self, name: str, png: bytes, caption: str = "") -> None:
        self.blocks.append(("img", Image(name, png, caption)))


def cell(v: Any) -> str:
    """Format a table value: floats to 4 significant digits, None as an em dash."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "—"
        return f"{v:.4g}"
    return str(v)


def render_html(title: str, sections: list[Section], *, subtitle: str = "") -> str:
    out = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        out.append(f"<p class='note'>{html.escape(subtitle)}</p>")
    out.append(
        "<nav>" + "".join(f"<a href='#{s.id}'>{html.escape(s.title)}</a>" for s in sections) + "</nav>"
    )
    for s in sections:
        out.append(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>")
        for block in s.blocks:
            kind = block[0]
            if kind == "p":
                out.append(f"<p>{html.escape(block[1])}</p>")
            elif kind == "note":
                out.append(f"<p class='note'>{html.escape(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
                    for row in block[2]
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                img: Image = block[1]
                data = base64.b64encode(img.png).decode("ascii")
                out.append(
                    f"<figure><img alt='{html.escape(img.name)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(img.caption)}</figcaption></figure>"
                )
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(title: str, sections: list[Section], *, image_dir: str, subtitle: str = "") -> str:
    out = [f"# {title}", ""]
    if subtitle:
        out += [f"_{subtitle}_", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for block in s.blocks:
            kind = block[0]
            if kind in ("p", "note"):
                out += [block[1] if kind == "p" else f"_{block[1]}_", ""]
            elif kind == "table":
                headers, rows = block[1], block[2]
                out.append("| " + " | ".join(_md_escape(str(h)) for h in headers) + " |")
                out.append("|" + "|".join(" --- " for _ in headers) + "|")
                out += ["| " + " | ".join(_md_escape(cell(v)) for v in row) + " |" for row in rows]
                out.append("")
            else:
                img: Image = block[1]
                out += [
                    f"![{img.name}]({image_dir}/{img.name})",
                    "",
                    f"_{img.caption}_" if img.caption else "",
                    "",
                ]
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def images(sections: list[Section]) -> list[Image]:
    return [b[1] for s in sections for b in s.blocks if b[0] == "img"]


def write_document(
    out_dir: Path, title: str, sections: list[Section], *, subtitle: str = "", overwrite: bool = False
) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``report_files/*.png`` into ``out_dir`` atomically."""
    from maisi.io import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    files_dir = out_dir / "report_files"
    written: dict[str, Path] = {}
    for img in images(sections):
        written[img.name] = atomic_write(
            files_dir / img.name, lambda p, b=img.png: p.write_bytes(b), overwrite=overwrite
        )
    html_text = render_html(title, sections, subtitle=subtitle)
    md_text = render_markdown(title, sections, image_dir=files_dir.name, subtitle=subtitle)
    written["html"] = atomic_write(
        out_dir / "report.html", lambda p: p.write_text(html_text, encoding="utf-8"), overwrite=overwrite
    )
    written["markdown"] = atomic_write(
        out_dir / "report.md", lambda p: p.write_text(md_text, encoding="utf-8"), overwrite=overwrite
    )
    return written
