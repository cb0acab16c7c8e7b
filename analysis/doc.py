"""The report document (sections of text, tables and figures) and its writers: markdown, a
self-contained HTML file (PNG figures inlined as base64) and CSV (the tables' raw numbers)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Table:
    title: str
    shown: pd.DataFrame  # formatted strings, as displayed
    raw: pd.DataFrame | None = None  # numbers, for CSV (defaults to ``shown``)
    note: str = ""


@dataclass
class Figure:
    title: str
    png: bytes
    name: str  # file stem when written beside a markdown report


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)

    def text(self, s: str) -> None:
        self.blocks.append(s)

    def table(self, t: Table) -> None:
        self.blocks.append(t)

    def figure(self, f: Figure | None) -> None:
        if f is not None:
            self.blocks.append(f)


@dataclass
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # problems found in the inputs

    def tables(self) -> list[tuple[Section, Table]]:
        return [(s, b) for s in self.sections for b in s.blocks if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


def _md_cell(v: object) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    out = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    return "\n".join(out)


def to_markdown(doc: Document, image_dir: Path | None = None, image_prefix: str = "") -> str:
    """Markdown; figures are written as PNG files into ``image_dir`` and linked (with
    ``image_prefix`` before the file name), or left out when ``image_dir`` is None."""
    parts = [f"# {doc.title}", ""]
    if doc.messages:
        parts += ["## Input problems", ""] + [f"- {_md_cell(m)}" for m in doc.messages] + [""]
    for s in doc.sections:
        parts += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, str):
                parts += [b, ""]
            elif isinstance(b, Table):
                if b.title:
                    parts += [f"**{b.title}**", ""]
                parts += [md_table(b.shown), ""]
                if b.note:
                    parts += [b.note, ""]
            elif isinstance(b, Figure) and image_dir is not None:
                image_dir.mkdir(parents=True, exist_ok=True)
                (image_dir / f"{b.name}.png").write_bytes(b.png)
                parts += [f"![{b.title}]({image_prefix}{b.name}.png)", ""]
    return "\n".join(parts).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
.problems{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em 1em}
"""


def to_html(doc: Document) -> str:
    """One self-contained HTML file: inline CSS, figures as data: URIs (base64 PNG)."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(doc.title)}</h1>",
    ]
    if doc.messages:
        out.append('<div class="problems"><h2>Input problems</h2><ul>')
        out += [f"<li>{e(m)}</li>" for m in doc.messages]
        out.append("</ul></div>")
    for s in doc.sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, str):
                out.append(f"<p>{e(b)}</p>")
            elif isinstance(b, Table):
                if b.title:
                    out.append(f"<h3>{e(b.title)}</h3>")
                out.append("<table><thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in b.shown.columns))
                out.append("</tr></thead><tbody>")
                for row in b.shown.itertuples(index=False):
                    out.append("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>")
                out.append("</tbody></table>")
                if b.note:
                    out.append(f"<p><em>{e(b.note)}</em></p>")
            elif isinstance(b, Figure):
                data = base64.b64encode(b.png).decode("ascii")
                out.append(
                    f'<figure><img alt="{e(b.title)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{e(b.title)}</figcaption></figure>"
                )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def to_csv(doc: Document) -> str:
    """Every table's raw numbers stacked, with ``section`` and ``table`` columns in front."""
    frames = []
    for s, t in doc.tables():
        raw = (t.raw if t.raw is not None else t.shown).copy()
        raw.insert(0, "table", t.title)
        raw.insert(0, "section", s.title)
        frames.append(raw)
    if not frames:
        return "section,table\n"
    buf = io.StringIO()
    pd.concat(frames, ignore_index=True, sort=False).to_csv(buf, index=False)
    return buf.getvalue()
