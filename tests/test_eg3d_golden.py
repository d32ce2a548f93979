"""goae.eg3d against the official EG3D golden fixtures (2X tiny and 8XDC FFHQ-512 path)."""
import json
import shutil

import pytest

from goae.eg3d.golden import fixture_runs, required_keys, run_golden


# The golden tolerances hold at any thread count; 1 thread is faster on the shared 2-core box.
pytestmark = pytest.mark.usefixtures("one_thread")


def _check(rows, fixture):
    bad = [str(r) for r in rows if r.status.startswith("FAIL")]
    assert not bad, "\n".join(bad)
    ok = {r.name for r in rows if r.status == "ok"}
    cfg = json.loads((fixture / "eg3d_tiny_config.json").read_text())
    for k in required_keys(fixture_runs(cfg)):  # ws and every run's final outputs were really compared
        assert k in ok or f"{k}.stride2" in ok, k
    assert "manifest.ffhq512.state_dict" in ok
    return ok


def test_golden_2x(eg3d_fixture):
    ok = _check(run_golden(eg3d_fixture), eg3d_fixture)
    # the 2X fixture stores the full per-sample renderer tensors and the backbone blocks
    assert {"psi1.render.depths_fine", "psi1.render.sigma_fine", "psi1.backbone.b32.x",
            "psi1.planes.stride4", "probe.decoder_sigma", "psi1.sr.block0_img"} <= ok


def test_golden_8xdc(eg3d_8xdc_fixture):
    ok = _check(run_golden(eg3d_8xdc_fixture), eg3d_8xdc_fixture)
    assert {"psi1.render.depths_fine.rows64_72", "psi1.sr.block0_x.stride16", "psi1.out.image",
            "psi1_nrr64.out.image.stride2"} <= ok


def test_tolerance_rules_cover_fixture_names():
    from goae.eg3d.golden import tolerance
    assert tolerance("psi1_nrr64.out.image_raw") == 1e-4  # SR block0 output with the 2X SR
    assert tolerance("psi1.out.image_raw") == 1e-5
    assert tolerance("psi1.render.depths_fine.rows64_72") == 1e-5
    assert tolerance("psi0p7.out.image.stride2") == 1e-4
    assert tolerance("psi1.planes.sum_per_channel_f64") == 1e-4
    assert tolerance("ws.psi1") == 1e-5


def test_run_settings_come_from_the_fixture(eg3d_fixture, tmp_path):
    """Runs, resolutions and truncations are the fixture's own (config `inputs`), and a missing optional
    manifest is a skipped row: a copy without the manifest and with psi1_nrr64 declared at 32² renders that
    run at 32² (so its 64² tensors no longer match) and fails nothing else."""
    cfg = json.loads((eg3d_fixture / "eg3d_tiny_config.json").read_text())
    assert fixture_runs(cfg) == {"psi1": (1.0, None, 32), "psi0p7": (0.7, 14, 32), "psi1_nrr64": (1.0, None, 64)}
    d = tmp_path / "fx"
    d.mkdir()
    for f in eg3d_fixture.iterdir():
        if f.name != "eg3d_ffhq512_manifest.json":
            shutil.copy(f, d / f.name)
    cfg["inputs"]["neural_rendering_resolution"]["psi1_nrr64"] = 32
    (d / "eg3d_tiny_config.json").write_text(json.dumps(cfg))
    rows = {r.name: r.status for r in run_golden(d)}
    assert rows["manifest.ffhq512.state_dict"].startswith("skipped")
    failed = {k for k, v in rows.items() if v.startswith("FAIL")}
    assert failed and all(k.startswith("psi1_nrr64.") for k in failed), failed
    assert rows["psi1.out.image"] == "ok" and rows["ws.psi0p7_cutoff14"] == "ok"
