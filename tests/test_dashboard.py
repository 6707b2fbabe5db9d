"""The dashboard: its JSON documents and files in-process, and the page in a real browser.

The browser test runs `edgeplex serve --policy pareto` as a subprocess on a tiny repository whose
profiles are in its store, sends some load through tritonclient, and reads the page in headless
Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium). The page must show what
the API reports: the models and their placement, exact request counts once the load stops,
memory, live charts, each model's Pareto front with the configs in use, the placement
decisions. A screenshot is saved under the test's tmp_path. It is skipped, with the reason,
where no chromium or chromedriver is installed, except under `.ci/run` (which installs them
and requires the test to run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from models import add_model, slow_model, write_config
from starlette.applications import Starlette

from edgeplex.backends import ExecutionConfig
from edgeplex.bench.process import running_server
from edgeplex.engine import Engine, InferRequest
from edgeplex.engine.stats import ModelStats, percentile_ms
from edgeplex.server.http import build_app
from edgeplex.tuning.fronts import ProfileFronts, star_in_use
from edgeplex.tuning.profile import Profile
from edgeplex.tuning.profiler import current_backend_versions
from edgeplex.tuning.store import ProfileStore, file_hash, machine_id

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver",) if Path(p).is_file()), None
)
# `.ci/run` installs both and sets EDGEPLEX_REQUIRE_BROWSER: there a missing browser fails the
# test instead of skipping it; elsewhere only a machine without the binaries skips it.
needs_chromium = pytest.mark.skipif(
    (CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("EDGEPLEX_REQUIRE_BROWSER"),
    reason="the browser test needs Chromium and its driver: apt-get install chromium chromium-driver "
    f"(found chromium: {CHROMIUM}, chromedriver: {CHROMEDRIVER})",
)

MODELS = ("add", "slow")
# (threads, batch) -> (p50 ms, rows/s, memory MB): hand-made, so the fronts are known.
# add: (1, 1) and (1, 8) are on the front (least memory / least latency per row); the others dominated.
# slow: (1, 1), (2, 1) and (2, 8) on the front; (1, 8) is dominated by (2, 1).
# Rates: add earns its best at batch 8 (pareto runs it capped at b8, as stored), slow at batch 1
# (batch 8 is not 1.1x faster), so pareto runs slow at b1, a config the store keeps only as b8.
PROFILES = {
    "add": {(1, 1): (0.05, 15000, 2.0), (1, 8): (0.10, 60000, 3.0), (2, 1): (0.06, 12000, 2.5),
            (2, 8): (0.20, 35000, 4.0)},
    "slow": {(1, 1): (3.0, 330, 6.0), (2, 1): (1.8, 550, 7.0), (1, 8): (20.0, 340, 9.0),
             (2, 8): (12.0, 560, 10.0)},
}
FRONT = {"add": 2, "slow": 3}


def _repository(root: Path) -> Path:
    add_model(root / "add" / "1" / "model.onnx")
    write_config(root / "add", name="add", max_batch_size=8)
    slow_model(root / "slow" / "1" / "model.onnx", size=128, layers=8)
    write_config(root / "slow", name="slow", max_batch_size=8)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    return root


def _store(path: Path, repository: Path) -> Path:
    """Profiles for every model, so pareto plans at once and measures nothing itself."""
    store = ProfileStore(path)
    version = current_backend_versions(["onnxruntime"])["onnxruntime"]
    for model, points in PROFILES.items():
        digest = file_hash(repository / model / "1" / "model.onnx")
        for (threads, batch), (p50, rate, mb) in points.items():
            config = ExecutionConfig("onnxruntime", "cpu", "fp32", threads, 8)
            store.put(Profile(model, digest, config, batch, p50, p50 * 1.5, rate, int(mb * 1e6), version, machine_id()))
    return path


# -- in-process: the data and the files ----------------------------------------------------------


def _get(app: Starlette, *paths: str) -> list[httpx.Response]:
    """GET each path from the ASGI app in-process (no socket)."""

    async def fetch() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edgeplex") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(fetch())


def test_recent_latency_percentiles_over_a_window() -> None:
    stats = ModelStats("m", "1")
    for ms in range(1, 101):  # 1 .. 100 ms, answered now
        stats.record_success(0, 0, 0, 0, ms * 1_000_000)
    stats.recent.appendleft((time.monotonic() - 60, 10_000_000_000))  # a 10 s request, a minute ago
    recent = stats.recent_latencies_ns(window_s=10)
    assert len(recent) == 100
    assert percentile_ms(recent, 50) == 50.0 and percentile_ms(recent, 99) == 99.0
    assert percentile_ms(recent, 100) == 100.0 and percentile_ms([], 50) is None
    assert len(stats.recent_latencies_ns(window_s=120)) == 101
    for _ in range(3000):  # bounded: the ring keeps the latest requests only
        stats.record_success(0, 0, 0, 0, 1)
    assert len(stats.recent) == 2048


def test_dashboard_document_matches_the_engine(engine: Engine) -> None:
    x = np.ones((1, 4), np.float32)
    for _ in range(7):
        engine.infer(InferRequest("add", {"x": x}))
    (response,) = _get(build_app(engine), "/v2/edgeplex/dashboard")
    doc = response.json()
    models = {m["model"]: m for m in doc["models"]}
    add = models["add"]
    assert add["requests"] == 7 and add["inferences"] == 7 and add["failures"] == 0 and add["queue"] == 0
    assert add["latency"]["count"] == 7 and 0 < add["latency"]["p50_ms"] <= add["latency"]["p99_ms"]
    assert add["groups"] == [{"backend": "onnxruntime", "processor": "cpu", "variant": "fp32", "threads": 1,
                              "max_batch": 8, "instances": 1}]
    assert models["sub"]["requests"] == 0 and models["sub"]["latency"]["p50_ms"] is None
    assert models["broken"]["state"] == "UNAVAILABLE" and models["broken"]["reason_unavailable"]
    assert doc["memory"] == {"used": engine.manager.memory_used(), "budget": None}
    assert doc["pools"][0]["processor"] == "cpu" and doc["pools"][0]["capacity"] == 2
    ats = [d["at"] for d in doc["decisions"]]
    assert ats == sorted(ats, reverse=True) and {d["model"] for d in doc["decisions"]} >= {"add", "sub", "slow"}
    assert all(d["reason"] == "model config" for d in doc["decisions"])


def test_fronts_from_the_store_mark_the_config_in_use(engine: Engine, tiny_repo: Path, tmp_path: Path) -> None:
    (response,) = _get(build_app(engine), "/v2/edgeplex/fronts")
    doc = response.json()
    assert doc["models"] == [] and "no profile store" in doc["note"]

    store = ProfileStore(tmp_path / "profiles.sqlite")
    digest = file_hash(tiny_repo / "add" / "1" / "model.onnx")
    version = current_backend_versions(["onnxruntime"])["onnxruntime"]
    serving = ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 8)  # what add's own config places
    for config, batch, p50, mb in [(serving, 1, 0.05, 2), (serving, 8, 0.1, 3),
                                   (ExecutionConfig("onnxruntime", "cpu", "fp32", 2, 8), 1, 0.06, 3)]:
        store.put(Profile("add", digest, config, batch, p50, p50, 1000 / p50, mb * 1_000_000, version, machine_id()))
    (response,) = _get(build_app(engine, fronts=ProfileFronts(store)), "/v2/edgeplex/fronts")
    doc = response.json()
    fronts = {m["model"]: m for m in doc["models"]}
    assert doc["note"] == "" and doc["store"] == str(store.path)
    points = {(p["threads"], p["batch"]): (p["front"], p["in_use"]) for p in fronts["add"]["profiles"]}
    # One star for the one config in use, at the batch it runs (its cap, 8), not one per batch row.
    assert points == {(1, 1): (True, False), (1, 8): (True, True), (2, 1): (False, False)}
    assert fronts["add"]["in_use"] == [serving.label()] and fronts["add"]["unprofiled"] == []
    assert [p["in_use_as"] for p in fronts["add"]["profiles"] if p["in_use"]] == [serving.label()]
    # sub runs too but has no profile: no star, and the document says which config lacks one.
    assert fronts["sub"]["profiles"] == [] and fronts["sub"]["unprofiled"] == fronts["sub"]["in_use"] != []


def _profile(threads: int, max_batch: int, batch: int, at: float = 0.0, variant: str = "fp32") -> Profile:
    config = ExecutionConfig("onnxruntime", "cpu", variant, threads, max_batch)
    return Profile("m", "hash", config, batch, 1.0, 1.5, 100.0, 1_000_000, "1.0", "here", measured_at=at)


def test_one_star_per_config_in_use() -> None:
    """The store keeps configs at the model's max_batch_size and several batch sizes; pareto runs
    them capped at the batch that earned the rate: equality missed the one and doubled the other."""
    stored = [_profile(1, 8, 1), _profile(1, 8, 8), _profile(2, 8, 1), _profile(2, 8, 8), _profile(1, 8, 1, variant="int8")]
    ran_at_1 = ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 1)  # pareto: the rate was earned at batch 1
    ran_at_8 = ExecutionConfig("onnxruntime", "cpu", "fp32", 2, 8)
    chosen = star_in_use({ran_at_1, ran_at_8}, stored)
    assert chosen == {ran_at_1: stored[0], ran_at_8: stored[3]}
    # Not batching (cap 0): the batch-1 figure. No profile of that config at all: None (the caption says so).
    unbatched, unknown = ExecutionConfig("onnxruntime", "cpu", "fp32", 2, 0), ExecutionConfig("openvino", "cpu", "fp32", 1, 8)
    assert star_in_use({unbatched, unknown}, stored) == {unbatched: stored[2], unknown: None}
    # The same figure stored under two caps (the model's max_batch_size changed), and measured twice:
    # one star, the same cap first, else the latest measurement.
    twice = [_profile(1, 16, 8, at=5.0), _profile(1, 8, 8, at=1.0), _profile(1, 4, 4, at=9.0), _profile(1, 32, 8, at=7.0)]
    running = ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 8)
    assert star_in_use({running}, twice) == {running: twice[1]}
    assert star_in_use({replace(running, max_batch=12)}, twice) == {replace(running, max_batch=12): twice[3]}
    # Two configs in use that only one row could stand for: one star each, never one for both.
    one_row = [_profile(1, 8, 8)]
    both = {ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 8), ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 1)}
    assert sorted(p is None for p in star_in_use(both, one_row).values()) == [False, True]
    assert star_in_use(set(), stored) == {}


def test_the_page_its_files_and_the_chart_library_are_served(engine: Engine) -> None:
    page, app_js, css, library, source = _get(build_app(engine), "/", "/dashboard/app.js", "/dashboard/style.css",
                                              "/dashboard/vendor/plotly.min.js", "/dashboard/__init__.py")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "dashboard/app.js" in page.text and "dashboard/vendor/plotly.min.js" in page.text
    assert app_js.status_code == 200 and app_js.headers["content-type"].startswith("text/javascript")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert library.status_code == 200 and "plotly.js v" in library.text[:200]
    assert source.status_code == 404  # only the page's own files


# -- the page in a real browser ------------------------------------------------------------------


@contextmanager
def _load(url: str) -> Iterator[threading.Event]:
    """One tritonclient per model sending requests back to back (paced) until the event is set."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def send(model: str, width: int) -> None:
        client = httpclient.InferenceServerClient(url)
        tensor = httpclient.InferInput("x", [1, width], "FP32")
        tensor.set_data_from_numpy(np.ones((1, width), np.float32))
        try:
            while not stop.is_set():
                client.infer(model, [tensor])
                time.sleep(0.004)
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=send, args=args, daemon=True) for args in (("add", 4), ("slow", 128))]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, f"load failed: {errors[0]!r}"


def _eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll `check` until it returns something truthy without an AssertionError; its value."""
    end = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
            problem = f"got {value!r}"
        except AssertionError as exc:
            problem = str(exc)
        if time.monotonic() > end:
            raise AssertionError(f"{what or 'condition'} not reached in {timeout} s: {problem}")
        time.sleep(0.1)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium through Selenium and Debian's chromedriver (never Selenium Manager)."""
    from selenium import webdriver  # in the test extra: a missing one is a broken install, not a skip
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "EDGEPLEX_REQUIRE_BROWSER is set but chromium or chromedriver is missing"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
                "--window-size=1440,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@needs_chromium
def test_dashboard_shows_what_the_api_reports(tmp_path: Path, browser: Any) -> None:
    repository = _repository(tmp_path / "repo")
    store = _store(tmp_path / "profiles.sqlite", repository)
    # --no-profile-missing: the server measures nothing itself (start-up profiling would add, e.g.,
    # OpenVINO rows to the fronts), so the fronts are exactly the hand-made ones.
    with running_server(repository, "--policy", "pareto", "--profile-store", str(store), "--replan-seconds", "1",
                        "--no-profile-missing",
                        cores=2) as server:
        base = f"http://{server.http_url}"
        http = httpx.Client(base_url=base, timeout=10)

        def api(path: str) -> Any:
            response = http.get(path)
            response.raise_for_status()
            return response.json()

        def placed_by_pareto() -> bool:
            models = {m["model"]: m for m in api("/v2/edgeplex/placement")["models"]}
            return all(models[name]["reason"].startswith("pareto:") for name in MODELS)

        _eventually(placed_by_pareto, 15, "pareto placing both models")

        def text(selector: str) -> str:
            """The element's text; "" while the page has not drawn it yet (a missing row is not a value)."""
            shown = browser.execute_script(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector)
            return "" if shown is None else str(shown)

        def cell(model: str, field: str) -> str:
            return text(f'#models tr[data-model="{model}"] td[data-field="{field}"]')

        def number(model: str, field: str) -> float:
            shown = cell(model, field).replace(",", "")
            return float(shown) if shown not in ("", "–") else 0.0

        def updates() -> int:
            return int(browser.execute_script("return Number(document.body.dataset.updates || 0)"))

        with _load(server.http_url):
            browser.get(base + "/")
            assert browser.title == "edgeplex dashboard"
            # Live while the load runs: throughput and recent latencies of both models on the page.
            for name in MODELS:
                _eventually(lambda name=name: number(name, "throughput") > 0, 10, f"{name} throughput")
                p50, p99 = number(name, "p50"), number(name, "p99")
                assert 0 < p50 <= p99, (name, p50, p99)
            charted = browser.execute_script(
                "return document.getElementById('chart-throughput').data.map(t => [t.name, Math.max(...t.y)])")
            assert {name for name, peak in charted if peak and peak > 0} >= set(MODELS), charted

            def lines_drawn() -> bool:  # the SVG as drawn, not just the data: a line of several points per model
                drawn = browser.execute_script(
                    "return [...document.querySelectorAll('#chart-throughput .scatterlayer path.js-line')]"
                    ".map(p => (p.getAttribute('d') || '').split('L').length)")
                assert len(drawn) >= len(MODELS) and min(drawn) >= 3, drawn
                return True

            _eventually(lines_drawn, 5, "throughput lines drawn")

        # Load stopped: once the page has refreshed, its counts are exactly the statistics'.
        seen = updates()
        _eventually(lambda: updates() >= seen + 2, 5, "two more refreshes")
        for name in MODELS:
            stats = api(f"/v2/models/{name}/stats")["model_stats"]
            answered = sum(int(entry["inference_stats"]["success"]["count"]) for entry in stats)
            assert answered > 0
            assert number(name, "requests") == answered

        # Placement and memory as the API has them (re-read together: pareto may still re-place).
        def placement_matches() -> bool:
            report = api("/v2/edgeplex/placement")
            for model in report["models"]:
                name = model["model"]
                assert model["state"] in cell(name, "state"), (name, model["state"], cell(name, "state"))
                groups = model["groups"]
                for field in ("backend", "processor", "variant", "threads", "instances", "max_batch"):
                    assert cell(name, field) == ("\n".join(str(g[field]) for g in groups) if groups else "–"), field
                summary = model["explanation"]["summary"]  # why it runs so: the allocator's own words
                shown = cell(name, "why")
                assert summary and shown and summary.startswith(shown.removesuffix("…")), (shown, summary)
            used = api("/v2/edgeplex/dashboard")["memory"]["used"]
            shown = browser.execute_script("return document.getElementById('memory-used').dataset.bytes")
            assert int(shown) == used and text("#memory-used") == f"{used / 1e6:.1f} MB", (shown, used)
            return True

        _eventually(placement_matches, 5, "page and API agreeing on placement and memory")
        assert "UNAVAILABLE" in cell("broken", "state")

        # Each model's front from the store, with exactly the configs in use starred: one star per
        # config the placement API says runs (each profiled here), whatever batch cap it runs at.
        for name in MODELS:
            _eventually(lambda name=name: _stars_match_placement(browser, api, name), 15, f"{name}'s front and stars")

        # The decisions, newest first, with their reasons.
        newest = api("/v2/edgeplex/dashboard")["decisions"][0]
        _eventually(lambda: newest["reason"] in text("#decisions tbody"), 5, "the newest decision's reason")
        assert text("#status").startswith("live")

        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1440, min(int(height) + 40, 4000))
        time.sleep(0.3)  # the charts re-layout at the new size
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        http.close()


def _drawn_front(browser: Any, name: str) -> dict[str, int]:
    """The traces of a model's front chart as drawn: name -> points (empty before it is drawn)."""
    traces = browser.execute_script(
        "const e = document.getElementById(arguments[0]);"
        "return e && e.data ? e.data.map(t => [t.name, t.x.length]) : null;", f"front-{name}")
    return dict(traces) if traces else {}


def _configs_in_use(report: dict[str, Any], name: str) -> set[tuple[Any, ...]]:
    model = next(m for m in report["models"] if m["model"] == name)
    return {tuple(g[k] for k in ("backend", "processor", "variant", "threads", "max_batch")) for g in model["groups"]}


def _stars_match_placement(browser: Any, api: Callable[[str], Any], name: str) -> bool:
    """The chart's stars are the configs the placement runs, one each (read twice around the
    page, so a re-placement in between is retried, not misread)."""
    before = _configs_in_use(api("/v2/edgeplex/placement"), name)
    fronts = {m["model"]: m for m in api("/v2/edgeplex/fronts")["models"]}
    drawn = _drawn_front(browser, name)
    caption = browser.execute_script(
        "const e = document.querySelector(`.front[data-model='${arguments[0]}'] .front-caption`);"
        "return e ? e.textContent : '';", name)
    assert before == _configs_in_use(api("/v2/edgeplex/placement"), name), "re-placed while reading"
    assert before, f"{name} runs nothing"
    starred = [p for p in fronts[name]["profiles"] if p["in_use"]]
    assert fronts[name]["unprofiled"] == [] and len(starred) == len(before), fronts[name]
    assert {tuple(p[k] for k in ("backend", "processor", "variant", "threads")) for p in starred} == \
        {c[:4] for c in before}
    assert sum(p["front"] for p in fronts[name]["profiles"]) == FRONT[name]
    assert drawn == {"front": FRONT[name], "dominated": 4 - FRONT[name], "in use": len(before)}, drawn
    assert all(label in caption for label in fronts[name]["in_use"]) and "no profile" not in caption, caption
    return True


@needs_chromium
def test_one_star_per_config_in_use_and_the_unprofiled_named(tmp_path: Path, browser: Any) -> None:
    """Config policy on a store that holds add's config at two batch sizes (one star, not two)
    and none of slow's config in use (no star; the caption names it)."""
    repository = _repository(tmp_path / "repo")
    store = ProfileStore(tmp_path / "profiles.sqlite")
    version = current_backend_versions(["onnxruntime"])["onnxruntime"]
    for model, threads in (("add", 1), ("add", 2), ("slow", 2)):
        digest = file_hash(repository / model / "1" / "model.onnx")
        for batch in (1, 8):
            config = ExecutionConfig("onnxruntime", "cpu", "fp32", threads, 8)
            store.put(Profile(model, digest, config, batch, 0.1 * batch * threads, 0.2 * batch, 1000.0,
                              int((threads + batch) * 1e6), version, machine_id()))
    with running_server(repository, "--policy", "config", "--profile-store", str(store.path), cores=2) as server:
        base = f"http://{server.http_url}"
        http = httpx.Client(base_url=base, timeout=10)
        fronts = {m["model"]: m for m in http.get("/v2/edgeplex/fronts").json()["models"]}
        running = fronts["add"]["in_use"]
        assert len(running) == 1 and fronts["add"]["unprofiled"] == []
        assert [(p["threads"], p["batch"]) for p in fronts["add"]["profiles"] if p["in_use"]] == [(1, 8)]
        assert fronts["slow"]["unprofiled"] == fronts["slow"]["in_use"] != []
        assert not any(p["in_use"] for p in fronts["slow"]["profiles"])
        browser.get(base + "/")

        def drawn() -> bool:
            assert _drawn_front(browser, "add").get("in use") == 1, _drawn_front(browser, "add")
            assert _drawn_front(browser, "slow").get("in use") == 0, _drawn_front(browser, "slow")
            caption = browser.execute_script(
                "return document.querySelector(`.front[data-model='slow'] .front-caption`).textContent")
            assert f"no profile for {fronts['slow']['in_use'][0]}" in caption, caption
            return True

        _eventually(drawn, 10, "one star for add, none for slow and its caption")
        http.close()


@needs_chromium
def test_dashboard_with_an_api_key_in_its_address(tmp_path: Path, browser: Any) -> None:
    repository = _repository(tmp_path / "repo")
    key = "dashboard-key-123"
    with running_server(repository, "--policy", "config", "--api-key", key, cores=1) as server:
        base = f"http://{server.http_url}"
        assert httpx.get(base + "/v2/edgeplex/dashboard").status_code == 401  # the data needs the key
        browser.get(base + f"/#key={key}")  # the page itself does not; it sends the key it was given

        def shown_models() -> set[str]:
            rows = browser.execute_script(
                "return [...document.querySelectorAll('#models tr[data-model]')].map(r => r.dataset.model)")
            return set(rows)

        assert _eventually(lambda: shown_models() >= set(MODELS), 10, "the models on the page")
        assert key not in browser.current_url  # not left in the address bar
