"""One trial on several devices (``training.devices``, :mod:`tlsearch.train.distributed`), driven
for real over gloo with 2 CPU processes: the same result as one process with the same global batch,
pruning that stops every rank at the same epoch, and a dying rank that fails its trial (not the
worker) without a hang. Each 2-process trial spawns a follower (a few seconds to import torch)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from tests.conftest import assert_refused_before_work
from tlsearch.errors import ConfigError
from tlsearch.kinds import BuiltBackbone, TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.search import run_study
from tlsearch.testing import TrainEverything, synthetic_images
from tlsearch.testing._loop import decoded_images
from tlsearch.train.distributed import Parallel, fit_on_devices
from tlsearch.train.loop import Trainer, TrainSettings

FAIL, COMPLETE, PRUNED = (
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
)


TIMEOUT = 120  # the collectives' timeout in these tests: a trial that waited for it hung


@pytest.fixture(autouse=True)
def _one_thread_per_rank(monkeypatch: pytest.MonkeyPatch):
    """Two busy cores: one thread per rank, and a hang ends in two minutes instead of five."""
    monkeypatch.setenv("TLSEARCH_DDP_TIMEOUT", str(TIMEOUT))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the launcher gives each of 2 ranks half: 1
    yield
    torch.set_num_threads(threads)


def _model() -> TransferModel:
    """A small CNN without BatchNorm (whose training statistics are per shard, as in any DDP), from
    torch's own modules so the follower unpickles it without this test module."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    built = BuiltBackbone(
        module=module,
        num_features=16,
        data_config=DataConfig(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        layer_groups=[[name for name, _ in module.named_parameters()]],
        info={},
    )
    return TransferModel(built, nn.Linear(16, 3))


def test_two_processes_give_the_single_device_result_with_the_same_global_batch() -> None:
    """45 training images in global batches of 16 (the last, 13, splits 7 + 6: unequal shards), 13
    validation images (7 + 6), crop/flip drawn per image. Bugs caught: shards' gradients averaged
    instead of weighted by their share (the 7 + 6 batch), a rank's gradient left out (half the
    step), validation metrics on one rank's part only, augmentation draws not sharded with their
    images, the train loss of one rank only."""
    images, targets = synthetic_images(58, num_classes=3, size=16)
    settings = TrainSettings(
        epochs=3,
        batch_size=16,
        lr=3e-3,
        compile="never",
        feature_cache=False,
        precision="fp32",
        augment="crop_flip",
    )
    runs = {}
    for devices in (1, 2):
        model = _model()
        train = decoded_images(images[:45], targets[:45], model.data_config)
        val = decoded_images(images[45:], targets[45:], model.data_config)
        trainer = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings, seed=3)
        result = fit_on_devices(trainer, train, val, devices=devices)
        runs[devices] = (result, {k: v.detach().clone() for k, v in model.state_dict().items()})
    (one, one_weights), (two, two_weights) = runs[1], runs[2]
    assert two.extras["distributed"]["devices"] == 2 and two.extras["distributed"]["backend"] == "gloo"
    assert "distributed" not in one.extras
    assert len(two.history) == len(one.history) == 3
    for a, b in zip(one.history, two.history, strict=True):
        for key in ("accuracy", "val_loss", "train_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert sum(row[1] for row in two.extras["per_class_counts"]) == 13  # the full validation set
    assert sum(e["train_images"] for e in two.extras["epochs"]) == 3 * 45
    drift = max(float((one_weights[k] - two_weights[k]).abs().max()) for k in one_weights)
    moved = max(float((one_weights[k] - _model().state_dict()[k]).abs().max()) for k in one_weights)
    assert drift < 1e-5 < moved  # the weights trained, and the same way


def _data(model: TransferModel, n_train: int = 24, n_val: int = 8):
    images, targets = synthetic_images(n_train + n_val, num_classes=3, size=16)
    return (
        decoded_images(images[:n_train], targets[:n_train], model.data_config),
        decoded_images(images[n_train:], targets[n_train:], model.data_config),
    )


def test_a_trial_on_cached_features_runs_on_rank_0_alone() -> None:
    """A frozen backbone whose features are cached (the solved linear probe here): nothing to
    spread, so no follower is started and the result says why. Bug caught: followers spawned for a
    probe that is solved on rank 0 (or a probe solved once per rank with diverging heads)."""
    import multiprocessing

    from tlsearch_builtins.freezing._static import LinearProbe

    model = _model()
    train, val = _data(model)
    settings = TrainSettings(epochs=2, batch_size=8, compile="never", precision="fp32")
    trainer = Trainer(model, strategy=LinearProbe(), num_outputs=3, settings=settings)
    result = fit_on_devices(trainer, train, val, devices=2)
    assert result.used_feature_cache and "probe_solver" in result.extras
    assert result.extras["distributed"]["devices"] == 1
    assert "cached features" in result.extras["distributed"]["reason"]
    assert multiprocessing.active_children() == []


def test_a_failing_rank_0_frees_its_followers_at_once() -> None:
    """Rank 0 fails between epochs (its own epoch-start callback raises): the error is rank 0's
    own, and the follower, blocked in the next epoch's first all-reduce, is gone well before the
    collectives' timeout. Bug caught: a follower left waiting (a hung process per failed trial),
    rank 0's error replaced by a follower's."""
    import multiprocessing
    import time

    model = _model()
    train, val = _data(model)
    settings = TrainSettings(epochs=3, batch_size=8, compile="never", feature_cache=False, precision="fp32")
    trainer = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings)

    def fail_at_epoch_1(epoch: int) -> None:
        if epoch == 1:
            raise KeyError("rank 0 lost its way")

    started = time.monotonic()
    with pytest.raises(KeyError, match="rank 0 lost its way"):
        fit_on_devices(trainer, train, val, devices=2, on_epoch_start=fail_at_epoch_1)
    assert multiprocessing.active_children() == []
    assert time.monotonic() - started < TIMEOUT
    assert trainer.parallel is None


def test_an_unpicklable_trial_fails_before_any_follower_starts() -> None:
    """A model the followers cannot receive (a lambda inside it) fails with a message naming the
    cause before any process starts. Bug caught: a bare PicklingError, or followers spawned first."""
    import multiprocessing

    from tlsearch.errors import TlsearchError

    model = _model()
    model.head.act = _Lambda(lambda x: x)  # type: ignore[assignment]
    train, val = _data(model)
    settings = TrainSettings(epochs=1, batch_size=8, compile="never", feature_cache=False, precision="fp32")
    trainer = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings)
    with pytest.raises(TlsearchError, match="devices is 2: the trial's model and plugins must be picklable"):
        fit_on_devices(trainer, train, val, devices=2)
    assert multiprocessing.active_children() == []


class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn


def test_shards_cover_each_batch_once_and_weigh_by_their_share() -> None:
    """The pure part of the sharding, for 3 ranks: a one-line bug in the split or the weights shows here."""
    batches = [torch.arange(0, 8), torch.arange(8, 13)]
    shards = [Parallel(rank, 3).shard_epoch(batches, None)[0] for rank in range(3)]
    for i, batch in enumerate(batches):
        assert torch.cat([s[i] for s in shards]).tolist() == batch.tolist()
    ranks = [Parallel(rank, 3) for rank in range(3)]
    for p in ranks:
        p.shard_epoch(batches, None)
    assert [p._weights[1] for p in ranks] == [2 / 5, 2 / 5, 1 / 5]
    assert [Parallel(r, 3).eval_batches(7, 2) for r in range(3)][2][0].tolist() == [5, 6]
    with pytest.raises(Exception, match="2 image.*3 devices"):
        Parallel(0, 3).shard_epoch([torch.arange(2)], None)


def test_rank_0s_decision_reaches_a_follower_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision after each epoch (go on, pruned, failed, with a reason and a detail) as a follower
    reads it, over a stand-in for the broadcast: whole, beyond 255 bytes (the length's two bytes),
    in UTF-8, and a detail too long for the buffer cut rather than refused. Bug caught: the follower
    reading the wrong span of the bytes (the reason garbled or empty on every follower)."""
    wire: list[torch.Tensor] = []

    def broadcast(buf: torch.Tensor) -> torch.Tensor:  # rank 0 sends first; every rank gets its bytes
        if not wire:
            wire.append(buf.clone())
        return wire[0].clone()

    monkeypatch.setattr(Parallel, "_broadcast", staticmethod(broadcast))
    detail = "accuracy 0.41 < median 0.62 — pruned " * 8  # 320 bytes: the length needs both bytes
    Parallel(0, 2).broadcast_decision(2, "pruned", detail)
    assert Parallel(1, 2).receive_decision() == (2, "pruned", detail)
    wire.clear()
    Parallel(0, 2).broadcast_decision(3, "failed", "x" * 1000)
    code, reason, cut = Parallel(1, 2).receive_decision()
    assert (code, reason) == (3, "failed") and cut == "x" * (512 - 3 - len("failed") - 1)


def test_each_rank_of_a_cpu_trial_runs_on_the_cpu() -> None:
    """Bug caught: a rank's device lost for a CPU trial (only CUDA trials give each rank its GPU)."""
    from tlsearch.train.distributed import rank_device

    assert rank_device(torch.device("cpu"), 1) == torch.device("cpu")
    assert rank_device(torch.device("cuda", 0), 1) == torch.device("cuda", 1)  # named, never used


def test_followers_still_alive_are_asked_to_end_before_being_killed() -> None:
    """Bug caught: a follower still waiting on rank 0 not sent SIGTERM, so rank 0 waits the whole
    grace period (10 s) for it and then kills it; one that already exited is only reaped."""
    from types import SimpleNamespace

    from tlsearch.train.distributed import _terminate

    class Follower:
        def __init__(self, alive: bool) -> None:
            self.alive, self.calls = alive, []

        def is_alive(self) -> bool:
            return self.alive

        def terminate(self) -> None:
            self.calls.append("terminate")
            self.alive = False

        def kill(self) -> None:
            self.calls.append("kill")
            self.alive = False

        def join(self, timeout: float | None = None) -> None:
            self.calls.append("join")

    waiting, exited = Follower(alive=True), Follower(alive=False)
    _terminate(SimpleNamespace(processes=[waiting, exited]))
    assert waiting.calls == ["terminate", "join"] and exited.calls == ["join"]


def test_followers_map_the_decoded_image_cache_instead_of_receiving_a_copy(shapes_dir, tmp_path) -> None:
    """The decoded images travel to a follower as the cache file's path, right after the decode
    that wrote it (in memory) and on a later hit (memory-mapped), and the follower maps the same
    pixels. Bugs caught: the images pickled by value (a copy per rank and per trial); a placeholder
    that is not an empty array of image rows (a pixel row, or another row shape); only hits shared;
    the wrong file mapped."""
    import pickle

    from tlsearch.data import decode_images, scan_folder
    from tlsearch.train.distributed import _portable, _reopen

    listing = scan_folder(shapes_dir / "train")
    config = DataConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    for attempt in ("miss", "hit"):
        decoded = decode_images(listing, config, cache_dir=tmp_path, progress=False)
        assert decoded.path is not None, attempt
        shipped, path = _portable(decoded)
        assert path == str(decoded.path), attempt
        assert len(pickle.dumps(shipped)) < decoded.images.nbytes / 10, attempt
        assert shipped.images.shape == (0, *decoded.images.shape[1:]), attempt  # empty, image rows
        mapped = _reopen(shipped, path)
        assert isinstance(mapped.images, np.memmap) and np.array_equal(mapped.images, decoded.images)
        assert np.array_equal(mapped.targets, decoded.targets)
    by_hand = decoded_images(*synthetic_images(4, size=16), _model().data_config)
    shipped, path = _portable(by_hand)
    assert shipped is by_hand and path is None  # no file: the images travel as they are


def test_a_follower_out_of_memory_is_an_out_of_memory_failure() -> None:
    """A follower's CUDA out-of-memory fails the trial as ``oom`` (retried at half the batch), any
    other failure as ``error``. Bug caught: every follower failure an "error", so a trial too big
    for its GPUs is never retried smaller."""
    from tlsearch.search.failures import classify
    from tlsearch.train.distributed import RankFailed

    oom = RankFailed(
        "rank 1 of 2 failed: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    )
    assert classify(oom)[0] == "oom"
    assert classify(RankFailed("rank 1 of 2 (pid 7) was killed by SIGKILL")) == (
        "error",
        "rank 1 of 2 (pid 7) was killed by SIGKILL",
    )


# A regularizer that records, per rank, how many steps it saw (at teardown, which every rank runs),
# and on demand kills or fails rank 1 in the middle of a study's first / second trial.
RANK_PLUGIN = textwrap.dedent('''
    import json, os, signal
    from pathlib import Path
    from tlsearch import hookimpl
    from tlsearch.kinds import Regularizer

    class RankProbe(Regularizer):
        """Counts this rank's steps; TLSEARCH_TEST_DDP_FAULT=1 kills rank 1 in trial 0, raises in trial 1."""
        name = "rank_probe"
        hyperparameters = {}

        def setup(self, model, *, num_outputs, task):
            self.steps = 0

        def penalty(self, model, *, images, features):
            self.steps += 1
            out = Path(os.environ["TLSEARCH_TEST_DDP_DIR"])
            if os.environ.get("RANK") == "1" and os.environ.get("TLSEARCH_TEST_DDP_FAULT") and self.steps == 2:
                done = sorted(out.glob("fault-*"))
                if len(done) == 0:
                    (out / "fault-killed").write_text("")
                    os.kill(os.getpid(), signal.SIGKILL)
                if len(done) == 1:
                    (out / "fault-raised").write_text("")
                    raise ValueError("rank one's shard exploded")
            return None

        def teardown(self, model):
            rank = os.environ.get("RANK", "0")
            out = Path(os.environ["TLSEARCH_TEST_DDP_DIR"])
            with open(out / f"steps-{rank}.jsonl", "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "steps": self.steps}) + "\\n")

    @hookimpl
    def tlsearch_epoch_end(trial, epoch, metrics, out_dir):
        if os.environ.get("TLSEARCH_TEST_DDP_PRUNE") and epoch == 1:
            import optuna
            raise optuna.TrialPruned("pruned by the test at epoch 1")

    @hookimpl
    def tlsearch_register_regularizers(register):
        register.add(RankProbe)
''')


@pytest.fixture
def ddp_study(write_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    plugin = tmp_path / "rank_plugin.py"
    plugin.write_text(RANK_PLUGIN)
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("TLSEARCH_TEST_DDP_DIR", str(records))

    def make(epochs: int):
        return write_study(
            plugins=[str(plugin)],
            space={"freezing": ["full_finetune"], "regularizers": {"rank_probe": {"enabled": True}}},
            training={"epochs": epochs, "devices": 2, "device": "cpu", "augment": "none", "lr": 1e-3},
            search={"pruner": "none", "n_trials": 1},  # one complete (or pruned) trial ends the study
        )

    return make, records


def _steps(records: Path, rank: int) -> list[int]:
    path = records / f"steps-{rank}.jsonl"
    return [json.loads(line)["steps"] for line in path.read_text().splitlines()] if path.exists() else []


def _trials(result) -> list[optuna.trial.FrozenTrial]:
    return sorted(result.study.get_trials(deepcopy=False), key=lambda t: t.number)


@pytest.mark.slow
def test_pruning_on_rank_0_stops_every_rank_at_the_same_epoch(ddp_study, tmp_path, monkeypatch) -> None:
    """Rank 0's epoch-end hook prunes after epoch 1 of 4 (48 images, global batch 16: 3 steps an
    epoch). Bugs caught: the decision not broadcast (rank 1 trains on, or waits forever on a rank 0
    that moved on), broadcast one epoch late, rank 1 not ending its process."""
    make, records = ddp_study
    monkeypatch.setenv("TLSEARCH_TEST_DDP_PRUNE", "1")
    result = run_study(make(epochs=4), out_dir=tmp_path / "out", progress=False)
    (trial,) = _trials(result)
    assert trial.state == PRUNED
    assert len(trial.user_attrs["history"]) == 2
    assert _steps(records, 0) == [6] and _steps(records, 1) == [6]  # both ranks: epochs 0 and 1, no more


@pytest.mark.slow
def test_a_dying_rank_fails_its_trial_and_the_worker_runs_the_next(ddp_study, tmp_path, monkeypatch) -> None:
    """Trial 0: rank 1 is SIGKILLed at its second step; trial 1: rank 1 raises; trial 2 trains (the
    budget: one complete trial).
    Bugs caught: the worker (or the study) dying with the rank, rank 0 hanging on the lost peer
    (the collective timeout would show in its duration), a reason that does not name the rank and its end,
    a follower left running after its trial failed."""
    make, records = ddp_study
    monkeypatch.setenv("TLSEARCH_TEST_DDP_FAULT", "1")
    result = run_study(make(epochs=2), out_dir=tmp_path / "out", progress=False)
    killed, raised, trained = _trials(result)
    assert killed.state == FAIL and raised.state == FAIL and trained.state == COMPLETE
    assert "rank 1 of 2" in killed.user_attrs["failure"] and "SIGKILL" in killed.user_attrs["failure"]
    assert "rank 1 of 2 failed" in raised.user_attrs["failure"]
    assert "rank one's shard exploded" in raised.user_attrs["failure"]
    for failed in (killed, raised):  # rank 0 saw the lost peer at once: no collective waited for its timeout
        assert (failed.datetime_complete - failed.datetime_start).total_seconds() < TIMEOUT
    assert trained.user_attrs["speed"]["distributed"]["devices"] == 2
    assert _steps(records, 1)[-1] == 6  # the last trial's follower trained both epochs
    assert (tmp_path / "out" / "trials" / "0002").is_dir()  # the completed trial's checkpoint


def test_devices_are_checked_before_any_work(write_study, tmp_path) -> None:
    """devices < 1, a device index with several devices, CUDA devices this machine lacks: config
    errors naming the field and the value, before the study folder exists."""
    assert_refused_before_work(
        write_study("a.yaml", training={"devices": 0}), tmp_path / "a", ["devices", "0"]
    )
    assert_refused_before_work(
        write_study("b.yaml", training={"devices": 2, "device": "cuda:1"}),
        tmp_path / "b",
        ["devices: 2", "cuda:1"],
    )
    if not torch.cuda.is_available():
        assert_refused_before_work(
            write_study("c.yaml", training={"devices": 2, "device": "cuda"}), tmp_path / "c", ["cuda"]
        )
    else:
        count = torch.cuda.device_count()
        assert_refused_before_work(
            write_study("c.yaml", training={"devices": count + 1, "device": "cuda"}),
            tmp_path / "c",
            [f"only {count} CUDA device"],
        )
    with pytest.raises(ConfigError, match="validation set has only 1"):
        model = _model()
        images, targets = synthetic_images(5, num_classes=3, size=16)
        train = decoded_images(images[:4], targets[:4], model.data_config)
        val = decoded_images(images[4:], targets[4:], model.data_config)
        settings = TrainSettings(
            epochs=1, batch_size=4, compile="never", feature_cache=False, precision="fp32"
        )
        fit_on_devices(
            Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings),
            train,
            val,
            devices=2,
        )


def test_worker_devices_option_takes_a_count_or_gpu_indices(write_study, tmp_path, monkeypatch) -> None:
    """``tlsearch worker --devices``: 4 is a count, 0,2 pins those GPUs (CUDA_VISIBLE_DEVICES) and
    counts them; anything else exits 2 naming the option, and 65 devices is the config's error."""
    import os

    import click
    from click.testing import CliRunner

    from tlsearch.cli import main
    from tlsearch.cli.worker import parse_devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so what parse_devices sets is undone
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert parse_devices("4") == 4 and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert parse_devices("0, 2") == 2 and os.environ["CUDA_VISIBLE_DEVICES"] == "0,2"
    for bad in ("0", "-1", "1,1", "a,b", "2,"):
        with pytest.raises(click.BadParameter, match=repr(bad)):
            parse_devices(bad)
    study = write_study()
    cli = CliRunner().invoke(main, ["worker", str(study), "--out", str(tmp_path / "o"), "--devices", "x"])
    assert cli.exit_code == 2 and "--devices" in cli.output
    cli = CliRunner().invoke(main, ["worker", str(study), "--out", str(tmp_path / "o"), "--devices", "65"])
    assert cli.exit_code == 2 and "devices" in cli.output and "65" in cli.output, cli.output


def test_a_decision_of_exactly_256_bytes_keeps_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: the length's high byte computed with another base than the low byte's 256 (a
    text of exactly 256 bytes read back as empty or cut), over the same stand-in broadcast."""
    wire: list[torch.Tensor] = []

    def broadcast(buf: torch.Tensor) -> torch.Tensor:
        if not wire:
            wire.append(buf.clone())
        return wire[0].clone()

    detail = "d" * (256 - len("pruned") - 1)  # reason, NUL and detail: 256 bytes
    monkeypatch.setattr(Parallel, "_broadcast", staticmethod(broadcast))
    Parallel(0, 2).broadcast_decision(2, "pruned", detail)
    assert Parallel(1, 2).receive_decision() == (2, "pruned", detail)


def test_the_epochs_buffers_are_averaged_over_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a stand-in all-reduce where the other rank sent the same values (the sum doubles):
    BatchNorm's running statistics come back as the ranks' mean, the loss and image count as their
    sums. Bug caught: the buffers scaled by the world size instead of its inverse."""
    import tlsearch.train.distributed as distributed

    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, *a, **k: t.mul_(2))
    norm = nn.BatchNorm1d(3)
    norm.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    norm.running_var.fill_(4.0)
    loss, seen = Parallel(0, 2).end_epoch([norm], torch.tensor(1.5), 10)
    assert norm.running_mean.tolist() == [1.0, 2.0, 3.0] and norm.running_var.tolist() == [4.0] * 3
    assert (float(loss), seen) == (3.0, 20)
    assert int(norm.num_batches_tracked) == 0  # an integer buffer is not averaged


def test_a_cache_file_of_other_rows_is_not_mapped_by_the_followers(tmp_path) -> None:
    """Bug caught: a cache file whose shape differs from the images (same dtype) taken for them, so
    a follower would map other pixels; only a file of the same shape and dtype is shared."""
    from dataclasses import replace

    from tlsearch.train.distributed import _portable

    data = decoded_images(*synthetic_images(4, size=16), _model().data_config)
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((3, *data.images.shape[1:]), dtype=data.images.dtype))
    stale = replace(data, path=other)
    shipped, path = _portable(stale)
    assert shipped is stale and path is None
    np.save(other, data.images.astype(np.float64))  # same shape, other dtype
    shipped, path = _portable(stale)
    assert shipped is stale and path is None


def _two_device_trainer() -> tuple[Trainer, object, object]:
    model = _model()
    train, val = _data(model, n_val=2)
    settings = TrainSettings(epochs=1, batch_size=8, compile="never", feature_cache=False, precision="fp32")
    return Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings), train, val


class _Stop(Exception):
    pass


def test_two_devices_take_a_validation_set_of_two_images_on_an_os_chosen_port(monkeypatch) -> None:
    """One validation image per rank is enough, and rank 0's store listens on a port the OS picks
    (0: two trials on one machine never collide). Bugs caught: a validation set as large as the
    device count refused; a fixed port. The store is a stand-in that stops before any spawn."""
    import tlsearch.train.distributed as distributed

    seen: dict[str, object] = {}

    def store(host, port, world, **kw):  # type: ignore[no-untyped-def]
        seen.update(host=host, port=port, world=world, is_master=kw.get("is_master"))
        raise _Stop

    monkeypatch.setattr(distributed.dist, "TCPStore", store)
    trainer, train, val = _two_device_trainer()
    with pytest.raises(_Stop):
        fit_on_devices(trainer, train, val, devices=2)
    assert seen == {"host": "127.0.0.1", "port": 0, "world": 2, "is_master": True}
    with pytest.raises(ConfigError, match="devices is 3 but the validation set has only 2 image"):
        fit_on_devices(trainer, train, val, devices=3)


def test_an_unknown_follower_failure_is_described_by_its_message() -> None:
    """Bug caught: a failure that is neither a raised exception nor an exit described as nothing."""
    from tlsearch.train.distributed import _describe

    assert _describe(RuntimeError("store closed"), 2) == "a follower rank failed: store closed"
