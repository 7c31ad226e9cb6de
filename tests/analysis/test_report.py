"""The HTML report (``fourbit report``) and the number display it shares with the printed
tables: exact strings by hand, the summary read from the result files, escaping, and the page
in a real headless Chromium (Debian's chromium and chromium-driver, which `.ci/run` installs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from fourbit.analysis.display import (
    column,
    format_value,
    readable_frame,
    show,
    show_bytes,
    show_count,
    show_energy_pj,
    show_time_s,
)
from fourbit.analysis.report import write_report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.mark.parametrize("fn, value, text", [
    (show_time_s, 0.0153182, "15.32 ms"), (show_time_s, 2.881844268, "2.882 s"), (show_time_s, 7.87e-5, "78.70 us"),
    (show_time_s, 0.0, "0 s"), (show_time_s, 3e-10, "0.3000 ns"),
    (show_energy_pj, 1149070011546.419, "1.149 J"), (show_energy_pj, 3.2668e10, "32.67 mJ"),
    (show_energy_pj, 213480.0, "213.5 nJ"), (show_energy_pj, 0.5, "0.5000 pJ"),
    (show_bytes, 399080632, "399.1 MB"), (show_bytes, 512, "512.0 B"), (show_bytes, 1.2e9, "1.200 GB"),
    (show_count, 2881844268.0, "2,881,844,268"), (show_count, float("nan"), ""),
])
def test_values_scale_to_a_readable_unit(fn, value, text):
    assert fn(value) == text


def test_columns_by_name_and_unit_suffix():
    assert column("energy_per_step_uj") == column("energy_per_step_uj")
    cases = {"time_per_step_us": ("time per step", "time_us"), "speedup_vs_fp16": ("speed-up vs fp16", "ratio"),
             "energy_ratio_vs_fp16": ("energy vs fp16", "ratio"), "dram_read_bytes": ("DRAM read", "bytes"),
             "accuracy_delta_vs_fp16_pts": ("accuracy vs fp16", "points"), "utilization": ("PE utilization", "fraction"),
             "memory_stall_cycles": ("memory stall cycles", "count"), "recipe": ("recipe", "plain")}
    for name, (label, kind) in cases.items():
        assert (column(name).label, column(name).kind) == (label, kind), name
    assert show("ratio", 2.3196) == "2.32x" and show("points", -3.05) == "-3.05 pts"
    assert show("fraction", 0.393) == "39.3 %" and show("percent", 98.77) == "98.77 %"
    assert [format_value(c, v) for c, v in (("test_accuracy_std", 0.5893), ("test_accuracy_min", 88.33))] == \
        ["0.59 pts", "88.33 %"]  # an ablation's spread in points, its extremes in %
    frame = readable_frame(pd.DataFrame({"total_cycles": [1e6], "tpr": [True], "energy_uj": [math.nan]}))
    assert frame.to_dict("records") == [{"cycles": "1,000,000", "TPR": "yes", "energy": ""}]


def _main_job_dir(tmp_path: Path, recipe: str = "int4") -> Path:
    d = tmp_path / "main"
    d.mkdir()
    (d / "fourbit-job.json").write_text(json.dumps({"kind": "main_job", "job": {
        "model": "mlp", "dataset": "digits", "train": {"epochs": 20, "batch_size": 64}}}))
    pd.DataFrame({"recipe": ["fp32", recipe], "chip": ["fp16", "fourbit"], "test_accuracy_pct": [97.5, 96.0],
                  "accuracy_delta_vs_fp32_pts": [0.0, -1.5], "time_per_step_us": [107.8, 78.7],
                  "speedup_vs_fp16": [1.0, 1.37], "energy_per_step_uj": [298.9, 213.5],
                  "energy_ratio_vs_fp16": [1.0, 0.714]}).to_csv(d / "main_job.csv", index=False)
    return d


def test_the_summary_reads_the_headline_from_the_table(tmp_path):
    page = write_report(_main_job_dir(tmp_path)).read_text()
    assert "mlp trained on digits, 20 epochs at batch 64" in page
    assert "int4 on fourbit vs fp32 on fp16" in page
    assert "speed-up 1.37x, energy 0.71x, test accuracy -1.50 pts vs fp32" in page
    assert "78.70 us" in page and 'data-sort="78.7"' in page


def test_every_value_is_escaped(tmp_path):
    page = write_report(_main_job_dir(tmp_path, recipe="<script>alert(1)</script>")).read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_tables_and_job_files_it_cannot_read_are_refused_with_the_file(tmp_path):
    from fourbit.traces.errors import ConfigError

    d = _main_job_dir(tmp_path)
    pd.read_csv(d / "main_job.csv").drop(columns="chip").to_csv(d / "main_job.csv", index=False)
    with pytest.raises(ConfigError, match=r"main_job.csv: no column 'chip'"):
        write_report(d)
    (d / "fourbit-job.json").write_text('{"kind": "main_job", "job": [1]}')
    with pytest.raises(ConfigError, match=r"fourbit-job.json: not a job description"):
        write_report(d)
    (d / "fourbit-job.json").write_text('{"kind": 5, "job": {}}')
    with pytest.raises(ConfigError, match=r"fourbit-job.json: not a job description .* a 'kind' of main_job, sweep"):
        write_report(d)
    (d / "fourbit-job.json").unlink()
    (tmp_path / "t").mkdir()
    table = pd.read_csv(_main_job_dir(tmp_path / "t").joinpath("main_job.csv"))
    table.astype({"time_per_step_us": object}).assign(time_per_step_us=["107.8", "abc"]).to_csv(
        d / "main_job.csv", index=False)
    with pytest.raises(ConfigError, match=r"main_job.csv: column 'time_per_step_us', row 1: 'abc' is not a number$"):
        write_report(d)
    assert not (d / "report.html").exists()


def test_a_truncated_sweep_table_is_refused(tmp_path):
    """results.csv cut short (results.parquet intact) would summarise fewer points: refused."""
    from fourbit.traces.errors import ConfigError

    d = tmp_path / "s"
    d.mkdir()
    full = pd.DataFrame({"array.rows": [8, 16, 32], "point_id": ["a", "b", "c"], "status": ["ok"] * 3,
                         "time_s": [3e-3, 2e-3, 1e-3], "energy_pj": [1e6, 2e6, 3e6]})
    full.to_parquet(d / "results.parquet", index=False)
    full.iloc[:2].to_csv(d / "results.csv", index=False)
    with pytest.raises(ConfigError, match=r"results.csv: 2 rows, results.parquet has 3: one of them is damaged"):
        write_report(d)
    full.to_csv(d / "results.csv", index=False)
    assert "1.000 ms" in write_report(d).read_text()


def test_figure_names_with_markup_are_escaped_in_attributes(tmp_path):
    d = _main_job_dir(tmp_path)
    (d / "figures").mkdir()
    (d / "figures" / "x' onerror='alert(1).png").write_bytes(b"\x89PNG")
    page = write_report(d).read_text()
    assert "onerror='alert" not in page and "x&#39; onerror=&#39;alert(1).png" in page


def test_ablation_and_compare_summaries(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    pd.DataFrame({"variant": ["fp32", "int4"], "recipe": ["fp32", "int4"], "seeds": [2, 2],
                  "test_accuracy_pct": [98.39, 98.03]}).to_csv(d / "ablation.csv", index=False)
    (d / "compare.csv").write_text(
        "mode,chip,recipe,array,time_per_step_us,speedup_vs_fp16,energy_per_step_uj,energy_ratio_vs_fp16\n"
        "iso-array,fourbit,int4,32x32,15318.2,2.32,32668.3,0.408\niso-array,fp16,fp16,32x32,35531.1,1.0,80049.2,1.0\n"
        "iso-area,fourbit,int4,27x32,17094.5,2.079,33008.8,0.412\n")
    page = write_report(d).read_text()
    assert "fp32: 98.39 %" in page and "int4: 98.03 %" in page  # best and worst variant
    assert "fourbit (32x32) vs fp16, iso-array" in page and "speed-up 2.08x, energy 0.41x" in page


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Real results of every kind, made by the command line (an imported topology for sweep,
    compare and explain; the main job and an ablation trained 1 epoch on digits), each with
    its report."""
    from tests.analysis import import_topology_traces
    from tests.analysis.test_cli import fourbit
    from tests.analysis.test_sweep import TOPOLOGY

    tmp = tmp_path_factory.mktemp("report")
    trace = str(import_topology_traces(tmp, TOPOLOGY, ("int4",))["int4"])
    commands = {
        "sweep": ["sweep", "--trace", trace, "--grid", "array.rows,array.cols=8,16", "--grid", "array.dataflow=ws,os"],
        "compare": ["compare", "--trace", trace, "--iso-area", "square"],
        "explain": ["explain", trace, "--chip", "fourbit", "--baseline", "fp16"],
        "main_job": ["run", "--epochs", "1"],
        "ablation": ["ablation", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--seeds", "0",
                     "--recipe", "fp32", "--recipe", "int4"],
    }
    out = {}
    for kind, argv in commands.items():
        out[kind] = tmp / kind
        res = fourbit(*argv, "--out", str(out[kind]), *(["--quiet"] if kind != "explain" else []))
        assert res.returncode == 0, (kind, res.stderr[-2000:])
        res = fourbit("report", str(out[kind]))
        assert res.returncode == 0, (kind, res.stderr)
    return out


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("the report's browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def page_problems(browser, page: Path) -> list[str]:
    """What is wrong with ``page`` opened in the browser: an image that did not load, an error
    in the console (a script error, a missing file), a reference to the network."""
    from selenium.webdriver.common.by import By

    text = page.read_text()
    problems = [f"refers to the network: {u}" for u in ("http://", "https://") if u in text]
    browser.get_log("browser")  # drop what an earlier page logged
    browser.get(page.as_uri())
    for img in browser.find_elements(By.CSS_SELECTOR, "img"):
        if not browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img):
            problems.append(f"image not loaded: {img.get_attribute('src')}")
    problems += [f"console: {e['message']}" for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    return problems


def test_the_check_finds_a_broken_image_and_a_script_error(tmp_path, browser):
    """The negative case: the same check on pages with a missing image and a script error."""
    good = tmp_path / "good.html"
    good.write_text("<!DOCTYPE html><html><body><p>fine</p><script>var x = 1;</script></body></html>")
    assert page_problems(browser, good) == []
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="missing.png" alt="x">'
                   "<script>undefinedFunction();</script></body></html>")
    problems = page_problems(browser, bad)
    assert any(p.startswith("image not loaded: ") and p.endswith("missing.png") for p in problems), problems
    assert any("undefinedFunction is not defined" in p for p in problems), problems


def _headline(kind: str, d: Path) -> list[str]:
    """The summary lines the page must show for ``kind``, computed here from its result file."""
    if kind == "main_job":
        t = pd.read_csv(d / "main_job.csv")
        r = t.iloc[-1]
        return ["workload\nmlp trained on digits, 1 epoch at batch 64",
                f"{r.recipe} on {r.chip} vs {t.recipe.iloc[0]} on fp16\nspeed-up {show('ratio', r.speedup_vs_fp16)}, "
                f"energy {show('ratio', r.energy_ratio_vs_fp16)}, test accuracy "
                f"{show('points', r.accuracy_delta_vs_fp32_pts)} vs fp32"]
    if kind == "compare":
        t = pd.read_csv(d / "compare.csv")
        rows = t[t.chip == "fourbit"]
        return [f"fourbit ({r['array']}) vs fp16, {r['mode']}\nspeed-up {show('ratio', r.speedup_vs_fp16)}, "
                f"energy {show('ratio', r.energy_ratio_vs_fp16)}" for _, r in rows.iterrows()]
    if kind == "sweep":
        t = pd.read_csv(d / "results.csv")
        r = t.loc[t.time_s.idxmin()]
        return [f"fastest point\n{show_time_s(r.time_s)}", f"speed-up {show('ratio', r.speedup_vs_fp16)}",
                "chip\nfourbit", "points\n4 (0 failed)"]
    if kind == "ablation":
        t = pd.read_csv(d / "ablation.csv")
        best = t.loc[t.test_accuracy_pct.idxmax()]
        return [f"best variant\n{best.variant}: {best.test_accuracy_pct:.2f} %"]
    t = pd.read_csv(d / "explain.csv")
    return ["chips\nfourbit (int4); fp16 (fp16)", "(small at batch 8)"] + [
        f"measured {w} (fourbit (int4) over fp16 (fp16))\n{show('ratio', t[t.waterfall == w].ratio.iloc[-1])}"
        for w in ("speed-up", "energy")]


@pytest.mark.parametrize("kind", ["main_job", "sweep", "compare", "ablation", "explain"])
def test_every_report_page_in_a_real_browser(pages, browser, kind):
    """Chromium opens each kind of page from disk: every image loads, nothing is logged as an
    error, nothing refers to the network, the summary shows the result file's headline numbers
    and every figure the command wrote is on the page."""
    from selenium.webdriver.common.by import By

    page = pages[kind] / "report.html"
    assert page_problems(browser, page) == []
    summary = browser.find_element(By.ID, "summary").text
    for line in _headline(kind, pages[kind]):
        assert line in summary, (line, summary)
    shown = {Path(i.get_attribute("src")).name for i in browser.find_elements(By.CSS_SELECTOR, "figure img")}
    written = {p.name for p in [*pages[kind].glob("*.png"), *pages[kind].glob("figures/*.png")]}
    assert shown == written and shown


def test_a_click_on_a_header_sorts_the_rows(pages, browser):
    """A click on a header sorts the rows by that column's numbers; a second click reverses."""
    from selenium.webdriver.common.by import By

    table = pd.read_csv(pages["sweep"] / "results.csv")
    browser.get((pages["sweep"] / "report.html").as_uri())

    def column_values(label: str) -> list[float]:
        heads = [h.text.strip(" \u25b2\u25bc") for h in browser.find_elements(By.CSS_SELECTOR, "#results th")]
        col = heads.index(label) + 1
        cells = browser.find_elements(By.CSS_SELECTOR, f"#results tbody td:nth-child({col})")
        return [float(c.get_attribute("data-sort")) for c in cells]

    header = next(h for h in browser.find_elements(By.CSS_SELECTOR, "#results th") if h.text == "energy")
    header.click()
    assert column_values("energy") == sorted(table.energy_pj)
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert column_values("energy") == sorted(table.energy_pj, reverse=True)
