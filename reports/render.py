"""Rendering: one Jinja environment (autoescape on for every template), inline SVG charts,
atomic writes. Pages are self-contained and deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import io
import os
import re
import tempfile
import unicodedata
from pathlib import Path

import matplotlib
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from matplotlib.figure import Figure

TEMPLATES = Path(__file__).parent / "templates"
# text stays text (selectable, read by screen readers, a tenth of the bytes of outlines)
SVG_RC = {
    "svg.hashsalt": "stealwatch",
    "svg.fonttype": "none",
    "font.size": 9,
    "font.family": "sans-serif",
    "savefig.dpi": 90,  # the resolution of rasterised layers (dense scatters)
}
# characters that change how an id displays without being seen: controls (NUL), bidi
# overrides and isolates, zero-width characters, line and paragraph separators
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Co", "Cn", "Zl", "Zp"}


@functools.cache
def environment() -> Environment:
    """Autoescape is on for every template whatever its name (``.html.j2`` included). One per
    process: its templates are compiled once, not once per page."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = number
    env.filters["when"] = when
    env.filters["pct"] = percent
    env.filters["ident"] = visible_id
    env.filters["ident_text"] = visible_text
    env.filters["plural"] = plural
    return env


def number(value, digits: int = 0) -> str:
    """Thousands separated; a value that rounds to zero is shown without a minus sign."""
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:,.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.,") else text
    return f"{value:,}"


def percent(value, digits: int = 1) -> str:
    return "–" if value is None else number(100.0 * value, digits) + "%"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 user``, ``2 users`` (``nouns`` when the plural is not ``noun + "s"``)."""
    return f"{number(count)} {noun if count == 1 else nouns or noun + 's'}"


def when(value) -> str:
    """A UTC timestamp to the second (an ISO string too)."""
    if value is None:
        return "–"
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value)


def is_hidden(char: str) -> bool:
    """Whether a character changes how text displays without being seen."""
    return unicodedata.category(char) in _HIDDEN_CATEGORIES


def visible_text(value) -> str:
    """:func:`visible_id` for places that hold text only (a page's ``<title>``)."""
    return "".join(_escape_code(char) if is_hidden(char) else char for char in str(value))


def _escape_code(char: str) -> str:
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def visible_id(value) -> Markup:
    """A log-derived id, escaped, each invisible or direction-changing character shown as a
    marked escape (``\\u202e``): ``admin\\u202egnp.exe`` cannot pass as ``adminexe.png``."""
    if value is None:
        return Markup("")
    parts = []
    for char in str(value):
        if is_hidden(char):
            name = unicodedata.name(char, "control character")
            code = _escape_code(char)
            marker = Markup('<span class="hidden-char" title="{}">{}</span>')
            parts.append(marker.format(name, code))
        else:
            parts.append(escape(char))
    return Markup("").join(parts)


def svg_markup(fig: Figure, alt: str) -> Markup:
    """A figure as inline SVG with ``role="img"`` and ``alt`` as its text alternative, without
    the metadata that would change between runs, its ids prefixed so that two charts on one
    page never share one. The SVG is drawn from numbers; text from logs never reaches a chart."""
    buf = io.StringIO()
    with matplotlib.rc_context(SVG_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)
    text = re.sub(r"data:image/png;base64,([A-Za-z0-9+/=\s]+)", _palette_png, text)
    prefix = "c" + hashlib.sha256(text.encode()).hexdigest()[:8] + "-"
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', text)
    label = escape(alt)
    text = text.replace("<svg ", f'<svg role="img" aria-label="{label}" ', 1)
    head = text.index(">") + 1
    return Markup(text[:head] + f"<title>{label}</title>" + text[head:])


def _palette_png(match: re.Match) -> str:
    """A rasterised layer as a 64-colour palette PNG: a quarter of the bytes of matplotlib's
    RGBA one, the same picture at chart scale."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(match.group(1)))).convert("RGBA")
    small = image.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_atomically(path: Path, text: str) -> Path:
    """Write a file so that a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def render_page(template: str, path: Path, **context) -> Path:
    return write_atomically(path, environment().get_template(template).render(**context))
