"""The training guide's YAML as an input schema (pivot_monai.config.guide): every block loads, each key has its effect.

Each block is read from ``../shared/guide/TRAINING.md`` by heading (skipped when absent) and from its copy under
``tests/guide``; the effects are checked on the objects PIVOT builds from the merged config.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from pivot_monai.config import load_config
from pivot_monai.engines.optim import build_lr_scheduler, build_optimizer, plateau_metric
from pivot_monai.engines.validate import validate_training_config
from pivot_monai.networks import build_network
from tests.config.guide_blocks import BLOCKS, COPIES, GUIDE, block, guide_blocks

SOURCES = ["guide", "copy"]


def _optimizer(training):
    return build_optimizer(torch.nn.Linear(2, 2).parameters(), training["learning_rate"], training["optimizer"])


def _lrs(scheduler, epochs):
    out = []
    for _ in range(epochs):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()  # as training does, before the schedule's step
        scheduler.step()
    return out


# ------------------------------------------------------------------------------------------------ every block
def test_the_copies_are_the_guides_blocks():
    if not GUIDE.is_file():
        pytest.skip(f"{GUIDE} not present")
    blocks = guide_blocks()
    assert [heading for heading, _ in blocks] == list(BLOCKS.values())  # 24 blocks, none new, none gone
    for (heading, text), name in zip(blocks, BLOCKS):
        assert yaml.safe_load(text) == block(name), f"tests/guide/{name}.yaml differs from {heading!r}"
    assert sorted(p.stem for p in COPIES.glob("*.yaml")) == sorted(BLOCKS)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_guide_block_loads_and_passes_validation(name, source):
    merged = load_config(block(name, source), base_configs=None)
    validate_training_config(merged)


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("source", SOURCES)
def test_the_unet_block_builds_the_detector_it_describes(source):
    model = load_config(block("u_net_configuration", source))["model"]
    assert model["type"] == "basic_unet_multihead" and model["batch_norm"] is True and model["dropout"] == 0.1
    assert "out_channels" not in model and "in_channels" not in model
    net = build_network(model)
    assert net.features[0] == 32 and len(net.features) == 5  # base_filters 32, depth 4
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert any(isinstance(m, torch.nn.ReLU) for m in net.modules())


def test_use_dropout_false_means_no_dropout():
    assert load_config({"model": {"use_dropout": False, "dropout_rate": 0.3}})["model"]["dropout"] == 0.0


@pytest.mark.parametrize("key", ["in_channels", "out_channels"])
def test_channel_counts_other_than_one_are_refused_with_the_reason(key):
    with pytest.raises(ValueError, match=rf"model.{key} must be 1 .*remove the key or set it to 1"):
        load_config({"model": {key: 3}})


class GuideDetector(torch.nn.Module):
    """The guide's CustomDetector: ``in_channels`` and ``out_channels`` as constructor arguments."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(in_channels, out_channels, 1)


def test_the_custom_block_passes_its_channels_to_the_class_and_names_a_missing_one():
    model = load_config(block("custom_architecture"))["model"]
    assert model["kwargs"] == {"in_channels": 1, "out_channels": 1}
    with pytest.raises(ValueError, match="model.class.*src.model.custom"):  # the guide's src/ is not PIVOT's
        build_network(model)
    net = build_network({**model, "class": f"{__name__}.GuideDetector"})
    assert (net.conv.in_channels, net.conv.out_channels) == (1, 1)


# ------------------------------------------------------------------------------------------------ loss
def _loss(config):
    from pivot_monai.engines.factories import build_training_loss

    training = load_config(config)["training"]
    return build_training_loss(training["loss"], training["hard_negative_mining"])


@pytest.mark.parametrize("source", SOURCES)
def test_the_multi_task_block_sets_the_three_weights(source):
    assert _loss(block("multi_task_loss", source)).weights == {
        "detection": 1.0,
        "regression": 0.5,
        "classification": 0.3,
    }


def test_the_complete_examples_sub_losses_are_built_as_written():
    loss = _loss(block("complete_configuration_example"))
    assert loss.weights == {"detection": 1.0, "regression": 0.5, "classification": 0.3}
    focal = loss.detection_loss.loss
    assert loss.detection_loss.loss_type == "focal" and (focal.alpha, focal.gamma) == (0.25, 2.0)
    assert loss.regression_loss.loss.beta == 1.0
    assert float(loss.classification_loss.loss.pos_weight) == 3.0  # the guide's triage_loss
    other = _loss({"training": {"loss": {"regression_loss": {"beta": 0.3}, "triage_loss": {"pos_weight": 5.0}}}})
    assert other.regression_loss.loss.beta == 0.3 and float(other.classification_loss.loss.pos_weight) == 5.0


def test_the_focal_and_dice_blocks_choose_the_heatmap_loss():
    from monai.losses import DiceLoss

    focal = _loss(block("focal_loss")).detection_loss
    assert focal.loss_type == "focal" and (focal.loss.alpha, focal.loss.gamma) == (0.25, 2.0)
    dice = _loss(block("dice_loss")).detection_loss
    assert dice.loss_type == "dice" and isinstance(dice.loss, DiceLoss)
    assert (dice.loss.smooth_nr, dice.loss.smooth_dr, dice.loss.squared_pred) == (1.0, 1.0, True)


def test_a_loss_type_pivot_has_not_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match="training.loss.type must be multi_task .* or the heatmap loss, focal or dice"):
        load_config({"training": {"loss": {"type": "tversky"}}})
    with pytest.raises(ValueError, match="ambiguous: put the heatmap loss's settings under"):
        load_config({"training": {"loss": {"type": "multi_task", "alpha": 0.5}}})


# ------------------------------------------------------------------------------------------------ optimisation
@pytest.mark.parametrize(
    "name, expected",
    [
        ("adamw", (torch.optim.AdamW, 0.001, {"weight_decay": 1e-4, "eps": 1e-8, "betas": (0.9, 0.999)})),
        ("sgd_with_momentum", (torch.optim.SGD, 0.01, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4})),
    ],
)
@pytest.mark.parametrize("source", SOURCES)
def test_the_optimizer_blocks_build_the_optimizer_they_describe(name, expected, source):
    optimizer = _optimizer(load_config(block(name, source))["training"])
    cls, lr, options = expected
    assert type(optimizer) is cls and optimizer.param_groups[0]["lr"] == lr
    for key, value in options.items():
        assert optimizer.param_groups[0][key] == value, key


def test_the_optimizer_short_form_and_conflicting_learning_rates():
    assert load_config({"training": {"optimizer": "sgd"}})["training"]["optimizer"]["type"] == "sgd"
    with pytest.raises(ValueError, match="disagree"):
        load_config({"training": {"learning_rate": 0.1, "optimizer": {"learning_rate": 0.2}}})


@pytest.mark.parametrize("source", SOURCES)
def test_the_cosine_block_decays_over_t_max_epochs_to_min_lr(source):
    config = block("cosine_annealing", source)
    config["training"]["lr_scheduler"]["T_max"] = 20  # the guide's 100 is its epoch count; 20 shows the length
    training = load_config(config)["training"]
    assert training["scheduler"]["t_max"] == 20 and training["epochs"] == 100
    lrs = _lrs(build_lr_scheduler(_optimizer(training), training["scheduler"], training["epochs"]), 30)
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx(1e-3)  # warm-up of 5 epochs from 0.1 x lr
    assert lrs[19] > 1e-5 and lrs[20] == pytest.approx(1e-5) and lrs[29] == pytest.approx(1e-5)  # held after T_max
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # never rises again (MONAI's cosine would past t_total)


def test_without_t_max_the_cosine_spans_the_epochs():
    training = load_config(block("cosine_annealing"))["training"]
    training["scheduler"]["t_max"] = None
    lrs = _lrs(build_lr_scheduler(_optimizer(training), training["scheduler"], 40), 41)
    assert lrs[20] > 1e-4 and lrs[35] > 1e-5 and lrs[40] == pytest.approx(1e-5)  # half-way at epoch 20, not done


def test_the_step_block_multiplies_by_gamma_every_step_size_epochs():
    training = load_config(block("step_decay"))["training"]
    lrs = _lrs(build_lr_scheduler(_optimizer(training), training["scheduler"], training["epochs"]), 61)
    assert lrs[29] == pytest.approx(1e-3) and lrs[30] == pytest.approx(1e-4) and lrs[60] == pytest.approx(1e-5)


class _Engine:
    def __init__(self, **metrics):
        self.state = type("State", (), {"metrics": metrics})()


@pytest.mark.parametrize("source", SOURCES)
def test_the_plateau_block_reads_its_monitor_in_its_mode(source):
    training = load_config(block("reduce_on_plateau", source))["training"]
    scheduler = build_lr_scheduler(_optimizer(training), training["scheduler"], training["epochs"])
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (scheduler.mode, scheduler.factor, scheduler.patience, scheduler.min_lrs) == ("max", 0.5, 5, [1e-5])
    metric = plateau_metric(training["scheduler"], training["early_stopping"])
    assert metric(_Engine(val_froc=0.7, val_loss=3.0)) == 0.7
    for _ in range(7):  # a FROC that never improves: halved after patience (5) + 1 validations
        scheduler.step(metric(_Engine(val_froc=0.7)))
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_a_plateau_on_the_validation_loss_in_min_mode():
    training = load_config({"training": {"scheduler": {"type": "plateau", "mode": "min", "monitor": "val_loss"}}})[
        "training"
    ]
    scheduler = build_lr_scheduler(_optimizer(training), training["scheduler"], 10)
    metric = plateau_metric(training["scheduler"], training["early_stopping"])
    for loss in (3.0, 2.0, 1.0, 0.5):  # falling: no reduction in min mode
        scheduler.step(metric(_Engine(val_froc=0.1, val_loss=loss)))
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3) and scheduler.mode == "min"
    with pytest.raises(KeyError, match=r"training.scheduler.monitor='val_loss' .* available: \['val_froc'\]"):
        metric(_Engine(val_froc=0.1))


def test_both_scheduler_names_at_once_is_an_error():
    with pytest.raises(ValueError, match="training.lr_scheduler .* and training.scheduler are both given"):
        load_config({"training": {"lr_scheduler": {"type": "step"}, "scheduler": {"type": "cosine"}}})


@pytest.mark.parametrize("short, enabled", [(True, True), (False, False)])
def test_the_gradient_clipping_short_form(short, enabled):
    from pivot_monai.handlers import GradientClipHandler

    clipping = load_config({"training": {"gradient_clipping": short}})["training"]["gradient_clipping"]
    assert clipping == {"enabled": enabled, "max_norm": 1.0, "norm_type": 2.0}
    handler = GradientClipHandler(**clipping)
    assert handler.max_norm == (1.0 if enabled else math.inf)


def test_the_gradient_clipping_block_sets_the_handler():
    from pivot_monai.handlers import GradientClipHandler

    handler = GradientClipHandler(**load_config(block("gradient_clipping"))["training"]["gradient_clipping"])
    assert (handler.max_norm, handler.norm_type) == (1.0, 2.0)


# ------------------------------------------------------------------------------------------------ augmentation
@pytest.mark.parametrize("source", SOURCES)
def test_the_random_augmentation_blocks_build_transforms_with_their_probabilities(source):
    from monai.transforms import Rand3DElasticd, RandFlipd, RandGaussianNoised, RandRotated, RandZoomd

    from pivot_monai.transforms.augment import build_augmentation

    transforms = build_augmentation(load_config(block("complete_configuration_example", source))["augmentation"])
    by_type = {}
    for t in transforms:
        by_type.setdefault(type(t), []).append(t)
    flips = by_type[RandFlipd]
    assert [f.prob for f in flips] == [0.5] * 3 and [f.flipper.spatial_axis for f in flips] == [0, 1, 2]
    (rotate,) = by_type[RandRotated]
    assert rotate.prob == 0.5 and rotate.rand_rotate.range_z == pytest.approx((-math.radians(15), math.radians(15)))
    (zoom,) = by_type[RandZoomd]
    assert zoom.prob == 0.5 and (zoom.rand_zoom.min_zoom, zoom.rand_zoom.max_zoom) == ((0.9,), (1.1,))
    (noise,) = by_type[RandGaussianNoised]
    assert noise.prob == 0.3 and noise.rand_gaussian_noise.std == 0.01
    assert noise.rand_gaussian_noise.sample_std is False  # the guide's noise_std is the deviation, not a bound
    (elastic,) = by_type[Rand3DElasticd]
    assert elastic.prob == 0.2
    assert elastic.rand_3d_elastic.sigma_range == (3.0, 3.0) and elastic.rand_3d_elastic.magnitude_range == (10.0, 10.0)


def test_pivots_blocks_take_the_guides_probability_key_too():
    aug = load_config({"augmentation": {"flip": {"probability": 0.2}}})["augmentation"]
    assert aug["flip"] == {"prob": 0.2, "axes": [0, 1, 2]}
    with pytest.raises(ValueError, match="augmentation.random_flip .* and augmentation.flip are both given"):
        load_config({"augmentation": {"random_flip": {"probability": 0.2}, "flip": {"prob": 0.1}}})


# ------------------------------------------------------------------------------------------------ data.stride
def test_the_guides_stride_is_the_inference_windows_step():
    from pivot_monai.inference.inferers import FittedWindowInferer

    merged = load_config(block("complete_configuration_example"))
    assert merged["inference"]["overlap"] == 0.5  # stride 64 of patch 128
    merged = load_config({"data": {"patch_size": [16, 16, 16], "stride": [8, 8, 8]}})
    inferer = FittedWindowInferer(merged["data"]["patch_size"], overlap=merged["inference"]["overlap"], mode="constant")
    starts = []

    def network(x):
        starts.append(x.shape[0])
        return x

    inferer(torch.zeros(1, 1, 32, 32, 32), network)
    assert sum(starts) == 3**3  # windows at 0, 8, 16 on each axis: a step of 8 voxels


@pytest.mark.parametrize(
    "config, message",
    [
        ({"data": {"stride": [64, 64, 32]}}, "different overlap per axis"),
        ({"data": {"stride": [96, 96, 96]}}, "must not exceed data.patch_size"),
        ({"data": {"stride": [32] * 3}, "inference": {"roi_size": [128] * 3}}, "give inference.overlap instead"),
        ({"data": {"stride": [32] * 3}, "inference": {"overlap": 0.25}}, "disagree"),
    ],
)
def test_a_stride_pivot_cannot_honour_says_why(config, message):
    with pytest.raises(ValueError, match=message):
        load_config(config)


# ------------------------------------------------------------------------------------------------ monitoring
@pytest.mark.parametrize("source", SOURCES)
def test_the_wandb_block_reaches_wandb_init(source, monkeypatch):
    import pivot_monai.handlers.wandb as wb

    calls = []
    fake = type("wandb", (), {"init": staticmethod(lambda **kw: calls.append(kw) or object())})
    monkeypatch.setattr(wb, "optional_import", lambda name: (fake, True))
    wandb = load_config(block("weights_biases", source))["logging"]["wandb"]
    wb.make_wandb_handler(wandb, {"training": 100})
    (kwargs,) = calls
    assert kwargs["project"] == "pivot-nodule-detection" and kwargs["entity"] == "your-team"
    assert kwargs["tags"] == ["unet", "focal-loss", "aug"] and kwargs["mode"] == "offline"


def test_the_tensorboard_block_writes_under_its_log_dir(tmp_path, monkeypatch):
    from pivot_monai.handlers import close_writer, make_summary_writer

    monkeypatch.chdir(tmp_path)
    logging_cfg = load_config(block("tensorboard"))["logging"]
    writer = make_summary_writer(logging_cfg["log_dir"], logging_cfg["tensorboard"])
    writer.add_scalar("train/loss", 1.0, 1)
    close_writer(writer)
    assert list((tmp_path / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_the_metric_names_of_validation_metrics_are_the_engines():
    merged = load_config(
        {
            "validation": {"save_best_metric": "froc_score"},
            "training": {"early_stopping": {"monitor": "detection_dice"}},
        }
    )
    assert merged["validation"]["save_best_metric"] == "val_froc"
    assert merged["training"]["early_stopping"]["monitor"] == "val_detection_dice"


def test_checkpointing_save_dir_is_the_checkpoint_folder():
    assert load_config({"checkpointing": {"save_dir": "checkpoints"}})["checkpointing"]["dir"] == "checkpoints"


# ------------------------------------------------------------------------------------------------ advanced
def test_the_stage_blocks_build_their_schedules():
    from pivot_monai.transforms.stages import StageSchedule

    progressive = load_config(block("progressive_training"))["training"]
    schedule = StageSchedule.from_config(progressive["curriculum"], progressive["progressive"], 4)
    assert [(schedule.at(e).patch_size, schedule.at(e).batch_size) for e in (1, 31, 71)] == [
        ((64,) * 3, 8),
        ((96,) * 3, 4),
        ((128,) * 3, 2),
    ]
    curriculum = load_config(block("curriculum_learning"))["training"]
    schedule = StageSchedule.from_config(curriculum["curriculum"], curriculum["progressive"], 4)
    assert [schedule.at(e).min_diameter for e in (1, 20, 21, 51)] == [10, 10, 5, 0]


def test_the_tta_block_gives_eight_augmentations():
    from pivot_monai.inference.tta import TTASettings

    tta = TTASettings.from_config(load_config(block("test_time_augmentation"))["inference"]["tta"])
    assert tta.enabled and len(tta.names) == 8 and "rotate_90" in " ".join(tta.names)


@pytest.mark.parametrize("source", SOURCES)
def test_the_early_stopping_block_builds_its_handler(source):
    from monai.bundle import ConfigParser

    parser = ConfigParser(load_config(block("early_stopping", source)))
    handler = parser.get_parsed_content("validate#early_stop")
    assert (handler.patience, handler.min_delta) == (15, 0.001)
    assert handler.score_function(_Engine(val_froc=0.8)) == 0.8  # monitor val_froc, mode max
    parser = ConfigParser(load_config({"training": {"early_stopping": {"enabled": False}}}))
    assert parser.get_parsed_content("validate#early_stop") is None
