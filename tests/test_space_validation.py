"""Every value a study gives a plugin or the trainer is checked when the study is read, before any work.

Studies narrow a plugin's declared space and never widen it; plugins are instantiated at the corners
of the narrowed space; task × loss × plugin mismatches and options the trainer would drop are config
errors; L2-SP replaces plain weight decay on the backbone (the paper's meaning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from tlsearch_builtins.freezing._static import FullFinetune
from tlsearch_builtins.regularizers import L2SP, WeightDecay
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tests.conftest import assert_refused_before_work
from tlsearch.cli import main
from tlsearch.data import decode_images, scan_folder
from tlsearch.errors import ConfigError, PluginError
from tlsearch.registry import get_plugin_manager
from tlsearch.search import prepare
from tlsearch.space import Float, Int, narrow
from tlsearch.testing._tiny import TinyBackbone, tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings
from tlsearch.validate import check_trainer_options, corners

REG = "space.regularizers"

CASES: list[tuple[dict[str, Any], list[str]]] = [
    # a fixed value outside the declared range
    (
        {"space": {"regularizers": {"label_smoothing": {"epsilon": 1.5}}}},
        [f"{REG}.label_smoothing.epsilon", "1.5", "float [0, 0.3]"],
    ),
    ({"space": {"regularizers": {"weight_decay": {"strength": -1}}}}, [f"{REG}.weight_decay.strength", "-1"]),
    ({"space": {"regularizers": {"mixup": {"alpha": 0}}}}, [f"{REG}.mixup.alpha", "0", "float [0.1, 1] log"]),
    # a range that widens the declared one
    (
        {"space": {"regularizers": {"label_smoothing": {"epsilon": {"low": 0.0, "high": 0.9}}}}},
        [f"{REG}.label_smoothing.epsilon", "[0, 0.9] widens", "float [0, 0.3]", "only narrow"],
    ),
    (
        {"space": {"head": {"mlp": {"hidden_dim": {"low": 8, "high": 256}}}}},
        ["space.head.mlp.hidden_dim", "[8, 256] widens", "int [64, 1024]"],
    ),
    # wrong types, caught by the declaration or by the plugin's own __init__ at a corner
    (
        {"space": {"head": {"mlp": {"hidden_dim": "abc"}}}},
        ["space.head.mlp.hidden_dim", "expected an integer", "'abc'"],
    ),
    (
        {"space": {"freezing": {"freeze_stages": {"n_frozen": "abc"}}}},
        ["space.freezing.freeze_stages", "'freeze_stages'", "n_frozen='abc'"],
    ),
    # Int with both step and log
    (
        {"space": {"head": {"mlp": {"hidden_dim": {"low": 64, "high": 512, "step": 64, "log": True}}}}},
        ["space.head.mlp.hidden_dim", "step and log cannot be combined"],
    ),
    # unknown model names, with close matches (offline: timm's and torchvision's registries)
    (
        {"space": {"backbone": {"timm": {"model": "resnet19", "weights": "random"}}}},
        [
            "space.backbone.timm",
            "unknown timm model 'resnet19'",
            "close matches:",
            "resnet18",
            "timm.list_models",
        ],
    ),
    (
        {"space": {"backbone": {"torchvision": {"model": "resnet19", "weights": "random"}}}},
        ["space.backbone.torchvision", "unknown torchvision model 'resnet19'", "resnet18"],
    ),
    # task × loss × plugin
    (
        {"training": {"loss": "mse"}},
        ["training.loss", "'mse' does not fit task 'classification'", "auto, cross_entropy"],
    ),
    (
        {"task": "regression", "training": {"loss": "cross_entropy"}, "space": {"regularizers": {}}},
        ["training.loss", "'cross_entropy' does not fit task 'regression'", "auto, mse, huber"],
    ),
    (
        {"task": "regression"},
        [f"{REG}.label_smoothing", "only fits task classification", "'regression'"],
    ),
    (
        {"space": {"head": ["linear", "regression"]}},
        ["space.head.regression", "only fits task regression", "linear"],
    ),
]


@pytest.mark.parametrize(("change", "expected"), CASES, ids=[str(c[0])[:60] for c in CASES])
def test_bad_value_is_a_config_error_before_any_work(write_study, tmp_path: Path, change, expected) -> None:
    assert_refused_before_work(write_study(**change), tmp_path / "out", expected)


def test_valid_narrowing_still_passes(write_study, tmp_path: Path) -> None:
    study = write_study(
        space={
            "head": {"mlp": {"hidden_dim": {"low": 64, "high": 128}}},
            "regularizers": {"label_smoothing": {"epsilon": [0.0, 0.1]}, "mixup": {"alpha": 0.2}},
        }
    )
    _, _, space, _ = prepare(study, out_dir=tmp_path / "out")
    (mlp,) = space.head
    assert mlp.space.params["hidden_dim"] == Int(64, 128, log=True)  # the declared log scale is kept


def test_cli_exits_2_naming_the_field_and_writes_nothing(write_study, tmp_path: Path) -> None:
    study = write_study(space={"regularizers": {"label_smoothing": {"epsilon": 1.5}}})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "space.regularizers.label_smoothing.epsilon" in result.output and "1.5" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


PICKY = '''
from tlsearch import hookimpl
from tlsearch.kinds import Regularizer
from tlsearch.space import Categorical, Float


class Picky(Regularizer):
    """Refuses a and b both high: the kind of rule only its __init__ knows."""

    name = "picky"
    hyperparameters = {{"a": Float(0.0, 1.0, default=0.1), "b": Float(0.0, 1.0, default=0.1),
                       "mode": Categorical(("x", "y", "z"), default="x")}}

    def __init__(self, **params):
        super().__init__(**params)
        if self.a + self.b > 1.5:
            raise ValueError(f"a + b must be <= 1.5, got {{self.a + self.b}}")
        if self.mode == "y" and self.a == 0.0:
            raise ValueError("mode y needs a > 0")

    def optimizer_options(self):
        return {options}


@hookimpl
def tlsearch_register_regularizers(register):
    register.add(Picky)
'''


def test_plugin_is_instantiated_at_the_corners_of_the_narrowed_space(write_study, tmp_path: Path) -> None:
    plugin = tmp_path / "picky.py"
    plugin.write_text(PICKY.format(options="{}"))
    study = write_study(plugins=[str(plugin)], space={"regularizers": {"picky": {}}})
    with pytest.raises(ConfigError) as err:
        prepare(study, out_dir=tmp_path / "out")
    message = str(err.value)
    for fragment in ("space.regularizers.picky", "'picky'", "a=1.0, b=1.0", "a + b must be <= 1.5"):
        assert fragment in message, message
    # narrowed so that the high corner passes, the categorical choice 'y' at the low corner still fails
    study = write_study(
        plugins=[str(plugin)], space={"regularizers": {"picky": {"a": {"low": 0.0, "high": 0.5}}}}
    )
    with pytest.raises(ConfigError, match=r"mode='y'.*mode y needs a > 0"):
        prepare(study, out_dir=tmp_path / "out")
    study = write_study(
        plugins=[str(plugin)], space={"regularizers": {"picky": {"a": 0.5, "mode": ["x", "y"]}}}
    )
    prepare(study, out_dir=tmp_path / "out")  # every corner works


def test_corners_are_bounded_not_a_product() -> None:
    from tlsearch.space import Categorical

    params = {
        "x": Float(0.0, 1.0),
        "n": Int(1, 10, step=4),
        "c": Categorical(("p", "q", "r")),
        "d": Categorical((True, False)),
    }
    seen = list(corners(params))
    assert seen[0] == {"x": 0.0, "n": 1, "c": "p", "d": True}
    assert seen[1] == {"x": 1.0, "n": 9, "c": "r", "d": False}  # 9: the top of the step grid
    assert len(seen) <= 2 + 3 + 2
    assert {c["c"] for c in seen} == {"p", "q", "r"}


def test_optimizer_options_the_trainer_does_not_read_are_refused(write_study, tmp_path: Path) -> None:
    plugin = tmp_path / "picky.py"
    plugin.write_text(PICKY.format(options='{"momentum": 0.5}'))
    study = write_study(plugins=[str(plugin)], space={"regularizers": {"picky": {"a": 0.1, "b": 0.1}}})
    with pytest.raises(ConfigError) as err:
        prepare(study, out_dir=tmp_path / "out")
    assert "optimizer_options ['momentum']" in str(err.value) and "valid: weight_decay" in str(err.value)
    with pytest.raises(
        ConfigError, match=r"unknown optimizer option\(s\) \['momentum'\].*valid: weight_decay"
    ):
        check_trainer_options(
            task="classification", loss="auto", loss_options={}, optimizer_options={"momentum": 0.5}
        )


BAD_DEFAULT = '''
from tlsearch import hookimpl
from tlsearch.kinds import Regularizer
from tlsearch.space import Float


class Sloppy(Regularizer):
    """Its default is outside its own range."""

    name = "sloppy"
    hyperparameters = {"strength": Float(0.0, 1.0, default=2.0)}


@hookimpl
def tlsearch_register_regularizers(register):
    register.add(Sloppy)
'''


def test_a_default_outside_its_range_fails_at_registration_naming_the_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "sloppy.py"
    plugin.write_text(BAD_DEFAULT)
    with pytest.raises(PluginError) as err:
        get_plugin_manager([plugin]).registry  # noqa: B018
    message = str(err.value)
    assert "'Sloppy'" in message and "'strength'" in message and "default 2.0 is outside" in message


def test_declarations_refuse_step_with_log_and_narrow_refuses_widening() -> None:
    with pytest.raises(ValueError, match="step and log cannot be combined"):
        Int(64, 512, step=64, log=True)
    with pytest.raises(ConfigError, match=r"where: the range \[0, 2\] widens the declared float \[0, 1\]"):
        narrow(Float(0.0, 1.0), {"low": 0.0, "high": 2.0}, where="where")
    with pytest.raises(ConfigError, match="outside the declared range"):
        narrow(Int(1, 4), 5, where="where")


def test_trainer_refuses_a_loss_that_does_not_fit_the_task() -> None:
    model = tiny_transfer_model(num_outputs=4)
    for task, loss in (("classification", "mse"), ("regression", "cross_entropy")):
        with pytest.raises(ConfigError, match=f"loss '{loss}' does not fit task '{task}'"):
            Trainer(
                model,
                strategy=FullFinetune(),
                task=task,
                num_outputs=4,
                settings=TrainSettings(epochs=1, batch_size=8, loss=loss),
            )


def test_l2_sp_replaces_weight_decay_on_the_backbone_in_the_real_optimizer(
    shapes_dir: Path, tmp_path: Path
) -> None:
    train = scan_folder(shapes_dir / "train")
    val = scan_folder(shapes_dir / "val", classes=train.classes)
    config = TinyBackbone().build().data_config
    data = [decode_images(s, config, cache_dir=tmp_path, progress=False) for s in (train, val)]
    seen: list[list[dict[str, Any]]] = []

    def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not seen:
            seen.append([dict(pg) for pg in optimizer.param_groups])

    def decay_of(regularizers: list[Any]) -> tuple[set[float], set[float]]:
        seen.clear()
        model = tiny_transfer_model(num_outputs=4)
        trainer = Trainer(
            model,
            strategy=FullFinetune(),
            regularizers=regularizers,
            num_outputs=4,
            settings=TrainSettings(epochs=1, batch_size=16, lr=1e-3, augment=False),
        )
        handle = register_optimizer_step_pre_hook(record)
        try:
            trainer.fit(*data)
        finally:
            handle.remove()
        backbone = {id(p) for p in model.backbone.parameters()}
        head_matrices = {id(p) for p in model.head.parameters() if p.ndim >= 2}
        on_backbone = {pg["weight_decay"] for pg in seen[0] if any(id(p) in backbone for p in pg["params"])}
        on_head = {pg["weight_decay"] for pg in seen[0] if any(id(p) in head_matrices for p in pg["params"])}
        return on_backbone, on_head

    assert decay_of([WeightDecay(strength=0.05)]) == ({0.05, 0.0}, {0.05})  # weights decayed, norms not
    assert decay_of([WeightDecay(strength=0.05), L2SP()]) == ({0.0}, {0.05})  # the paper: head only
