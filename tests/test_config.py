"""Config precedence, pairing, validation."""

import pytest
import yaml

import core_plugins
from mint_core.config import ConfigError, load_config_file, parse_overrides, resolve
from mint_core.registry import get_registry
from mint_core.testing import invoke, isolated_registry


@pytest.fixture
def registry():
    with isolated_registry(core_plugins, name="core") as reg:
        yield reg


def test_precedence_defaults_file_flags_overrides(registry, tmp_path):
    file = {"seed": 5, "teacher": {"name": "overlap"}, "task": {"cases_per_label": 6, "noise": 0.5}}
    config = resolve(registry, file=file, flags={"seed": None}, overrides={})
    assert config["seed"] == 5 and config["task"]["cases_per_label"] == 6 and config["task"]["noise"] == 0.5
    config = resolve(registry, file=file, flags={"seed": 7}, overrides=parse_overrides(["task.noise=0.1"]))
    assert config["seed"] == 7  # flag beats file
    assert config["task"]["noise"] == 0.1  # override beats file
    assert config["task"]["cases_per_label"] == 6  # file beats default (4)
    config = resolve(registry, file=file, flags={"seed": 7}, overrides=parse_overrides(["seed=9"]))
    assert config["seed"] == 9  # override beats flag


def test_pairing_fills_unchosen_sections(registry):
    config = resolve(registry, flags={"teacher": "overlap"})
    assert config["task"]["name"] == "keywords" and config["optimizer"]["name"] == "counting"
    assert config["student"]["name"] == "keyword-student" and config["builder"]["name"] == "topbottom"


def test_builtin_pairing_pathclip_picks_tissue_and_vision():
    config = resolve(get_registry(), flags={"teacher": "pathclip", "optimizer": "orpo"})
    assert config["task"]["name"] == "tissue"
    assert config["student"]["name"] == "llama-vision"
    assert config["builder"]["name"] == "topk"
    explicit = resolve(get_registry(), flags={"teacher": "pathclip", "student": "llama-text"})
    assert explicit["student"]["name"] == "llama-text"  # an explicit choice beats pairing


def test_unknown_key_names_section_and_closest(registry):
    with pytest.raises(ConfigError) as info:
        resolve(registry, flags={"teacher": "overlap"}, overrides=parse_overrides(["task.nois=0.3"]))
    assert "task.nois" in str(info.value) and "Did you mean 'noise'?" in str(info.value)
    with pytest.raises(ConfigError, match="unknown section 'taks'"):
        parse_overrides(["taks.noise=1"])
    with pytest.raises(ConfigError, match="is not an integer"):
        resolve(registry, flags={"teacher": "overlap"}, overrides=parse_overrides(["task.cases_per_label=many"]))


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [1, 2]\n")
    with pytest.raises(ConfigError, match="bad.yaml: section 'teacher' must be a mapping"):
        load_config_file(bad)
    bad.write_text("teachr: {name: x}\n")
    with pytest.raises(ConfigError, match="Did you mean 'teacher'"):
        load_config_file(bad)


def test_validate_command_prints_resolved_yaml(registry, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "teacher": "overlap", "task": {"noise": 0.3}}))
    result = invoke(["validate", "--config", str(cfg), "task.cases_per_label=3"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["task"] == {"name": "keywords", "cases_per_label": 3, "noise": 0.3}
    result = invoke(["validate", "--config", str(cfg), "task.cases=3"])
    assert result.exit_code == 2 and "Did you mean 'cases_per_label'" in result.output


def test_file_options_dropped_when_a_flag_picks_another_component():
    file = {"optimizer": {"name": "orpo", "nll_on_prompt": False, "learning_rate": 1e-4}}
    config = resolve(get_registry(), file=file, flags={"optimizer": "dpo"})
    assert config["optimizer"]["name"] == "dpo" and "nll_on_prompt" not in config["optimizer"]
    kept = resolve(get_registry(), file=file)
    assert kept["optimizer"]["nll_on_prompt"] is False and kept["optimizer"]["learning_rate"] == 1e-4


def test_demo_defaults_are_the_lowest_layer_and_skip_missing_keys():
    from mint_core.config import DEMO_DEFAULTS

    demo = resolve(get_registry(), soft=DEMO_DEFAULTS)
    assert demo["optimizer"]["max_steps"] == DEMO_DEFAULTS["optimizer"]["max_steps"]
    assert demo["eval"]["max_cases"] == DEMO_DEFAULTS["eval"]["max_cases"]
    full = resolve(get_registry(), soft=DEMO_DEFAULTS, overrides=parse_overrides(["optimizer.max_steps=-1"]))
    assert full["optimizer"]["max_steps"] == -1
    rag = resolve(get_registry(), soft=DEMO_DEFAULTS, flags={"optimizer": "rag"})
    assert "max_steps" not in rag["optimizer"]  # RAG trains nothing: the demo key is not forced on it


def test_a_chosen_components_demo_sizing_goes_over_the_core_demo_layer():
    from mint_core.config import DEMO_DEFAULTS

    registry = get_registry()
    text = resolve(registry, flags={"optimizer": "orpo"}, soft=DEMO_DEFAULTS)
    tissue = resolve(registry, flags={"teacher": "pathclip", "optimizer": "orpo"}, soft=DEMO_DEFAULTS)
    assert text["optimizer"]["max_steps"] == -1 and text["student"]["lora_layers"] == 8
    # The tissue task registers its own demo sizing; the core's other demo options still apply.
    assert tissue["optimizer"]["epochs"] == 6 and tissue["student"]["lora_layers"] == "auto"
    assert tissue["optimizer"]["learning_rate"] == 2e-3 and text["optimizer"]["learning_rate"] == 1e-3
    assert tissue["eval"]["max_new_tokens"] == 48 and tissue["eval"]["batch_size"] == text["eval"]["batch_size"]
    assert tissue["optimizer"]["max_steps"] == -1
    # A run with a config file (no soft layer) gets neither.
    plain = resolve(registry, flags={"teacher": "pathclip", "optimizer": "orpo"})
    assert plain["optimizer"]["epochs"] != 6 and plain["optimizer"]["learning_rate"] != 2e-3
