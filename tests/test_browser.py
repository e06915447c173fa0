"""Notebook 10's text-to-image generator, used in a real browser the way a learner uses it.

The test writes a two-cell notebook into a temporary folder: the setup (``pipe =
load_shipped_pipeline()``) and the generator cell taken verbatim from
``notebooks/src/10_full_sampler.py`` (the code cell that calls ``make_generator(pipe)``). It starts
JupyterLab on a free port, opens the notebook in headless Chromium (Playwright), runs all cells
from the Run menu, then types a new prompt, moves the steps slider with the keyboard, changes the
seed, clicks *Generate* and waits for the new image: a PNG whose bytes differ from the first one,
with the status showing the new prompt and the number of U-Net calls the slider asked for.

Needs Chromium at /usr/bin/chromium (``apt-get install -y chromium``) and the ``playwright`` package
(requirements.txt). Never run ``playwright install``: the test drives the system's Chromium.
Environment:

    COURSE_REQUIRE_BROWSER=1   fail (instead of skip) when Chromium or playwright is missing (CI sets it)
    COURSE_CHROMIUM=PATH       another Chromium or Chrome than /usr/bin/chromium
    COURSE_BROWSER_DEV=1       while notebook 10 or the shipped U-Net does not exist yet, use a
                               stand-in cell and a randomly initialised U-Net instead of failing
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from build_notebooks import SRC, parse_source  # noqa: E402

CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
SOURCE = SRC / "10_full_sampler.py"
SHIPPED_UNET = ROOT / "data" / "shapeworld_t2i_unet.safetensors"
INSTALL_HINT = ("install it with `sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium` "
                "(Debian/Ubuntu) or point COURSE_CHROMIUM at another Chromium or Chrome; "
                "do not run `playwright install`")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--no-first-run"]
NEW_PROMPT = "two green squares"
STEP_PRESSES = 12          # ArrowLeft presses on the steps slider (from its default, 20)
NEW_SEED = "7"
TEST_BUDGET_S = 100        # the whole test, server and browser start included (shutdown: at most ~20 s more)
OUT = ".jp-OutputArea-output"

SETUP_CELL = """from course_lib.pipeline.shipped import load_shipped_pipeline
from course_lib.pipeline.widgets import make_generator

pipe = load_shipped_pipeline()"""

DEV_SETUP_CELL = """# COURSE_BROWSER_DEV=1: the shipped config with a randomly initialised U-Net
from course_lib.pipeline.config import SHIPPED_CONFIG, build_from_config, load_config
from course_lib.pipeline.widgets import make_generator

cfg = load_config(SHIPPED_CONFIG)
del cfg["model"]["params"]["unet_config"]["params"]["ckpt_path"]
pipe = build_from_config(cfg, strict=False)   # a random U-Net on purpose"""

DEV_GENERATOR_CELL = """# TAGS: nbval-ignore-output
from course_lib.pipeline.widgets import make_generator

ui = make_generator(pipe)
ui"""


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _missing(what: str) -> None:
    """Skip, or fail where the browser is required (CI)."""
    if _flag("COURSE_REQUIRE_BROWSER"):
        pytest.fail(f"COURSE_REQUIRE_BROWSER=1 but {what}", pytrace=False)
    pytest.skip(what)


def generator_cells() -> tuple[list[str], str]:
    """The two code cells of the test notebook (setup, generator), and where they come from."""
    problems, origin = [], []
    if SHIPPED_UNET.exists():
        setup = SETUP_CELL
        origin.append("load_shipped_pipeline()")
    else:
        problems.append(f"the shipped U-Net {SHIPPED_UNET.relative_to(ROOT)} does not exist")
        setup = DEV_SETUP_CELL
        origin.append("a random U-Net (COURSE_BROWSER_DEV=1)")
    if SOURCE.exists():
        code = [body for kind, body in parse_source(SOURCE.read_text()) if kind == "code"]
        gen = [c for c in code if "make_generator(pipe" in c]
        assert any(re.search(r"^pipe\s*=\s*load_shipped_pipeline\(", c, re.M) for c in code), \
            f"{SOURCE.name} has no cell with the line `pipe = load_shipped_pipeline(...)`"
        assert len(gen) == 1, f"{SOURCE.name} should have one cell calling make_generator(pipe), found {len(gen)}"
        assert gen[0].startswith("# TAGS: nbval-ignore-output"), \
            f"the generator cell of {SOURCE.name} should start with `# TAGS: nbval-ignore-output`"
        generator = gen[0]
        origin.append(f"the generator cell of {SOURCE.relative_to(ROOT)}")
    else:
        problems.append(f"{SOURCE.relative_to(ROOT)} does not exist")
        generator = DEV_GENERATOR_CELL
        origin.append("a stand-in generator cell (COURSE_BROWSER_DEV=1)")
    if problems and not _flag("COURSE_BROWSER_DEV"):
        pytest.fail("; ".join(problems) + ": the browser test needs notebook 10's generator cell and the shipped "
                    "weights (set COURSE_BROWSER_DEV=1 to try it with stand-ins meanwhile)", pytrace=False)
    return [setup, generator], " + ".join(origin)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


class Clock:
    """The test's time budget, shared by its fixtures; ``marks`` say how long each phase took."""

    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.marks: list[str] = []

    def left(self, cap_s: float) -> float:
        """Seconds for the next wait: at most ``cap_s``, and never past the budget."""
        remaining = self.budget_s - (time.monotonic() - self.start)
        if remaining <= 0:
            raise AssertionError(f"the test ran past its budget of {self.budget_s} s ({', '.join(self.marks)})")
        return min(cap_s, remaining)

    def mark(self, what: str) -> None:
        self.marks.append(f"{what} {time.monotonic() - self.start:.1f} s")


class Lab:
    """A JupyterLab server of our own, in its own process group."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = folder / "jupyterlab.log"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--ServerApp.token={self.token}", "--ServerApp.port_retries=0", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               f"--LabApp.workspaces_dir={folder / 'lab-workspaces'}",
               f"--LabApp.user_settings_dir={folder / 'lab-settings'}", f"--notebook-dir={folder}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        # Settings of our own: no news toast, no update check, and the notebook's kernel starts unasked.
        for rel, text in (("@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                           '{"fetchNews": "false", "checkForUpdates": false}'),
                          ("@jupyterlab/notebook-extension/tracker.jupyterlab-settings",
                           '{"autoStartDefaultKernel": true}')):
            (folder / "lab-settings" / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / "lab-settings" / rel).write_text(text)
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(folder / "jupyter-runtime"), PYDEVD_DISABLE_FILE_VALIDATION="1")
        # As `course.py test` does: on a busy machine, several OpenMP threads per kernel are many times slower.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        env.pop("MPLBACKEND", None)
        self._log_file = open(self.log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def api(self, path: str, method: str = "GET", timeout: float = 5) -> bytes:
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def kernel_idle(self) -> bool:
        """Whether a kernel of a session of gen.ipynb exists and is idle."""
        import json

        sessions = json.loads(self.api("/api/sessions"))
        return any(s.get("path", "").endswith("gen.ipynb") and (s.get("kernel") or {}).get("execution_state") == "idle"
                   for s in sessions)

    def wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited with code {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                self.api("/api/status", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"JupyterLab did not answer within {timeout:.0f} s:\n{_tail(self.log)}")

    def stop(self) -> None:
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)  # the kernels among them
        except psutil.Error:
            children = []
        if self.proc.poll() is None:
            try:
                self.api("/api/shutdown", method="POST", timeout=5)  # shuts the kernels down too
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(self.proc.pid, sig)
                        self.proc.wait(timeout=wait)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue
        for child in children:  # a kernel that outlived its server
            try:
                child.kill()
            except psutil.Error:
                pass
        self._log_file.close()


@pytest.fixture
def clock():
    return Clock(TEST_BUDGET_S)


def require_chromium() -> Path:
    """Chromium's path, or skip (fail under COURSE_REQUIRE_BROWSER=1) saying what is missing."""
    if not CHROMIUM.exists():
        _missing(f"Chromium is not installed ({CHROMIUM} is missing): {INSTALL_HINT}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed: `python3 course.py setup` installs requirements.txt")
    return CHROMIUM


@pytest.fixture
def chromium():
    return require_chromium()


@pytest.fixture
def notebook(tmp_path):
    cells, origin = generator_cells()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    path = tmp_path / "gen.ipynb"
    nbformat.write(nb, path)
    return path, origin


@pytest.fixture
def lab(clock, notebook, request):
    server = Lab(notebook[0].parent)
    request.addfinalizer(server.stop)
    server.wait_ready(timeout=clock.left(45))
    clock.mark("server up")
    return server


@pytest.fixture
def browser_page(clock, chromium, tmp_path, request):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    request.addfinalizer(pw.stop)
    context = pw.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 1000}, timeout=1000 * clock.left(30))
    request.addfinalizer(context.close)
    page = context.pages[0] if context.pages else context.new_page()
    page.console_lines = []
    page.on("console", lambda m: page.console_lines.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: page.console_lines.append(f"pageerror: {e}"))
    clock.mark("browser up")
    return page


def _image_bytes(img) -> bytes:
    """The bytes behind an <img> (a blob: or data: URL), fetched inside the page."""
    b64 = img.evaluate("""async (el) => {
        const buf = new Uint8Array(await (await fetch(el.src)).arrayBuffer());
        let s = ""; for (let i = 0; i < buf.length; i += 8192) s += String.fromCharCode(...buf.subarray(i, i + 8192));
        return btoa(s);
    }""")
    return base64.b64decode(b64)


def _check_png(data: bytes, what: str) -> tuple[int, int]:
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{what} is not a PNG (starts {data[:8]!r})"
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_generator_in_jupyterlab(clock, chromium, notebook, lab, browser_page, tmp_path):
    page, origin = browser_page, notebook[1]
    shot = tmp_path / "generator.png"

    def left_ms(cap_s: float) -> float:
        return 1000 * clock.left(cap_s)

    def out(selector: str):
        return page.locator(f"{OUT} {selector}")

    def control(kind: str, label: str):
        """The widget of class ``kind`` whose description is exactly ``label``."""
        return out(f".{kind}").filter(has=page.locator("label.widget-label", has_text=re.compile(f"^{label}$")))

    try:
        page.goto(f"{lab.base}/lab/tree/gen.ipynb?token={lab.token}", timeout=left_ms(30))
        # The kernel is ready when the server says so and the page shows it (before, Run All asks for a kernel).
        while not lab.kernel_idle():
            left_ms(45)
            page.wait_for_timeout(250)
        page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=left_ms(30))

        clock.mark("kernel idle")
        page.locator("li.lm-MenuBar-item", has_text=re.compile(r"^Run$")).click(timeout=left_ms(10))
        page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click(timeout=left_ms(10))

        # The generator draws its first image while being built; a traceback instead ends the wait early.
        error = page.locator(f"{OUT}[data-mime-type='application/vnd.jupyter.stderr']",
                             has_text="Traceback (most recent call last)")
        dialog = page.locator(".jp-Dialog button.jp-mod-accept")  # "Select Kernel", should JupyterLab still ask
        while True:
            out("img.widget-image").or_(error).or_(dialog).first.wait_for(timeout=left_ms(60))
            if not dialog.count():
                break
            dialog.first.click(timeout=left_ms(10))  # as a person would
        if error.count():
            raise AssertionError("a cell failed:\n" + error.first.inner_text()[-3000:])
        clock.mark("cells run")
        img = out("img.widget-image")
        assert img.count() == 1, f"expected one image widget, found {img.count()}"
        page.wait_for_function("el => el.src && el.complete && el.naturalWidth > 0", arg=img.element_handle(),
                               timeout=left_ms(30))
        first_src = img.get_attribute("src")
        first_png = _image_bytes(img)
        first_size = _check_png(first_png, "the first image")
        status = out(".widget-html .widget-html-content")
        assert status.count() == 1, f"expected one status widget, found {status.count()}"
        assert "U-Net calls" in status.inner_text(), f"the first generation did not finish: {status.inner_text()!r}"

        # Use it like a person: steps slider with the keyboard, a new prompt, a new seed, Generate.
        steps = control("widget-slider", "steps")
        steps.locator(".noUi-handle").click(timeout=left_ms(10))
        for _ in range(STEP_PRESSES):
            page.keyboard.press("ArrowLeft")
        readout = steps.locator(".widget-readout")
        expected_steps = str(20 - STEP_PRESSES)
        page.wait_for_function("([el, want]) => el.textContent.trim() === want",
                               arg=[readout.element_handle(), expected_steps], timeout=left_ms(10))

        prompt = control("widget-text", "prompt").locator("input")
        prompt.click(timeout=left_ms(10))
        prompt.press("Control+A")
        prompt.press_sequentially(NEW_PROMPT, delay=15, timeout=left_ms(15))
        prompt.press("Tab")

        seed = control("widget-text", "seed").locator("input")
        seed.fill(NEW_SEED, timeout=left_ms(10))
        seed.press("Tab")
        page.wait_for_timeout(300)  # let the last control's update reach the kernel before the click

        clock.mark("controls set")
        out("button.jupyter-button").filter(has_text=re.compile("^Generate$")).click(timeout=left_ms(10))
        page.wait_for_function(
            """([img, status, oldSrc, prompt]) => status.textContent.includes(prompt)
                   && status.textContent.includes("U-Net calls")
                   && img.src !== oldSrc && img.complete && img.naturalWidth > 0""",
            arg=[img.element_handle(), status.element_handle(), first_src, NEW_PROMPT], timeout=left_ms(60))
        clock.mark("new image")
        page.screenshot(path=str(shot), full_page=True, timeout=left_ms(15))

        src = img.get_attribute("src")
        assert src.startswith(("blob:", "data:image/png")), f"unexpected image src {src[:60]!r}"
        natural = img.evaluate("el => [el.naturalWidth, el.naturalHeight]")
        assert natural[0] > 0 and natural[1] > 0, f"the new image has natural size {natural}"
        png = _check_png(_image_bytes(img), "the new image")
        assert png == first_size == tuple(natural), (png, first_size, natural)
        assert _image_bytes(img) != first_png, "Generate showed the same image again (prompt, steps and seed changed)"
        text = status.inner_text()
        assert f"{expected_steps} U-Net calls" in text, \
            f"the status {text!r} does not show the {expected_steps} steps set with the slider"
        assert seed.input_value() == NEW_SEED and prompt.input_value() == NEW_PROMPT
        digest = hashlib.sha256(_image_bytes(img)).hexdigest()[:12]
        print(f"\n[{origin}] generated a {png[0]}x{png[1]} PNG (sha256 {digest}); {', '.join(clock.marks)}; "
              f"screenshot {shot}")
    except Exception as e:
        raise AssertionError(_diagnostics(e, page, lab, shot, origin, clock)) from e


def _diagnostics(e: Exception, page, lab: Lab, shot: Path, origin: str, clock: Clock) -> str:
    parts = [f"{type(e).__name__}: {e}", f"notebook cells from: {origin}", f"phases: {', '.join(clock.marks)}"]
    try:
        page.screenshot(path=str(shot), full_page=True, timeout=5000)
        parts.append(f"screenshot: {shot}")
    except Exception as err:
        parts.append(f"(no screenshot: {err})")
    try:
        texts = [page.locator(sel).first.inner_text(timeout=3000) for sel in (".jp-NotebookPanel", ".jp-Dialog")
                 if page.locator(sel).count()] or [page.locator("body").inner_text(timeout=3000)]
        parts.append("--- page text: notebook, dialog (end) ---\n" + "\n".join(texts)[-2500:])
    except Exception as err:
        parts.append(f"(no page text: {err})")
    parts.append("--- browser console (end) ---\n" + "\n".join(getattr(page, "console_lines", [])[-25:]))
    parts.append("--- JupyterLab log (end) ---\n" + _tail(lab.log))
    return "\n".join(parts)

