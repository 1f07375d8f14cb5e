"""Round-trip latency of the capsule explorer (--mode=explore), over HTTP.

  python benchmarks/explorer_latency.py [--workdir=bundled:mnist_efficient] \\
      [--config=configs/mnist_efficient.py] [--requests=100] \\
      [--screenshot=docs/figures/explorer.png] [-- --config.X=Y]

starts ``main.py --mode=explore --port=0`` on 127.0.0.1 (uvicorn, as a user
runs it), then, over one keep-alive connection as the page's fetch() uses:

  decode  POST /api/decode with the shown capsule, one dimension moved by
          -0.25..+0.25 (a slider dragged): the round trip until the new
          image's JSON is read;
  encode  POST /api/encode with a PNG of docs/examples (read as
          --mode=predict reads it), at a changing rotation angle.

Prints, as its last line, one JSON object: the medians and 90th
percentiles in milliseconds, the number of requests, the JAX compilations
the server counted during them (its /api/info; 0: fixed shapes), the
targets (decode <= 100 ms, encode <= 250 ms) and the host (CPU model,
cores, load average). Arguments after ``--`` go to main.py. Models without
decoder (bundled weights before issue 39's bundle) give no decode figures.

--screenshot=PATH also shows the page in headless Chromium (selenium with
Debian's chromium and chromium-driver), with docs/examples/
mnist_test0_label7.png dropped in and one slider moved, and saves it as a
PNG (docs/figures/explorer.png, in docs/explorer.md and the README).
"""

import argparse
import http.client
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.png"))
TARGETS_MS = {"decode": 100.0, "encode": 250.0}
WARMUP_REQUESTS = 3  # per kind, not timed (connection set-up, caches)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def start_server(args, extra) -> tuple[subprocess.Popen, str, str]:
  """main.py --mode=explore on a free port: (process, host, port)."""
  log = tempfile.NamedTemporaryFile("w+", prefix="explorer-", suffix=".log",
                                    delete=False)
  proc = subprocess.Popen(
      [sys.executable, str(ROOT / "main.py"), f"--config={args.config}",
       f"--workdir={args.workdir}", "--mode=explore", "--port=0", *extra],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
  line = proc.stdout.readline()
  if not line.startswith("Capsule explorer: http://"):
    proc.kill()
    log.seek(0)
    sys.exit(f"the explorer did not start: {line!r}\n{log.read()[-3000:]}")
  address = line.split()[2].split("//", 1)[1].rstrip("/")
  host, port = address.rsplit(":", 1)
  return proc, host, port


def request(conn, method: str, path: str, body=None, headers=None):
  """(seconds, status, JSON answer) of one round trip."""
  start = time.perf_counter()
  conn.request(method, path, body=body, headers=headers or {})
  response = conn.getresponse()
  payload = json.loads(response.read())
  return time.perf_counter() - start, response.status, payload


def summary(seconds: list[float]) -> dict[str, float]:
  ms = sorted(s * 1000 for s in seconds)
  return {"median_ms": round(statistics.median(ms), 2),
          "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2),
          "min_ms": round(ms[0], 2), "max_ms": round(ms[-1], 2)}


def screenshot(url: str, path: str) -> None:
  """The page with an example digit and a slider moved, saved at ``path``."""
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.keys import Keys  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = "/usr/bin/chromium"
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-quic", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update",
               "--window-size=1400,900", "--hide-scrollbars",
               f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
    options.add_argument(flag)
  driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"),
                            options=options)
  try:
    wait = WebDriverWait(driver, 60)
    driver.get(url)
    wait.until(lambda d: d.execute_script(
        "return document.body.dataset.ready === 'true'"))
    driver.find_element(By.ID, "file").send_keys(str(EXAMPLES[0]))
    wait.until(lambda d: d.find_element(By.ID, "prediction").text.startswith(
        "Prediction"))
    wait.until(lambda d: d.execute_script(
        "return document.body.dataset.encoding === 'idle'"))
    slider = driver.find_element(By.CSS_SELECTOR, "input.dim[data-dim='6']")
    if slider.is_enabled():
      for _ in range(20):
        slider.send_keys(Keys.ARROW_RIGHT)
      wait.until(lambda d: d.execute_script(
          "return document.body.dataset.decoding === 'idle'"))
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)  # the last image painted
    driver.save_screenshot(path)
  finally:
    driver.quit()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="bundled:mnist_efficient")
  parser.add_argument("--config", default="configs/mnist_efficient.py")
  parser.add_argument("--requests", type=int, default=100)
  parser.add_argument("--screenshot", default=None,
                      help="also save a screenshot of the page here (PNG)")
  argv = sys.argv[1:]
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

  started = time.perf_counter()
  proc, host, port = start_server(args, extra)
  startup = time.perf_counter() - started
  try:
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    _, _, info = request(conn, "GET", "/api/info")
    compilations_before = info["compilations"]
    images = [p.read_bytes() for p in EXAMPLES]
    png = {"Content-Type": "application/octet-stream"}

    encode_times = []
    out = None
    for i in range(WARMUP_REQUESTS + args.requests):
      angle = (i % 13) * 5 - 30
      seconds, status, out = request(conn, "POST", f"/api/encode?angle={angle}",
                                     images[i % len(images)], png)
      if status != 200:
        sys.exit(f"encode: HTTP {status}: {out}")
      if i >= WARMUP_REQUESTS:
        encode_times.append(seconds)

    decode_times = []
    if info["has_decoder"]:
      k = out["class"]
      base = out["capsules"][k]
      js = {"Content-Type": "application/json"}
      for i in range(WARMUP_REQUESTS + args.requests):
        capsule = list(base)
        capsule[i % len(capsule)] += ((i % 11) - 5) * 0.05
        body = json.dumps({"class": k, "capsule": capsule})
        seconds, status, answer = request(conn, "POST", "/api/decode", body, js)
        if status != 200:
          sys.exit(f"decode: HTTP {status}: {answer}")
        if i >= WARMUP_REQUESTS:
          decode_times.append(seconds)

    _, _, info_after = request(conn, "GET", "/api/info")
    conn.close()
    if args.screenshot:
      screenshot(f"http://{host}:{port}/", args.screenshot)
  finally:
    proc.terminate()
    proc.wait(timeout=60)

  result = {
      "benchmark": "explorer_latency",
      "workdir": args.workdir, "model": info["model"], "step": info["step"],
      "requests": args.requests,
      "encode": summary(encode_times),
      "decode": summary(decode_times) if decode_times else None,
      "compilations": info_after["compilations"] - compilations_before,
      "server_startup_s": round(startup, 1),
      "targets_ms": TARGETS_MS,
      "meets_targets": bool(
          statistics.median(encode_times) * 1000 <= TARGETS_MS["encode"] and
          (not decode_times or
           statistics.median(decode_times) * 1000 <= TARGETS_MS["decode"])),
      "host": {"cpu": cpu_model(), "cores": os.cpu_count(),
               "load_average": [round(x, 2) for x in os.getloadavg()]},
  }
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
