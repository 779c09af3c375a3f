"""Config loading, validation and overrides."""

from pathlib import Path

import pytest
import yaml

from lfr_ray.config import CONFIG_DIR, Config, ConfigError, config_from_dict, load_config


def test_defaults_are_the_paper_schedule():
    cfg = load_config()
    assert [(p.kind, p.keep_frac, p.passes) for p in cfg.schedule.phases] == [
        ("learn", 1.0, 1), ("focus", 0.5, 1), ("review", 1.0, 1), ("focus", 0.3, 2),
    ]


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_shipped_config_by_name_and_overrides():
    cfg = load_config("debug.yaml", ["train.num_workers=2", "schedule.phases.1.keep_frac=0.25", "model.arch=gpt2"])
    assert cfg.train.num_workers == 2
    assert cfg.schedule.phases[1].keep_frac == 0.25
    assert cfg.model.arch == "gpt2"


def test_override_replaces_a_whole_list():
    cfg = load_config(None, ["schedule.phases=[{kind: learn, passes: 2}, {kind: focus, keep_frac: 0.4}]"])
    assert [(p.kind, p.passes, p.keep_frac) for p in cfg.schedule.phases] == [("learn", 2, 1.0), ("focus", 1, 0.4)]


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("train.bogus=1", "train.bogus", "allowed keys here"),
        ("nosuchsection.x=1", "nosuchsection", "allowed keys here"),
        ("train.micro_batch_size=-4", "train.micro_batch_size", "must be > 0"),
        ("train.micro_batch_size=2.5", "train.micro_batch_size", "expected an integer"),
        ("schedule.phases.1.keep_frac=1.5", "schedule.phases.1.keep_frac", "(0, 1]"),
        ("schedule.phases.1.keep_frac=0", "schedule.phases.1.keep_frac", "(0, 1]"),
        ("schedule.phases.0.kind=focus", "schedule.phases.0.kind", "first phase must be 'learn'"),
        ("schedule.phases.2.kind=cram", "schedule.phases.2.kind", "one of 'learn', 'focus', 'review'"),
        ("schedule.phases.9.passes=1", "schedule.phases.9", "out of range"),
        ("data.inputs=[/no/such/file.jsonl]", "data.inputs", "does not exist"),
        ("data.val_frac=1.0", "data.val_frac", "[0, 1)"),
        ("model.num_heads=3", "model.num_heads", "must divide hidden_size"),
        ("train.use_gpu=maybe", "train.use_gpu", "true or false"),
        ("run.name=a/b", "run.name", "without '/'"),
    ],
)
def test_bad_values_name_the_key(override, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"'{key}" in str(err.value)
    assert allowed in str(err.value)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.num_workers"])


def test_yaml_unknown_key_in_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 64\n")
    with pytest.raises(ConfigError, match="'model.hidden'.*allowed keys here: arch, hidden_size"):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/no/such/config.yaml")


def test_round_trip_through_yaml():
    cfg = load_config("demo.yaml", ["train.lr=0.01"])
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_packaged_relative_input_resolves():
    cfg = load_config("debug.yaml")
    assert Path(cfg.data.resolved_inputs[0]).is_file()


def test_scoring_node_resource_pins_the_pool():
    cfg = load_config(None, ["scoring.node_resource=lfr_score", "scoring.num_gpus_per_actor=1"])
    assert cfg.scoring.actor_resources() == {"CPU": 0.5, "GPU": 1.0, "lfr_score": 0.001}
    with pytest.raises(ConfigError, match="'scoring.node_resource'"):
        load_config(None, ["scoring.node_resource=GPU"])
