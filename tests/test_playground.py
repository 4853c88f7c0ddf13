"""The playground page and the report, in a real browser: Debian's headless Chromium driven by selenium
(tools/browser.sh installs both; `make test` runs it). A tiny `tinytitan run` is served as
`tinytitan serve RUN` would serve it; the test types an input, waits for the streamed answer and checks
it against the API's own answer; then opens the run's report at 1280 px. Screenshots: tests/output/."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.test_serve import KEY, get, live_server

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
OUTPUT = Path(os.environ.get("TINYTITAN_TEST_OUTPUT", ROOT / "tests" / "output"))


@pytest.fixture(scope="module")
def served_run(recipe):
    """The tiny recipe run end to end (its report stage writes RUN/fleet.toml and RUN/report/)."""
    result = run_cli("run", str(recipe / "tiny.toml"))
    assert result.returncode == 0, result.stderr
    run = recipe / "run"
    assert (run / "fleet.toml").is_file() and (run / "report" / "report.html").is_file()
    return run


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if os.environ.get("TINYTITAN_SKIP_BROWSER"):
        pytest.skip("TINYTITAN_SKIP_BROWSER is set")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver (`bash tools/browser.sh` "
                    "installs them; TINYTITAN_SKIP_BROWSER=1 skips these tests)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1280, 1000)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{path}: the screenshot is nearly empty"
    return path


def test_playground_routes(served_run, monkeypatch):
    """The page needs no key (it holds no data); its data routes do; a record is checked against the task's
    schema; the run's report is served for its task; `serve RUN` refuses a folder that is not a run."""
    monkeypatch.setenv("TINYTITAN_API_KEY", KEY)
    with live_server(str(served_run)) as (url, _):
        status, headers, body = get(url + "/", key=None)
        assert status == 200 and b"tinytitan playground" in body and "text/html" in headers["content-type"]
        assert b"<script src" not in body and b"<link" not in body  # no external assets
        assert get(url + "/playground/tasks", key=None)[0] == 401
        tasks = json.loads(get(url + "/playground/tasks")[2])
        (task,) = tasks["tasks"]
        assert task["name"] == "tiny" and task["schema"]["type"] == "object"
        assert task["report"] == "/playground/report/tiny" and task["defaults"]["temperature"] == 0.0
        assert {p["name"] for p in tasks["energy"]["profiles"]} == {"laptop", "phone", "pi"}
        properties = task["schema"]["properties"]
        good = json.dumps({key: properties[key].get("enum", ["x"])[0] for key in task["schema"]["required"]})
        checked = json.loads(get(url + "/playground/check", method="POST", body={"model": "tiny", "text": good})[2])
        assert checked == {"json": True, "valid": True, "record": json.loads(good), "errors": []}
        checked = json.loads(get(url + "/playground/check", method="POST", body={"model": "tiny", "text": '{"w": 3}'})[2])
        assert checked["valid"] is False and checked["errors"]
        assert json.loads(get(url + "/playground/check", method="POST", body={"model": "tiny", "text": "{"})[2])["json"] is False
        status, _, body = get(url + "/playground/check", method="POST", body={"model": "nope", "text": "{}"})
        assert status == 404 and "nope" in json.loads(body)["error"]["message"]
        status, _, body = get(url + "/playground/report/tiny")
        assert status == 200 and body == (served_run / "report" / "report.html").read_bytes()
    result = run_cli("serve", str(served_run / "data"), "--port", "1")
    assert result.returncode == 1 and "not a `tinytitan run` folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_playground_in_browser(served_run, browser, monkeypatch):
    """Type an input, watch the answer stream in, and find it validated, with its speed and energy shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import Select, WebDriverWait

    monkeypatch.setenv("TINYTITAN_API_KEY", KEY)
    wait = WebDriverWait(browser, 60)
    with live_server(str(served_run)) as (url, _):
        browser.get(url + "/")
        wait.until(seen.visibility_of_element_located((By.ID, "key")))  # a 401 asks for the key
        browser.find_element(By.ID, "key").send_keys(KEY + "\n")
        browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        wait.until(lambda d: Select(d.find_element(By.ID, "task")).options)
        assert Select(browser.find_element(By.ID, "task")).first_selected_option.get_attribute("value") == "tiny"
        text = "salt cup 7"
        browser.find_element(By.ID, "max-tokens").send_keys("64")  # the tiny recipe's 16 cut records short
        browser.find_element(By.ID, "input").send_keys(text)
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "verdict").text)
        shown = browser.find_element(By.ID, "answer").text
        expected = json.loads(get(url + "/v1/chat/completions", method="POST", body={
            "model": "tiny", "messages": [{"role": "user", "content": text}], "max_completion_tokens": 64})[2])["choices"][0]["message"]["content"]
        assert json.loads(shown) == json.loads(expected)  # the same greedy answer, pretty-printed
        assert browser.find_element(By.ID, "verdict").text == "valid record"
        fields = [row.find_element(By.TAG_NAME, "th").text
                  for row in browser.find_elements(By.CSS_SELECTOR, "#record-table tr")]
        assert fields == list(json.loads(expected))
        stats = browser.find_element(By.ID, "stats").text
        assert "first token" in stats and "tokens" in stats and " J (estimate" in stats
        picture = screenshot(browser, "playground.png")

        inputs = ["cat dog 1", "red mat 2", "sugar one 3"]  # a batch: a file of lines
        batch = OUTPUT / "batch.txt"
        batch.write_text("\n".join(inputs) + "\n\n")
        browser.find_element(By.ID, "batch").send_keys(str(batch))
        wait.until(lambda d: "answered" in d.find_element(By.ID, "batch-progress").text)
        rows = browser.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr")
        assert [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows] == inputs
        for row, line in zip(rows, inputs):
            answer = json.loads(get(url + "/v1/chat/completions", method="POST", body={
                "model": "tiny", "messages": [{"role": "user", "content": line}], "max_completion_tokens": 64})[2])
            assert row.find_elements(By.TAG_NAME, "td")[2].text == answer["choices"][0]["message"]["content"]
        assert browser.find_element(By.ID, "batch-progress").text == "3 answered, 3 of 3 valid records"

        browser.find_element(By.ID, "report").click()  # fetched with the key, opened in a new tab
        wait.until(lambda d: len(d.window_handles) == 2)
        browser.switch_to.window(browser.window_handles[1])
        wait.until(lambda d: d.title.startswith("tinytitan report"))
        browser.close()
        browser.switch_to.window(browser.window_handles[0])
    assert picture.exists()


def test_report_in_browser(served_run, browser):
    """The report at 1280 px: the run's name as title, the samples table within the page, a wrong field
    highlighted."""
    from selenium.webdriver.common.by import By

    examples = served_run / "report" / "examples"
    rows = [json.loads(line) for path in examples.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert any(not row.get("correct", True) for row in rows), "the tiny run got everything right: nothing to show"
    page = served_run / "report" / "report.html"
    browser.get(page.as_uri())
    assert browser.title == "tinytitan report: tiny"
    assert browser.find_element(By.TAG_NAME, "h1").text == "tinytitan report: tiny"
    samples = browser.find_element(By.ID, "samples")
    width = browser.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth, "
                                   "document.documentElement.scrollWidth, window.innerWidth]", samples)
    assert width[0] <= width[1] and width[2] <= width[3], f"horizontal overflow at 1280 px: {width}"
    wrong = browser.find_elements(By.CSS_SELECTOR, "#samples .field-wrong td.got")
    right = browser.find_elements(By.CSS_SELECTOR, "#samples .field-ok td.got")
    assert wrong, "no wrong field highlighted"
    tint = wrong[0].value_of_css_property("background-color")
    assert tint not in ("rgba(0, 0, 0, 0)", "transparent"), tint  # highlighted, unlike a right field
    assert all(cell.value_of_css_property("background-color") != tint for cell in right)
    assert "`" not in browser.find_element(By.TAG_NAME, "body").text
    browser.execute_script("arguments[0].scrollIntoView()", samples)
    screenshot(browser, "report.png")
    shutil.copy(page, OUTPUT / "report.html")
