"""The launch recipes in ``examples/cluster/`` cannot rot: each manifest or script is parsed, and the
commands it would run on a cluster are run here against a real PostgreSQL on loopback — the creator
step, then workers — and the study must finish its budget exactly, warm start first."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from tests.conftest import TINY_STUDY, _merge
from tests.postgres import postgres_url  # noqa: F401 - fixture
from tlsearch.search.budget import FINISHED
from tlsearch.search.storage import make_storage

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RECIPES = Path(__file__).resolve().parent.parent / "examples" / "cluster"
BUDGET = 2


@pytest.fixture
def cluster_study(tmp_path: Path, shapes_dir: Path) -> Path:
    """A tiny study in ``<tmp>/study/study.yaml``: the folder stands in for the cluster's shared volume."""
    root = tmp_path / "study"
    root.mkdir()
    study = _merge(
        TINY_STUDY,
        {
            "name": f"cluster-{tmp_path.name}"[:60],
            "data": {"train": str(shapes_dir / "train"), "val": str(shapes_dir / "val")},
            "training": {"epochs": 1},
            "search": {"n_trials": BUDGET, "warm_start": True},
        },
    )
    (root / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return root / "study.yaml"


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `tlsearch`
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


def _run_all(cmds: list[list[str]], envs: list[dict[str, str]]) -> None:
    """Start every worker at once, as the cluster would, and wait for all."""
    procs = [
        subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c, e in zip(cmds, envs, strict=True)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for cmd, proc, out in zip(cmds, procs, outputs, strict=True):
        assert proc.returncode == 0, f"{cmd}\n{out}"


def _study(cluster_study: Path, url: str) -> optuna.Study:
    name = yaml.safe_load(cluster_study.read_text())["name"]
    return optuna.load_study(study_name=name, storage=make_storage(url))


def _check_created(cluster_study: Path, url: str) -> None:
    """The creator step made the study and queued its warm start, and ran no trial."""
    study = _study(cluster_study, url)
    states = {t.state for t in study.trials}
    assert states == {optuna.trial.TrialState.WAITING}, states
    assert (cluster_study.parent / "run" / "study.json").is_file()


def _check_finished(cluster_study: Path, url: str) -> None:
    trials = _study(cluster_study, url).trials
    assert sum(t.state in FINISHED for t in trials) == BUDGET, [t.state for t in trials]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert trials[0].state in FINISHED  # the warm start's first entry ran, not only sampled trials


def _kubernetes_command(manifest: Path, *, root: Path, env: dict[str, str]) -> list[str]:
    """The container's command line as the kubelet would run it: ``$(VAR)`` expanded from the env,
    the ``/study`` volume mounted at ``root``."""
    job = yaml.safe_load(manifest.read_text())
    assert job["kind"] == "Job"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    declared = {e["name"] for e in container.get("env", [])}
    missing = declared - set(env)
    assert not missing, f"the test gives no value for {missing}"
    (mount,) = container["volumeMounts"]
    argv: list[str] = [*container["command"], *container["args"]]
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in argv]
    return [
        a.replace(mount["mountPath"], str(root), 1) if a.startswith(mount["mountPath"]) else a
        for a in expanded
    ]


def test_kubernetes_indexed_job(cluster_study: Path, postgres_url: str) -> None:  # noqa: F811
    root = cluster_study.parent
    workers: dict[str, Any] = yaml.safe_load((RECIPES / "kubernetes" / "workers-job.yaml").read_text())
    assert workers["spec"]["completionMode"] == "Indexed"
    assert workers["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {"TLSEARCH_STORAGE": postgres_url}
    create = _kubernetes_command(RECIPES / "kubernetes" / "create-job.yaml", root=root, env=env)
    _run(create, _env())
    _check_created(cluster_study, postgres_url)
    envs = [{**env, "TLSEARCH_WORKER_RANK": str(i)} for i in range(2)]
    cmds = [_kubernetes_command(RECIPES / "kubernetes" / "workers-job.yaml", root=root, env=e) for e in envs]
    _run_all(cmds, [_env(TLSEARCH_WORKER_RANK=e["TLSEARCH_WORKER_RANK"]) for e in envs])
    _check_finished(cluster_study, postgres_url)


def test_slurm_job_array(cluster_study: Path, postgres_url: str) -> None:  # noqa: F811
    """The sbatch scripts run as they are (their ``#SBATCH`` lines are comments to bash), one array
    task per ``SLURM_ARRAY_TASK_ID``; launch.sh chains them with ``afterok``."""
    script = (RECIPES / "slurm" / "worker.sbatch").read_text()
    assert re.search(r"^#SBATCH --array=0-\d+$", script, re.M) and "--gres=gpu:1" in script
    assert '--dependency="afterok:' in (RECIPES / "slurm" / "launch.sh").read_text()
    study_env = {
        "TLSEARCH_STORAGE": postgres_url,
        "TLSEARCH_STUDY": str(cluster_study),
        "TLSEARCH_OUT": str(cluster_study.parent / "run"),
    }
    bash = shutil.which("bash") or "bash"
    _run([bash, str(RECIPES / "slurm" / "create.sbatch")], _env(**study_env))
    _check_created(cluster_study, postgres_url)
    tasks = [str(i) for i in range(2)]
    _run_all(
        [[bash, str(RECIPES / "slurm" / "worker.sbatch")] for _ in tasks],
        [_env(**study_env, SLURM_ARRAY_TASK_ID=i) for i in tasks],
    )
    _check_finished(cluster_study, postgres_url)


def test_ray_launcher(cluster_study: Path, postgres_url: str) -> None:  # noqa: F811
    """The Ray launcher's creator and worker command lines (Ray itself only schedules them)."""
    sys.path.insert(0, str(RECIPES / "ray"))
    try:
        import launch  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    out = str(cluster_study.parent / "run")
    _run(launch.creator_command(str(cluster_study), storage=postgres_url, out=out), _env())
    _check_created(cluster_study, postgres_url)
    cmd = launch.worker_command(str(cluster_study), storage=postgres_url, out=out)
    _run_all([cmd, cmd], [_env(**launch.worker_env(r)) for r in range(2)])
    _check_finished(cluster_study, postgres_url)
    assert (
        "OptunaSearch" not in Path(launch.__file__).read_text().split('"""', 2)[2]
    )  # the study stays in PostgreSQL
