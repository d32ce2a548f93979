"""benchmarks/gpu_suite.py --dry-run (tiny config on CPU, every non-CUDA path) and the README table."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import perf_table  # noqa: E402


def _dry(tmp_path, sections):
    out = tmp_path / "gpu.json"
    cp = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--sections", sections, "--out", str(out)],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr[-3000:]
    return json.loads(out.read_text()), cp.stdout


@pytest.mark.slow
def test_dry_run_all_sections_but_compile(tmp_path):
    r, stdout = _dry(tmp_path, "parity,inversion,davg,training")
    assert r["dry_run"] and r["torch"] and "device" in r and r["requested"] == ["parity", "inversion", "davg", "training"]
    s = r["sections"]
    assert not any("error" in v for v in s.values()), {k: v.get("error") for k, v in s.items()}
    assert s["parity"]["fp32_ok"] and s["parity"]["lowp_ok"]
    assert set(s["inversion"]["latency_b1"]) == {"full_exact", "full_fast", "wplus_exact", "wplus_fast"}
    assert s["inversion"]["latency_b1"]["full_fast"]["stats"]["fast_paths"]["autocast"] == "bf16"
    assert s["inversion"]["summary"]["best_img_per_s"] > 0 and s["davg"]["samples_per_s"] > 0
    assert s["training"]["stage1"]["img_per_s"] > 0 and s["training"]["stage2"]["img_per_s"] > 0
    assert "gpu suite on" in stdout
    # a measured (non-dry) file renders every row with a number
    r["dry_run"] = False
    rows = perf_table.render(r).split("|---|---|---|---|")[1].strip().splitlines()[:-1]
    for row in rows:  # the compile section was not requested: only its row stays unmeasured
        assert ("not measured" in row) == ("torch.compile" in row), row


@pytest.mark.slow
def test_dry_run_compile_section(tmp_path):
    r, _ = _dry(tmp_path, "compile")
    c = r["sections"]["compile"]
    assert "error" not in c, c.get("error")
    assert c["compile_s"] is not None and c["latency_b1"]["ms"] > 0


def test_requires_cuda_without_dry_run():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cp = subprocess.run([sys.executable, str(SUITE), "--sections", "davg"], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)
    assert cp.returncode == 2 and "CUDA is not available" in cp.stderr


def test_readme_table_is_current():
    assert perf_table.main(["--check"]) == 0
    if not (ROOT / "benchmarks" / "results" / "gpu.json").exists():
        assert "not measured" in (ROOT / "README.md").read_text()


def test_section_error_is_recorded(tmp_path):
    """A failing section leaves its error in the JSON and the suite still writes the file."""
    out = tmp_path / "gpu.json"
    cp = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--sections", "davg", "--budget-s", "5",
                         "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert cp.returncode == 0
    r = json.loads(out.read_text())
    assert "skipped" in r["sections"]["davg"]["error"]
    assert "error (see gpu.json)" in perf_table.render(r | {"dry_run": False})
