"""The demo's pages in headless Chromium: the overview, an incident page, the privacy report and
an investigate page render without console errors; their links lead somewhere and back; a Sybil
group's headline is its damage; no page is heavier than 200 KB; badges are readable.

Chromium comes from Debian's package: ``make chromium`` (what ``.ci/run`` does) installs it, and
the fixture below installs it when it is missing. ``STEALWATCH_SCREENSHOTS=DIR`` keeps the
screenshots for a person to look at.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.browser
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]
CONSOLE = re.compile(r":CONSOLE[:(]")
PAGE_LIMIT = 200_000  # bytes
MIN_CONTRAST = 4.5  # WCAG AA for normal text
BASE_CSS = Path(__file__).parents[1] / "reports" / "templates" / "base.html"


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    steps = (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"])
    for step in steps:
        done = subprocess.run(
            step,
            capture_output=True,
            text=True,
            timeout=900,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        )
        assert done.returncode == 0, f"could not install chromium: {done.stderr[-500:]}"
    found = shutil.which("chromium")
    assert found, "chromium is not on PATH after installing it"
    return found


def screenshot(chromium: str, page: Path, png: Path, height: int = 2400) -> list[str]:
    """Render ``page``; returns the console messages Chromium logged."""
    done = subprocess.run(
        [chromium, *FLAGS, f"--window-size=1280,{height}", f"--screenshot={png}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert png.exists() and png.stat().st_size > 1_000, done.stderr[-1000:]
    return [line for line in done.stderr.splitlines() if CONSOLE.search(line)]


def test_the_console_check_can_fail(chromium: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<html><body><script>console.error('boom')</script>" + "x" * 100 + "</body></html>"
    )
    assert any("boom" in line for line in screenshot(chromium, bad, tmp_path / "bad.png", 400))


@pytest.fixture(scope="module")
def demo_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated archive with Sybil groups and canaries, audited with its privacy audit
    (extraction on short query budgets). ``STEALWATCH_DEMO_AUDIT=DIR`` reuses the audit folder
    an earlier run of this fixture made (its ``audit/``), to iterate on the pages."""
    from audits.privacy import extraction
    from audits.simulation import simulate

    if os.environ.get("STEALWATCH_DEMO_AUDIT"):
        return Path(os.environ["STEALWATCH_DEMO_AUDIT"])

    root = tmp_path_factory.mktemp("demo")
    archive = root / "archive"
    simulate(archive, seed=7, days=2, users=150, faults=True)
    out = root / "audit"
    args = ["audit", "--logs", str(archive / "logs"), "--model", str(archive / "model.skops")]
    args += ["--reference", str(archive / "reference.parquet")]
    data = {"--train": "train.parquet", "--holdout": "holdout.parquet"}
    args += [part for flag, name in data.items() for part in (flag, str(archive / name))]
    args += ["--canaries", str(archive / "canaries.toml"), "--out", str(out), "--quiet"]
    with pytest.MonkeyPatch.context() as patch:  # the audit runs in this process
        patch.setattr(extraction, "DEFAULT_BUDGETS", (100, 300))
        assert main(args) == 0  # also when the served model fails the privacy gate
    return out


@pytest.fixture(scope="module")
def investigate_page(demo_audit: Path) -> Path:
    """``stealwatch investigate`` on a member of a flagged Sybil group."""
    import duckdb

    con = duckdb.connect(str(demo_audit / "stealwatch.duckdb"), read_only=True)
    member = con.sql(
        "SELECT members[1] FROM incidents WHERE kind = 'group' ORDER BY incident_id LIMIT 1"
    ).fetchall()
    con.close()
    assert member, "the demo archive has Sybil groups: one must be an incident"
    db = str(demo_audit / "stealwatch.duckdb")
    out = demo_audit / "investigations"
    assert main(["investigate", "--db", db, "--user", member[0][0], "--out", str(out)]) == 0
    (page,) = out.glob("*.html")
    return page


def _pages(demo_audit: Path, investigate_page: Path) -> list[Path]:
    incidents = sorted((demo_audit / "incidents").glob("*.html"))
    assert incidents
    group = next(p for p in incidents if "Sybil" in p.read_text() or "group of" in p.read_text())
    return [
        demo_audit / "report.html",
        incidents[0],
        group,
        demo_audit / "privacy" / "privacy_report.html",
        investigate_page,
    ]


def test_demo_pages_render_without_console_errors(
    chromium: str, demo_audit: Path, investigate_page: Path, tmp_path: Path
) -> None:
    keep = os.environ.get("STEALWATCH_SCREENSHOTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for number, page in enumerate(_pages(demo_audit, investigate_page)):
        png = folder / f"{number}-{page.stem}.png"
        assert screenshot(chromium, page, png) == [], page


def _hrefs(page: Path) -> list[str]:
    """The targets of the page's links (not the charts' embedded images)."""
    return re.findall(r'<a href="([^"#]+)"', page.read_text())


def test_every_incident_row_links_to_a_page_and_every_page_links_back(
    demo_audit: Path, investigate_page: Path
) -> None:
    overview = demo_audit / "report.html"
    linked = [h for h in _hrefs(overview) if h.startswith("incidents/")]
    rows = re.findall(r'<td><a href="(incidents/[^"]+)">inc_', overview.read_text())
    assert rows and set(rows) <= set(linked)
    for href in linked:
        assert (demo_audit / href).is_file(), href
    for page in _pages(demo_audit, investigate_page)[1:]:
        targets = {(page.parent / h).resolve() for h in _hrefs(page)}
        assert overview.resolve() in targets, f"{page} has no link back to the overview"
        for target in targets:
            assert target.is_file(), f"{page} links to missing {target}"


def test_a_merged_canary_hit_is_linked_from_its_keys_incident(demo_audit: Path) -> None:
    overview = (demo_audit / "report.html").read_text()
    hits = re.findall(r'<a href="(incidents/[^"]+)">canary hits', overview)
    assert hits, "the demo's canary senders are also flagged: their hits are merged and linked"
    for href in hits:
        assert (demo_audit / href).is_file()


def test_a_groups_headline_fidelity_is_its_damage(demo_audit: Path) -> None:
    import duckdb

    con = duckdb.connect(str(demo_audit / "stealwatch.duckdb"), read_only=True)
    groups = con.sql(
        "SELECT i.incident_id, d.est_fidelity FROM incidents i "
        "JOIN incident_damage d USING (window_start, window_end, incident_id) "
        "WHERE i.kind = 'group' AND d.est_fidelity IS NOT NULL"
    ).fetchall()
    con.close()
    assert groups
    from reports.pages import page_name

    for incident_id, fidelity in groups:
        html = (demo_audit / "incidents" / page_name(incident_id)).read_text()
        expected = f"{100 * fidelity:.1f}%"
        headline = re.search(r'<div class="v">([^<]+)</div><div class="l">group', html)
        assert headline and headline.group(1) == expected
        damage = re.search(r"agrees with the served model on <strong>([^<]+)</strong>", html)
        assert damage and damage.group(1) == expected


def test_no_page_of_the_demo_is_over_200_kb(demo_audit: Path, investigate_page: Path) -> None:
    pages = [*demo_audit.rglob("*.html")]
    assert investigate_page in pages and len(pages) >= 4
    heavy = {p.name: p.stat().st_size for p in pages if p.stat().st_size > PAGE_LIMIT}
    assert not heavy


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(foreground: str, background: str) -> float:
    """WCAG 2 contrast ratio of two ``#rrggbb`` colours."""
    light, dark = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def badge_colours(css: str) -> dict[str, tuple[str, str]]:
    """``{selector: (text colour, background)}`` of every rule that sets both."""
    rules = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        bg = re.search(r"background:\s*(#[0-9a-fA-F]{6})", body)
        fg = re.search(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{6})", body)
        if bg and fg:
            for selector in selectors.split(","):
                rules[selector.strip()] = (fg.group(1), bg.group(1))
    return rules


def test_the_contrast_check_can_fail() -> None:
    assert contrast("#777777", "#ffffff") < MIN_CONTRAST < contrast("#000000", "#ffffff")


def test_badge_colours_are_distinct_and_readable(demo_audit: Path) -> None:
    rules = badge_colours(BASE_CSS.read_text())
    severities = [f".sev-{level}" for level in ("critical", "high", "medium", "low")]
    for selector in [*severities, ".pass", ".fail", ".warn", ".na", ".hidden-char"]:
        assert selector in rules, selector
        assert contrast(*rules[selector]) >= MIN_CONTRAST, (selector, contrast(*rules[selector]))
    assert rules[".sev-critical"] != rules[".sev-high"]
    used = set(re.findall(r'class="badge (sev-\w+)"', (demo_audit / "report.html").read_text()))
    assert used and all(f".{name}" in rules for name in used)


def test_no_page_breaks_words_mid_word() -> None:
    templates = BASE_CSS.parent
    for template in templates.glob("*.html"):
        assert "break-all" not in template.read_text(), template


def test_the_dagster_ui_is_installed() -> None:
    import dagster_webserver  # noqa: F401


def test_every_flagged_user_has_an_incident_page(demo_audit: Path) -> None:
    import duckdb
    import polars as pl

    from reports.pages import page_name

    flagged = set(
        pl.read_parquet(demo_audit / "user_scores.parquet").filter(pl.col("flagged"))["user_id"]
    )
    assert flagged, "the demo archive has attackers: some must be flagged"
    con = duckdb.connect(str(demo_audit / "stealwatch.duckdb"), read_only=True)
    covered = set()
    for incident_id, members in con.sql("SELECT incident_id, members FROM incidents").fetchall():
        assert (demo_audit / "incidents" / page_name(incident_id)).exists()
        covered |= set(members)
    assert flagged <= covered
