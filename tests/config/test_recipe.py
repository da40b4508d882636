import pytest

from sparseft.config.recipe import Recipe, apply_overrides, load_recipe

RAW = {"model": "minilm", "data": {"task": "ner", "train": "t.conll"}, "output_dir": "runs/x",
       "stages": [{"name": "finetune", "method": "train", "lr": 1e-4}, {"method": "eval"}]}


def test_overrides_by_stage_name_index_and_nested():
    out = apply_overrides(RAW, ["stages.finetune.lr=3e-4", "stages.1.cost=false", "data.train_limit=100",
                                "seed=7"])
    assert out["stages"][0]["lr"] == 3e-4
    assert out["stages"][1]["cost"] is False
    assert out["data"]["train_limit"] == 100 and out["seed"] == 7
    assert RAW["stages"][0]["lr"] == 1e-4  # the input is not modified


@pytest.mark.parametrize("override,match", [
    ("stages.nosuch.lr=1", "no stage 'nosuch'"),
    ("justakey", "key=value"),
    ("stages.0=1", "whole stage"),
])
def test_bad_overrides_are_explained(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(RAW, [override])


def test_recipe_validation(tmp_path):
    r = Recipe.from_dict(RAW)
    assert [s.name for s in r.stages] == ["finetune", "eval"]
    assert r.stages[0].params == {"lr": 1e-4}
    with pytest.raises(ValueError, match="unknown recipe key"):
        Recipe.from_dict({**RAW, "modle": "x"})
    with pytest.raises(ValueError, match="two stages are named"):
        Recipe.from_dict({**RAW, "stages": [{"method": "eval"}, {"method": "eval"}]})
    with pytest.raises(ValueError, match="needs `model:`"):
        Recipe.from_dict({**RAW, "model": ""})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "missing.yaml")
