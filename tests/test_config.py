from pathlib import Path

import pytest

from bench.config import RunConfig, build_config, load_config, parse_set, save_config
from bench.errors import ConfigError


def test_defaults_file_and_set_precedence(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("optim: {lr: 1.0e-3, weight_decay: 0.0}\ntrain: {seed: 3}\n")
    cfg = load_config(path, ["optim.lr=5e-4"])
    assert cfg.optim.lr == 5e-4  # --set beats the file
    assert cfg.optim.weight_decay == 0.0  # the file beats the default
    assert cfg.train.seed == 3
    assert cfg.train.batch_size == RunConfig().train.batch_size  # untouched default


def test_unknown_key_names_key_file_and_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("optim: {lrr: 1.0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "optim.lrr" in message and str(path) in message and "weight_decay" in message


def test_unknown_section_and_wrong_type() -> None:
    with pytest.raises(ConfigError, match="unknown section 'optimiser'"):
        build_config({"optimiser": {}})
    with pytest.raises(ConfigError, match="'train.batch_size' expects int"):
        build_config({"train": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match="expects true or false"):
        build_config({"data": {"balanced": "yes"}})
    with pytest.raises(ConfigError, match="optim.schedule"):
        build_config({"optim": {"schedule": "step"}})


def test_malformed_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {lr: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "malformed YAML" in str(err.value) and "\n" not in str(err.value)


def test_parse_set_nests_and_reads_yaml_values() -> None:
    assert parse_set("method.options.K=2") == {"method": {"options": {"K": 2}}}
    assert parse_set("data.test=[a, b]") == {"data": {"test": ["a", "b"]}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set("lr")


def test_run_id_ignores_tracking_but_not_results(tmp_path: Path) -> None:
    a = build_config({"tracking": {"runs_dir": "x"}, "data": {"workers": 0}})
    b = build_config({"tracking": {"runs_dir": "y"}, "data": {"workers": 4}})
    c = build_config({"train": {"seed": 1}})
    assert a.run_id() == b.run_id() != c.run_id()


def test_save_config_round_trips(tmp_path: Path) -> None:
    cfg = build_config({"optim": {"lr": 0.002}, "data": {"test": ["x"]}})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "assignment",
    [
        "optim.grad_clip=-1",
        "optim.weight_decay=-0.1",
        "optim.lr=.nan",
        "optim.lr=.inf",
        "optim.betas=[0.9, 1.0]",
        "optim.betas=[-0.1, 0.999]",
        "optim.warmup_steps=-1",
        "train.log_every=0",
        "data.workers=-1",
        "data.frames_per_video=0",
        "model.img_size=0",
        "eval.batch_size=0",
        "eval.bootstrap=-1",
        "tracking.experiment=../../x",
    ],
)
def test_values_that_would_run_wrongly_are_refused_in_one_line(assignment: str) -> None:
    key = assignment.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(None, [assignment])
    assert "\n" not in str(err.value)


def test_names_with_separators_or_dots_are_refused() -> None:
    from bench.schema import check_name

    for bad in ("../../x", "a/b", "a\\b", "..", "", " x"):
        with pytest.raises(ConfigError, match="is not a name"):
            check_name("grid name", bad)
    check_name("grid name", "offline-ff_v2.1")


def test_the_run_id_of_a_smoke_cell_is_pinned_and_fields_marked_out_of_it_leave_it() -> None:
    import dataclasses

    from bench.config import RUN_ID
    from bench.grid import expand, load_grid

    (cell,) = [c for c in expand(load_grid("grids/smoke.yaml")) if c.config.method.name == "full-ft"]
    assert cell.run_id == "5ad1fa9b975e6a7b"  # changed only by a commit that means to change every run id, saying why
    cfg = cell.config
    changes = {
        "data": {"workers": 7, "deepfakebench": "elsewhere", "max_bad_fraction": 0.5},
        "train": {"checkpoint_every": 3, "compile": "blocks", "log_every": 1},
        "tracking": {"uri": "sqlite:///elsewhere.db"},
        "launch": {"launcher": "slurm"},
    }
    marked = {
        (s.name, f.name) if s.metadata.get(RUN_ID, True) else (s.name, "*")
        for s in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, s.name))
        if not (s.metadata.get(RUN_ID, True) and f.metadata.get(RUN_ID, True))
    }
    assert marked == {("data", k) for k in changes["data"]} | {("train", k) for k in changes["train"]} | {
        ("tracking", "*"),
        ("launch", "*"),
    }
    for section, values in changes.items():
        other = dataclasses.replace(getattr(cfg, section), **values)
        assert dataclasses.replace(cfg, **{section: other}).run_id() == cell.run_id, section
    faster = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=cfg.optim.lr * 2))
    assert faster.run_id() != cell.run_id


def test_the_data_modules_do_not_import_the_config() -> None:
    """The config checks its data fields with the data modules; they take the generic helpers from bench.schema and
    bench.errors, so no import cycle joins them (``commands``, the ``bench data`` CLI, reads the config's defaults)."""
    import subprocess
    import sys

    import bench.data

    folder = Path(bench.data.__file__).parent
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "commands"))
    code = f"import sys\nfor m in {modules!r}: __import__('bench.data.' + m)\nprint('bench.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False" and "cards" in modules
