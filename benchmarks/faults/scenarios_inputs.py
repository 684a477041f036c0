"""The hostile-input rows: crafted study files, crafted images, a model whose metadata lies.

Nothing is trained to be lost here; the bar is the issue's: a clear refusal (the expected exit
code, a message naming the file or key, no traceback) or a study that finishes its budget, and no
hang: the command ends within 10 s beyond the CLI's own start-up (``tlsearch --version``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import Outcome, Sandbox, _env, complete_trials, scenario
from PIL import Image

HANG_BAR_S = 10.0


def _startup(sandbox: Sandbox, args: list[str]) -> float:
    """The command's own start-up: the same command on a file that does not exist."""
    missing = [args[0], str(sandbox.root / "missing" / Path(args[1]).name), *args[2:]]
    started = time.monotonic()
    subprocess.run([sandbox.python, "-m", "tlsearch", *missing], capture_output=True, env=_env(), check=False)
    return time.monotonic() - started


def _refused(
    sandbox: Sandbox,
    args: list[str],
    *,
    code: int,
    names: str,
    finished: int | None = None,
    out: Path | None = None,
) -> Outcome:
    """Run ``tlsearch ARGS``; held when it exits ``code`` within the bar, without a traceback,
    with ``names`` in its output (and, with ``finished``, that many complete trials in ``out``)."""
    startup = _startup(sandbox, args)
    started = time.monotonic()
    done = subprocess.run(
        [sandbox.python, "-m", "tlsearch", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=sandbox.timeout,
    )
    took = time.monotonic() - started
    sandbox.log.append(f"$ {' '.join(args)} -> {done.returncode}\n{done.stderr[-2000:]}")
    text = done.stdout + done.stderr
    error = next((line for line in text.splitlines() if line.startswith("error:")), "")
    error = error.replace(str(sandbox.root), "…")  # the sandbox's own path says nothing
    bar = HANG_BAR_S if finished is None else sandbox.timeout
    ok = done.returncode == code and "Traceback" not in text and names in text and took - startup < bar
    complete = 0
    if finished is not None and out is not None:
        complete = len(complete_trials(str(out / "study.journal")))
    note = (
        f"exit {done.returncode} in {took:.1f} s (start-up {startup:.1f} s); {error[:110] or 'no error line'}"
    )
    return Outcome(finished or 0, complete if finished else 0, 0, note, ok)


def _study_file(sandbox: Sandbox, text: str) -> Path:
    path = sandbox.root / "crafted.yaml"
    path.write_text(text)
    return path


def _billion_laughs() -> str:
    names = [*"abcdefgh", "name"]
    lines = [f"a: &a [{', '.join(['lol'] * 9)}]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names[:-1], names[1:], strict=True)]
    return "\n".join(lines) + "\n"


@scenario("YAML alias bomb (< 1 KB, 9**9 strings): exit 2 at once")
def yaml_bomb(sandbox: Sandbox) -> Outcome:
    study = _study_file(sandbox, _billion_laughs())
    return _refused(sandbox, ["run", str(study), "--out", str(sandbox.root / "out")], code=2, names="aliases")


@scenario("YAML nested 10,000 deep (20 KB): exit 2, no traceback")
def yaml_deep(sandbox: Sandbox) -> Outcome:
    study = _study_file(sandbox, "name: " + "[" * 10_000 + "]" * 10_000 + "\n")
    return _refused(
        sandbox, ["run", str(study), "--out", str(sandbox.root / "out")], code=2, names=str(study)
    )


@scenario("YAML of 1 MB (half a million values): exit 2 at once")
def yaml_megabyte(sandbox: Sandbox) -> Outcome:
    study = _study_file(sandbox, "name: [" + "1," * 499_996 + "1]\n")
    return _refused(sandbox, ["run", str(study), "--out", str(sandbox.root / "out")], code=2, names="values")


def _data(sandbox: Sandbox, change: Callable[[Path], None]) -> Path:
    """A copy of the tiny data set with ``change(train_folder)`` applied."""
    data = sandbox.root / "data"
    shutil.copytree(sandbox.data, data, symlinks=True)
    change(data / "train")
    return data


def _run_on(
    sandbox: Sandbox, folder: Path, *, code: int, names: str, n_trials: int = 1, **extra: object
) -> Outcome:
    study = sandbox.study(n_trials=n_trials, **extra)
    text = study.read_text().replace(str(sandbox.data), str(folder))
    study.write_text(text)
    out = sandbox.root / "out"
    finished = n_trials if code == 0 else None
    return _refused(
        sandbox,
        ["run", str(study), "--out", str(out), "--console", "plain"],
        code=code,
        names=names,
        finished=finished,
        out=out,
    )


def _thin(folder: Path) -> None:
    Image.new("L", (1, 3_000_000)).save(folder / "circle" / "thin.png")  # about 6 KB


@scenario("1 x 3,000,000 PNG (6 KB) in the data: exit 2 naming it")
def thin_png(sandbox: Sandbox) -> Outcome:
    return _run_on(sandbox, _data(sandbox, _thin), code=2, names="thin.png")


@scenario("1 x 3,000,000 PNG with on_bad_image: skip: skipped, study finishes")
def thin_png_skip(sandbox: Sandbox) -> Outcome:
    data = _data(sandbox, _thin)
    base = sandbox.study()
    import yaml

    config = yaml.safe_load(base.read_text())
    return _run_on(sandbox, data, code=0, names="skipped", data={**config["data"], "on_bad_image": "skip"})


def _sixteen_bit(folder: Path) -> None:
    grey = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(grey).save(folder / "circle" / "g16.png")


@scenario("16-bit PNG in the data: decoded by scaling, study finishes")
def png_16_bit(sandbox: Sandbox) -> Outcome:
    return _run_on(sandbox, _data(sandbox, _sixteen_bit), code=0, names="trial 0")


def _exif(folder: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(folder / "circle" / "rot.jpg", exif=exif)


@scenario("EXIF-rotated JPEG in the data: oriented, study finishes")
def exif_jpeg(sandbox: Sandbox) -> Outcome:
    return _run_on(sandbox, _data(sandbox, _exif), code=0, names="trial 0")


@scenario("class folder that is a symlink loop: exit 2 naming it")
def symlink_loop(sandbox: Sandbox) -> Outcome:
    return _run_on(sandbox, _data(sandbox, lambda f: (f / "loop").symlink_to("loop")), code=2, names="loop")


@scenario("class folder linked to .. (outside the data root): exit 2 naming it")
def symlink_up(sandbox: Sandbox) -> Outcome:
    return _run_on(
        sandbox,
        _data(sandbox, lambda f: (f / "up").symlink_to("..")),
        code=2,
        names="outside the data folder",
    )


@scenario("image symlinked to a file outside the data root: exit 2 naming it")
def symlink_file_out(sandbox: Sandbox) -> Outcome:
    def link(folder: Path) -> None:
        outside = sandbox.root / "outside.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(outside)
        (folder / "circle" / "link.png").symlink_to(outside)

    return _run_on(sandbox, _data(sandbox, link), code=2, names="link.png")


@scenario("empty class folder: exit 2 naming it")
def empty_class(sandbox: Sandbox) -> Outcome:
    return _run_on(sandbox, _data(sandbox, lambda f: (f / "empty").mkdir()), code=2, names="empty")


def _non_utf8(folder: Path) -> None:
    source = next((folder / "circle").glob("*.png"))
    shutil.copy(source, os.fsdecode(bytes(folder / "circle") + b"/\xff\xfe.png"))


@scenario("image file name that is not UTF-8: study finishes")
def non_utf8_name(sandbox: Sandbox) -> Outcome:
    return _run_on(sandbox, _data(sandbox, _non_utf8), code=0, names="trial 0")


@scenario("ONNX metadata that lies (2 labels for 4 outputs): predict refuses naming the key")
def lying_model(sandbox: Sandbox) -> Outcome:
    import onnx

    study, out = sandbox.study(n_trials=1, export={"enabled": True}), sandbox.root / "out"
    done = sandbox.run(study, out)
    model = out / "model.onnx"
    if done.returncode != 0 or not model.is_file():
        return Outcome(0, 0, 0, f"export failed: exit {done.returncode}", False)
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == "tlsearch":
            meta = json.loads(prop.value)
            meta["labels"] = meta["labels"][:2]
            prop.value = json.dumps(meta)
    lying = sandbox.root / "lying.onnx"
    onnx.save(proto, str(lying))
    image = next((sandbox.data / "val").rglob("*.png"))
    return _refused(sandbox, ["predict", str(lying), str(image)], code=2, names="labels")
