#!/usr/bin/env python3
"""The dashboard under load, in headless Chromium (issue 14; results in BENCHMARKS.md).

Run by scripts/bench-ui.sh against a node it started. Fills the journal with --jobs
trivial jobs, then measures, warm (the second of two loads): the time from navigation
to the first row of data on each page; then, with the Jobs page open, a burst of jobs
submitted as fast as the node takes them, and how long after the last one finished
the page shows it (its lag behind the feed), with the changes per second it received.
"""

import argparse
import json
import shutil
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def call(server, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def submit(server, worker, first, count, batch=500, fail=False):
    lsns = []
    # A failing job: the hash example asked for a file it does not have (exit 1).
    extra = {"args": ["/no/such/file"]} if fail else {}
    for start in range(first, first + count, batch):
        actions = [{"worker": worker, "env": {"N": str(i)}, **extra} for i in range(start, min(first + count, start + batch))]
        lsns += [j["lsn"] for j in call(server, "POST", "/compute/jobs", {"actions": actions})["jobs"]]
    return lsns


def drained(server):
    while True:
        info = call(server, "GET", "/compute/sysinfo")
        if info["queued"] == 0 and info["running"] == 0:
            return
        time.sleep(0.2)


# Resolves with performance.now() (ms since navigation started) once `selector`
# matches, watching the DOM rather than polling it.
FIRST_DATA = """
const [selector, done] = arguments;
const found = () => document.querySelector(selector);
if (found()) { done(performance.now()); return; }
new MutationObserver((_, observer) => {
  if (found()) { observer.disconnect(); done(performance.now()); }
}).observe(document.documentElement, {childList: true, subtree: true, characterData: true});
"""


def first_paint(driver, url, selector):
    times = []
    for _ in range(2):
        driver.get(url)
        times.append(driver.execute_async_script(FIRST_DATA, selector))
    return times[-1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--worker", required=True)
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--burst", type=int, default=10_000)
    p.add_argument("--fail", action="store_true", help="every job fails (a journal of failures)")
    args = p.parse_args()
    server, worker = args.server, args.worker

    started = time.perf_counter()
    lsns = submit(server, worker, 0, args.jobs, fail=args.fail)
    drained(server)
    print(f"{args.jobs:,} {'failed ' if args.fail else ''}jobs in the journal ({time.perf_counter() - started:.0f} s to fill)")

    options = webdriver.ChromeOptions()
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]:
        options.add_argument(arg)
    # Debian's chromium and chromedriver, named so selenium does not go looking.
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_script_timeout(60)
    try:
        middle = lsns[len(lsns) // 2]
        print("first data on screen after navigation, warm (ms):")
        for name, path, selector in [
            ("Overview", "/ui", "[data-card=queued]"),
            ("Queues", "/ui/queues", "main table, main p.muted"),
            ("Jobs (newest 50)", "/ui/jobs", "tbody tr"),
            ("Jobs, state=failed (a whole window looked at)", "/ui/jobs?state=failed", "main p[role=status]:not(:empty), tbody tr"),
            (f"Job #{middle}", f"/ui/jobs/{middle}", "dl.kv"),
        ]:
            print(f"  {name:<48} {first_paint(driver, server + path, selector):8.1f}")

        driver.get(server + "/ui/jobs")
        driver.execute_async_script(FIRST_DATA, "tbody tr")
        driver.execute_async_script(FIRST_DATA, "#live.on")
        before = int(driver.find_element("id", "live").get_attribute("data-changes") or 0)
        started = time.perf_counter()
        burst = submit(server, worker, args.jobs, args.burst, fail=args.fail)
        last = burst[-1]
        call(server, "GET", f"/compute/jobs/{last}?wait_ms=60000")
        api_done = time.perf_counter()
        ended = "failed" if args.fail else "succeeded"
        selector = f'tr[data-lsn="{last}"] [data-field="state"] .state-{ended}'
        driver.execute_async_script(FIRST_DATA, selector)
        page_done = time.perf_counter()
        changes = int(driver.find_element("id", "live").get_attribute("data-changes")) - before
        rate = changes / (page_done - started)
        print(f"burst of {args.burst:,} jobs with the Jobs page open: {changes:,} changes in "
              f"{page_done - started:.1f} s ({rate:,.0f} changes/s received)")
        print(f"  the page showed the last job finished {1000 * (page_done - api_done):.0f} ms after the API did")
        rows = driver.execute_script("return document.querySelectorAll('tbody tr').length")
        print(f"  rows on the page: {rows} (bounded)")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
