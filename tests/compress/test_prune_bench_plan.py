"""The pruning benchmark's run plan: every run is a valid recipe whose stage configs validate
(catches broken overrides without running anything heavy)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench_scripts import load_bench

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    return load_bench("bench_prune")


def _args(**fields) -> argparse.Namespace:
    """The benchmark's parsed defaults, with `fields` set."""
    args = _bench().build_parser().parse_args([])
    for k, v in fields.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("quick", [False, True])
def test_every_planned_run_is_a_valid_recipe(quick):
    from sparseft.config.recipe import load_recipe
    from sparseft.methods import build_stage_config

    bench = _bench()
    args = _args(quick=quick, full_train=False, sparsities=[0.5, 0.7, 0.9], lm_model="smollm2",
                              lm_data="", runs=None, lm_calib_samples=32, teacher="", recovery_epochs=None,
                              gradual_pruners=["magnitude", "movement"], movement_start="pretrained",
                              pretrained="minilm", fine_prune_epochs=3, movement_regrow=False, movement_prune_start=0.0,
                              lm_sequential=False, record_suffix="")
    counts = {}
    for part in bench.PARTS:
        runs = bench.plan(part, args)
        counts[part] = len(runs)
        for run in runs:
            recipe = load_recipe(ROOT / run["recipe"], run["overrides"])
            for stage in recipe.stages:
                build_stage_config(stage, recipe)
            assert recipe.output_dir.endswith(run["name"])
    assert counts == {"teacher": 1, "oneshot": 6, "gradual": 12, "nm": 2, "structured": 4, "lm": 7}


def test_protocol_variants_get_their_own_experiment_names():
    bench = _bench()
    base = dict(quick=False, sparsities=[0.9], lm_model="smollm2", lm_data="", runs=None, teacher="",
                recovery_epochs=None, gradual_pruners=["magnitude"], movement_start="pretrained",
                pretrained="minilm", fine_prune_epochs=3, movement_regrow=False, movement_prune_start=0.0,
                              lm_sequential=False, record_suffix="")
    fixed = _args(full_train=False, lm_calib_samples=32, **base)
    assert bench.experiment("gradual", fixed) == "prune_gradual" and bench.experiment("lm", fixed) == "prune_lm"
    full = _args(full_train=True, lm_calib_samples=32, **base)
    assert bench.experiment("teacher", full) == "prune_teacher_fulltrain"
    movement = _args(full_train=True, lm_calib_samples=128, **{**base, "gradual_pruners": ["movement"]})
    assert bench.experiment("gradual", movement) == "prune_gradual_movement_fulltrain"
    assert bench.experiment("gradual", full) == "prune_gradual_fulltrain"
    assert all("data.train_limit=null" in r["overrides"] for r in bench.plan("gradual", full))
    calib = _args(full_train=False, lm_calib_samples=128, **base)
    assert bench.experiment("lm", calib) == "prune_lm_calib128"
    runs = bench.plan("lm", calib)
    assert all(r["name"].endswith("_calib128") and "stages.prune.calib_samples=128" in r["overrides"]
               for r in runs)
    assert "first 128 windows" in bench.data_note(calib)


def test_longer_recovery_sequential_and_suffix_get_their_own_names_and_folders():
    bench = _bench()
    base = dict(quick=False, sparsities=[0.5], lm_model="smollm2", lm_data="", runs=None, teacher="",
                gradual_pruners=["magnitude"], movement_start="pretrained", pretrained="minilm",
                fine_prune_epochs=3, movement_regrow=False, movement_prune_start=0.0, full_train=True, lm_calib_samples=128)
    rec4 = _args(recovery_epochs=4, lm_sequential=False, record_suffix="", **base)
    assert bench.experiment("structured", rec4) == "prune_structured_fulltrain_rec4"
    assert bench.experiment("gradual", rec4) == "prune_gradual_fulltrain_rec4"
    rec2 = _args(recovery_epochs=2, lm_sequential=False, record_suffix="", **base)
    assert bench.experiment("structured", rec2) == "prune_structured_fulltrain"   # the 2-epoch records' name
    seq = _args(recovery_epochs=None, lm_sequential=True, record_suffix="_selection", **base)
    assert bench.experiment("lm", seq) == "prune_lm_calib128_seq_selection"
    runs = {r["name"]: r for r in bench.plan("lm", seq)}
    gpt = runs["smollm2_sparsegpt_2of4_calib128_seq_selection"]
    assert '"sequential": true' in " ".join(gpt["overrides"])
    assert "output_dir=benchmarks/runs/prune_full/smollm2_sparsegpt_2of4_calib128_seq_selection" in gpt["overrides"] \
        or any(o.endswith("/smollm2_sparsegpt_2of4_calib128_seq_selection") for o in gpt["overrides"])
    assert "smollm2_dense_calib128_selection" in runs and "smollm2_magnitude_2of4_calib128_selection" in runs


def test_teacher_and_recovery_epochs_reach_every_conll_run():
    """--teacher replaces the teacher part's model as the start and the distillation teacher of every
    CoNLL run; --recovery-epochs sets the epochs of every recovery stage (not the teacher's)."""
    from sparseft.config.recipe import load_recipe

    bench = _bench()
    args = _args(quick=False, full_train=True, sparsities=[0.9], lm_model="smollm2", lm_data="",
                              runs=None, lm_calib_samples=128, teacher="/x/teacher", recovery_epochs=3,
                              gradual_pruners=["movement"], movement_start="teacher", pretrained="minilm",
                              fine_prune_epochs=3, movement_regrow=False, movement_prune_start=0.0, lm_sequential=False, record_suffix="")
    assert bench.needs("structured", args)[-1] == "/x/teacher/config.json"
    for part in ("oneshot", "gradual", "nm", "structured"):
        for run in bench.plan(part, args):
            recipe = load_recipe(ROOT / run["recipe"], run["overrides"])
            assert recipe.model == "/x/teacher"
            trained = [st.params for st in recipe.stages if "epochs" in st.params]
            assert trained and all(st["epochs"] == 3 for st in trained), run["name"]
            assert all(st["eval_every"] == "never" for st in trained), "no checkpoint may be chosen on dev"
            assert all(st.params.get("teacher", "/x/teacher") == "/x/teacher" for st in recipe.stages)
    gradual = bench.plan("gradual", args)
    assert [r["name"] for r in gradual] == ["conll_movement_90_gradual_nokd", "conll_movement_90_gradual_kd"]
    assert all("stages.gradual.pruner=movement" in r["overrides"] for r in gradual)
    assert "teacher = /x/teacher" in bench.data_note(args) and "3 epochs" in bench.data_note(args)
    teacher_run = bench.plan("teacher", args)[0]
    assert not any("epochs" in o for o in teacher_run["overrides"])


def test_movement_fine_prunes_from_the_pretrained_model_with_the_teacher_distilling():
    from sparseft.config.recipe import load_recipe
    from sparseft.train.defaults import DEFAULT_LR

    bench = _bench()
    args = _args(quick=False, full_train=True, sparsities=[0.9], lm_model="smollm2", lm_data="",
                              runs=None, lm_calib_samples=128, teacher="/x/teacher", recovery_epochs=2,
                              gradual_pruners=["magnitude", "movement"], movement_start="pretrained",
                              pretrained="minilm", fine_prune_epochs=3, movement_regrow=False, movement_prune_start=0.0,
                              lm_sequential=False, record_suffix="")
    runs = {r["name"]: r for r in bench.plan("gradual", args)}
    movement = runs["conll_movement_90_gradual_kd_from_pretrained"]
    recipe = load_recipe(ROOT / movement["recipe"], movement["overrides"])
    gradual = next(st.params for st in recipe.stages if st.name == "gradual")
    assert recipe.model == "minilm" and gradual["teacher"] == "/x/teacher"
    assert gradual["epochs"] == 3 and gradual["lr"] == DEFAULT_LR["train"] and movement["row"]["start"] == "pretrained"
    magnitude = load_recipe(ROOT / runs["conll_magnitude_90_gradual_kd"]["recipe"],
                            runs["conll_magnitude_90_gradual_kd"]["overrides"])
    assert magnitude.model == "/x/teacher"
    assert next(st.params for st in magnitude.stages if st.name == "gradual")["epochs"] == 2


def test_movement_regrow_and_warm_up_get_their_own_run_names_and_overrides():
    from sparseft.config.recipe import load_recipe
    from sparseft.methods import build_stage_config

    bench = _bench()
    args = _args(quick=False, full_train=True, sparsities=[0.9], lm_model="smollm2", lm_data="",
                              runs=None, lm_calib_samples=128, teacher="/x/teacher", recovery_epochs=None,
                              gradual_pruners=["magnitude", "movement"], movement_start="pretrained",
                              pretrained="minilm", fine_prune_epochs=3, movement_regrow=True,
                              movement_prune_start=0.33, lm_sequential=False, record_suffix="")
    runs = {r["name"]: r for r in bench.plan("gradual", args)}
    assert "conll_magnitude_90_gradual_kd" in runs           # magnitude rows are untouched
    assert not any("regrow" in o for o in runs["conll_magnitude_90_gradual_kd"]["overrides"])
    movement = runs["conll_movement_90_gradual_kd_from_pretrained_regrow_warm33"]
    assert movement["row"]["regrow"] is True and movement["row"]["prune_start"] == 0.33
    recipe = load_recipe(ROOT / movement["recipe"], movement["overrides"])
    stage = next(st for st in recipe.stages if st.name == "gradual")
    _, cfg = build_stage_config(stage, recipe)
    assert cfg.regrow is True and cfg.prune_start == pytest.approx(0.33)


def test_selection_file_is_the_first_90_percent_of_the_lines(tmp_path):
    bench = _bench()
    src = tmp_path / "wiki.valid.tokens"
    src.write_text("".join(f"line {i}\n" for i in range(25)), encoding="utf-8")
    folder = tmp_path / "runs" / "lm_selection"
    bench.ROOT = tmp_path           # paths come back relative to the repository root
    rel = bench.selection_file(src, folder)
    assert rel == "runs/lm_selection/wiki.valid.head90.tokens"
    lines = (tmp_path / rel).read_text(encoding="utf-8").splitlines()
    assert lines == [f"line {i}" for i in range(22)]      # int(0.9 * 25) = 22: the last 3 lines stay unseen
    assert bench.selection_file(src, folder) == rel       # idempotent


def test_adam_movement_scores_and_sparsegpt_damp_get_their_own_names_and_overrides():
    from sparseft.config.recipe import load_recipe
    from sparseft.methods import build_stage_config

    bench = _bench()
    args = _args(full_train=True, sparsities=[0.9], teacher="/x/teacher", gradual_pruners=["movement"],
                 movement_score="adam", movement_regrow=True)
    assert bench.experiment("gradual", args) == "prune_gradual_movement_fulltrain_regrow_adam"
    kd = next(r for r in bench.plan("gradual", args) if r["name"].endswith("_kd_from_pretrained_regrow_adam"))
    assert kd["row"]["score"] == "adam"
    recipe = load_recipe(ROOT / kd["recipe"], kd["overrides"])
    _, cfg = build_stage_config(next(st for st in recipe.stages if st.name == "gradual"), recipe)
    assert cfg.build_pruner().score == "adam" and cfg.build_pruner().allocation == "global" and cfg.regrow
    assert bench.experiment("gradual", _args(gradual_pruners=["magnitude"], movement_score="adam")) == "prune_gradual"

    lm = _args(lm_damp=0.003)
    assert bench.experiment("lm", lm) == "prune_lm_calib128_damp0.003"
    runs = {r["name"]: r for r in bench.plan("lm", lm)}
    gpt = runs["smollm2_sparsegpt_unstructured_calib128_damp0.003"]
    assert gpt["row"]["damp"] == 0.003 and '"damp": 0.003' in " ".join(gpt["overrides"])
    assert "smollm2_wanda_unstructured_calib128" in runs          # damp is SparseGPT's only
    assert not any("damp" in o for o in runs["smollm2_wanda_unstructured_calib128"]["overrides"])


def test_recovery_lr_reaches_the_teacher_started_runs_with_its_own_names():
    """--recovery-lr sets the lr of every recovery stage that starts from the teacher (not the teacher's
    own training, not movement fine-pruning from the pretrained model) and gets its own folders and record."""
    from sparseft.config.recipe import load_recipe
    from sparseft.train.defaults import DEFAULT_LR

    bench = _bench()
    args = _args(full_train=True, sparsities=[0.9], teacher="/x/teacher", recovery_epochs=4, recovery_lr=3e-4)
    assert bench.experiment("gradual", args) == "prune_gradual_fulltrain_rec4_lr0.0003"
    assert bench.experiment("teacher", args) == "prune_teacher_fulltrain"
    for part in ("oneshot", "gradual", "structured"):
        for run in bench.plan(part, args):
            recipe = load_recipe(ROOT / run["recipe"], run["overrides"])
            trained = [st.params for st in recipe.stages if "epochs" in st.params]
            if run["row"].get("start") == "pretrained":   # movement fine-pruning: its own lr, no lr suffix
                assert all(st["lr"] == DEFAULT_LR["train"] for st in trained)
                assert recipe.output_dir.endswith(run["name"] + "_rec4"), recipe.output_dir
            else:
                assert trained and all(st["lr"] == 3e-4 for st in trained), run["name"]
                assert recipe.output_dir.endswith(run["name"] + "_rec4_lr0.0003")
    teacher = load_recipe(ROOT / bench.plan("teacher", args)[0]["recipe"], bench.plan("teacher", args)[0]["overrides"])
    assert teacher.output_dir.endswith("/conll_teacher") and "lr=0.0003" not in " ".join(bench.plan("teacher", args)[0]["overrides"])
    default = _args(full_train=True, sparsities=[0.9], teacher="/x/teacher", recovery_epochs=4)
    assert bench.experiment("gradual", default) == "prune_gradual_fulltrain_rec4"
    assert all(r["name"] and not any(".lr=" in o for o in r["overrides"]) for r in bench.plan("gradual", default)
               if r["row"]["start"] == "teacher")
    movement_only = _args(full_train=True, sparsities=[0.9], teacher="/x/teacher", recovery_lr=3e-4,
                          gradual_pruners=["movement"])
    assert bench.experiment("gradual", movement_only) == "prune_gradual_movement_fulltrain"


def test_recovery_epochs_give_every_recovery_run_its_own_folder():
    """A 4-epoch and an 8-epoch recovery at the same lr never share a folder (the 8-epoch run once
    met the 4-epoch run's checkpoint and stopped on the resume identity check); the 2-epoch protocol
    keeps its folder names, the teacher's run is never suffixed."""
    bench = _bench()

    def folders(**fields):
        args = _args(full_train=True, sparsities=[0.9], teacher="/x/teacher", **fields)
        return {part: [next(o for o in r["overrides"] if o.startswith("output_dir=")) for r in bench.plan(part, args)]
                for part in ("teacher", "oneshot", "gradual", "structured")}

    rec4, rec8, rec2 = (folders(recovery_epochs=n, recovery_lr=1e-3) for n in (4, 8, 2))
    for part in ("oneshot", "gradual", "structured"):
        assert rec4[part]
        for a, b, c in zip(rec4[part], rec8[part], rec2[part]):
            lr = "" if "_from_pretrained" in a else "_lr0.001"   # fine-pruning keeps its own lr
            assert a.endswith("_rec4" + lr) and b.endswith("_rec8" + lr), (a, b)
            assert "_rec" not in c and c.endswith(lr or "_from_pretrained"), c
    assert rec4["teacher"] == rec8["teacher"] == rec2["teacher"] and rec4["teacher"][0].endswith("/conll_teacher")
    assert bench.experiment("gradual", _args(full_train=True, recovery_epochs=8, recovery_lr=1e-3)) \
        == "prune_gradual_fulltrain_rec8_lr0.001"
