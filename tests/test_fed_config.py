"""The run-config schema: pyproject keys, coercion, unsafe combinations."""

import tomllib
from pathlib import Path

import pytest

import fed_support  # noqa: F401  sets Flower's environment (telemetry off) before flwr is imported
from common.federation.config import ConfigError, FedConfig

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_keys_match_the_dataclass_defaults():
    with open(ROOT / "pyproject.toml", "rb") as f:
        keys = tomllib.load(f)["tool"]["flwr"]["app"]["config"]
    assert keys == FedConfig().to_run_config()


def test_run_config_is_read_with_types_and_overrides():
    cfg = FedConfig.from_run_config({"rounds": "4", "epsilon": 2, "server-eval": "false"}, sites_per_round=2)
    assert (cfg.rounds, cfg.epsilon, cfg.server_eval, cfg.sites_per_round) == (4, 2.0, False, 2)
    assert cfg.site_sampling == "poisson" and cfg.sampled_per_round == 2
    assert FedConfig().site_sampling == "none"


@pytest.mark.parametrize("rc", [{"epsilonn": 1.0}, {"rounds": 2.5}, {"rounds": True}, {"epsilon": "many"}])
def test_bad_keys_and_values_are_refused(rc):
    with pytest.raises(ConfigError):
        FedConfig.from_run_config(rc)


def test_record_level_dp_refuses_full_mode():
    with pytest.raises(ConfigError, match="per-record"):
        FedConfig.from_run_config({"privacy": "record", "mode": "full"}).validate()
    FedConfig.from_run_config({"privacy": "site", "mode": "full"}).validate()
    FedConfig.from_run_config({"privacy": "none", "mode": "per_record"}).validate()


def test_server_refuses_record_full_before_starting():
    from server.app import run

    with pytest.raises(ConfigError, match="per-record"):
        run(None, {"privacy": "record", "mode": "full"})


@pytest.mark.parametrize("rc", [{"delta": 1.5}, {"sites-per-round": 9}, {"sample-rate": 0}, {"privacy": "central"}])
def test_validate_rejects_out_of_range(rc):
    with pytest.raises(ConfigError):
        FedConfig.from_run_config(rc).validate()


def test_required_paths_are_named():
    with pytest.raises(ConfigError, match="data-dir, target, teacher"):
        FedConfig().require("data_dir", "target", "teacher")
