"""The capsule explorer (--mode=explore, capsnet_jax/analysis/explorer.py):
its JSON API in-process (Starlette's TestClient), the command's server, and
the page in a real headless Chromium (selenium with Debian's chromium and
chromium-driver; .ci/run installs them)."""

import base64
import io
import json
import pathlib
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import jax
import numpy as np
from PIL import Image
import pytest

from capsnet_jax import errors
from capsnet_jax.data import idx
from capsnet_jax.analysis import explorer
from capsnet_jax.inference import predict
import conftest
from conftest import ROOT

EXAMPLES = ROOT / "docs" / "examples"
# The bundled weights; the decoder is part of them from issue 39's new bundle.
BUNDLE = "bundled:mnist_efficient"


def _image(data_url: str) -> np.ndarray:
  """A "data:image/png;base64,..." URL -> uint8 pixels."""
  head, _, payload = data_url.partition(",")
  assert head == "data:image/png;base64"
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))))


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def _client(app):
  """Starlette's TestClient on a loopback Host, giving API requests the
  Content-Type the page gives them where a test sets none."""
  testclient = conftest.require("starlette.testclient")

  def typed(request):
    if request.method == "POST" and "content-type" not in request.headers:
      request.headers["Content-Type"] = (
          "application/json" if request.url.path == "/api/decode"
          else "application/octet-stream")
  client = testclient.TestClient(app, base_url="http://127.0.0.1:8765")
  client.event_hooks = {"request": [typed], "response": []}
  return client


@pytest.fixture(name="tiny", scope="module")
def fixture_tiny(tiny_run):
  """An Explorer of the tiny trained model (its synthetic test digits for
  the random digit), compiled."""
  model = explorer.load(tiny_run.config, str(tiny_run.workdir))
  tiny = explorer.Explorer(model, [str(tiny_run.config.idx_dir)], seed=0)
  tiny.warm_up()
  yield tiny
  tiny.close()


@pytest.fixture(name="client", scope="module")
def fixture_client(tiny):
  with _client(explorer.create_app(tiny)) as client:
    yield client


@pytest.fixture(name="test_set", scope="module")
def fixture_test_set(tiny_run):
  return idx.load_mnist_idx(str(tiny_run.config.idx_dir), "test")


# --------------------------------------------------------------------------
# The API, in-process.


def test_encode_answers_the_interface(client, tiny):
  data = (EXAMPLES / "mnist_test0_label7.png").read_bytes()
  response = client.post("/api/encode", content=data)
  assert response.status_code == 200, response.text
  out = response.json()
  lengths = np.asarray(out["capsule_lengths"])
  capsules = np.asarray(out["capsules"])
  assert lengths.shape == (10,) and capsules.shape == (10, 16)
  assert np.all((lengths >= 0) & (lengths < 1))
  # The lengths are those of the capsules, and the prediction the longest.
  np.testing.assert_allclose(np.linalg.norm(capsules, axis=1), lengths,
                             atol=2e-5)
  assert out["prediction"] == int(np.argmax(lengths))
  assert out["class_name"] == str(out["prediction"])
  assert out["class"] == out["prediction"]
  assert _image(out["reconstruction"]).shape == (28, 28)
  # The very image --mode=predict makes of the file, as the model's input.
  stored = predict.to_stored(
      predict.read_image(str(EXAMPLES / "mnist_test0_label7.png")),
      tiny.model.info)
  np.testing.assert_array_equal(_image(out["input"]), stored[..., 0])
  routing = out["routing"]
  assert routing["kind"] == "dynamic"
  h, w, types = routing["grid"]
  assert len(routing["coupling"]) == h * w * types == len(
      routing["primary_lengths"])


def test_encode_predicts_the_test_digits(client, test_set):
  """The tiny model classifies its 100 synthetic test digits 100% right
  (tiny_config; 2-core Intel Xeon): so does encode, image by image."""
  images, labels = test_set
  right = 0
  for i, label in enumerate(labels):
    response = client.post(f"/api/encode?test_index={i}")
    assert response.status_code == 200, response.text
    right += response.json()["prediction"] == label
  assert right == len(labels)


def test_random_test_digit(client, test_set):
  images, labels = test_set
  seen = set()
  for _ in range(3):
    out = client.get("/api/random").json()
    i = out["test_index"]
    seen.add(i)
    assert out["label"] == labels[i]
    np.testing.assert_array_equal(_image(out["input"]), images[i][..., 0])
  assert len(seen) > 1


def test_rotation_and_class(client, tiny, test_set):
  images, _ = test_set
  upright = client.post("/api/encode?test_index=3").json()
  turned = client.post("/api/encode?test_index=3&angle=90").json()
  assert turned["angle"] == 90.0
  # Counter-clockwise, a quarter turn: the same pixels.
  np.testing.assert_array_equal(_image(turned["input"]),
                                np.rot90(images[3][..., 0]))
  assert turned["capsule_lengths"] != upright["capsule_lengths"]
  other = (upright["prediction"] + 1) % 10
  shown = client.post(f"/api/encode?test_index=3&class={other}").json()
  assert shown["class"] == other and shown["prediction"] == upright["prediction"]
  # The reconstruction and the routing view are those of the chosen class.
  decoded = client.post("/api/decode", json={
      "class": other, "capsule": shown["capsules"][other]}).json()
  assert decoded["reconstruction"] == shown["reconstruction"]
  assert shown["reconstruction"] != upright["reconstruction"]
  coupling = tiny.model.predict(images[3:4], ("coupling",)).coupling[0]
  np.testing.assert_allclose(shown["routing"]["coupling"], coupling[:, other],
                             atol=1e-5)
  np.testing.assert_allclose(upright["routing"]["coupling"],
                             coupling[:, upright["prediction"]], atol=1e-5)


def test_decode_follows_the_capsule(client):
  out = client.post("/api/encode?test_index=0").json()
  k, capsule = out["class"], out["capsules"][out["class"]]
  same = client.post("/api/decode", json={"class": k, "capsule": capsule})
  assert same.status_code == 200, same.text
  assert same.json()["reconstruction"] == out["reconstruction"]
  tweaked = list(capsule)
  tweaked[3] += 0.25
  moved = client.post("/api/decode", json={"class": k, "capsule": tweaked})
  a = _image(out["reconstruction"]).astype(float)
  b = _image(moved.json()["reconstruction"]).astype(float)
  # Measured: the largest pixel change is 3 of 255 for the tiny model
  # (2-core Intel Xeon); a decoder that ignores the capsule changes none.
  assert np.abs(a - b).max() >= 2


@pytest.mark.parametrize("path,body,query,message", [
    ("/api/encode", b"this is not an image", "", "not a readable image"),
    ("/api/encode", b"", "", "empty body"),
    ("/api/encode", None, "", "truncated"),
    ("/api/encode", None, "?angle=abc", "angle must be a number"),
    ("/api/encode", None, "?angle=nan", "angle must lie in"),
    ("/api/encode", None, "?class=10", "class must be in 0..9"),
    ("/api/encode", None, "?class=--1", "class must be an integer"),
    ("/api/encode", None, "?class=%C2%B2", "class must be an integer"),  # ²
    ("/api/encode", b"", "?test_index=100", "test_index must be in 0..99"),
    ("/api/decode", b"{", "", "not JSON"),
    ("/api/decode", b"[1, 2]", "", "must be a JSON object"),
    ("/api/decode", b'{"capsule": []}', "", 'no "class"'),
    ("/api/decode", b'{"class": 1, "capsule": [0.5]}', "", "list of 16"),
    ("/api/decode", b'{"class": true, "capsule": []}', "", "class must be an integer"),
    ("/api/decode", json.dumps({"class": 2, "capsule": [0.0] * 15 + ["x"]}).encode(),
     "", r"capsule\[15\] must be a number"),
    ("/api/decode", json.dumps({"class": 2, "capsule": [0.0] * 15 + [float("nan")]}
                               ).encode(), "", r"capsule\[15\] must lie in"),
])
def test_bad_requests_get_400(client, path, body, query, message):
  if body is None:  # a PNG cut short, or a good one with a bad query
    full = (EXAMPLES / "mnist_test1_label2.png").read_bytes()
    body = full[:len(full) // 2] if message == "truncated" else full
  response = client.post(path + query, content=body)
  assert response.status_code == 400, response.text
  error = response.json()["error"]
  if message == "truncated":
    assert error.startswith("not a readable image")
  else:
    assert re.search(message, error), error
  # ... and the server keeps serving.
  good = client.post("/api/encode?test_index=1")
  assert good.status_code == 200


def test_too_large_and_unknown(client, monkeypatch):
  monkeypatch.setattr(explorer, "MAX_BODY_BYTES", 1000)
  response = client.post("/api/encode", content=b"\x89PNG" + b"0" * 2000)
  assert response.status_code == 413
  assert "larger than 1000 bytes" in response.json()["error"]
  assert client.get("/api/nothing").status_code == 404
  assert client.get("/api/encode").status_code == 405


def test_no_test_digits_without_data(tiny):
  lonely = explorer.Explorer(tiny.model, ["/nonexistent"])
  try:
    with _client(explorer.create_app(lonely)) as client:
      assert client.get("/api/info").json()["random_available"] is False
      response = client.get("/api/random")
      assert response.status_code == 404
      assert "no test images on this machine" in response.json()["error"]
  finally:
    lonely.close()


def test_no_compilation_per_request(client, tiny):
  """Requests after warm_up run compiled code only: JAX traces nothing."""
  before = tiny.compilations
  assert before == 0
  data = (EXAMPLES / "mnist_test2_label1.png").read_bytes()
  for angle in (0, 30, -45):
    out = client.post(f"/api/encode?angle={angle}&class=4", content=data).json()
    client.post("/api/decode", json={"class": 4, "capsule": out["capsules"][4]})
  client.get("/api/random?angle=10")
  assert tiny.compilations == 0
  assert client.get("/api/info").json()["compilations"] == 0
  # The count sees a compilation where there is one.
  jax.jit(lambda x: x * 3 + 1)(np.arange(7.0))
  assert tiny.compilations >= 1
  tiny.compilations = 0


def test_page_and_static_files(client):
  page = client.get("/")
  assert page.status_code == 200
  assert 'id="canvas"' in page.text and "/static/explorer.js" in page.text
  for name in ("explorer.js", "explorer.css"):
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
  # Nothing is fetched from elsewhere: no absolute URL in the page's files.
  for path in pathlib.Path(explorer.STATIC_DIR).iterdir():
    text = path.read_text()
    assert "http://" not in text and "https://" not in text, path
    assert 'src="//' not in text and 'href="//' not in text, path


# --------------------------------------------------------------------------
# Against other web pages and hostile requests.


def test_a_foreign_host_or_another_sites_request_is_refused(tiny):
  """DNS rebinding (a page whose name resolves to 127.0.0.1 sends its own
  Host) and cross-site requests get a JSON error; every answer carries the
  CSP and nosniff headers."""
  testclient = conftest.require("starlette.testclient")
  app = explorer.create_app(tiny)
  csp = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
  for base, status in (("http://evil.example", 421),
                       ("http://evil.example:8765", 421),
                       ("http://127.0.0.1.evil.example", 421),
                       ("http://127.0.0.1:8765", 200),
                       ("http://localhost:8765", 200),
                       ("http://[::1]:8765", 200)):
    with testclient.TestClient(app, base_url=base) as client:
      for path in ("/", "/api/info", "/static/explorer.js"):
        response = client.get(path)
        assert response.status_code == status, (base, path, response.text)
        assert response.headers["content-security-policy"] == csp
        assert response.headers["x-content-type-options"] == "nosniff"
      if status != 200:
        assert "not to the Host" in client.get("/api/info").json()["error"]
  with _client(app) as client:
    for site, status in (("cross-site", 403), ("same-site", 403),
                         ("same-origin", 200), ("none", 200)):
      response = client.get("/api/info", headers={"Sec-Fetch-Site": site})
      assert response.status_code == status, (site, response.text)
    assert client.post("/api/encode?test_index=1", headers={
        "Sec-Fetch-Site": "cross-site"}).json()["error"] == (
            "refused: a cross-site request (from another web page)")


@pytest.mark.parametrize("path,kind", [
    ("/api/decode", "text/plain"),  # what a cross-site form or fetch sends
    ("/api/decode", "application/x-www-form-urlencoded"),
    ("/api/decode", ""),
    ("/api/encode", "text/plain"),
    ("/api/encode", "multipart/form-data; boundary=x"),
    ("/api/encode", ""),
])
def test_an_api_post_of_another_content_type_is_refused(tiny, path, kind):
  testclient = conftest.require("starlette.testclient")
  headers = {"Content-Type": kind} if kind else {}
  body = (json.dumps({"class": 1, "capsule": [0.0] * 16}).encode()
          if path == "/api/decode"
          else (EXAMPLES / "mnist_test1_label2.png").read_bytes())
  with testclient.TestClient(explorer.create_app(tiny),
                             base_url="http://127.0.0.1") as client:
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["error"].startswith("send the ")
    good = {"Content-Type": ("application/json" if path == "/api/decode"
                             else "image/png")}
    assert client.post(path, content=body, headers=good).status_code == 200


@pytest.mark.parametrize("path,body,message", [
    ("/api/decode", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ("/api/decode", b'{"class": ' + b"7" * 5000 + b', "capsule": []}',
     "not JSON"),
    ("/api/decode", b'{"class": 1, "capsule": [' + b"9" * 400 + b", 0" * 15
     + b"]}", r"^capsule\[0\] must lie in \[-1000, 1000\], got a number of "
     "about 400 digits$"),
    ("/api/encode?test_index=" + "9" * 5000, b"", "test_index must be in "
     r"0\.\.99, got '99999"),
    ("/api/encode?test_index=1&class=" + "9" * 5000, b"",
     r"class must be in 0\.\.9, got '99999"),
])
def test_what_gave_500_gets_400(client, path, body, message):
  """A JSON body nested 100,000 deep (RecursionError), an integer of 5,000
  digits (int's limit), a 400-digit capsule value (OverflowError), and
  5,000-digit query numbers: each a 400 with {"error": ...}."""
  response = client.post(path, content=body)
  assert response.status_code == 400, response.text
  assert re.search(message, response.json()["error"]), response.json()
  assert len(response.json()["error"]) < 400  # not echoed back whole
  assert client.post("/api/encode?test_index=1").status_code == 200


def _bilevel_png(width: int, height: int) -> bytes:
  buffer = io.BytesIO()
  Image.new("1", (width, height)).save(buffer, format="PNG")
  return buffer.getvalue()


def test_a_large_upload_is_refused_from_its_header(client, monkeypatch):
  """1 x 50,000,000 and 7,000 x 7,000 (49 MP) PNGs of a few kB: refused
  from the header, never decoded; 4 MP still read."""
  decoded = []
  real = predict.read_image
  monkeypatch.setattr(predict, "read_image",
                      lambda path: decoded.append(path) or real(path))
  for (w, h), shown in (((50_000_000, 1), "50.0"), ((7000, 7000), "49.0")):
    response = client.post("/api/encode", content=_bilevel_png(w, h),
                           headers={"Content-Type": "image/png"})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == (
        f"too large: {shown} megapixels, more than the 4 megapixels the "
        "explorer reads (draw or crop the digit; --mode=predict reads "
        "larger images)")
  assert not decoded
  white = np.zeros((2000, 2000), np.uint8)
  white[500:1500, 900:1100] = 255
  assert client.post("/api/encode", content=_png(white)).status_code == 200
  assert len(decoded) == 1


def test_uploads_are_read_a_bounded_number_at_a_time(tiny, monkeypatch):
  """While MAX_UPLOADS_AT_ONCE uploads are being read, another is refused
  at once (503) and a decode is still answered."""
  entered, release = threading.Semaphore(0), threading.Event()
  real = predict.read_image

  def slow(path):
    entered.release()
    release.wait(120)
    return real(path)
  monkeypatch.setattr(predict, "read_image", slow)
  data = (EXAMPLES / "mnist_test1_label2.png").read_bytes()
  outcomes = []
  threads = [threading.Thread(target=lambda: outcomes.append(
      tiny.encode(data)["prediction"]), daemon=True)
             for _ in range(explorer.MAX_UPLOADS_AT_ONCE)]
  try:
    for thread in threads:
      thread.start()
    for _ in threads:
      assert entered.acquire(timeout=120)
    with pytest.raises(explorer.RequestError, match="^busy: 2 uploads") as e:
      tiny.encode(data)
    assert e.value.status == 503
    out = tiny.decode({"class": 3, "capsule": [0.1] * 16})
    assert out["class"] == 3
  finally:
    release.set()
    for thread in threads:
      thread.join(120)
  assert len(outcomes) == explorer.MAX_UPLOADS_AT_ONCE
  assert tiny.encode(data)["prediction"] == outcomes[0]


def test_a_body_that_does_not_arrive_is_refused(monkeypatch):
  """A client that sends the headers and a few bytes: 408, not a
  connection held for ever (the stream below never ends)."""
  import asyncio  # pylint: disable=g-import-not-at-top

  class Stalled:
    headers = {"content-length": "1000"}

    async def stream(self):
      yield b"\x89PNG"
      await asyncio.Event().wait()
  monkeypatch.setattr(explorer, "BODY_TIMEOUT_S", 0.05)
  with pytest.raises(explorer.RequestError, match="did not arrive") as e:
    asyncio.run(explorer._read_body(Stalled()))  # pylint: disable=protected-access
  assert e.value.status == 408


def test_a_host_that_is_not_loopback_needs_expose(tiny_run):
  for host in ("0.0.0.0", "::", "192.0.2.1"):
    with pytest.raises(errors.ConfigError,
                       match=f"^--host={re.escape(host)} is not a loopback "
                             "address: every machine .* pass --expose"):
      explorer.run(tiny_run.config, str(tiny_run.workdir), host=host, port=0)


def test_bind_refuses_a_busy_port():
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    with pytest.raises(errors.ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
      explorer.bind("127.0.0.1", port)


# --------------------------------------------------------------------------
# The command: main.py --mode=explore serves until Ctrl-C.


def _first_line(proc, timeout: float) -> str:
  """The first line ``proc`` prints (stdout), or "" after ``timeout`` s."""
  with selectors.DefaultSelector() as selector:
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
      return ""
  return proc.stdout.readline()


def test_main_serves_on_loopback(tiny_run, tmp_path):
  log = tmp_path / "stderr.txt"
  with open(log, "w") as stderr:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--config=configs/mnist.py",
         f"--workdir={tiny_run.workdir}", "--mode=explore", "--port=0"],
        cwd=ROOT, env=conftest.subprocess_env(), stdout=subprocess.PIPE,
        stderr=stderr, text=True)
  try:
    line = _first_line(proc, timeout=300)
    assert line.startswith("Capsule explorer: http://127.0.0.1:"), (
        line, log.read_text()[-3000:])
    url = line.split()[2]
    with urllib.request.urlopen(url + "api/info", timeout=30) as response:
      info = json.load(response)
    assert info["model"] == "tiny" and info["dims"] == 16
    assert info["input_shape"] == [28, 28, 1]
    assert info["random_available"] is True  # the run's recorded idx_dir
    request = urllib.request.Request(
        url + "api/encode", data=(EXAMPLES / "mnist_test0_label7.png").read_bytes(),
        method="POST", headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
      assert len(json.load(response)["capsule_lengths"]) == 10
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == errors.EXIT_OK
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


# --------------------------------------------------------------------------
# The page in a real headless Chromium.


class Server:
  """uvicorn serving an explorer on a free loopback port, in a thread."""

  def __init__(self, app):
    self.sock = explorer.bind("127.0.0.1", 0)
    self.url = explorer.url(self.sock)
    self.server = explorer.make_server(app)
    self.thread = threading.Thread(target=self.server.run,
                                   kwargs=dict(sockets=[self.sock]), daemon=True)

  def __enter__(self):
    self.thread.start()
    deadline = time.monotonic() + 30
    while not self.server.started:
      assert self.thread.is_alive() and time.monotonic() < deadline
      time.sleep(0.02)
    return self

  def __exit__(self, *exc):
    self.server.should_exit = True
    self.thread.join(timeout=30)
    self.sock.close()


def _chromium():
  """(chromium, chromedriver) paths; a skip where they are missing (a
  failure under CI=true: .ci/run installs them)."""
  paths = shutil.which("chromium"), shutil.which("chromedriver")
  if not all(paths):
    what = "Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if conftest.IN_CI:
      pytest.fail(f"{what} are missing, and CI=true requires them", pytrace=False)
    pytest.skip(f"{what} are missing")
  return paths


@pytest.fixture(name="page", scope="module")
def fixture_page(tiny, tmp_path_factory):
  """A headless Chromium showing the explorer of the tiny model."""
  chromium, chromedriver = _chromium()
  webdriver = conftest.require("selenium.webdriver")
  service = conftest.require("selenium.webdriver.chrome.service")
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  # Headless as root, and no connections beyond the page's own server.
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-quic", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update",
               "--window-size=1400,1000",
               f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
    options.add_argument(flag)
  with Server(explorer.create_app(tiny)) as server:
    driver = webdriver.Chrome(service=service.Service(chromedriver),
                              options=options)
    try:
      driver.get(server.url)
      _wait(driver, lambda d: d.execute_script(
          "return document.body.dataset.ready === 'true'"))
      yield driver
    finally:
      driver.quit()


def _wait(driver, condition, timeout=20):
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  return WebDriverWait(driver, timeout).until(condition)


def _by_id(driver, name):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  return driver.find_element(By.ID, name)


def test_the_page_opens_without_a_broken_image(page):
  """Before there is an image, no image element shows (no broken-image
  box with its alt text); the first drawing shows both."""
  for name in ("input-image", "reconstruction"):
    image = _by_id(page, name)
    assert not image.is_displayed(), name
    assert page.execute_script("return arguments[0].hidden", image), name


def test_page_has_a_slider_per_dimension(page):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  assert len(page.find_elements(By.CSS_SELECTOR, "input[type=range].dim")) == 16
  assert len(page.find_elements(By.CSS_SELECTOR, "input[type=range]")) >= 16
  assert not _by_id(page, "error").is_displayed()
  # The input's size is the model's (from /api/info), not a fixed 28x28.
  assert _by_id(page, "input-caption").text == (
      "the model's input (28\u00d728, rotated)")


def test_drawing_predicts_and_sliders_redraw(page):
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.keys import Keys  # pylint: disable=g-import-not-at-top
  assert _by_id(page, "prediction").text == "–"
  canvas = _by_id(page, "canvas")
  ActionChains(page).move_to_element_with_offset(canvas, -10, -90) \
      .click_and_hold().move_by_offset(10, 60).move_by_offset(5, 60) \
      .move_by_offset(0, 60).release().perform()
  _wait(page, lambda d: _by_id(d, "prediction").text.startswith("Prediction: "))
  # The stroke's last encode done (a new encode resets the sliders).
  _wait(page, lambda d: d.execute_script(
      "return document.body.dataset.encoding") == "idle")
  bars = page.find_elements(By.CSS_SELECTOR, "#bars .bar")
  assert len(bars) == 10
  assert _by_id(page, "source").text == "Your drawing."
  before = _by_id(page, "reconstruction").get_attribute("src")
  assert before.startswith("data:image/png;base64,")
  for name in ("input-image", "reconstruction"):  # shown, and not broken
    assert _by_id(page, name).is_displayed(), name
    assert page.execute_script("return arguments[0].naturalWidth",
                               _by_id(page, name)) == 28, name
  slider = page.find_element(By.CSS_SELECTOR, "input.dim[data-dim='3']")
  assert slider.is_enabled()
  for _ in range(25):  # +0.25, the paper's largest offset
    slider.send_keys(Keys.ARROW_RIGHT)
  assert slider.get_attribute("value") == "0.25"
  _wait(page, lambda d: _by_id(d, "reconstruction").get_attribute("src") != before)
  assert _by_id(page, "status").text.startswith("decode: ")
  assert not _by_id(page, "error").is_displayed()


def test_random_digit_button(page, test_set):
  _, labels = test_set
  _by_id(page, "random").click()
  _wait(page, lambda d: _by_id(d, "source").text.startswith("Test image #"))
  source = _by_id(page, "source").text  # "Test image #12 (label 3)."
  index = int(source.split("#")[1].split()[0])
  assert source.endswith(f"(label {labels[index]}).")
  _wait(page, lambda d: _by_id(d, "prediction").text.startswith(
      f"Prediction: {labels[index]} "))


def test_broken_upload_shows_the_error(page, tmp_path):
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG\r\n\x1a\n but no image follows")
  _by_id(page, "file").send_keys(str(broken))
  _wait(page, lambda d: _by_id(d, "error").is_displayed())
  assert _by_id(page, "error").text.startswith("not a readable image")
  assert _by_id(page, "error").text.endswith("(HTTP 400)")
  # The page, and the server, go on: a good file clears the error.
  _by_id(page, "file").send_keys(str(EXAMPLES / "mnist_test1_label2.png"))
  _wait(page, lambda d: not _by_id(d, "error").is_displayed())
  assert _by_id(page, "source").text == "File: mnist_test1_label2.png"


# --------------------------------------------------------------------------
# The bundled weights.


@pytest.fixture(name="bundle", scope="module")
def fixture_bundle():
  from configs import mnist_efficient  # pylint: disable=g-import-not-at-top
  model = explorer.load(mnist_efficient.get_config(), BUNDLE)
  bundled = explorer.Explorer(model, [])
  bundled.warm_up()
  with _client(explorer.create_app(bundled)) as client:
    yield bundled, client
  bundled.close()


def test_bundle_encodes_real_digits(bundle):
  _, client = bundle
  for path in sorted(EXAMPLES.glob("mnist_test*_label*.png")):
    label = int(path.stem.rsplit("label", 1)[1])
    out = client.post("/api/encode", content=path.read_bytes()).json()
    assert out["prediction"] == label, path.name
    routing = out["routing"]
    assert routing["kind"] == "attention" and routing["grid"] == [1, 1, 16]
    # Efficient-CapsNet's coupling sums to 1 over the classes for each
    # primary capsule.
    np.testing.assert_allclose(np.sum(routing["matrix"], axis=1), 1.0, atol=1e-4)
  response = client.post("/api/encode", content=b"GIF89a but not really")
  assert response.status_code == 400


def test_bundle_decodes(bundle):
  explorer_, client = bundle
  assert explorer_.info()["has_decoder"]
  out = client.post("/api/encode", content=(EXAMPLES / "mnist_test0_label7.png"
                                            ).read_bytes()).json()
  capsule = list(out["capsules"][7])
  capsule[3] += 0.25
  moved = client.post("/api/decode", json={"class": 7, "capsule": capsule})
  assert moved.status_code == 200, moved.text
  a = _image(out["reconstruction"]).astype(float)
  b = _image(moved.json()["reconstruction"]).astype(float)
  assert np.abs(a - b).max() > 12  # 0.05 of the range, as trained.decode's doctest
