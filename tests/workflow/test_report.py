"""Snakemake's HTML report of the tiny end-to-end run (`snakemake --report report.html`), opened in headless
Chromium as a person would: the page loads without script errors, and Table 1, a loss curve and the pictures are
reachable through the menu.

The browser tests need Debian's `chromium` and `chromium-driver` packages (selenium drives them; nothing is
downloaded). Without them they skip, naming the packages; with LRTL_CHROMIUM_REQUIRED=1 (as .ci/run sets) they
fail instead. LRTL_REPORT_SCREENSHOTS=<dir> keeps a screenshot of each view the tests open.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.workflow.conftest import TEST_CONFIG, snakemake

pytestmark = pytest.mark.e2e

CHROMIUM_PACKAGES = "Debian's chromium and chromium-driver packages (apt-get install chromium chromium-driver)"
PICTURES = ("overlay.svg", "overlay-sheet.png", "k-masks-sheet.png")  # per sequence folder, in the report
TIMEOUT_S = 30  # for each view to appear (a loaded 2-core machine)


def report_json(page: str, name: str) -> dict:
    """One of the JSON globals the report page defines (`<script id="results"> var results = {...}; </script>`)."""
    script_id = name.replace("_", "-")
    match = re.search(rf'<script id="{script_id}">\s*var {name} = (.*?);\s*</script>', page, re.DOTALL)
    assert match, f"no `var {name}` in the report"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def report(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    snakemake(finished_run, "--report", str(path), "--configfile", str(TEST_CONFIG))
    return path


def test_report_is_one_file_holding_every_marked_result(report: Path, finished_run: Path) -> None:
    page = report.read_text()
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=\"(https?:)?//", page)  # self-contained: nothing fetched
    assert not re.search(r"<link[^>]*\shref=\"(https?:)?//", page)
    categories = report_json(page, "categories")
    results = report_json(page, "results")
    tables = categories["Tables"]
    assert {"results/tables/table1.html", "results/tables/ablation-loss.html"} <= set(tables["All datasets"])
    assert set(tables["synthetic"]) == {
        "results/tables/per-sequence-synthetic.html",
        "results/tables/per-sequence-synthetic.png",
        "results/tables/measures-synthetic.html",
    }
    assert categories["Training"] == {"synthetic": ["results/synthetic/train/full/loss.png"]}
    masks = finished_run / "results" / "synthetic" / "masks"
    folders = [p for p in masks.glob("*/*") if p.is_dir() and p.suffix != ".zarr"]
    assert len(folders) == 6  # runs full, baseline, baseline_tracks x 2 sequences
    shown = {path for paths in categories["Masks (synthetic)"].values() for path in paths}
    assert shown == {str((folder / name).relative_to(finished_run)) for folder in folders for name in PICTURES}
    for path in shown | set(tables["All datasets"]):
        assert results[path]["caption"].strip(), f"{path} has no caption"
    labels = results["results/synthetic/masks/full/synth-000/overlay.svg"]["labels"]
    assert labels == {"sequence": "synth-000", "picture": "overlay, animated"}
    assert "What ran" in report_json(page, "workflow_desc")


def test_a_run_without_ground_truth_reports_pictures_and_no_tables(finished_run: Path, tmp_path: Path) -> None:
    """As for one's own videos (evaluate: null): the same finished run, scored by nothing, has a report of
    training curves and pictures only: no Tables category, no empty table."""
    overlay = tmp_path / "no-gt.yaml"
    overlay.write_text("datasets: {synthetic: {evaluate: null}}\n")
    path = tmp_path / "report.html"
    snakemake(finished_run, "--report", str(path), "--configfile", str(TEST_CONFIG), str(overlay))
    page = path.read_text()
    categories = report_json(page, "categories")
    assert set(categories) == {"Training", "Masks (synthetic)"}
    assert "no ground truth" in report_json(page, "workflow_desc")
    assert not [p for p in report_json(page, "results") if "/tables/" in p]


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        missing = ", ".join(name for name, found in (("chromium", chromium), ("chromedriver", driver)) if not found)
        reason = f"{missing} not found: the report is tested in {CHROMIUM_PACKAGES}"
        if os.environ.get("LRTL_CHROMIUM_REQUIRED") == "1":
            pytest.fail(reason + " (LRTL_CHROMIUM_REQUIRED=1)")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1400,900"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


class Report:
    """The report page in the browser: open it, click through its menu, and collect what the console said."""

    def __init__(self, driver, path: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, TIMEOUT_S)
        driver.switch_to.default_content()
        driver.get(path.as_uri())
        self.console: list[dict] = []
        self.find("//a[normalize-space(.)='Workflow']")  # the menu is drawn: the app has started

    def find(self, xpath: str):
        from selenium.webdriver.common.by import By

        return self.wait.until(lambda driver: driver.find_element(By.XPATH, xpath))

    def click(self, text: str) -> None:
        self.find(f"//a[normalize-space(.)={text!r}]").click()

    def view(self, *labels: str) -> None:
        """Click the eye button of the result row whose label cells are `labels`."""
        from selenium.webdriver.common.by import By

        cells = " and ".join(f"td[normalize-space(.)={label!r}]" for label in labels)
        self.find(f"//tr[{cells}]").find_elements(By.TAG_NAME, "a")[0].click()

    def shown_width(self, uri: str) -> int:
        """The width of the picture an <img> of the current document shows from data URI `uri`, once it is
        there and decoded."""
        script = "return [...document.images].filter(i => i.src === arguments[0] && i.naturalWidth > 0)" \
                 ".map(i => i.naturalWidth)[0] || null"  # fmt: skip
        return self.wait.until(lambda driver: driver.execute_script(script, uri))

    def enter_page(self) -> None:
        """Switch into the content pane's iframe (an .html result) once it has loaded."""
        self.driver.switch_to.frame(self.find("//iframe[starts-with(@src, 'data:text/html')]"))
        self.find("//body/*")

    def errors(self) -> list[dict]:
        self.console += self.driver.get_log("browser")
        return [entry for entry in self.console if entry["level"] == "SEVERE"]

    def screenshot(self, name: str) -> None:
        folder = os.environ.get("LRTL_REPORT_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_report_loads_in_chromium_without_script_errors(browser, report: Path) -> None:
    page = Report(browser, report)
    description = page.find("//div[contains(@class, 'prose')]")
    assert "What ran" in description.text and "synthetic" in description.text
    for category in ("Tables", "Training", "Masks (synthetic)"):
        page.find(f"//a[normalize-space(.)={category!r}]")
    page.screenshot("landing")
    page.click("Statistics")  # the run-time charts (vega)
    page.find("//div[contains(@class, 'vega-embed')]")
    assert page.errors() == []


def test_table1_is_reachable_and_shows_the_csv_numbers(browser, report: Path, finished_run: Path) -> None:
    from selenium.webdriver.common.by import By

    page = Report(browser, report)
    page.click("Tables")
    page.click("All datasets")
    page.view("Table 1")
    page.screenshot("table1")
    page.enter_page()
    assert page.find("//h2").text.startswith("Table 1")
    row = page.find("//tr[td[1][normalize-space(.)='full']]")
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    headers = [cell.text for cell in browser.find_elements(By.XPATH, "//thead//th")]
    csv = pd.read_csv(finished_run / "results" / "tables" / "table1.csv").set_index("method")
    assert cells[headers.index("Synthetic J")] == f"{csv.loc['full', 'Synthetic J']:.1f}"
    browser.switch_to.default_content()
    assert page.errors() == []


def test_pictures_and_loss_curve_are_reachable(browser, report: Path, finished_run: Path) -> None:
    page = Report(browser, report)
    results = report_json(report.read_text(), "results")
    folder = Path("results/synthetic/masks/full/synth-000")
    page.click("Masks (synthetic)")
    page.click("full")
    page.view("synth-000", "overlay, animated")  # the GIF inside an SVG image, shown twice its size
    animated = results[str(folder / "overlay.svg")]["data_uri"]
    assert page.shown_width(animated) == 2 * Image.open(finished_run / folder / "overlay.gif").width
    page.screenshot("gif")
    page.view("synth-000", "overlay sheet")
    sheet = results[str(folder / "overlay-sheet.png")]["data_uri"]
    assert page.shown_width(sheet) == Image.open(finished_run / folder / "overlay-sheet.png").width
    page.click("Results")  # the breadcrumb back to the menu
    page.click("Training")  # one subcategory: its results at once
    page.view("full")
    curve = "results/synthetic/train/full/loss.png"
    assert page.shown_width(results[curve]["data_uri"]) == Image.open(finished_run / curve).width
    page.screenshot("loss")
    assert page.errors() == []
