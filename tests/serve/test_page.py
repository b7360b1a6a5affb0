"""The page in a real browser: headless Chromium, driven by Selenium through chromedriver, on a real serve.py process."""

import shutil

import pytest
from serve_client import call, classify, serve_process

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs headless chromium and its driver (Debian: apt-get install chromium chromium-driver; .ci/run does)",
)
WAIT_S = 30


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no download: Debian's driver
    yield driver
    driver.quit()


def _read_answers(driver) -> list[dict]:
    """Per result row: the review, then per answer cell its label text, probability text and bar fill fraction."""
    from selenium.webdriver.common.by import By

    rows = []
    for row in driver.find_elements(By.CSS_SELECTOR, "tr.result"):
        cells = []
        for cell in row.find_elements(By.CSS_SELECTOR, "td.answer"):
            bar = cell.find_element(By.CSS_SELECTOR, ".bar")
            fill = cell.find_element(By.CSS_SELECTOR, ".fill")
            cells.append({
                "label": cell.find_element(By.CSS_SELECTOR, ".label").text,
                "probability": cell.find_element(By.CSS_SELECTOR, ".probability").text,
                "kind": cell.get_attribute("class").split()[-1],
                "fill": fill.size["width"] / bar.size["width"],
                "color": fill.value_of_css_property("background-color"),
            })
        rows.append({"review": row.find_element(By.CSS_SELECTOR, ".review").text, "answers": cells})
    return rows


def _ask(driver, url: str, reviews: list[str]) -> list[dict]:
    """Open the page, type the reviews one per line, click the button, wait for the answers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "model").text)
    box = driver.find_element(By.ID, "reviews")
    box.clear()
    for index, review in enumerate(reviews):
        box.send_keys(review)
        if index < len(reviews) - 1:
            box.send_keys(Keys.SHIFT, Keys.ENTER)
    driver.find_element(By.ID, "classify").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.result")) == len(reviews))
    return _read_answers(driver)


def test_the_page_labels_two_typed_reviews_with_bars(browser, tuned_run, tmp_path):
    from selenium.webdriver.common.by import By

    reviews = ["送餐很快，饭菜还是热的，好评", "等了一个半小时，汤都洒了，再也不点了"]
    with serve_process("--model", str(tuned_run["run"]), "--compare") as served:
        _, expected = classify(served.url, reviews)
        english = _ask(browser, served.url + "/?lang=en", reviews)
        assert browser.find_element(By.ID, "classify").text == "Classify"
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
        screenshot = tmp_path / "page.png"
        assert browser.save_screenshot(str(screenshot))
        chinese = _ask(browser, served.url + "/?lang=zh", reviews)
        assert browser.find_element(By.ID, "classify").text == "分类"
        browser.find_element(By.ID, "example").click()
        assert browser.find_element(By.ID, "reviews").get_attribute("value").count("\n") == 2
        health = call(served.url + "/health")[1]
    print(f"screenshot: {screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    words = health["label_words"]
    english_names = {words[0]: f"positive ({words[0]})", words[1]: f"negative ({words[1]})"}
    assert [row["review"] for row in english] == [row["review"] for row in chinese] == reviews
    for row_en, row_zh, prediction in zip(english, chinese, expected["predictions"]):
        base_and_tuned = [prediction["base"], prediction]  # side by side: base first
        assert [cell["label"] for cell in row_zh["answers"]] == [answer["label"] for answer in base_and_tuned]
        assert [cell["label"] for cell in row_en["answers"]] == [english_names[a["label"]] for a in base_and_tuned]
        for cell, answer in zip(row_en["answers"], base_and_tuned):
            assert cell["probability"] == f"{answer['probability'] * 100:.1f}%"
            assert cell["fill"] == pytest.approx(answer["probability"], abs=0.01)  # the bar is drawn that long
            assert cell["kind"] == ("positive" if answer["label"] == words[0] else "negative")
    colors = {cell["kind"]: cell["color"] for row in english for cell in row["answers"]}
    assert len(set(colors.values())) == len(colors)  # positive and negative bars differ in colour


def test_the_page_shows_the_servers_error(browser, tuned_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serve_process("--model", str(tuned_run["run"]), "--max_reviews", "2") as served:
        browser.get(served.url + "/?lang=en")
        WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "example").click()  # three reviews, one more than --max_reviews
        browser.find_element(By.ID, "classify").click()
        message = browser.find_element(By.ID, "message")
        WebDriverWait(browser, WAIT_S).until(lambda d: "413" in message.text)
    assert message.text == "413: 3 reviews in one request; at most 2 (--max_reviews)"
    assert "error" in message.get_attribute("class")
