"""The report in a real browser: headless Chromium from the system packages, driven by selenium."""

from __future__ import annotations

import pandas as pd
import pytest

from detbatch.detect.sink import read_commit_log
from detbatch.report import write_report
from detbatch.report.html import START_THRESHOLD
from tests.report.browser import missing, start_chromium
from tests.report.runs import write_known_run

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-page")
    known = write_known_run(root, units=(12, 14))
    result = write_report(known.output, str(root / "out"), ground_truth=known.ground_truth,
                          evaluation=known.evaluation, samples=10)
    dets = pd.concat([pd.read_parquet(f) for f in read_commit_log(known.output).files(known.output, "detections")])
    return known, result, dets


@pytest.fixture(scope="module")
def page(report):
    driver = start_chromium()
    try:
        driver.get("file://" + report[1].index)
        yield driver
    finally:
        driver.quit()


def _card(page, image_id):
    return page.find_element("css selector", f'#gallery .card[data-image-id="{image_id}"]')


def _drawn(page, image_id) -> int:
    return len(_card(page, image_id).find_elements("css selector", "svg rect.det"))


def _busiest(page, dets) -> int:
    """The sampled image with the most detections (several categories, scores on both sides of the slider)."""
    ids = [int(c.get_attribute("data-image-id")) for c in page.find_elements("css selector", "#gallery .card")]
    return int(dets[dets["image_id"].isin(ids)]["image_id"].value_counts().idxmax())


def test_page_loads_without_console_errors(page, report):
    errors = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    assert page.find_element("id", "detections").text.splitlines()[0] == str(len(report[2]))
    assert len(page.find_elements("css selector", "#gallery .card")) == 10
    assert all(img.get_property("naturalWidth") > 0 for img in page.find_elements("css selector", "#gallery img"))


def test_boxes_drawn_follow_the_slider_and_the_categories(page, report):
    from selenium.webdriver.common.keys import Keys

    dets = report[2]
    image_id = _busiest(page, dets)
    mine = dets[dets["image_id"] == image_id]
    slider = page.find_element("id", "score")
    assert float(slider.get_attribute("value")) == START_THRESHOLD
    assert _drawn(page, image_id) == int((mine["score"] >= START_THRESHOLD).sum())
    slider.send_keys(Keys.ARROW_LEFT * 20)  # a user's keys: 20 steps of 0.01 down
    threshold = float(slider.get_attribute("value"))
    assert threshold == pytest.approx(START_THRESHOLD - 0.2)
    assert page.find_element("id", "score-value").text == f"{threshold:.2f}"
    assert _drawn(page, image_id) == int((mine["score"] >= threshold - 1e-6).sum())
    category = mine["category"].value_counts().idxmax()
    toggle = page.find_element("css selector", f'input.category[value="{category}"]')
    toggle.click()
    try:
        kept = mine[(mine["score"] >= threshold - 1e-6) & (mine["category"] != category)]
        assert _drawn(page, image_id) == len(kept)
    finally:
        toggle.click()
    assert _drawn(page, image_id) == int((mine["score"] >= threshold - 1e-6).sum())


def test_ground_truth_toggle_and_colours(page, report):
    dets = report[2]
    image_id = _busiest(page, dets)
    card = _card(page, image_id)
    above = dets[(dets["image_id"] == image_id) & (dets["score"] >= 0.6)]
    missed_before = len(card.find_elements("css selector", "rect.gt.fn"))
    assert missed_before >= 1 and card.find_elements("css selector", "rect.gt.found") == []
    page.find_element("id", "show-gt").click()
    try:
        # Every detection over 0.6 found its ground truth (tests/report/runs.py), so each shows as found.
        assert len(card.find_elements("css selector", "rect.gt.found")) >= len(above)
        assert len(card.find_elements("css selector", "rect.det.tp")) >= len(above)
    finally:
        page.find_element("id", "show-gt").click()


def test_error_table_lists_the_bad_files(page, report):
    known = report[0]
    links = [a.text for a in page.find_elements("css selector", "table.errors a")]
    assert sorted(links) == sorted(known.bad_uris)
    headings = [h.text for h in page.find_elements("css selector", "h3") if "(" in h.text]
    assert "…: cannot identify image file (2)" in headings and "…: file is empty (1)" in headings
