from dataclasses import dataclass, field

import pytest

from sparseft.config.base import BaseConfig, coerce_field, config_from_dict, load_config, save_config
from sparseft.load.data import DataConfig
from sparseft.train.config import TrainConfig


def test_train_config_json_round_trip(tmp_path):
    cfg = TrainConfig(lr=3e-4, epochs=2, eval_every=50, output_dir=str(tmp_path))
    path = save_config(cfg, tmp_path)
    assert path.name == "train_config.json"
    again = load_config(path)
    assert again == cfg and isinstance(again, TrainConfig)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_data_config_round_trip_and_flat_dict():
    cfg = DataConfig(task="cls", train="x.csv", text_col=["title", "body"], columns=["label", "title", "body"])
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert DataConfig.from_dict({"task": "cls", "train": "x.csv"}).train == "x.csv"


def test_unknown_fields_and_types_are_rejected():
    with pytest.raises(ValueError, match="unknown field.*'lrr'.*valid fields"):
        TrainConfig.from_dict({"lrr": 1.0})
    with pytest.raises(ValueError, match="unknown or disallowed config type 'os.system'"):
        config_from_dict({"_type": "os.system", "_data": {}})
    with pytest.raises(ValueError, match="expected a TrainConfig"):
        TrainConfig.from_dict({"_type": "DataConfig", "_data": {}})


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": 0}, "lr must be > 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
    ({"eval_every": "sometimes"}, "eval_every must be"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
])
def test_train_config_validation_names_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_data_config_validation():
    with pytest.raises(ValueError, match="unknown task 'pos'"):
        DataConfig(task="pos")
    with pytest.raises(ValueError, match="unknown data format 'xml'"):
        DataConfig(format="xml")


@dataclass
class _Typed(BaseConfig):
    n: int = 1
    f: float = 0.5
    flag: bool = False
    maybe: int | None = None
    names: list[str] = field(default_factory=list)


def test_coerce_field_parses_cli_strings():
    assert coerce_field(_Typed, "n", "7") == 7
    assert coerce_field(_Typed, "f", "1e-3") == 1e-3
    assert coerce_field(_Typed, "flag", "true") is True
    assert coerce_field(_Typed, "maybe", "none") is None
    assert coerce_field(_Typed, "maybe", "3") == 3
    assert coerce_field(_Typed, "names", "a,b") == ["a", "b"]
    with pytest.raises(ValueError, match="no field 'zzz'"):
        coerce_field(_Typed, "zzz", "1")
    with pytest.raises(ValueError, match="boolean"):
        coerce_field(_Typed, "flag", "maybe")


def test_parse_scalar_reads_exponent_floats():
    from sparseft.config.base import parse_scalar

    assert parse_scalar("3e-4") == 3e-4
    assert parse_scalar("1E5") == 1e5
    assert parse_scalar("true") is True
    assert parse_scalar("[a, b]") == ["a", "b"]
    assert parse_scalar("runs/x") == "runs/x"
