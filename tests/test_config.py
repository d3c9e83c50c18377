"""Typed configs: unknown keys and wrong types fail naming the key."""

import pytest

from seqlab.config import load_toml, run_config_from_dict, run_config_to_dict
from seqlab.errors import SeqlabError


def test_defaults_round_trip():
    cfg = run_config_from_dict({"data": {"path": "x.txt"}, "model": {"type": "lstm"}})
    assert cfg.data == "x.txt" and cfg.model.type == "lstm"
    again = run_config_from_dict(run_config_to_dict(cfg))
    assert again == cfg


@pytest.mark.parametrize("d,msg", [
    ({"model": {"n_layers": 2}}, "unknown config key 'model.n_layers'"),
    ({"trian": {}}, "unknown config key 'trian'"),
    ({"train": {"steps": "10"}}, "config key 'train.steps': expected an integer"),
    ({"train": {"lr": True}}, "config key 'train.lr': expected a number"),
    ({"model": {"norm": "batchnorm"}}, "config key 'model.norm': expected one of"),
    ({"model": {"n_head": 3}}, "model.n_embd': 64 is not divisible by n_head=3"),
    ({"model": {"n_kv_head": 3}}, "model.n_kv_head'"),
    ({"data": {"tokenizer": "word"}}, "config key 'data.tokenizer'"),
])
def test_bad_config_names_the_key(d, msg):
    with pytest.raises(SeqlabError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        run_config_from_dict(d)


def test_toml_errors_name_the_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[model\n")
    with pytest.raises(SeqlabError, match="c.toml: invalid TOML"):
        load_toml(p)
    with pytest.raises(SeqlabError, match="config file not found"):
        load_toml(tmp_path / "missing.toml")
