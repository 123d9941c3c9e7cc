"""Tests of the command-line dispatcher, option helpers and atomic writes."""

import argparse
import json

import pytest

from cast import cli, io
from cast.options import add_option


def test_overview_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    output = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in output


def test_unknown_command_exits_2(capsys):
    assert cli.main(["no-such-stage"]) == 2
    assert "unknown command 'no-such-stage'" in capsys.readouterr().err


def test_option_accepts_underscores_and_dashes():
    parser = argparse.ArgumentParser()
    add_option(parser, "min_areacover", type=float, default=0.2)
    add_option(parser, "mlp", default=False)
    assert parser.parse_args(["--min_areacover", "0.3"]).min_areacover == 0.3
    assert parser.parse_args(["--min-areacover", "0.4"]).min_areacover == 0.4
    assert parser.parse_args(["--mlp"]).mlp is True
    assert parser.parse_args(["--no-mlp"]).mlp is False


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_open(target, "w") as stream:
            stream.write("partial")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_write_uses_default_file_mode(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        io.write_json(tmp_path / "metrics.json", {})
    finally:
        os.umask(umask)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644


def test_device_option_values():
    import torch

    from cast.devices import resolve_device
    from cast.errors import ConfigError

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="PyTorch sees no CUDA device"):
            resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="invalid device 'tpu'"):
        resolve_device("tpu")
