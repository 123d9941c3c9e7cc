"""Tests of the method parameters: defaults, validation and command-line options."""

import argparse
import dataclasses

import pytest

from cast.errors import ConfigError
from cast.method.config import MethodConfig, add_method_options

PRETRAIN_KEYS = [
    "arch", "image_size", "moco_dim", "moco_k", "moco_m", "moco_t", "mlp", "alpha", "beta", "scale", "ratio",
    "min_areacover", "second_constraint", "output_mask_region", "max_crop_attempts", "gradcam_layer", "gradcam_relu",
    "attention_reduction", "momentum_updates", "clip_grad_norm", "hflip_p", "grayscale_p", "jitter_p", "brightness",
    "contrast", "saturation", "hue", "blur_p", "blur_sigma", "mean", "std",
]


def test_fields_are_the_pretrain_keys():
    assert [item.name for item in dataclasses.fields(MethodConfig)] == PRETRAIN_KEYS


def test_defaults_match_released_command():
    config = MethodConfig()
    assert config.arch == "resnet50"
    assert config.image_size == 224
    assert (config.moco_dim, config.moco_k, config.moco_m, config.moco_t) == (128, 65536, 0.999, 0.07)
    assert (config.alpha, config.beta) == (3.0, 1.0)
    assert config.scale == (0.2, 1.0)
    assert config.min_areacover == 0.2
    assert (config.second_constraint, config.output_mask_region) == ("ref", "ref")
    assert (config.gradcam_layer, config.gradcam_relu, config.attention_reduction) == ("layer4", False, "batch")
    assert (config.momentum_updates, config.clip_grad_norm) == (2, 2.0)
    assert (config.hflip_p, config.grayscale_p, config.jitter_p, config.hue, config.blur_p) == (0.5, 0.2, 0.5, 0.4, 0.0)


def test_from_mapping_ignores_trainer_keys():
    config = MethodConfig.from_mapping({"arch": "resnet18", "scale": [0.3, 0.9], "seed": 3, "epochs": 2, "method": "cast"})
    assert config.arch == "resnet18"
    assert config.scale == (0.3, 0.9)


def test_from_mapping_converts_integral_float():
    assert MethodConfig.from_mapping({"moco_k": 4096.0}).moco_k == 4096


def test_to_dict_gives_lists():
    values = MethodConfig().to_dict()
    assert values["scale"] == [0.2, 1.0]
    assert values["mean"] == [0.485, 0.456, 0.406]
    assert MethodConfig.from_mapping(values) == MethodConfig()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("arch", "vgg16", "arch 'vgg16' is not a torchvision ResNet"),
        ("image_size", 16, "image_size must be at least 32"),
        ("moco_k", 0, "moco_k must be at least 1"),
        ("moco_k", 10.5, "moco_k must be an integer"),
        ("moco_m", 1.5, "moco_m must be at most 1.0"),
        ("moco_t", 0.0, "moco_t must be greater than 0.0"),
        ("mlp", "yes", "mlp must be true or false"),
        ("alpha", -1.0, "alpha must be at least 0.0"),
        ("scale", [0.0, 1.0], "scale must be two numbers with 0.0 < low <= high <= 1.0"),
        ("scale", [0.8, 0.2], "scale must be two numbers"),
        ("scale", [0.2], "scale must be a list of 2 numbers"),
        ("ratio", [0.75, "wide"], "ratio must be a list of 2 finite numbers"),
        ("min_areacover", 1.2, "min_areacover must be at most 1.0"),
        ("second_constraint", "both", "second_constraint must be one of 'ref', 'all'"),
        ("output_mask_region", "query", "output_mask_region must be one of 'ref', 'all'"),
        ("max_crop_attempts", 0, "max_crop_attempts must be at least 1"),
        ("gradcam_layer", "layer9", "gradcam_layer 'layer9' is not a module of the encoder"),
        ("gradcam_layer", "fc", "the Grad-CAM layer must output an N×C×H×W feature map"),
        ("attention_reduction", "mean", "attention_reduction must be one of 'batch', 'sample'"),
        ("momentum_updates", 3, "momentum_updates must be one of 1, 2"),
        ("clip_grad_norm", -1.0, "clip_grad_norm must be at least 0.0"),
        ("hflip_p", 2.0, "hflip_p must be at most 1.0"),
        ("hue", 0.6, "hue must be at most 0.5"),
        ("blur_sigma", [0.0, 2.0], "blur_sigma must be two numbers with 0.0 < low <= high"),
        ("std", [0.2, 0.0, 0.2], "std must be greater than 0.0"),
        ("mean", [0.5, 0.5], "mean must be a list of 3 numbers"),
    ],
)
def test_invalid_value_names_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        MethodConfig.from_mapping({key: value})


def test_zero_alpha_and_beta_rejected():
    with pytest.raises(ConfigError, match="alpha"):
        MethodConfig(alpha=0.0, beta=0.0)


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        MethodConfig(moco_t=-1.0)


def test_options_round_trip_through_parser():
    parser = argparse.ArgumentParser()
    add_method_options(parser)
    defaults = parser.parse_args([])
    assert MethodConfig.from_mapping(vars(defaults)) == MethodConfig()

    args = parser.parse_args(
        [
            "--arch", "resnet18", "--scale", "0.3", "0.9", "--min-areacover", "0.5", "--mlp",
            "--second_constraint", "all", "--momentum-updates", "1", "--mean", "0.5", "0.5", "0.5",
        ]
    )
    config = MethodConfig.from_mapping(vars(args))
    assert config.arch == "resnet18"
    assert config.scale == (0.3, 0.9)
    assert config.min_areacover == 0.5
    assert config.mlp is True
    assert config.second_constraint == "all"
    assert config.momentum_updates == 1
    assert config.mean == (0.5, 0.5, 0.5)


def test_options_reject_bad_choice(capsys):
    parser = argparse.ArgumentParser()
    add_method_options(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--attention_reduction", "mean"])
    assert "invalid choice" in capsys.readouterr().err
