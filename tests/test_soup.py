"""The greedy model soup at export: a real parameter mean, ingredients kept only when validation
improves, never a mix of different starts, exported only when it beats the best trial, off with
``export.soup: false``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tlsearch.search.checkpoint import TrialRecord
from tlsearch.search.soup import Ingredient, average_weights, greedy_soup, mix_problem
from tlsearch.testing import tiny_transfer_model

CHOICES = {"backbone": "tiny", "backbone.tiny.width": 8, "head": "linear", "freezing": "full_finetune"}


def _model(seed: int, *, head: nn.Module | None = None) -> nn.Module:
    model = tiny_transfer_model(seed=seed, num_outputs=3, head=head)
    with torch.no_grad():  # BatchNorm statistics of their own, as after training
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(seed + 1)
    return model.eval()


def _ingredient(trial: int, model: nn.Module, value: float, **choices: Any) -> Ingredient:
    record = TrialRecord(
        number=trial,
        study="s",
        task="classification",
        choices={**CHOICES, **choices},
        data_config=model.data_config.to_dict(),  # type: ignore[union-attr]
        num_outputs=3,
        labels=None,
        metric="accuracy",
        value=value,
    )
    return Ingredient(trial, value, model, record)


def test_average_weights_is_the_parameter_and_batchnorm_statistics_mean() -> None:
    a, b = _model(0), _model(1)
    mean = average_weights([a.state_dict(), b.state_dict()])
    sa, sb = a.state_dict(), b.state_dict()
    assert any("running_var" in k for k in mean)
    for name, tensor in mean.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (sa[name] + sb[name]) / 2)
        else:
            assert torch.equal(tensor, sa[name])  # num_batches_tracked: the first's


def _distance_to(target: dict[str, torch.Tensor]):
    """A validation score that is higher the closer the weights are to ``target``."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        state = model.state_dict()
        gap = sum(float(((state[k] - v) ** 2).sum()) for k, v in target.items() if v.is_floating_point())
        return {"accuracy": -gap}

    return evaluate


def test_greedy_soup_keeps_an_ingredient_only_when_validation_improves() -> None:
    a, c = _model(0), _model(2)
    sa, sc = a.state_dict(), c.state_dict()
    far = _model(1)  # a + 10 (c - a): averaging it in moves away from the target
    far.load_state_dict(
        {k: sa[k] + 10 * (sc[k] - sa[k]) if v.is_floating_point() else v for k, v in sa.items()}
    )
    target = average_weights([sa, sc])
    soup = greedy_soup(
        [_ingredient(0, a, 0.9), _ingredient(1, far, 0.8), _ingredient(2, c, 0.7)],
        evaluate=_distance_to(target),
        metric="accuracy",
        maximize=True,
    )
    assert soup.ingredients == [0, 2]
    assert [(t["trial"], t["kept"]) for t in soup.tried] == [(1, False), (2, True)]
    assert soup.exported and soup.value > soup.single_value
    for name, tensor in soup.model.state_dict().items():  # type: ignore[union-attr]
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, target[name])


def test_no_soup_when_nothing_improves_and_minimised_metrics_compare_the_other_way() -> None:
    a, b = _model(0), _model(1)
    target = a.state_dict()  # the best trial alone is the optimum
    soup = greedy_soup(
        [_ingredient(0, a, 0.9), _ingredient(1, b, 0.8)],
        evaluate=_distance_to(target),
        metric="accuracy",
        maximize=True,
    )
    assert not soup.exported and soup.ingredients == [0] and "no ingredient improved" in soup.reason

    def mae(model: nn.Module) -> dict[str, float]:
        return {"mae": -_distance_to(average_weights([a.state_dict(), b.state_dict()]))(model)["accuracy"]}

    soup = greedy_soup(
        [_ingredient(0, a, 0.1), _ingredient(1, b, 0.2)], evaluate=mae, metric="mae", maximize=False
    )
    assert soup.ingredients == [0, 1]


def test_different_backbone_starts_and_head_shapes_never_mix() -> None:
    a, b = _model(0), _model(1)
    target = average_weights([a.state_dict(), b.state_dict()])  # mixing b would score better
    other_start = _ingredient(1, b, 0.8, **{"backbone.tiny.width": 16})
    mlp = _model(3, head=nn.Sequential(nn.Linear(32, 5), nn.ReLU(), nn.Linear(5, 3)))
    other_head = _ingredient(2, mlp, 0.7, head="mlp")
    wider = _ingredient(3, _model(4, head=nn.Linear(32, 3, bias=False)), 0.6)
    soup = greedy_soup(
        [_ingredient(0, a, 0.9), other_start, other_head, wider],
        evaluate=_distance_to(target),
        metric="accuracy",
        maximize=True,
    )
    assert soup.ingredients == [0] and not soup.exported and soup.tried == []
    reasons = {x["trial"]: x["reason"] for x in soup.left_out}
    assert "another backbone start" in reasons[1] and "backbone.tiny.width=16" in reasons[1]
    assert "another architecture" in reasons[2] and "another architecture" in reasons[3]
    assert "shares the best trial's backbone start" in soup.reason
    assert mix_problem(_ingredient(0, a, 0.9), _ingredient(1, b, 0.8)) is None


def _outputs(onnx_file: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.slow
def test_export_writes_the_soup_when_it_wins_and_the_single_best_with_soup_false(
    write_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tlsearch.search.best as best
    from tlsearch.report import study_status, write_report
    from tlsearch.report._status import format_status
    from tlsearch.search import export_study, run_study
    from tlsearch.search.checkpoint import load_checkpoint
    from tlsearch.search.study_dir import StudyDir

    study = write_study(
        space={"freezing": ["linear_probe", "full_finetune"], "regularizers": {}},
        training={"epochs": 1},
        search={"n_trials": 3},
        export={"enabled": True},
    )
    out = tmp_path / "out"
    result = run_study(study, out_dir=out, progress=False)
    chosen = best.best_trial(result.study)
    complete = [t for t in result.study.trials if t.values and t.number != chosen.number]
    second = sorted(complete, key=lambda t: t.values[0], reverse=True)[0]
    models = {
        n: load_checkpoint(StudyDir(out).trial_dir(n), result.pm.registry)[0]
        for n in (chosen.number, second.number)
    }
    # Validation, rigged to prefer the mean of the two best trials: the soup of those two wins.
    target = {
        k: torch.stack([m.state_dict()[k].float() for m in models.values()]).mean(0)
        for k in models[chosen.number].state_dict()
    }
    monkeypatch.setattr(best, "validation_metrics", lambda model, *a, **k: _distance_to(target)(model))
    export_study(out, pm=result.pm)
    meta = json.loads((out / "model.json").read_text())["metadata"]
    assert meta["soup"]["exported"] and meta["soup"]["ingredients"] == [chosen.number, second.number]
    assert meta["value"] == meta["soup"]["value"] > meta["soup"]["single_value"]
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    souped = models[chosen.number]  # the mean of the two checkpoints, computed here
    souped.load_state_dict({k: v.to(souped.state_dict()[k].dtype) for k, v in target.items()})
    with torch.no_grad():
        expected = souped.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_outputs(out / "model.onnx", x), expected, atol=1e-4)
    assert "soup of trials" in format_status(study_status(out))
    assert "Soup: the soup of trials" in write_report(out).html.read_text()

    export_study(out, trial=second.number, pm=result.pm)  # a chosen trial is exported as it is
    meta = json.loads((out / "model.json").read_text())["metadata"]
    assert "soup" not in meta and meta["trial"] == second.number

    folder = StudyDir(out)  # the same study with export.soup: false
    config = folder.load_config()
    folder.save_config(config.model_copy(update={"export": config.export.model_copy(update={"soup": False})}))
    export_study(out, pm=result.pm)
    meta = json.loads((out / "model.json").read_text())["metadata"]
    assert "soup" not in meta and meta["trial"] == chosen.number
    single = load_checkpoint(folder.trial_dir(chosen.number), result.pm.registry)[0]
    with torch.no_grad():
        expected = single(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_outputs(out / "model.onnx", x), expected, atol=1e-4)
    assert study_status(out)["export"]["soup"] is None
