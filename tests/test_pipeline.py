"""The product: the committed DVC pipeline end to end in a temporary clone (the CI smoke run).

`dvc repro` on the embedded default (every stage must read exactly the params keys dvc.yaml lists for
it), then, by `dvc status` on the finished clone: loss.lambda7 marks train_stage2 only (→ evaluate),
loss.lambda5 train_stage1 and train_stage2 (L_BG in both; → evaluate), a whitespace edit of goae/eg3d/renderer.py every
stage that imports it. Then `dvc exp run -S loss.lambda5=3.0`: only train_stage1 onward re-runs, MLflow
holds two pipeline runs with loss.lambda5 5.0 / 3.0 and different metrics (checked through MlflowClient),
`dvc exp show --md` lists the experiment, `dvc status` is clean.
"""
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("smoke_pipeline", ROOT / "tools" / "smoke_pipeline.py")
smoke_pipeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(smoke_pipeline)


def _committed() -> bool:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True)
    return r.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_smoke_pipeline_and_experiment(tmp_path):
    if not _committed():
        pytest.skip("the smoke pipeline clones the committed repository; no commit yet")
    s = smoke_pipeline.smoke(tmp_path, quick=True)  # committed params, tiny -S overrides (CI time)
    print(s)
    failed = [k for k, v in s["checks"].items() if not v]
    assert not failed, f"smoke checks failed: {failed}\n{s}"
