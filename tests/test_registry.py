from dataclasses import dataclass

import pytest

from sparseft.config.base import BaseConfig
from sparseft.registry import Registry


@dataclass
class _Cfg(BaseConfig):
    x: int = 1


@dataclass
class _Other(BaseConfig):
    y: int = 2


def test_register_and_lookup_by_name_and_config():
    reg = Registry()
    m = reg.register(kind="prune", name="toy", config_cls=_Cfg, apply_fn=lambda model, cfg: None)
    assert reg.get("prune", "toy") is m
    assert reg.for_config(_Cfg()) is m
    assert reg.names("prune") == ["toy"]
    assert reg.config_classes() == {"_Cfg": _Cfg}


@pytest.mark.parametrize("kind,name,match", [
    ("nonsense", "ok", "unknown method kind"),
    ("prune", "Bad Name", "lowercase"),
])
def test_register_rejects_bad_kind_and_name(kind, name, match):
    with pytest.raises(ValueError, match=match):
        Registry().register(kind=kind, name=name, config_cls=_Cfg, apply_fn=print)


def test_duplicates_and_unknown_names_are_clear_errors():
    reg = Registry()
    reg.register(kind="prune", name="toy", config_cls=_Cfg, apply_fn=print)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(kind="prune", name="toy", config_cls=_Other, apply_fn=print)
    with pytest.raises(ValueError, match="already registered as prune:toy"):
        reg.register(kind="quantize", name="other", config_cls=_Cfg, apply_fn=print)
    with pytest.raises(ValueError, match="valid choices: toy"):
        reg.get("prune", "missing")
    with pytest.raises(TypeError, match="_Other"):
        reg.for_config(_Other())


def test_library_registry_has_the_builtin_stages():
    import sparseft.methods  # noqa: F401
    from sparseft.registry import REGISTRY

    assert {"train", "eval", "save"} <= set(REGISTRY.names("stage"))
