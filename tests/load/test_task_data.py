import pytest

from sparseft.load.data import DataConfig, build_eval_data, build_task_data, load_split_records, split_records
from sparseft.load.readers import DataError


def test_ner_task_data_from_files(toy_ner_files, tiny_tokenizer):
    train, dev = toy_ner_files
    data = build_task_data(DataConfig(task="ner", train=str(train), eval=str(dev)), tiny_tokenizer)
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert len(data.train) == 24 and len(data.eval) == 4 and len(data.eval_records) == 4


def test_held_out_split_is_seeded_and_disjoint(toy_cls_file):
    cfg = DataConfig(task="cls", train=str(toy_cls_file), eval_fraction=0.25, split_seed=3)
    a_train, a_eval = load_split_records(cfg)
    b_train, b_eval = load_split_records(cfg)
    assert a_eval == b_eval and len(a_eval) == 10 and len(a_train) == 30
    assert not {r["where"] for r in a_train} & {r["where"] for r in a_eval}
    _, c_eval = load_split_records(cfg.replace(split_seed=4))
    assert c_eval != a_eval


def test_limits_take_the_first_records(toy_ner_files):
    train, dev = toy_ner_files
    tr, ev = load_split_records(DataConfig(train=str(train), eval=str(dev), train_limit=5, eval_limit=2))
    assert [r["where"] for r in tr] == [f"{train}:{line}" for line in (1, 7, 14, 21, 28)]
    assert len(ev) == 2


def test_split_records_needs_enough_data():
    with pytest.raises(DataError, match="too few"):
        split_records([1], 0.5, 0)


def test_eval_file_with_an_unseen_label_is_refused(toy_ner_files, tiny_tokenizer, tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("john\tB-PER\nsmith\tB-ANIMAL\n")
    with pytest.raises(DataError, match=r"bad.conll:2: unknown label 'B-ANIMAL'"):  # the offending line
        build_eval_data(DataConfig(), tiny_tokenizer, ["O", "B-PER", "I-PER"], str(bad))


def test_lm_data_blocks(tmp_path, tiny_tokenizer):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["john visited paris ."] * 200))
    data = build_task_data(DataConfig(task="lm", train=str(text), block_size=32), tiny_tokenizer)
    assert data.task == "lm" and len(data.train) > len(data.eval) >= 1
    assert all(len(f["input_ids"]) == 32 for f in data.train)


def test_seeded_subset_samples_across_a_label_sorted_file(tmp_path):
    path = tmp_path / "sorted.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{'a' if i < 50 else 'b'}\n" for i in range(100)))
    first, _ = load_split_records(DataConfig(task="cls", train=str(path), eval_fraction=0.1, train_limit=20))
    assert {r["label"] for r in first} == {"a"}
    cfg = DataConfig(task="cls", train=str(path), eval_fraction=0.1, train_limit=20, subset_seed=0)
    sampled, _ = load_split_records(cfg)
    assert {r["label"] for r in sampled} == {"a", "b"} and len(sampled) == 20
    assert sampled == load_split_records(cfg)[0]  # fixed for a given seed
    lines = [int(r["where"].rsplit(":", 1)[1]) for r in sampled]
    assert lines == sorted(lines)  # file order kept
