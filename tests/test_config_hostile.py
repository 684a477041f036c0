"""Hostile study files: each is a clear config error (exit 2, no traceback), quickly, writing nothing.

Crafted YAML (alias bombs, deep nesting, a megabyte of values, repeated keys, bytes that are not
UTF-8), numbers that are not finite, a storage that cannot work, an export path that climbs out of
the study folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tlsearch.cli import main
from tlsearch.config import load_config, parse_config
from tlsearch.errors import ConfigError
from tlsearch.search import prepare
from tlsearch.study_file import MAX_BYTES

#: a crafted input of up to 1 MB must be refused well within this (the issue's bar: no hang over 10 s)
HANG_BAR_S = 10.0


def _billion_laughs() -> str:
    """Nine levels of nine aliases each: 9**9 strings from under 1 KB (the last level is ``name``)."""
    names = [*"abcdefgh", "name"]
    lines = [f"a: &a [{', '.join(['lol'] * 9)}]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names[:-1], names[1:], strict=True)]
    return "\n".join(lines) + "\n"


def _run(args: list[str]) -> Any:
    return CliRunner().invoke(main, ["run", *args])


def _base_text(write_study) -> str:
    return write_study().read_text()


def test_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_billion_laughs())
    assert len(bomb.read_bytes()) < 1000  # expands to 9**9 strings
    start = time.perf_counter()
    result = _run([str(bomb), "--out", str(tmp_path / "out")])
    assert time.perf_counter() - start < 2
    assert result.exit_code == 2, result.output
    assert f"{bomb} line 2: YAML aliases are not allowed in study files" in result.output
    assert "Traceback" not in result.output and len(result.output) < 1000
    assert not (tmp_path / "out").exists()


def _megabyte(kind: str) -> str:
    n = 1_000_000
    if kind == "flow_list":  # half a million values in one list
        return "name: [" + "1," * (n // 2 - 4) + "1]\n"
    if kind == "many_keys":
        return "".join(f"k{i}: {i}\n" for i in range(n // 16))
    if kind == "long_name":  # echoed in the message of the name's pattern
        return "name: " + "a" * (n - 100) + "!\ndata: {folder: /}\nspace: {backbone: [timm]}\n"
    if kind == "long_path":  # a file name the OS refuses
        return "name: x\ndata: {folder: " + "d" * (n - 100) + "}\nspace: {backbone: [timm]}\n"
    if kind == "long_key":
        return "name: x\n? " + "k" * (n - 100) + "\n: 1\n"  # an explicit key: no length limit
    if kind == "deep":  # under libyaml's own limit, over tlsearch's
        return "name: " + "[" * 900 + "]" * 900 + "\n"
    if kind == "very_deep":
        return "name: " + "[" * 10_000 + "]" * 10_000 + "\n"
    if kind == "padded_bomb":
        return "# " + "x" * (n - 2000) + "\n" + _billion_laughs()
    if kind == "too_big":
        return "name: x\n" + "#" * MAX_BYTES + "\n"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("flow_list", "more than 20,000 values"),
        ("many_keys", "more than 20,000 values"),
        ("long_name", "name: String should match pattern"),
        ("long_path", "data.folder: folder '"),
        ("long_key", "unknown key 'kkkkk"),
        ("deep", "nested more than 32 deep"),
        ("very_deep", "not valid YAML"),
        ("padded_bomb", "YAML aliases are not allowed"),
        ("too_big", "larger than 1024 KiB"),
    ],
)
def test_a_crafted_megabyte_is_a_short_error_in_seconds(tmp_path: Path, kind: str, expected: str) -> None:
    study = tmp_path / "crafted.yaml"
    study.write_text(_megabyte(kind))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(study)
    assert time.perf_counter() - start < HANG_BAR_S
    message = str(err.value)
    assert expected in message and str(study) in message
    assert len(message) < 2000, f"{len(message)} characters echoed"


def test_deep_nesting_exits_2_without_a_traceback(tmp_path: Path) -> None:
    study = tmp_path / "deep.yaml"
    study.write_text(_megabyte("very_deep"))
    result = _run([str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not isinstance(result.exception, RecursionError)


def test_a_huge_value_in_the_space_is_echoed_short(write_study, tmp_path: Path) -> None:
    study = write_study(space={"regularizers": {"label_smoothing": {"epsilon": "x" * 100_000}}})
    with pytest.raises(ConfigError) as err:
        prepare(study, out_dir=tmp_path / "out")
    assert "label_smoothing.epsilon" in str(err.value) and len(str(err.value)) <= 2000


@pytest.mark.parametrize("where", ["top level", "nested"])
def test_a_key_given_twice_is_refused_with_both_lines(write_study, tmp_path: Path, where: str) -> None:
    text = _base_text(write_study)
    lines = text.splitlines()
    if where == "top level":
        key, first, text = "name", 1, text + "name: other\n"
    else:
        key, first = "n_trials", lines.index("  n_trials: 3") + 1
        text = text.replace("  n_trials: 3\n", "  n_trials: 3\n  n_trials: 5\n")
    again = text.splitlines().index("name: other" if where == "top level" else "  n_trials: 5") + 1
    study = tmp_path / "dup.yaml"
    study.write_text(text)
    result = _run([str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{study} line {again}: key {key!r} is given twice (first on line {first})" in result.output
    assert not (tmp_path / "out").exists()


def test_a_latin1_study_file_names_the_byte_and_asks_for_utf8(write_study, tmp_path: Path) -> None:
    text = _base_text(write_study).replace("name: tiny", "name: tiny # café")
    study = tmp_path / "latin1.yaml"
    study.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    result = _run([str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{study} line 1: the study file must be UTF-8 text, but byte {offset} (0xe9)" in result.output
    assert "Traceback" not in result.output


def test_a_utf8_byte_order_mark_is_fine(write_study) -> None:
    study = write_study()
    study.write_bytes(b"\xef\xbb\xbf" + study.read_bytes())
    assert load_config(study).name == "tiny"


NON_FINITE = [
    ({"training": {"lr": float("nan")}}, "training.lr"),
    ({"training": {"lr": float("inf")}}, "training.lr"),
    ({"training": {"lr": "nan"}}, "training.lr"),  # a string pydantic would read as NaN
    ({"training": {"lr": {"low": float("nan"), "high": 1e-2}}}, "training.lr.low"),
    ({"training": {"lr": {"low": 1e-4, "high": float("inf")}}}, "training.lr.high"),
    ({"search": {"constraints": {"latency_ms": float("nan")}}}, "search.constraints.latency_ms"),
    ({"search": {"timeout": float("inf")}}, "search.timeout"),
    ({"export": {"tolerance": float("nan")}}, "export.tolerance"),
    (
        {"space": {"regularizers": {"label_smoothing": {"epsilon": {"low": 0.0, "high": float("nan")}}}}},
        "space.regularizers.label_smoothing.epsilon.high",
    ),
    ({"space": {"head": {"mlp": {"dropout": [0.1, float("-inf")]}}}}, "space.head.mlp.dropout[1]"),
]


@pytest.mark.parametrize(("change", "field"), NON_FINITE, ids=[f for _, f in NON_FINITE])
def test_non_finite_numbers_are_refused_naming_the_field(write_study, tmp_path: Path, change, field) -> None:
    study = write_study(**change)
    with pytest.raises(ConfigError) as err:
        prepare(study, out_dir=tmp_path / "out")
    message = str(err.value)
    assert f"{study}: {field}:" in message and "finite number" in message, message


def test_a_nan_lr_range_exits_2(tmp_path: Path, write_study) -> None:
    study = write_study()
    study.write_text(study.read_text().replace("low: 0.001", "low: .nan"))
    result = _run([str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "training.lr.low: nan is not a finite number" in result.output
    assert not (tmp_path / "out").exists()


def test_non_finite_numbers_from_a_script_are_refused() -> None:
    raw = yaml.safe_load("name: x\ndata: {folder: /}\nspace: {backbone: [timm]}\ntraining: {lr: .inf}\n")
    with pytest.raises(ConfigError, match=r"<study>: training\.lr: inf is not a finite number"):
        parse_config(raw)


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("bogus://x/y", "storage 'bogus://x/y' is not valid; valid forms"),
        (
            "postgresql+nosuchdriver://nobody@127.0.0.1/x",
            "knows no database driver 'postgresql+nosuchdriver'",
        ),
        ("postgresql://nobody@127.0.0.1:port/x", "is not a valid database URL"),
        ("postgresql://nobody@127.0.0.1:1/x", "127.0.0.1"),  # nothing listens on port 1
    ],
    ids=["scheme", "driver", "url", "unreachable"],
)
@pytest.mark.parametrize("given", ["study", "option"])
def test_a_bad_storage_exits_2_and_writes_nothing(
    write_study, tmp_path: Path, storage: str, expected: str, given: str
) -> None:
    if given == "option" and "127.0.0.1:1/" in storage:
        pytest.skip("one unreachable server is enough (the connection is retried for ~12 s)")
    out = tmp_path / "out"
    if given == "study":
        study = write_study(storage=storage)
        args = [str(study), "--out", str(out)]
    else:
        study = write_study()
        args = [str(study), "--out", str(out), "--storage", storage]
    result = _run(args)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    if "127.0.0.1:1/" not in storage:  # checked before any work: the message says where it came from
        assert (f"{study}: storage" if given == "study" else "--storage:") in result.output
    assert not out.exists()  # the storage is opened before the images are checked: nothing written


@pytest.mark.parametrize("path", ["../../../x.onnx", "sub/../../x.onnx", "..", "", "."])
def test_a_relative_export_path_must_stay_in_the_study_folder(write_study, tmp_path: Path, path: str) -> None:
    study = write_study(export={"enabled": True, "path": path})
    result = _run([str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{study}: export.path:" in result.output and repr(path) in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", ["model.onnx", "export/best.onnx", "/abs/on/purpose.onnx", "a/../b.onnx"])
def test_export_paths_inside_the_folder_or_absolute_are_accepted(write_study, path: str) -> None:
    assert load_config(write_study(export={"path": path})).export.path == path


def test_an_override_into_a_value_that_is_not_a_mapping_is_a_config_error(write_study) -> None:
    study = write_study(search=None)
    study.write_text(study.read_text().replace("search: null", "search: 5"))
    with pytest.raises(ConfigError, match=r"search: expected a mapping \(to set search\.n_trials\), got 5"):
        load_config(study, overrides={"search.n_trials": 2})


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"source": null}', '{"config": [1], "source": null}', "[" * 100_000 + "]" * 100_000],
    ids=["not json", "no config", "config not a mapping", "deep"],
)
def test_a_damaged_study_json_is_a_config_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "study.json").write_text(content)
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'study.json'}: not a study.json that tlsearch wrote" in result.output
    assert "Traceback" not in result.output and len(result.output) < 1000


def test_a_relative_journal_of_the_study_lives_in_the_study_folder(write_study, tmp_path: Path) -> None:
    study = write_study(storage="../../elsewhere.journal")
    result = _run([str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{study}: storage: a relative journal file must stay inside the study folder" in result.output
    assert not (tmp_path / "out").exists()

    from tlsearch.search import StudyDir

    config = load_config(write_study(storage="db/my.journal"))
    assert StudyDir(tmp_path / "out").storage(config) == str(
        (tmp_path / "out" / "db" / "my.journal").resolve()
    )
    assert StudyDir(tmp_path / "out").storage(config, "x.journal") == "x.journal"  # --storage: as given
    absolute = str(tmp_path / "kept" / "elsewhere.journal")
    assert StudyDir(tmp_path / "out").storage(load_config(write_study(storage=absolute))) == absolute


def test_a_bad_storage_message_shows_no_password_and_no_megabytes(write_study, tmp_path: Path) -> None:
    for storage in (
        "bogus://user:s3cret@host/db",
        "postgresql+nosuch://user:s3cret@host/db",
        "bogus://" + "h" * 10**6,
    ):
        result = _run([str(write_study()), "--out", str(tmp_path / "out"), "--storage", storage])
        assert result.exit_code == 2, result.output
        assert "s3cret" not in result.output and "user:***@host" in result.output or "hhhh" in result.output
        assert len(result.output) < 1000
