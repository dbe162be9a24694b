"""The ``detbatch`` command line: how it reports errors, and how flags and ``--set`` reach the config.

A user's error (any :class:`detbatch.errors.DetbatchError`) is one message and exit status 2; a run that
started and stopped (:class:`detbatch.errors.RunFailed`) exits 1; anything else is a bug and keeps its
traceback. No test here starts Ray.
"""

import functools
from pathlib import Path

import pytest

from detbatch.cli import DETECT_FLAGS, TRAIN_FLAGS, build_parser, load_job_config, main
from detbatch.config import ConfigError, load_config
from detbatch.detect.config import DetectConfig
from detbatch.errors import RunFailed
from detbatch.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DETECT_YAML = str(REPO / "configs" / "detect.yaml")
TRAIN_YAML = str(REPO / "configs" / "train.yaml")


def _value(config, key):
    return functools.reduce(getattr, key.split("."), config)


def _load(argv):
    """``argv`` -> the job config the CLI would run with."""
    args = build_parser().parse_args(argv)
    if args.command == "detect":
        return load_job_config(DetectConfig, args, DETECT_FLAGS)
    return load_job_config(TrainConfig, args, TRAIN_FLAGS)


def _one_error(err, command):
    """The stderr of a reported user error: one ``detbatch COMMAND: error:`` message, no traceback."""
    assert "Traceback" not in err
    first, *rest = err.splitlines()
    assert first.startswith(f"detbatch {command}: error: ")
    # A config with several bad keys lists them on indented lines below the message; nothing else follows.
    assert all(line.startswith("  ") for line in rest), err
    return first


# --- error reporting (main) ---------------------------------------------------------------------------


def test_cli_reports_config_errors(tmp_path, capsys):
    from detbatch.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  batch_sise: 4\n")
    assert main(["detect", "--config", str(path), "--input", "x", "--output", "y"]) == 2
    assert "unknown key 'inference.batch_sise'" in capsys.readouterr().err


def test_unknown_config_key_exits_2_with_one_message(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  batch_sise: 4\n")
    assert main(["detect", "--config", str(path), "--input", "x", "--output", "y"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_error(err, "detect") == f"detbatch detect: error: invalid config {path}:"
    assert "unknown key 'inference.batch_sise'" in err


def test_missing_input_folder_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main(["detect", "--input", str(missing), "--output", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [_one_error(err, "detect")]
    assert f"error: {missing}: no such file, folder or prefix" in err
    assert not (tmp_path / "out").exists()


def test_missing_input_is_named_before_ray_starts(tmp_path):
    """A mistyped --input is named at once: no Ray is started (or joined) to list it. A fresh process,
    since this one may be connected to the test cluster already."""
    import subprocess
    import sys

    code = ("import ray, sys; from detbatch.cli import main; "
            f"rc = main(['detect', '--input', {str(tmp_path / 'typo')!r}, '--output', {str(tmp_path / 'out')!r}]); "
            "print('rc', rc, 'ray', ray.is_initialized())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["rc", "2", "ray", "False"], done.stdout + done.stderr[-2000:]
    assert "no such file, folder or prefix" in done.stderr


def test_set_unknown_key_exits_2_naming_it(capsys):
    assert main(["detect", "--input", "x", "--output", "y", "--set", "inference.max_actor=16"]) == 2
    err = capsys.readouterr().err
    _one_error(err, "detect")
    assert "unknown key 'inference.max_actor'" in err


def test_train_without_data_names_the_command(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [_one_error(err, "train")]
    assert "no training data: give --train-annotations" in err


def test_run_failed_exits_1(monkeypatch, tmp_path, capsys):
    import detbatch.detect

    def stopped(config):
        raise RunFailed("2 of 5 units did not complete; rerun the same command to finish them")

    monkeypatch.setattr(detbatch.detect, "run_detect", stopped)
    assert main(["detect", "--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["detbatch detect: error: 2 of 5 units did not complete; rerun the same command to finish them"]


# ValueError and FileNotFoundError too: detbatch's InputError and OutputExistsError derive from them, and
# catching those bases instead of DetbatchError would hide bugs behind a one-line "error".
@pytest.mark.parametrize("error", [KeyError, ValueError, FileNotFoundError])
def test_a_bug_in_detect_propagates(monkeypatch, tmp_path, capsys, error):
    import detbatch.detect.driver

    def broken(*args, **kwargs):
        raise error("not a user error")

    # A library function run_detect calls before Ray starts (the input looked up).
    monkeypatch.setattr(detbatch.detect.driver, "input_shape", broken)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(error, match="not a user error"):
        main(["detect", "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out")])
    assert "error:" not in capsys.readouterr().err


def test_a_bug_in_a_command_propagates(monkeypatch, capsys):
    import detbatch.models

    def broken():
        raise KeyError("fasterrcnn")

    monkeypatch.setattr(detbatch.models, "model_names", broken)
    with pytest.raises(KeyError, match="fasterrcnn"):
        main(["models"])
    assert capsys.readouterr().err == ""


# --- flags, --set and the config file (load_job_config) --------------------------------------------------


def test_cli_parses_every_documented_flag():
    args = build_parser().parse_args(
        ["detect", "--config", "c", "--input", "i", "--output", "o", "--model", "m", "--weights", "none",
         "--score-threshold", "0.3", "--batch-size", "2", "--overwrite"]
    )
    assert (args.input, args.output, args.model, args.weights, args.score_threshold, args.batch_size, args.overwrite) == (
        "i", "o", "m", "none", 0.3, 2, True)


def test_readme_set_example_overrides_the_file(monkeypatch):
    # README, "Configs": `detbatch detect --config configs/detect.yaml --set inference.max_actors=16`.
    # This once gave the file's 8: the flags that were not given overwrote --set with their None.
    monkeypatch.chdir(REPO)
    assert load_config(DetectConfig, "configs/detect.yaml").inference.max_actors == "auto"
    config = _load(["detect", "--config", "configs/detect.yaml", "--set", "inference.max_actors=16"])
    assert config.inference.max_actors == 16
    assert config.inference.min_actors == 1 and config.model.name == "fasterrcnn_resnet50_fpn_v2"  # the rest: the file's


def test_set_device_overrides_the_file():
    assert load_config(DetectConfig, DETECT_YAML).inference.device == "auto"
    assert _load(["detect", "--config", DETECT_YAML, "--set", "inference.device=cpu"]).inference.device == "cpu"


def test_flags_and_set_combine():
    config = _load(["detect", "--config", DETECT_YAML, "--batch-size", "2", "--set", "inference.max_actors=16",
                    "--set", "inference.fp16=false", "--input", "s3://other/in"])
    assert (config.inference.batch_size, config.inference.max_actors, config.inference.fp16, config.input.uri) == (
        2, 16, False, "s3://other/in")
    assert config.output.uri == "s3://my-bucket/detections/run-001"


# Every flag of `detect` and `train`: (command, config file, flag argv, config key, value in YAML for --set,
# the value both must give). The file (or the defaults) must hold another value, checked below.
FLAG_CASES = [
    ("detect", DETECT_YAML, ["--input", "s3://other/in"], "input.uri", "s3://other/in", "s3://other/in"),
    ("detect", DETECT_YAML, ["--input-format", "tar"], "input.format", "tar", "tar"),
    ("detect", DETECT_YAML, ["--manifest", "m.json"], "input.manifest", "m.json", "m.json"),
    ("detect", DETECT_YAML, ["--verify-input"], "input.verify", "true", True),
    ("detect", DETECT_YAML, ["--output", "out"], "output.uri", "out", "out"),
    ("detect", DETECT_YAML, ["--overwrite"], "output.overwrite", "true", True),
    ("detect", DETECT_YAML, ["--take-over"], "output.take_over", "true", True),
    ("detect", DETECT_YAML, ["--model", "ssd300_vgg16"], "model.name", "ssd300_vgg16", "ssd300_vgg16"),
    ("detect", DETECT_YAML, ["--weights", "none"], "model.weights", "none", "none"),
    ("detect", DETECT_YAML, ["--score-threshold", "0.5"], "model.score_threshold", "0.5", 0.5),
    ("detect", DETECT_YAML, ["--batch-size", "2"], "inference.batch_size", "2", 2),
    ("detect", DETECT_YAML, ["--min-actors", "3"], "inference.min_actors", "3", 3),
    ("detect", DETECT_YAML, ["--max-actors", "16"], "inference.max_actors", "16", 16),
    ("detect", DETECT_YAML, ["--device", "cpu"], "inference.device", "cpu", "cpu"),
    ("detect", DETECT_YAML, ["--ray-address", "auto"], "ray.address", "auto", "auto"),
    ("train", TRAIN_YAML, ["--train-annotations", "a.json"], "data.train_annotations", "a.json", "a.json"),
    ("train", TRAIN_YAML, ["--train-images", "imgs/"], "data.train_images", "imgs/", "imgs/"),
    # train.yaml gives annotations, and shards with annotations are refused: on the defaults.
    ("train", None, ["--train-shards", "shards/"], "data.train_shards", "shards/", "shards/"),
    ("train", TRAIN_YAML, ["--val-annotations", "v.json"], "data.val_annotations", "v.json", "v.json"),
    ("train", TRAIN_YAML, ["--val-images", "vimgs/"], "data.val_images", "vimgs/", "vimgs/"),
    ("train", TRAIN_YAML, ["--annotations-format", "yolo"], "data.annotations_format", "yolo", "yolo"),
    ("train", TRAIN_YAML, ["--names", "data.yaml"], "data.names", "data.yaml", "data.yaml"),
    ("train", TRAIN_YAML, ["--drop-unlabeled"], "data.drop_unlabeled", "true", True),
    ("train", TRAIN_YAML, ["--model", "fcos_resnet50_fpn"], "model.name", "fcos_resnet50_fpn", "fcos_resnet50_fpn"),
    ("train", TRAIN_YAML, ["--weights", "none"], "model.weights", "none", "none"),
    ("train", TRAIN_YAML, ["--epochs", "3"], "schedule.epochs", "3", 3),
    ("train", TRAIN_YAML, ["--batch-size", "4"], "optim.batch_size", "4", 4),
    ("train", TRAIN_YAML, ["--lr", "0.001"], "optim.lr", "0.001", 0.001),
    ("train", TRAIN_YAML, ["--num-workers", "2"], "scaling.num_workers", "2", 2),
    # train.yaml already says use_gpu: true, so the flag is checked against the defaults.
    ("train", None, ["--use-gpu"], "scaling.use_gpu", "true", True),
    ("train", TRAIN_YAML, ["--storage-path", "/tmp/runs"], "run.storage_path", "/tmp/runs", "/tmp/runs"),
    ("train", TRAIN_YAML, ["--name", "run-002"], "run.name", "run-002", "run-002"),
    ("train", TRAIN_YAML, ["--model-uri", "s3://b/best"], "run.model_uri", "s3://b/best", "s3://b/best"),
    ("train", TRAIN_YAML, ["--ray-address", "auto"], "ray.address", "auto", "auto"),
]


def test_flag_cases_cover_every_flag():
    assert sorted(c[3] for c in FLAG_CASES if c[0] == "detect") == sorted(DETECT_FLAGS)
    assert sorted(c[3] for c in FLAG_CASES if c[0] == "train") == sorted(TRAIN_FLAGS)


@pytest.mark.parametrize("command, path, flag, key, yaml_value, expected", FLAG_CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in FLAG_CASES])
def test_flag_and_set_override_the_file(command, path, flag, key, yaml_value, expected):
    config_class = DetectConfig if command == "detect" else TrainConfig
    assert _value(load_config(config_class, path), key) != expected
    config_args = ["--config", path] if path else []
    by_flag = _load([command, *config_args, *flag])
    by_set = _load([command, *config_args, "--set", f"{key}={yaml_value}"])
    assert _value(by_flag, key) == expected
    assert _value(by_set, key) == expected
    assert by_flag == by_set  # and nothing else changed


@pytest.mark.parametrize(
    "argv, flag, key",
    [
        (["detect", "--config", DETECT_YAML, "--max-actors", "4", "--set", "inference.max_actors=16"],
         "--max-actors", "inference.max_actors"),
        (["detect", "--overwrite", "--set", "output.overwrite=false"], "--overwrite", "output.overwrite"),
        (["train", "--config", TRAIN_YAML, "--epochs", "3", "--set", "schedule.epochs=5"], "--epochs", "schedule.epochs"),
        (["train", "--set", "run.model_uri=s3://b/m", "--model-uri", "s3://b/n"], "--model-uri", "run.model_uri"),
    ],
)
def test_key_given_by_flag_and_set_is_an_error(argv, flag, key):
    with pytest.raises(ConfigError, match=rf"{key} is given twice, by {flag} .* and by --set {key}="):
        _load(argv)


def test_key_given_twice_exits_2(capsys):
    assert main(["detect", "--input", "x", "--set", "input.uri=y", "--output", "o"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [_one_error(err, "detect")]
    assert "input.uri is given twice, by --input 'x' and by --set input.uri='y'" in err


def test_set_null_clears_a_file_value():
    # train.yaml names a validation split; --set ...=null should fall back to the seeded split of training.
    config = _load(["train", "--config", TRAIN_YAML, "--set", "data.val_annotations=null", "--set", "data.val_images=null"])
    assert config.data.val_annotations is None and config.data.val_images is None
