"""Rendering: one Jinja environment (autoescape on for every template), inline SVG charts,
atomic writes. Pages are self-contained and deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import matplotlib
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from matplotlib.figure import Figure

TEMPLATES = Path(__file__).parent / "templates"
SVG_RC = {"svg.hashsalt": "stealwatch", "svg.fonttype": "path", "font.size": 9}


def environment() -> Environment:
    """Autoescape is on for every template whatever its name (``.html.j2`` included)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _number
    env.filters["when"] = _when
    env.filters["pct"] = lambda value, digits=1: "–" if value is None else f"{value:.{digits}%}"
    return env


def _number(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, float) else f"{value:,}"


def _when(value) -> str:
    """A UTC timestamp to the second."""
    if value is None:
        return "–"
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value)


def svg_markup(fig: Figure) -> Markup:
    """A figure as inline SVG, without the metadata that would change between runs. The SVG is
    drawn from numbers; text from logs never reaches a chart."""
    buf = io.StringIO()
    with matplotlib.rc_context(SVG_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    return Markup(re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S))


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
