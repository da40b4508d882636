import pytest
import torch.nn as nn

from sparseft.config.targets import TargetSpec, select_modules, select_parameters


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(4, 4)
        self.value = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([_Block(), _Block()])
        self.classifier = nn.Linear(4, 3)
        self.tied = nn.Linear(4, 10, bias=False)
        self.tied.weight = self.emb.weight


def names(pairs):
    return [n for n, _ in pairs]


def test_class_name_regex_and_suffix_targets():
    net = _Net()
    assert names(select_modules(net, TargetSpec(["Linear"], ignore=["classifier", "tied"]))) == [
        "layers.0.query", "layers.0.value", "layers.1.query", "layers.1.value"]
    assert names(select_modules(net, TargetSpec(["re:layers\\.1\\..*"]))) == [
        "layers.1.query", "layers.1.value", "layers.1.norm"]
    assert names(select_modules(net, TargetSpec(["query"]))) == ["layers.0.query", "layers.1.query"]
    assert names(select_modules(net, TargetSpec(["Linear"], ignore=["re:^layers\\.0"]))) == [
        "layers.1.query", "layers.1.value", "classifier", "tied"]


def test_filter_fn_and_tied_parameters_once():
    net = _Net()
    sel = select_modules(net, TargetSpec(["Linear"]), filter_fn=lambda m, fqn: m.out_features == 3)
    assert names(sel) == ["classifier"]
    params = select_parameters(net, TargetSpec(["Embedding", "tied"]))
    assert names(params) == ["emb.weight"]  # tied.weight is the same tensor


def test_nothing_selected_is_an_error_and_bad_regex_rejected():
    with pytest.raises(ValueError, match="select no module"):
        select_modules(_Net(), TargetSpec(["Conv2d"]))
    with pytest.raises(ValueError, match="invalid regex"):
        TargetSpec(["re:("])
    with pytest.raises(ValueError, match="at least one"):
        TargetSpec([])
