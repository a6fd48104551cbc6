"""The HTML report (issue 17) in a real browser: Debian's headless Chromium, driven by
Selenium, loads the file written by `monitor report --html` and `check-state --html`,
finds the timeline, the charts and the table of builds needing attention, logs no
console error, and a screenshot is written for a person to look at
(target/report-screenshots/). The file needs no network: nothing in it points outside
it. Every page passes axe-core (issue 28: WCAG 2.1 A and AA, and axe's best practices),
and shows outcomes by pattern as well as colour."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
SHOTS = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "report-screenshots"


def run(env: dict[str, str], tool: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(TARGET / tool), *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == code, f"{tool} {args}: exit {r.returncode}, wanted {code}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> webdriver.Chrome:
    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.fail("chromium and chromedriver are needed (scripts/test installs Debian's chromium and chromium-driver)")
    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium's own scratch (its singleton folders) stays in the test's folder.
    scratch = tmp_path_factory.mktemp("chromium")
    service = Service(driver_bin, env={**os.environ, "TMPDIR": str(scratch)})
    d = webdriver.Chrome(service=service, options=opts)
    yield d
    d.quit()


@pytest.fixture
def fleet(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDSTATE_")}
    env.update(HOME=str(tmp_path), BUILDSTATE_DB=str(tmp_path / "state.db"))
    run(env, "init-state", "img-ok", "--cloud", "aws", "--image", "rhel9")
    for s in ("5", "10"):
        run(env, "update-state", "img-ok", "start", s)
        run(env, "update-state", "img-ok", "complete", s)
    run(env, "init-state", "img-<b>&'", "--cloud", "aws", "--image", "rhel9", code=8)  # an id that is not one
    run(env, "init-state", "img-retry", "--cloud", "aws", "--image", "rhel9")
    run(env, "update-state", "img-retry", "start", "5")
    run(env, "update-state", "img-retry", "fail", "5", "--error", "mirror <script>alert(1)</script> timed out", "--exit-code", "28")
    run(env, "update-state", "img-retry", "retry", "5", "--reason", "mirror back")
    run(env, "update-state", "img-retry", "start", "5")
    run(env, "update-state", "img-retry", "complete", "5")
    run(env, "init-state", "img-blocked", "--cloud", "aws", "--image", "ubuntu")
    run(env, "update-state", "img-blocked", "start", "5")
    run(env, "update-state", "img-blocked", "fail", "5", "--error", "permission denied", "--category", "persistent")
    return env


def load(browser: webdriver.Chrome, page: Path, shot: str) -> None:
    browser.get(page.as_uri())
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS / shot)), "no screenshot"
    assert (SHOTS / shot).stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
    # Every page a test looks at passes axe-core.
    accessible(browser)


AXE = ROOT / ".tools" / "node_modules" / "axe-core" / "axe.min.js"


def accessible(browser: webdriver.Chrome) -> None:
    """axe-core, injected into the page as loaded, finds no violation of WCAG 2.1 A and
    AA or of axe's best practices."""
    if not AXE.exists():
        pytest.fail(f"axe-core is not installed at {AXE} (scripts/test installs it with npm)")
    browser.set_script_timeout(60)
    browser.execute_script(AXE.read_text())
    result = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
        ".then(r => done(r.violations.map(v => ({id: v.id, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))))"
        ".catch(e => done([{id: 'axe-error', help: String(e), nodes: []}]));"
    )
    assert result == [], result


def self_contained(html: str) -> None:
    # No script, and nothing fetched from anywhere: no src/href to another document.
    assert "<script" not in html.lower().replace("&lt;script", "")
    assert not re.search(r'(src|href)\s*=\s*"(?!#)', html), re.findall(r'(?:src|href)\s*=\s*"[^"]*"', html)


def test_the_fleet_report_in_chromium(browser: webdriver.Chrome, fleet: dict[str, str], tmp_path: Path) -> None:
    page = tmp_path / "fleet.html"
    r = run(fleet, "monitor", "report", "--html", str(page))
    assert str(page) in r.stdout
    html = page.read_text()
    self_contained(html)
    load(browser, page, "fleet.png")
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.bar")
    kinds = {b.get_attribute("class").split()[1] for b in bars}
    assert {"ok", "failed", "retry-wait", "person-wait"} <= kinds, kinds
    builds = {b.get_attribute("data-build") for b in bars}
    assert builds == {"img-ok", "img-retry", "img-blocked"}
    # who/where on hover: each bar carries its tooltip
    title = bars[0].find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert "started by" in title and "@" in title
    attention = browser.find_elements(By.CSS_SELECTOR, "#attention tr")
    assert len(attention) == 2 and "img-blocked" in attention[1].text, [a.text for a in attention]
    assert browser.find_elements(By.CSS_SELECTOR, "#success-chart rect.chart-bar")
    assert browser.find_elements(By.CSS_SELECTOR, "#duration-chart rect.expected")
    # Outcome by more than colour: each kind of bar has its own pattern.
    fills = {b.get_attribute("class").split()[1]: browser.execute_script("return getComputedStyle(arguments[0]).fill", b) for b in bars}
    assert all(f.startswith("url(") for f in fills.values()) and len(set(fills.values())) == len(fills), fills
    # Landmarks, a time axis with ticks, state names in words.
    assert browser.find_elements(By.CSS_SELECTOR, "main") and browser.find_elements(By.CSS_SELECTOR, "header h1")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline .tick text")) >= 3
    assert "kickstart" in browser.find_element(By.ID, "attempts").text
    # the hostile message is text in the page, not markup
    assert not browser.find_elements(By.CSS_SELECTOR, "body script")
    assert "<script>alert(1)</script>" in browser.find_element(By.ID, "attempts").text


def test_one_build_report_in_chromium(browser: webdriver.Chrome, fleet: dict[str, str], tmp_path: Path) -> None:
    page = tmp_path / "one.html"
    run(fleet, "check-state", "img-retry", "--html", str(page))
    html = page.read_text()
    self_contained(html)
    load(browser, page, "one-build.png")
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.bar")
    assert {b.get_attribute("data-build") for b in bars} == {"img-retry"}
    assert [b.get_attribute("class") for b in bars] == ["bar failed", "bar retry-wait", "bar ok"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#attempts tr")
    assert len(rows) == 4  # header + the three bars
    # The build's facts, in words.
    facts = browser.find_element(By.ID, "facts").text
    for fact in ("cloud", "aws", "image", "rhel9", "plan", "classic-image-build"):
        assert fact in facts, facts


def test_resources_left_behind_are_on_both_pages(browser: webdriver.Chrome, fleet: dict[str, str], tmp_path: Path) -> None:
    # A cancelled build leaves a key pair whose cleanup fails, and a disk with none.
    run(fleet, "init-state", "img-gone", "--cloud", "aws", "--image", "rhel9")
    run(fleet, "update-state", "img-gone", "start", "5")
    run(fleet, "update-state", "img-gone", "resource", "add", "key-pair", "kp-<b>1", "--cleanup", "echo 'AuthFailure <i>x</i>' >&2; exit 1")
    run(fleet, "update-state", "img-gone", "resource", "add", "disk", "vol-2")
    run(fleet, "update-state", "img-gone", "resource", "add", "disk", "vol-3")
    run(fleet, "update-state", "img-gone", "resource", "delete", "disk", "vol-3")
    run(fleet, "update-state", "img-gone", "cancel", "--reason", "test", "--cleanup", code=23)
    page = tmp_path / "fleet.html"
    r = run(fleet, "monitor", "report", "--html", str(page))
    assert "2 resource(s) left behind" in r.stdout, r.stdout
    for shown, shot in ((page, "fleet-leftovers.png"), (tmp_path / "one.html", "one-build-leftovers.png")):
        if shown.name == "one.html":
            run(fleet, "check-state", "img-gone", "--html", str(shown), code=13)  # cancelled: needs a person
        self_contained(shown.read_text())
        load(browser, shown, shot)
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#leftovers tr")[1:]]
        assert len(rows) == 2, rows
        assert "kp-<b>1" in rows[0] and "cleanup failed (1x)" in rows[0] and "AuthFailure <i>x</i>" in rows[0], rows
        assert "vol-2" in rows[1] and "orphaned" in rows[1] and "cancelled" in rows[1], rows
        # The cancel ended the attempt: it is not drawn as running on to now.
        assert [b.get_attribute("class") for b in browser.find_elements(By.CSS_SELECTOR, "#timeline rect.bar[data-build='img-gone']")] == ["bar interrupted"]
    # A build without resources says so.
    run(fleet, "check-state", "img-ok", "--html", str(tmp_path / "ok.html"))
    load(browser, tmp_path / "ok.html", "one-build-ok.png")
    assert browser.find_elements(By.ID, "leftovers-none")


def test_the_graph_of_builds_that_wait_for_builds(browser: webdriver.Chrome, fleet: dict[str, str], tmp_path: Path) -> None:
    # app-1 waits for img-ok's state 5 (done) and img-retry's state 10 (not yet).
    run(fleet, "init-state", "app-1", "--cloud", "aws", "--image", "rhel9", "--after", "img-ok:5", "--after", "img-retry:10")
    page = tmp_path / "fleet.html"
    run(fleet, "monitor", "report", "--html", str(page))
    self_contained(page.read_text())
    load(browser, page, "fleet-graph.png")
    nodes = {n.get_attribute("data-build") for n in browser.find_elements(By.CSS_SELECTOR, "#graph g.node")}
    assert nodes == {"app-1", "img-ok", "img-retry"}, nodes
    edges = [e.get_attribute("class") for e in browser.find_elements(By.CSS_SELECTOR, "#graph line.edge")]
    assert sorted(edges) == ["edge holds", "edge not-yet"], edges
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#dependencies tr")[1:]]
    assert any("img-ok" in r and "yes" in r for r in rows) and any("img-retry" in r and "not yet" in r for r in rows), rows
    # The single-build page shows the part about it; a build outside the graph says so.
    one = tmp_path / "one.html"
    run(fleet, "check-state", "app-1", "--html", str(one), code=12)
    load(browser, one, "one-build-graph.png")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#graph line.edge")) == 2
    run(fleet, "check-state", "img-blocked", "--html", str(one), code=13)
    load(browser, one, "one-build-no-graph.png")
    assert browser.find_elements(By.ID, "graph-none")
