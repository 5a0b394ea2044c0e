import sys
from dataclasses import dataclass

import pytest

from bench import registry
from bench.config import build_config
from bench.errors import ConfigError
from bench.grid import resolve_config
from bench.options import DEFAULT_K, MethodOptions
from bench.registry import get_method, list_methods, register_method


def test_builtin_methods_registered() -> None:
    assert {"full-ft", "linear-probe"} <= set(list_methods())
    assert list_methods("linear-*") == ["linear-probe"]


def test_duplicate_name_is_an_error() -> None:
    @dataclass
    class Options(MethodOptions):
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
    class Options(MethodOptions):
        rank: int = 1

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register_method("toy", Options, "toy")(lambda backbone, options: options)
    registry.register_variant("toy/r=4", "toy", "toy with rank 4", rank=4)
    assert get_method("toy/r=4").resolve().rank == 4
    assert get_method("toy").resolve({"rank": 2}).rank == 2


def test_the_run_length_is_bound_in_a_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class Options(MethodOptions):
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


def test_options_are_bound_through_the_typed_base(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_method("masm").resolve().K == get_method("lora").resolve().rank == DEFAULT_K  # outside a run
    assert get_method("masm").resolve({}, ["a", "b"]).K == get_method("osf").resolve({}, ["a", "b"]).rank == 2
    assert get_method("effort").resolve({}, ["a", "b"]).K == 1  # a preset wins over the card
    with pytest.raises(ConfigError, match="K=3 but routing: balanced needs one subspace per training forgery method"):
        get_method("masm").resolve({"K": 3}, ["a", "b"])

    @dataclass
    class Plain:
        rank: int = 1

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    with pytest.raises(TypeError, match="options must be a MethodOptions dataclass"):
        register_method("plain", Plain, "plain")(lambda backbone, options: None)  # type: ignore[type-var]


def test_every_module_of_the_methods_folder_is_imported() -> None:
    from pathlib import Path

    import methods

    files = {p.stem for p in Path(methods.__file__).parent.glob("*.py") if not p.name.startswith("_")}
    assert set(methods.__all__) == files and all(f"methods.{name}" in sys.modules for name in files)


def test_ablations_are_the_variants_named_after_their_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    assert registry.ablations()["masm"] == list_methods("masm/*")
    assert registry.ablations()["fmsd"] == list_methods("fmsd/*")
    assert get_method("dora").parent == "lora" and get_method("dora").ablates == ""  # a method of its own
    assert get_method("effort").artifacts == get_method("masm").artifacts != ()  # a variant writes its parent's files
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    with pytest.raises(ValueError, match="an ablation's name starts with 'lora/'"):
        registry.register_variant("masm/lora-like", "lora", "misnamed")


def test_perf_rows_are_the_baselines_then_every_method_but_ablations() -> None:
    rows = registry.perf_rows()
    assert rows[0] == registry.BASELINE == "full-ft" and len(set(rows)) == len(rows)
    assert {"dora", "effort", "masm:routing=none:dense=true"} <= set(rows)
    assert not [row for row in rows if "/" in row] and "fmsd" not in rows  # fmsd's layers are chosen from data
    names = {row.partition(":")[0] for row in rows}
    assert names == {name for name in list_methods() if "/" not in name} - {"fmsd"}
