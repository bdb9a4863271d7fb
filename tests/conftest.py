"""Shared fixtures: tiny models saved the way users keep them, and the real server on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a model hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The engine tests' device and precision: the CPU here and in CI; bench/gpu_check.py sets cuda + fp16.
TEST_DEVICE = os.environ.get("STUDIO_TEST_DEVICE", "cpu")
TEST_PRECISION = os.environ.get("STUDIO_TEST_PRECISION", "auto")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """Built once per session: tiny sd15, sd15-inpainting and sdxl diffusers folders."""
    from tests.tiny_models import build_sd15, build_sdxl

    store = tmp_path_factory.mktemp("tiny-store")
    build_sd15(store / "tiny-sd15")
    build_sd15(store / "tiny-sd15-inpainting", inpainting=True)
    build_sdxl(store / "tiny-sdxl")
    return store


@pytest.fixture
def no_network(monkeypatch):
    """Refuse (and record) any outgoing connection; put huggingface_hub in offline mode."""
    import huggingface_hub.constants

    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return attempts


def tiny_engine(root: Path, writer=None, *, preview_every: int = 0, load_lock=None):
    """The real Engine on the test device (its own 1 GiB model cache) over root/models, its config and hash caches
    in root/models/.cache, saving to root/outputs unless given a writer."""
    from pipelines.engine import devices
    from pipelines.engine.generate import Engine
    from pipelines.engine.manager import ModelManager
    from pipelines.outputs import OutputWriter

    hw = devices.resolve(TEST_DEVICE, TEST_PRECISION)
    cache = root / "models" / ".cache"
    return Engine(hw, ModelManager(device=hw.device, device_budget=2**30, cpu_budget=0),
                  writer or OutputWriter(root / "outputs"), config_root=cache / "configs",
                  hash_cache=cache / "hashes.json", preview_every=preview_every, load_lock=load_lock)


@pytest.fixture(scope="module")
def world(tiny_store, tmp_path_factory):
    """The real engine (CPU) and job runner over a models dir with the tiny sd15, sdxl and inpainting models."""
    from pipelines import discovery
    from pipelines.jobs import JobRunner

    root = tmp_path_factory.mktemp("engine")
    ckpts = root / "models" / "Stable-diffusion"
    for name in ("tiny-sd15", "tiny-sdxl", "tiny-sd15-inpainting"):
        shutil.copytree(tiny_store / name, ckpts / name)
    infos = {i.name: i for i in discovery.scan(root / "models")}
    engine = tiny_engine(root, preview_every=1)
    runner = JobRunner().start()
    yield {"engine": engine, "runner": runner, "infos": infos, "root": root, "manager": engine.manager}
    runner.stop()


@pytest.fixture
def models_dir(tiny_store, tmp_path) -> Path:
    """A fresh models/ folder holding the tiny SD 1.5 model (copy the others in when a test needs them)."""
    d = tmp_path / "models"
    (d / "Stable-diffusion").mkdir(parents=True)
    shutil.copytree(tiny_store / "tiny-sd15", d / "Stable-diffusion" / "tiny-sd15")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, models_dir: Path, outputs_dir: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.outputs_dir = outputs_dir
        self.log = outputs_dir.parent / f"server-{self.port}.log"
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), "--models-dir", str(models_dir),
               "--outputs-dir", str(outputs_dir), "--preview-every", "1", *extra]
        if "--styles-file" not in extra:  # never the checkout's own styles.csv
            cmd += ["--styles-file", str(outputs_dir.parent / "styles.csv")]
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout: float = 120) -> "Server":
        import requests

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                requests.get(self.url + "/", timeout=2)
                return True
            except requests.RequestException:
                return False

        try:
            wait_for(answers, timeout=timeout, interval=0.3, what=f"the server on port {self.port} to answer")
        except AssertionError as e:
            raise TimeoutError(f"{e}:\n{self.log.read_text()[-4000:]}") from None
        return self

    def __enter__(self) -> "Server":
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


@pytest.fixture
def start_server(tmp_path):
    """start_server(models_dir, *extra_args) -> Server, stopped at teardown."""
    servers: list[Server] = []

    def start(models_dir: Path, *extra: str) -> Server:
        s = Server(models_dir, tmp_path / "outputs", *extra)
        servers.append(s)
        return s.wait_ready()

    yield start
    for s in servers:
        s.stop()


KINDS = ("unit", "engine", "server", "browser")  # pyproject.toml's markers; README's test section says what each means


def kind_of(item) -> set[str]:
    """The kinds closest to a test: its own marker (@pytest.mark.unit on the function) if it has one, else its
    class's, else its module's `pytestmark`."""
    by_node: dict = {}
    for node, mark in item.iter_markers_with_node():  # from the test outwards
        if mark.name in KINDS:
            by_node.setdefault(id(node), set()).add(mark.name)
    return next(iter(by_node.values()), set())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A test without exactly one kind fails its module's collection (so new tests cannot forget one)."""
    outcome = yield
    report = outcome.get_result()
    if report.passed and isinstance(collector, (pytest.Module, pytest.Class)):
        bad = []
        for item in report.result:
            if isinstance(item, pytest.Function) and len(kinds := kind_of(item)) != 1:
                bad.append(f"{item.name}: " + (f"more than one kind ({', '.join(sorted(kinds))})" if kinds else "no kind"))
        if bad:
            report.outcome, report.result = "failed", []
            report.longrepr = (f"every test needs exactly one of the markers {', '.join(KINDS)}: a module-level "
                               "`pytestmark = pytest.mark.<kind>`, or one on the test (README, Tests):\n  "
                               + "\n  ".join(bad))


@pytest.hookimpl(tryfirst=True)  # before `-m` selects
def pytest_collection_modifyitems(config, items):
    """Each test keeps only its own kind: the module's (or class's) kind moves onto the tests that have none, so
    `-m "not server"` leaves out a module's server tests and keeps the unit test beside them."""
    resolved = [kind_of(item).pop() for item in items]  # exactly one each: checked at collection
    for item in items:
        for node in item.listchain()[:-1]:
            node.own_markers[:] = [m for m in node.own_markers if m.name not in KINDS]
    for item, kind in zip(items, resolved):
        item.own_markers[:] = [m for m in item.own_markers if m.name not in KINDS]
        item.add_marker(kind)
    # tests/run_all.sh: -n 2 --dist loadgroup --no-loadscope-reorder (xdist's workers see dist "no", loadgroup True)
    if getattr(config.option, "loadgroup", False) or config.getoption("dist", "no") == "loadgroup":
        # One worker group per module, so a module's server (and other module fixtures) starts once. The browser
        # modules form one group, run one after another (two Chromiums and two servers on 2 shared cores make the
        # page timeouts a matter of luck), and go first: they are the longest unit; the other worker runs the rest.
        for item, kind in zip(items, resolved):
            item.add_marker(pytest.mark.xdist_group("browser" if kind == "browser" else item.nodeid.split("::")[0]))
        order = {id(item): kind != "browser" for item, kind in zip(items, resolved)}
        items.sort(key=lambda item: order[id(item)])  # stable: modules keep their order


def pytest_configure(config):
    # tests/run_all.sh's --dist loadgroup: pytest-xdist (3.8) tags each test's id by setting Node._nodeid; a pytest
    # whose ids come from elsewhere (9.2) ignores that, and the modules then split over both workers (two servers per
    # module, browser tests at once). Stop with why instead.
    from _pytest.nodes import Node

    if config.getoption("dist", "no") == "loadgroup" and "_nodeid" not in getattr(Node, "__slots__", ("_nodeid",)):
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup: install the "
                                "versions tests/requirements.txt pins (python -m pip install -r tests/requirements.txt)")
    # diffusers' schedulers trip numpy 2's deprecation warnings thousands of times per run: noise, not signal
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning")
