"""The console script's own behaviour that needs no Ray: config errors and `lfr-ray config`."""

import subprocess
import sys

import yaml

from lfr_ray.cli import main


def test_config_subcommand_prints_resolved_yaml(capsys):
    assert main(["config", "--config", "debug", "train.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.01
    assert printed["run"]["name"] == "debug"


def test_bad_override_is_a_one_line_error_naming_the_key(capsys):
    assert main(["run", "train.micro_batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lfr-ray: error: config key 'train.micro_batch_size': must be > 0")
    assert "Traceback" not in err


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "lfr_ray.cli", "config", "--config", "demo"],
                         capture_output=True, text=True, check=True).stdout
    focus = yaml.safe_load(out)["schedule"]["phases"][1]
    assert (focus["kind"], focus["passes"], focus["keep_frac"]) == ("focus", 1, 0.5)
