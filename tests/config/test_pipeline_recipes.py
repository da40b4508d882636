"""The shipped one-command pipelines (fine-tune -> prune -> quantize -> export, one report) and the
demo's packaged recipes parse, build every stage config and say how to launch them. No heavy run."""

from importlib import resources
from pathlib import Path

import pytest

from sparseft.config.recipe import load_recipe
from sparseft.methods import build_stage_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PIPELINES = {
    "minilm_conll2003_pipeline.yaml": ("sft", "prune_finetune", "quantize", "export"),
    "smollm2_dolly_chat_pipeline.yaml": ("chat_sft", "prune", "quantize", "export"),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_recipe_builds_its_stages_in_order(name):
    path = RECIPES / name
    assert path.read_text().splitlines()[0] == f"# sparseft run recipes/{name}"
    recipe = load_recipe(path)
    configs = [build_stage_config(s, recipe)[1] for s in recipe.stages]   # validates every field
    methods = [s.method for s in recipe.stages]
    steps = PIPELINES[name]
    assert [m for m in methods if m in steps] == list(steps)               # fine-tune, prune, quantize, export
    assert methods[-1] == "export" and len(configs) == len(methods)
    evals = {"eval", "chat_eval"}
    for step in steps[:-1]:                                                 # every step is scored after it
        assert methods[methods.index(step) + 1] in evals, step
    assert recipe.data.train.startswith("../shared/data/") and recipe.data.eval.startswith("../shared/data/")


def test_data_paths_name_files_of_the_shared_data():
    expected = {"minilm_conll2003_pipeline.yaml": ("conll2003/eng.train", "conll2003/eng.testa"),
                "smollm2_dolly_chat_pipeline.yaml": ("dolly_open_qa/train.jsonl", "dolly_open_qa/validation.jsonl")}
    for name, (train, dev) in expected.items():
        recipe = load_recipe(RECIPES / name)
        assert recipe.data.train.endswith(train) and recipe.data.eval.endswith(dev)


@pytest.mark.parametrize("name", ["demo_full.yaml", "demo_sparse.yaml", "demo_lora.yaml", "demo_compress.yaml"])
def test_demo_recipes_build(name):
    with resources.as_file(resources.files("sparseft") / "recipes" / name) as path:
        assert Path(path).read_text().startswith("# sparseft demo ")
        recipe = load_recipe(path, ["data.train=t.conll", "data.eval=d.conll"])
    for s in recipe.stages:
        build_stage_config(s, recipe)
