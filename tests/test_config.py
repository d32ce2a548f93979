"""Strict params: the committed files validate; bad values fail naming the key, before any work."""
import copy
from pathlib import Path

import pytest
import yaml

from goae.config import ConfigError, load_params, params_from_dict, flatten, to_dict

ROOT = Path(__file__).resolve().parents[1]


def _base():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.data.source == "embedded"
    paper = load_params(ROOT / "configs" / "paper-ffhq512.yaml")
    # The loss weights have the same names and the paper's values in both files (§4.5).
    for cfg in (p, paper):
        assert (cfg.loss.lambda1, cfg.loss.lambda2, cfg.loss.lambda3) == (1.0, 0.8, 0.25)
        assert (cfg.loss.lambda4, cfg.loss.lambda5, cfg.loss.lambda6, cfg.loss.lambda7) == (0.05, 5.0, 0.001, 0.0001)
        assert cfg.loss.r1_gamma == 10.0
    assert paper.davg.n_samples == 100_000 and paper.encoder.size == "paper"
    assert paper.encoder.schedule == [10000, 20000, 30000]


@pytest.mark.parametrize("section,key,value,needle", [
    ("loss", "lambda5", "abc", "loss.lambda5"),
    ("loss", "lambda5", -1.0, "loss.lambda5"),
    ("loss", "lambda55", 1.0, "loss.lambda55"),
    ("davg", "n_samples", 0, "davg.n_samples"),
    ("davg", "n_samples", 1.5, "davg.n_samples"),
    ("mix", "planes", "yz", "mix.planes"),
    ("runtime", "bf16", "yes", "runtime.bf16"),
    ("eval", "methods", ["goae", "nope"], "eval.methods"),
])
def test_bad_values_name_the_key(section, key, value, needle):
    d = _base()
    d[section][key] = value
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        params_from_dict(d)


def test_unknown_section_and_int_for_float():
    d = _base()
    d["lossy"] = {}
    with pytest.raises(ConfigError, match="lossy"):
        params_from_dict(d)
    d = _base()
    d["loss"]["lambda5"] = 3          # `dvc exp run -S loss.lambda5=3` writes an int
    assert params_from_dict(d).loss.lambda5 == 3.0


def test_flatten_roundtrip_keys():
    flat = flatten(to_dict(load_params(ROOT / "params.yaml")))
    assert flat["loss.lambda5"] == 5.0 and "stage1.iters" in flat
