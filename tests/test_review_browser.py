"""review.py's page in a real browser (headless Chromium through chromium-driver and Selenium): open the index,
open a slide, click a gallery cell and see the viewer fly to it, relabel it by key, reload, the decision kept."""
import shutil
import threading

import pytest
from review_fixtures import screened_output

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no chromium + chromedriver here (.ci/run installs Debian's chromium and chromium-driver)")


@pytest.fixture(scope="module")
def server(demo_root, tmp_path_factory):
    """The review app on a free local port, in a thread of this process; yields (base URL, output folder)."""
    from werkzeug.serving import make_server

    from tools.review.app import create_app

    out = screened_output(demo_root, tmp_path_factory.mktemp("review_browser"))
    app = create_app(out)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", out
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 20):
    """The value of `script` (JavaScript returning something) once it is truthy."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def view_centre(driver):
    return driver.execute_script("const v = review.viewer.viewport; const p = v.viewportToImageCoordinates(v.getCenter(true));"
                                 "return [p.x, p.y, v.viewportToImageZoom(v.getZoom(true))];")


def test_index_gallery_flight_relabel_by_key_and_reload(server, browser):
    from selenium.webdriver.common.by import By

    base, out = server
    browser.get(base + "/")
    names = [row.get_attribute("data-name") for row in browser.find_elements(By.CSS_SELECTOR, "#inputs tr[data-name]")]
    assert names == ["field", "slide"]
    browser.find_element(By.CSS_SELECTOR, "tr[data-name='slide'] a.open").click()
    wait_for(browser, "return window.review && review.ready && review.opened && review.view")
    start_x, start_y, start_zoom = view_centre(browser)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == 6
    third = browser.execute_script("return review.info.gallery[2]")
    cards[2].click()
    wait_for(browser, f"return review.selected === {third['id']} && document.querySelector('#cell h2')")
    # the flight ends with the cell in the middle of the view, zoomed in
    wait_for(browser, f"const v = review.viewer.viewport; const p = v.viewportToImageCoordinates(v.getCenter(true));"
                      f"return Math.hypot(p.x - {third['x']}, p.y - {third['y']}) < 3")
    x, y, zoom = view_centre(browser)
    assert zoom > 2 * start_zoom and abs(x - third["x"]) < 3 and abs(y - third["y"]) < 3
    assert (x, y) != (start_x, start_y)
    # relabel by key: 2 is the second class of the run
    second_class = browser.execute_script("return review.info.classes[1]")
    browser.find_element(By.TAG_NAME, "body").send_keys("2")
    wait_for(browser, f"return (review.decisions['{third['id']}'] || {{}}).class === '{second_class}'")
    text = (out / "slide_review.csv").read_text()
    assert f",{third['id']},relabel,{second_class}," in text
    # j moves to the next gallery cell
    fourth = browser.execute_script("return review.info.gallery[3].id")
    browser.find_element(By.TAG_NAME, "body").send_keys("j")
    wait_for(browser, f"return review.selected === {fourth}")
    # a reload keeps the decision: on the card and in the counts
    browser.refresh()
    wait_for(browser, "return window.review && review.ready")
    label = browser.find_element(By.CSS_SELECTOR, f".card[data-id='{third['id']}'] .label").text
    assert label == f"relabel: {second_class}"
    assert browser.execute_script("return review.decisions")[str(third["id"])]["decision"] == "relabel"


def test_a_click_on_a_cell_of_the_slide_shows_its_class_and_measurements(server, browser):
    base, _ = server
    browser.get(base + "/slide/slide")
    wait_for(browser, "return window.review && review.ready && review.opened && review.view")
    cell = browser.execute_script("return review.info.gallery[0]")
    browser.execute_script(f"review.viewer.viewport.fitBounds(review.viewer.viewport.imageToViewportRectangle("
                           f"{cell['x'] - 60}, {cell['y'] - 60}, 120, 120), true)")
    wait_for(browser, "return review.view && review.view.mode === 'outlines'")
    # click where the cell's centre is on screen
    point = browser.execute_script(f"const p = review.viewer.viewport.imageToViewerElementCoordinates("
                                   f"new OpenSeadragon.Point({cell['x']}, {cell['y']})); return [p.x, p.y];")
    from selenium.webdriver.common.action_chains import ActionChains

    viewer = browser.find_element("id", "viewer")
    size = viewer.size
    ActionChains(browser).move_to_element_with_offset(viewer, point[0] - size["width"] / 2,
                                                      point[1] - size["height"] / 2).click().perform()
    wait_for(browser, f"return review.selected === {cell['id']}")
    panel = wait_for(browser, "return document.querySelector('#cell table') && document.querySelector('#cell').innerText")
    assert f"Cell {cell['id']}" in panel and "prob_abnormal_cells" in panel and "nc_ratio" in panel
