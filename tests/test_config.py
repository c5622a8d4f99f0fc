from pathlib import Path

import pytest

from radlake.cli import main
from radlake.config import load_config
from radlake.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["local", "dev", "prod"])
def test_shipped_configurations_validate(name, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(name)
    assert cfg.environment == name


def test_databricks_configurations_use_unity_catalog(monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("dev", "prod"):
        cfg = load_config(name)
        assert cfg.storage.catalog and cfg.storage.volume.startswith("/Volumes/")
        assert cfg.mlflow.registry_uri == "databricks-uc"
        assert cfg.models.vertebra.count(".") == 2  # three-level UC model name


def test_local_file_equals_built_in_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    from_file = load_config("local")
    monkeypatch.chdir(tmp_path)  # no conf/ here: the schema defaults are the local configuration
    assert load_config("local") == from_file


def test_a_partial_schmorl_setting_keeps_the_schmorl_defaults():
    from radlake.config import SCHMORL_DEFAULTS, RadlakeConfig

    cfg = load_config(overrides=["train.schmorl.epochs=5", "train.vertebra.epochs=7"])
    assert cfg.train.schmorl.epochs == 5 and cfg.train.vertebra.epochs == 7
    assert cfg.train.schmorl.image_size == SCHMORL_DEFAULTS["image_size"] != cfg.train.vertebra.image_size
    assert cfg.train.schmorl.augment.flip_vertical == 0.5 and cfg.train.vertebra.augment.flip_vertical == 0.0
    assert cfg.train.schmorl.negatives_per_positive == 2.0 and cfg.train.vertebra.negatives_per_positive is None
    assert RadlakeConfig().train.schmorl.score_threshold == SCHMORL_DEFAULTS["score_threshold"]


def test_override_parses_yaml_types():
    cfg = load_config(overrides=["spark.shuffle_partitions=3", "synth.zip_fraction=0.5", "spark.extra={a.b: c}"])
    assert cfg.spark.shuffle_partitions == 3
    assert cfg.synth.zip_fraction == 0.5
    assert cfg.spark.extra == {"a.b": "c"}


def test_a_spark_key_below_extra_stays_one_key_with_its_text():
    cfg = load_config(
        overrides=["spark.extra.spark.eventLog.enabled=true", "spark.extra.spark.eventLog.dir=file:/tmp/x"]
    )
    assert cfg.spark.extra == {"spark.eventLog.enabled": "true", "spark.eventLog.dir": "file:/tmp/x"}


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partition'.*did you mean 'spark\.shuffle_partitions'"):
        load_config(overrides=["spark.shuffle_partition=3"])
    with pytest.raises(ConfigError, match=r"Unknown config key 'nonsense'"):
        load_config(overrides=["nonsense=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'spark\.shuffle_partitions'.*got 'many'"):
        load_config(overrides=["spark.shuffle_partitions=many"])
    with pytest.raises(ConfigError, match=r"'spark\.shuffle_partitions'"):
        load_config(overrides=["spark.shuffle_partitions=0"])


def test_unknown_key_in_a_file_is_named(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("storage:\n  roots: /tmp/x\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'storage\.roots'"):
        load_config(bad)


def test_missing_configuration_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="No configuration named 'staging'"):
        load_config("staging")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yml")


def test_cli_rejects_a_wrong_key_before_any_work(tmp_path, capsys):
    status = main(["synth", "--out", str(tmp_path / "a"), "--set", "synth.studys=2"])
    assert status == 2
    assert "synth.studys" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_cli_flag_shorthands_are_validated(tmp_path, capsys):
    status = main(["synth", "--out", str(tmp_path / "a"), "--studies", "0"])
    assert status == 2
    assert "synth.studies" in capsys.readouterr().err


def test_cli_config_prints_resolved_values(capsys):
    assert main(["config", "--json", "--set", "spark.driver_memory=6g"]) == 0
    assert '"driver_memory": "6g"' in capsys.readouterr().out


def test_the_demo_trains_fixed_epochs_without_a_time_cap_unless_set_otherwise():
    from radlake.cli import command_config, get_args_parser

    parse = get_args_parser().parse_args
    demo = command_config(parse(["demo", "--out", "a", "--studies", "3"]))
    assert (demo.train.vertebra.epochs, demo.train.vertebra.max_train_minutes) == (24, None)
    assert (demo.train.schmorl.epochs, demo.train.schmorl.max_train_minutes) == (6, None)
    assert demo.synth.studies == 3
    chosen = command_config(parse(["demo", "--out", "a", "--set", "train.schmorl.max_train_minutes=5"]))
    assert (chosen.train.schmorl.epochs, chosen.train.schmorl.max_train_minutes) == (6, 5)
    train = command_config(parse(["train", "vertebra"]))  # other commands keep the configuration's caps
    assert (train.train.vertebra.epochs, train.train.vertebra.max_train_minutes) == (30, 10)
