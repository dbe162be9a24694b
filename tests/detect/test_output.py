"""Destructive arguments and changed inputs: where an output may be, what ``--overwrite`` deletes, what a rerun
refuses (a checkpoint retrained in place, a changed manifest, an image replaced under its name), and crash
leftovers on local disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from detbatch import storage
from detbatch.cli import main as cli_main
from detbatch.config import ConfigError
from detbatch.detect import sink
from detbatch.detect.driver import run_detect
from detbatch.detect.output import LISTING_FILE, PLAN_FILE, RUN_FILE, STATE_FILE, open_output
from detbatch.detect.units import list_input
from tests.helpers.exactly_once import (
    NUM_INPUTS,
    Store,
    assert_same_as_clean,
    check_invariants,
    clean_reference,
    copy_tree,
    detect_config,
    new_bucket,
    shared_store,
    snapshot,
    write_input,
    write_tiny_checkpoint,
)
from tests.helpers.images import png_bytes


# ------------------------------------------------------------------------------------------ locations


@pytest.fixture
def places(tmp_path, monkeypatch, s3_endpoint, tmp_path_factory):
    """A user's machine: a home folder (HOME points at it), an input, a folder of the user's own files, and a
    bucket holding the user's objects. Every storage write or delete fails the test."""
    home = tmp_path / "users" / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "cat.png").write_bytes(png_bytes())
    monkeypatch.setenv("HOME", str(home))
    data = tmp_path / "data"
    write_input(str(data), num_images=2)
    user = tmp_path / "mine"
    (user / "notes").mkdir(parents=True)
    (user / "notes" / "todo.txt").write_text("the user's own file")
    bucket = new_bucket(s3_endpoint)
    storage.write_bytes(f"{bucket}/reports/q3.csv", b"the user's own object")
    return {"home": str(home), "input": str(data / "images"), "data": str(data), "user": str(user), "bucket": bucket,
            "tmp": str(tmp_path), "s3_input": shared_store("s3", tmp_path_factory, s3_endpoint).input}


def _refused(argv: list[str], places: dict[str, str], monkeypatch, capsys) -> str:
    """Run the CLI, which must refuse (exit 2) without writing or deleting anything; its error line."""
    def untouchable(*args, **kwargs):
        raise AssertionError(f"storage was changed before the refusal: {args[:1]}")

    before = snapshot(places["tmp"]), snapshot(places["bucket"])
    with monkeypatch.context() as m:
        for name in ("write_bytes", "create_exclusive", "remove"):
            m.setattr(storage, name, untouchable)
        assert cli_main(argv) == 2
    assert (snapshot(places["tmp"]), snapshot(places["bucket"])) == before
    return capsys.readouterr().err


_OUTSIDE = "Choose an output outside the input"
_ROOT_OR_HOME = "it is the filesystem root, the home folder or one of its parents. Give the detect output's own folder"
_BUCKET = "it is a bucket root. Give the detect output's prefix inside the bucket"
_NOT_OURS = "is not empty and holds no detbatch run; {}. Nothing was deleted"


@pytest.mark.parametrize("output, input, overwrite, refusal", [
    ("{input}", "{input}", True, _OUTSIDE),
    ("{input}", "{input}", False, _OUTSIDE),
    ("{input}/out", "{input}", False, _OUTSIDE),
    ("{data}", "{input}", True, _OUTSIDE),
    ("{data}", "{input}/*.png", False, _OUTSIDE),
    ("{user}", "{input}", True, _NOT_OURS.format("--overwrite only replaces a detbatch output (one that holds _detbatch/)")),
    ("{user}", "{input}", False, _NOT_OURS.format("choose an empty --output")),
    ("{home}", "{input}", True, _ROOT_OR_HOME),
    ("~", "{input}", True, _ROOT_OR_HOME),
    ("file://{home}", "{input}", True, _ROOT_OR_HOME),
    ("{tmp}/users", "{input}", True, _ROOT_OR_HOME),
    ("/", "{s3_input}", True, _ROOT_OR_HOME),
    ("file:///", "{s3_input}", True, _ROOT_OR_HOME),
    ("/", "{input}", True, _OUTSIDE),
    ("/", "{s3_input}", False, _NOT_OURS.format("choose an empty --output")),
    ("{bucket}", "{input}", True, _BUCKET),
    ("{bucket}/", "{input}", True, _BUCKET),
    ("{bucket}/reports", "{input}", True,
     _NOT_OURS.format("--overwrite only replaces a detbatch output (one that holds _detbatch/)")),
], ids=["input", "input-no-overwrite", "inside-input", "input-parent", "glob-parent", "user-folder",
        "user-folder-no-overwrite", "home", "tilde", "file-home", "home-parent", "root", "file-root",
        "root-over-local-input", "root-no-overwrite", "bucket", "bucket-slash", "user-prefix"])
def test_destructive_output_is_refused_before_anything_is_touched(output, input, overwrite, refusal, places,
                                                                   monkeypatch, capsys):
    output, input = output.format(**places), input.format(**places)
    weights = str(Path(places["tmp"]) / "tiny.pt")
    write_tiny_checkpoint(weights, seed=0)
    argv = ["detect", "--input", input, "--output", output, "--model", "tiny_fcos", "--weights", weights,
            "--device", "cpu", *(["--overwrite"] if overwrite else [])]
    err = _refused(argv, places, monkeypatch, capsys)
    assert f"error: {output} " in err or f"--output {output} overlaps --input {input}" in err \
        or f"--overwrite refuses {output}:" in err, err
    assert refusal in err, err


def test_overwrite_inside_the_home_folder_is_allowed(places, tmp_path):
    """The home-folder rule refuses the home folder and its parents, not an output inside it."""
    weights = str(tmp_path / "tiny.pt")
    write_tiny_checkpoint(weights, seed=0)
    output = os.path.join(places["home"], "detect-runs", "first")
    config = detect_config(Store("local", places["tmp"], places["input"], weights), output,
                           **{"output.overwrite": True})
    opened = open_output(config, list_input(places["input"]))
    opened.lease.release()
    assert storage.exists(storage.join(output, STATE_FILE))


# ------------------------------------------------------------------------------------------ --overwrite


def test_overwrite_deletes_only_detbatch_files(store, clean):
    out = store.output("overwrite")
    copy_tree(clean.output, out)
    user = {"notes.txt": b"my notes on this run", "analysis/summary.csv": b"category,count\n"}
    for name, data in user.items():
        storage.write_bytes(storage.join(out, name), data)
    detbatch_files = [n for n in snapshot(out) if n not in user and not n.startswith(sink.DETBATCH_DIR + "/lease/")]
    assert len(detbatch_files) == 2 * 8 + 4  # 8 parts, state.json, run.json, the plan and its listing

    opened = open_output(detect_config(store, out, **{"output.overwrite": True}), list_input(store.input))
    opened.lease.release()
    left = snapshot(out)
    assert not [n for n in left if n.startswith(sink.TABLES)] and RUN_FILE not in left
    assert PLAN_FILE not in left and LISTING_FILE not in left  # the rerun plans afresh
    assert {n: left[n] for n in user} == snapshot_of(user)
    summary = run_detect(detect_config(store, out))
    assert (summary.images_resumed, summary.images_processed) == (0, NUM_INPUTS)
    assert_same_as_clean(out, clean)
    check_invariants(out, foreign=snapshot_of(user))


def snapshot_of(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


# ------------------------------------------------------------------------------------------ fingerprints


@pytest.fixture
def small(store):
    """Three images of this test's own, with their manifest, a checkpoint, and an output started on them
    (state.json written: what a rerun is compared with)."""
    root = store.output("small-input")
    images = write_input(root, num_images=3, seed=5)
    weights = storage.join(root, "ckpt", "model.pt")
    write_tiny_checkpoint(weights, seed=1)
    config = detect_config(store, store.output("started"), **{"input.uri": images, "model.weights": weights,
                                                              "input.manifest": storage.join(root, "annotations.json")})
    opened = open_output(config, list_input(images))
    opened.lease.release()
    return config, root


def test_checkpoint_retrained_in_place_is_refused(small):
    config, root = small
    write_tiny_checkpoint(config.model.weights, seed=2)
    with pytest.raises(ConfigError, match=r"other settings \(checkpoint_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'\).*"
                                          r"--overwrite"):
        run_detect(config)


def test_changed_manifest_is_refused(small):
    config, root = small
    coco = json.loads(storage.read_text(config.input.manifest))
    coco["images"][0]["id"] += 1000
    storage.write_text(config.input.manifest, json.dumps(coco))
    with pytest.raises(ConfigError, match=r"other settings \(manifest_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'\)"):
        run_detect(config)


def test_image_replaced_under_its_name_is_refused(small):
    config, root = small
    name = storage.join(config.input.uri, "000002.png")
    replacement = png_bytes(color=(0, 255, 0), size=(64, 48))
    assert len(replacement) != len(storage.read_bytes(name))
    storage.write_bytes(name, replacement)
    with pytest.raises(ConfigError, match=r"started on other contents of the same 4 input files \(a file was replaced"):
        run_detect(config)


# ------------------------------------------------------------------------------------------ local leftovers


def test_local_crash_leftovers_are_not_counted(tmp_path_factory, s3_endpoint, ray_cluster):
    """What only a crash of a local writer leaves: hidden temporaries (a part's, whole or cut short) and a file
    cut short under its final name whose pair never came. None counts; the rerun removes them."""
    store = shared_store("local", tmp_path_factory, s3_endpoint)
    clean = clean_reference(store)
    out = store.output("leftovers")
    # Units 0-2 committed, the rest not yet.
    copy_tree(clean.output, out, keep=lambda n: n != RUN_FILE and (not n.startswith(sink.TABLES)
                                                                   or n.split("/")[1][:8] in ("00000000", "00000001", "00000002")))
    part = clean.output + "/images/00000003-0000000-0000002-last.g000001.parquet"
    data = Path(part).read_bytes()
    leftovers = {
        "images/.00000003-0000000-0000002-last.g000002.parquet.tmp-4242-0badcafe": data[: len(data) // 2],
        "detections/.00000003-0000000-0000002-last.g000002.parquet.tmp-4242-deadbeef": data,
        "images/00000004-0000000-0000002-last.g000002.parquet": data[:100],
    }
    for name, content in leftovers.items():
        Path(out, name).write_bytes(content)
    log = sink.read_commit_log(out)
    assert [p.unit for p in log.parts] == [0, 1, 2]
    assert sorted(log.debris) == sorted(os.path.join(out, n) for n in leftovers)

    summary = run_detect(detect_config(store, out))
    assert summary.images_resumed == 6 and summary.images_processed == NUM_INPUTS - 6
    assert_same_as_clean(out, clean)
    check_invariants(out)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_driver_starting_at_the_same_moment_is_not_taken_for_foreign_files(where, tmp_path, request, monkeypatch):
    """Another driver's first write (its lease, under _detbatch/) lands while this one looks at the output:
    the output is a detbatch output or an empty one, never "not empty and holds no detbatch run" (seen in
    test_lease.py::test_two_drivers_started_at_once[s3] when the look took two listings)."""
    from detbatch.detect.output import _check_owned_or_empty

    out = str(tmp_path / "out") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/out"
    other_lease = storage.join(out, "_detbatch", "lease", "0000000001.json")
    real = storage.list_names

    def racing(uri, hidden=False):  # each listing returns, then the other driver writes its lease
        names = real(uri, hidden)
        if not storage.exists(other_lease):
            storage.write_text(other_lease, "{}")
        return names

    monkeypatch.setattr(storage, "list_names", racing)
    assert _check_owned_or_empty(out, overwrite=False) is False  # empty when it looked: the lease decides next
    monkeypatch.undo()
    assert _check_owned_or_empty(out, overwrite=False) is True  # and a detbatch output from then on
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / ".DS_Store").write_bytes(b"")
    with pytest.raises(ConfigError, match="is not empty and holds no detbatch run; choose an empty --output"):
        _check_owned_or_empty(str(tmp_path / "foreign"), overwrite=False)
