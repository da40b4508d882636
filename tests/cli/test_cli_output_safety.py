"""No data loss through the CLI: a run folder of another command is refused unless --overwrite,
a folder holding the input is never replaced (not even with --overwrite), and a rerun into the
command's own folder (resume) still works. Fixtures: tests/cli/conftest.py."""

from __future__ import annotations

from sparseft.cli.main import main

TRAIN_ARGS = ["--task", "ner", "--epochs", "1", "--batch-size", "8", "--no-cost", "--mixed-precision", "no",
              "--set", "progress=false"]


def test_prune_into_an_existing_train_run_is_refused(run_dir, tiny_bert_dir, data, tmp_path, fails):
    # the run that holds the model being pruned: never, not even with --overwrite
    fails(["prune", "--model", str(run_dir / "model"), "--sparsity", "0.5", "--output-dir", str(run_dir),
           "--overwrite", "--no-cost"], "contains the input")
    # another train run: its model and report would be replaced
    other = tmp_path / "other"
    train, dev = data
    assert main(["train", "--model", str(tiny_bert_dir), "--train", str(train), "--eval", str(dev),
                 "--output-dir", str(other), *TRAIN_ARGS]) == 0
    before = (other / "model" / "model.safetensors").read_bytes()
    fails(["prune", "--model", str(run_dir / "model"), "--sparsity", "0.5", "--output-dir", str(other),
           "--no-cost"], "another sparseft command (run:train+eval+save, not run:prune+save)")
    assert (other / "model" / "model.safetensors").read_bytes() == before
    assert main(["prune", "--model", str(run_dir / "model"), "--sparsity", "0.5", "--output-dir", str(other),
                 "--no-cost", "--overwrite"]) == 0
    assert (other / "model" / "model.safetensors").read_bytes() != before
    # the same command again into its own folder is fine
    assert main(["prune", "--model", str(run_dir / "model"), "--sparsity", "0.5", "--output-dir", str(other),
                 "--no-cost"]) == 0


def test_train_rerun_into_its_own_folder_still_works(run_dir, tiny_bert_dir, data):
    train, dev = data
    assert main(["train", "--model", str(tiny_bert_dir), "--train", str(train), "--eval", str(dev),
                 "--output-dir", str(run_dir), *TRAIN_ARGS]) == 0


def test_diff_apply_refuses_an_existing_run_and_its_own_input(run_dir, diff_dir, tmp_path, fails):
    model = str(run_dir / "model")
    fails(["diff", "apply", str(diff_dir), "--model", model, "--output", str(run_dir)],
          "contains the input")
    fails(["diff", "apply", str(diff_dir), "--model", model, "--output", str(diff_dir), "--overwrite"],
          f"output folder {diff_dir} is the input")
    assert main(["diff", "apply", str(diff_dir), "--model", model, "--output", str(tmp_path / "a")]) == 0
    fails(["diff", "compose", str(diff_dir), "--output", str(tmp_path / "a")],
          "another sparseft command (diff apply, not diff compose)")


def test_quantize_and_chat_sft_refuse_a_foreign_folder_before_any_work(run_dir, tiny_llama_dir, tmp_path, fails):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    fails(["quantize", "--model", str(run_dir / "model"), "--output-dir", str(mine), "--no-cost"],
          f"output folder {mine} is not empty and was not written by sparseft")
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"prompt": "what is paris", "response": "a city"}\n' * 8)
    fails(["chat-sft", "--model", str(tiny_llama_dir), "--train", str(chat), "--output-dir", str(mine)],
          "not written by sparseft")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
