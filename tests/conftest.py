"""Shared test setup: offline switches, fixture location, GPU marker."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spin-wait stalls on shared cores
import tempfile
from pathlib import Path

import pytest

# Offline and hermetic: no hub retries, no developer-cached weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="goae-torch-home-")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = Path(os.environ.get("GOAE_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def fixture_dir(name: str) -> Path:
    """Folder of golden data from the official implementations, or skip (fail under CI)."""
    d = SHARED_FIXTURES / name
    if not d.is_dir():
        msg = (f"golden fixtures not found at {d}: they live in ../shared/fixtures beside the "
               "checkout (set GOAE_FIXTURES to point elsewhere)")
        if os.environ.get("CI"):
            pytest.fail(msg + " — CI must have them")
        pytest.skip(msg)
    return d


@pytest.fixture
def eg3d_fixture() -> Path:
    return fixture_dir("eg3d")


@pytest.fixture
def eg3d_8xdc_fixture() -> Path:
    return fixture_dir("eg3d_8xdc")


@pytest.fixture
def goae_fixture() -> Path:
    return fixture_dir("goae")


@pytest.fixture
def real_faces_fixture() -> Path:
    return fixture_dir("real_faces")


@pytest.fixture
def one_thread():
    """Run a test at 1 torch thread (tiny ops are faster so on a shared 2-core box), then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
