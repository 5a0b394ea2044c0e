import sys
from dataclasses import dataclass

import pytest

from bench import registry
from bench.config import build_config
from bench.errors import ConfigError
from bench.grid import resolve_config
from bench.registry import get_method, list_methods, register_method


def test_builtin_methods_registered() -> None:
    assert {"full-ft", "linear-probe"} <= set(list_methods())
    assert list_methods("linear-*") == ["linear-probe"]


def test_duplicate_name_is_an_error() -> None:
    @dataclass
    class Options:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method("full-ft", Options, "again")(lambda backbone, options: None)


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown method 'nope'.*full-ft"):
        get_method("nope")


def test_unknown_option_names_method() -> None:
    cfg = build_config({"method": {"name": "full-ft", "options": {"rank": 4}}})
    with pytest.raises(ConfigError, match=r"unknown key 'method.options.rank'.*full-ft"):
        resolve_config(cfg)


def test_variant_presets_options(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class Options:
        rank: int = 1

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register_method("toy", Options, "toy")(lambda backbone, options: options)
    registry.register_variant("toy/r=4", "toy", "toy with rank 4", rank=4)
    assert get_method("toy/r=4").resolve().rank == 4
    assert get_method("toy").resolve({"rank": 2}).rank == 2


def test_the_run_length_is_bound_in_a_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class Options:
        steps: int | None = None

        def bind_steps(self, total_steps: int | None) -> None:
            if total_steps is None:
                raise ConfigError("needs the run's length")
            self.steps = total_steps

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register_method("toy", Options, "toy")(lambda backbone, options: options)
    method = get_method("toy")
    assert method.resolve().steps is None  # outside a run nothing is bound
    assert method.resolve({}, ["a", "b"], 12).steps == 12
    with pytest.raises(ConfigError, match=r"needs the run's length \(method 'toy'\)"):
        method.resolve({}, ["a", "b"])  # a run whose config leaves its length to the data


def test_every_module_of_the_methods_folder_is_imported() -> None:
    from pathlib import Path

    import methods

    files = {p.stem for p in Path(methods.__file__).parent.glob("*.py") if not p.name.startswith("_")}
    assert set(methods.__all__) == files and all(f"methods.{name}" in sys.modules for name in files)
