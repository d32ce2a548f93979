"""The DVC graph is exact: code deps are the stages' import closures, params are the keys the code reads.

The run-time half (every stage reads exactly its dvc.yaml keys; λ7 marks stage 2 only, λ5 stage 1 onward,
a renderer edit every importer) runs in the smoke pipeline (tests/test_pipeline.py). Here: the static
checks, and mutations showing each check fails when the graph is wrong.
"""
import copy
import json
import sys
from pathlib import Path

import pytest
import yaml

from goae.config import Params, params_from_dict
from goae.params_view import ParamsView, UndeclaredParam, stage_values, whole_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import dvc_graph  # noqa: E402

SPEC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_code_deps_are_the_import_closures():
    assert dvc_graph.check(SPEC) == {}, "dvc.yaml code deps are stale: run `python tools/dvc_graph.py --write`"


def test_code_deps_check_fails_on_a_missing_or_unused_module():
    bad = copy.deepcopy(SPEC)
    st1 = bad["stages"]["train_stage1"]
    assert "goae/eg3d/renderer.py" in st1["deps"]
    st1["deps"].remove("goae/eg3d/renderer.py")                 # imported, not declared
    bad["stages"]["prepare"]["deps"].append("goae/eg3d/renderer.py")   # declared, not imported
    problems = dvc_graph.check(bad)
    assert problems["train_stage1"]["missing"] == ["goae/eg3d/renderer.py"]
    assert problems["prepare"]["extra"] == ["goae/eg3d/renderer.py"]


def test_closure_follows_lazy_imports_and_package_inits():
    c = dvc_graph.closure("stages/train_stage1.py")
    # ArcFace and BiSeNet are imported inside functions; the renderer through the generator
    assert {"goae/nets/arcface.py", "goae/masks.py", "goae/eg3d/renderer.py", "goae/eg3d/__init__.py",
            "goae/metrics/image.py", "goae/data/dataset.py"} <= c
    assert "goae/metrics/protocols.py" not in c and "goae/cli.py" not in c


def test_every_stage_declares_params_per_key():
    p = Params()
    for name, st in SPEC["stages"].items():
        keys = st.get("params") or []
        assert keys, name
        for k in keys:
            assert isinstance(k, str) and "." in k, f"{name}: declare keys, not whole sections ({k!r})"
        ParamsView(p, keys)  # every key exists in the config


@pytest.mark.parametrize("params_file", ["params.yaml", "configs/paper-ffhq512.yaml"])
def test_every_declared_key_is_written_in_the_params_files(params_file):
    """DVC refuses to run a stage whose declared key is missing from params.yaml (even a null one)."""
    from goae.config import flatten
    flat = flatten(yaml.safe_load((ROOT / params_file).read_text()))
    missing = sorted({k for st in SPEC["stages"].values() for k in st["params"]} - set(flat))
    assert not missing, f"{params_file} lacks {missing}"


def _audit(tmp_path, reads: dict) -> Path:
    for name, keys in reads.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"declared": [], "read": sorted(keys)}))
    return tmp_path


def test_params_check_fails_on_unread_or_undeclared_keys(tmp_path):
    declared = {n: set(st["params"]) for n, st in SPEC["stages"].items()}
    assert dvc_graph.params_problems(SPEC, _audit(tmp_path, declared)) == {}
    reads = copy.deepcopy(declared)
    reads["train_stage1"].add("loss.lambda7")        # stage 1 reading a stage-2 weight
    reads["evaluate"].discard("eval.seed")           # declared but never read
    problems = dvc_graph.params_problems(SPEC, _audit(tmp_path, reads))
    assert problems == {"train_stage1": {"unread": [], "undeclared": ["loss.lambda7"]},
                        "evaluate": {"unread": ["eval.seed"], "undeclared": []}}


def test_view_records_reads_and_refuses_undeclared_keys():
    v = ParamsView(Params(), ["loss.lambda5", "data.seed", "data.n_train"], stage="s")
    assert v.loss.lambda5 == 5.0
    with pytest.raises(UndeclaredParam, match="loss.lambda7"):
        v.loss.lambda7
    with pytest.raises(UndeclaredParam):  # getattr with a default must not swallow it
        getattr(v.loss, "lambda4", 0.0)
    assert v.reads == {"loss.lambda5"} and v.unread() == ["data.n_train", "data.seed"]
    with pytest.raises(UndeclaredParam, match="data.source"):
        whole_section(v, "data")             # the whole section: every key of it must be declared
    full = ParamsView(Params(), ["data"])
    assert whole_section(full, "data").n_train == Params().data.n_train and full.unread() == []
    with pytest.raises(AttributeError):
        v.loss.lambda5 = 1.0


def test_stage_fingerprint_hashes_only_the_stage_keys():
    from goae.train.stages import stage_hash

    def h(stage, **over):
        p = params_from_dict(over)
        return stage_hash(ParamsView(p, SPEC["stages"][stage]["params"]), inputs="x")
    assert h("train_stage1") == h("train_stage1", loss={"lambda7": 0.001})     # a stage-2 weight
    assert h("train_stage1") == h("train_stage1", train={"log_every": 1})       # logging only
    assert h("train_stage1") != h("train_stage1", loss={"lambda5": 3.0})
    assert h("train_stage2") != h("train_stage2", loss={"lambda7": 0.001})
    assert h("train_stage2") != h("train_stage2", loss={"lambda5": 3.0})       # L_BG trains the AFA too (§4.2)
    assert h("train_stage2") == h("train_stage2", loss={"lambda6": 3.0})       # L_w+: stage 1 only
    assert stage_values(Params())["loss.lambda7"] == 0.0001  # a plain Params: every key


def test_stage_scripts_take_paths_from_the_command_line_only():
    for name, st in SPEC["stages"].items():
        script = ROOT / dvc_graph.stage_script(st["cmd"])
        text = script.read_text()
        assert "def main(" in text and 'if __name__ == "__main__":' in text, name
        for d in st.get("deps") or []:
            if not dvc_graph.is_code_dep(d):
                assert f'"{d}' not in text, f"{name}: path {d} written in the script"


@pytest.mark.parametrize("stage,dropped", [("train_stage1", "loss.lambda5"), ("train_stage2", "loss.lambda7")])
def test_a_stage_reading_an_undeclared_key_fails(tmp_path, monkeypatch, stage, dropped):
    """The real training code, restricted to its dvc.yaml keys minus one it reads, stops at that read
    (what happens in `dvc repro` when code starts reading a key dvc.yaml does not list)."""
    import torch

    import _tiny
    from goae.train import stages

    _tiny.build_world(tmp_path)
    monkeypatch.chdir(tmp_path)
    p = params_from_dict(_tiny.tiny_params(stage1={"iters": 1, "batch_size": 1},
                                           stage2={"iters": 1, "batch_size": 1}))
    keys = [k for k in SPEC["stages"][stage]["params"] if k != dropped]
    cpu, args = torch.device("cpu"), dict(generator="models/generator", log=lambda *a: None)
    if stage == "train_stage2":  # needs stage-1 weights
        stages.train_stage1(ParamsView(p, SPEC["stages"]["train_stage1"]["params"]), "data/prepared/train",
                            "models/davg", tmp_path / "s1", tmp_path / "st1", tmp_path / "c1.csv", cpu, **args)
        with pytest.raises(UndeclaredParam, match=dropped):
            stages.train_stage2(ParamsView(p, keys, stage), "data/prepared/train", tmp_path / "s1",
                                tmp_path / "s2", tmp_path / "st2", tmp_path / "c2.csv", cpu, davg_dir="models/davg",
                                **args)
    else:
        with pytest.raises(UndeclaredParam, match=dropped):
            stages.train_stage1(ParamsView(p, keys, stage), "data/prepared/train", "models/davg",
                                tmp_path / "s1", tmp_path / "st1", tmp_path / "c1.csv", cpu, **args)
