"""A detect output before the stream starts: where it may be, what it was started with, who writes it.

:func:`open_output` runs on the driver, in this order, and touches nothing until every check passed:

1. **Location.** An output that overlaps its input (either contains the other) is refused: a rerun would
   list the output's Parquet among the inputs. With ``--overwrite``, so is a filesystem root, a bucket root,
   the home folder or one of its ancestors.
2. **Ownership.** An output is detbatch's if it holds ``_detbatch/`` (its state and lease). Anything else
   must be empty or absent; ``--overwrite`` never deletes a folder that is not a detbatch output.
3. **Lease.** One writer at a time (:mod:`detbatch.detect.lease`).
4. **Overwrite.** Only detbatch's own files go: the parts under ``images/`` and ``detections/`` (and hidden
   temporaries), ``run.json``, and the state file last, so that a crash mid-way leaves an output that the
   next ``--overwrite`` finishes clearing. The lease files stay: they fence the replaced run's actors.
5. **State.** ``_detbatch/state.json`` records what the output is computed with: the settings that change
   results, the resolved weights (``DEFAULT`` as the enum member it means today), the SHA-256 of the
   checkpoint and the manifest, and two digests of the input listing (names; names with each file's size
   and ETag or mtime). A rerun that differs in any of them is refused, naming what changed. The first run
   then persists its plan (:mod:`detbatch.detect.plan`), whose digests a rerun uses without relisting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from detbatch import storage
from detbatch.config import ConfigError
from detbatch.detect.config import DetectConfig
from detbatch.detect.thresholds import parse_score_threshold
from detbatch.detect.lease import Lease
from detbatch.detect.sink import DETBATCH_DIR, is_part_file
from detbatch.detect.units import InputListing, ListingSummary
from detbatch.faults import failpoint

logger = logging.getLogger(__name__)

STATE_FILE = f"{DETBATCH_DIR}/state.json"
# The persisted plan and listing (detbatch.detect.plan, which imports this module, so named here).
PLAN_FILE = f"{DETBATCH_DIR}/plan.parquet"
LISTING_DIR = f"{DETBATCH_DIR}/listing"
# Where --verify-input lists the input again (emptied after the comparison).
VERIFY_DIR = f"{DETBATCH_DIR}/verify"
# The listing of a plan of format 2 (one file; an output of an older detbatch).
LISTING_FILE = f"{DETBATCH_DIR}/listing.parquet"
RUN_FILE = "run.json"
# state.json's layout; states without a "format" were written before contents were fingerprinted.
# 3: listing digests are sums of a hash per file (detbatch.detect.units.names_sum); 2: one SHA-256 of them all.
STATE_FORMAT = 3
# The settings of the first state format, which a rerun over such an output is still compared on.
_LEGACY_KEYS = ("input", "format", "manifest", "images_per_unit", "model", "weights", "score_threshold",
                "detections_per_image")


@dataclass
class OpenedOutput:
    """An output ready for the stream: its config (unit size settled), its lease, and the finished run.json
    when there is nothing left to do."""

    config: DetectConfig
    lease: Lease
    fingerprint: dict[str, Any]
    """What this run computes with (:func:`fingerprint`), as state.json records it."""
    finished: dict[str, Any] | None
    state: dict[str, Any] | None = None
    """state.json as the output held it (None: a new output, whose state :func:`record_input` writes)."""


def read_json(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return None


def _location(uri: str) -> tuple[str, str]:
    """(protocol, absolute path) for comparing places; a glob stands for its fixed part."""
    fs, path = storage.resolve(uri)
    fixed = path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
    if fixed != path:
        path = fixed.rstrip("/") if fixed.endswith("/") else posixpath.dirname(fixed)
    return storage.protocol_of(uri), path.rstrip("/") or "/"


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_location(output: str, input_uri: str, overwrite: bool) -> None:
    """Refuse an output that overlaps its input, and with ``overwrite`` a root or the home folder."""
    out_protocol, out_path = _location(output)
    in_protocol, in_path = _location(input_uri)
    if out_protocol == in_protocol and (_contains(out_path, in_path) or _contains(in_path, out_path)):
        raise ConfigError(
            f"--output {output} overlaps --input {input_uri} (one contains the other); a rerun would read the "
            f"output as input, and --overwrite would delete the input. Choose an output outside the input"
        )
    if not overwrite:
        return
    if out_protocol == "file":
        home = os.path.expanduser("~").rstrip("/")
        if out_path == "/" or _contains(out_path, home):
            raise ConfigError(f"--overwrite refuses {output}: it is the filesystem root, the home folder or one of "
                              f"its parents. Give the detect output's own folder")
    elif "/" not in out_path.strip("/"):
        raise ConfigError(f"--overwrite refuses {output}: it is a bucket root. Give the detect output's prefix "
                          f"inside the bucket (s3://bucket/runs/001)")


def _check_owned_or_empty(output: str, overwrite: bool) -> bool:
    """Whether ``output`` is a detbatch output (it holds ``_detbatch/``); raise if it is neither that nor empty.

    One listing of ``output`` decides (hidden names too: a folder of ``.DS_Store`` is not empty). A driver
    starting on the same output at the same moment writes ``_detbatch/`` first, so it is seen whole or not
    at all: as a detbatch output (the lease then says who writes it), never as someone else's files."""
    names = storage.list_names(output, hidden=True)
    if DETBATCH_DIR in names:
        return True
    if names:
        what = "--overwrite only replaces a detbatch output (one that holds _detbatch/)" if overwrite else \
            "choose an empty --output"
        raise ConfigError(f"{output} is not empty and holds no detbatch run; {what}. Nothing was deleted")
    return False


def clear_output(output: str) -> int:
    """Delete detbatch's own files of ``output`` (see the module docstring); returns how many."""
    doomed = []
    for table in ("detections", "images"):
        folder = storage.join(output, table)
        doomed += [storage.join(folder, n) for n in storage.list_names(folder, hidden=True) if is_part_file(n)]
    doomed.append(storage.join(output, RUN_FILE))
    # The plan before its listing (detbatch.detect.plan: a plan that exists has its listing).
    doomed += [storage.join(output, PLAN_FILE), storage.join(output, LISTING_FILE)]
    for folder in (LISTING_DIR, VERIFY_DIR):
        uri = storage.join(output, folder)
        doomed += [storage.join(uri, n) for n in storage.list_names(uri, hidden=True)]
    storage.remove(doomed)
    failpoint("output.after_clearing_parts")
    storage.remove([storage.join(output, STATE_FILE)])  # last: until then a rerun still sees a detbatch output
    for table in ("detections", "images"):
        fs, path = storage.resolve(storage.join(output, table))
        if storage.protocol_of(output) == "file" and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
    return len(doomed)


def _sha256(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def fingerprint(config: DetectConfig) -> dict[str, Any]:
    """What changes the results: the settings, the weights as resolved now, the checkpoint's and the
    manifest's contents."""
    from detbatch.models import check_weights, checkpoint_path

    spec = check_weights(config.model.name, config.model.weights)
    return {
        "input": config.input.uri,
        "format": config.input.format,
        "manifest": config.input.manifest,
        "manifest_sha256": _sha256(config.input.manifest) if config.input.manifest else None,
        "images_per_unit": config.input.images_per_unit,
        "max_pixels": config.input.max_pixels,
        "max_bytes": config.input.max_bytes,
        "model": config.model.name,
        "weights": config.model.weights,
        "weights_resolved": spec.weights,
        "checkpoint_sha256": _sha256(checkpoint_path(spec.weights)) if spec.kind == "checkpoint" else None,
        "score_threshold": parse_score_threshold(config.model.score_threshold).fingerprint(),
        "detections_per_image": config.model.detections_per_image,
    }


def _changes(then: dict[str, Any], now: dict[str, Any], keys: Any) -> str:
    return ", ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in keys if then.get(k) != now.get(k))


def _check_settings(output: str, state: dict[str, Any], wanted: dict[str, Any]) -> None:
    keys = _LEGACY_KEYS if "format" not in state else wanted.keys()
    changes = _changes(state["fingerprint"], wanted, keys)
    if changes:
        raise ConfigError(f"{output} holds a detect run with other settings ({changes}); "
                          f"use another --output, or --overwrite to replace it")


def _check_listing(output: str, state: dict[str, Any], wanted: dict[str, Any], listing: InputListing | ListingSummary) -> None:
    legacy = "format" not in state
    if state["listing_digest"] != wanted["listing_digest"]:
        raise ConfigError(
            f"{output} was started on a different set of input files ({state['num_inputs']} then, "
            f"{listing.num_inputs} now); use another --output, or --overwrite to start over"
        )
    if legacy:
        logger.warning("%s: started by an older detbatch, which did not record file contents; resuming on "
                       "names and settings alone", output)
    elif state["content_digest"] != wanted["content_digest"]:
        raise ConfigError(
            f"{output} was started on other contents of the same {listing.num_inputs} input files (a file was "
            f"replaced: its size or ETag/mtime changed); use another --output, or --overwrite to start over"
        )


def _wanted(opened: OpenedOutput, listing: InputListing | ListingSummary) -> dict[str, Any]:
    return {"format": STATE_FORMAT, "fingerprint": opened.fingerprint, "listing_digest": listing.digest,
            "content_digest": listing.content_digest, "num_inputs": listing.num_inputs}


def record_input(opened: OpenedOutput, listing: InputListing | ListingSummary) -> None:
    """Compare ``listing`` with the one the output was started on (refused when it differs), or, for a new
    output, write ``state.json`` with it. The caller holds the output's lease."""
    out = opened.config.output.uri
    if opened.state is not None:
        _check_listing(out, opened.state, _wanted(opened, listing), listing)
        return
    opened.lease.check()
    opened.state = _wanted(opened, listing)
    storage.write_text(storage.join(out, STATE_FILE), json.dumps(opened.state, indent=2))


def open_output(config: DetectConfig, listing: InputListing | ListingSummary | None) -> OpenedOutput:
    """Check, lease and (with ``--overwrite``) clear the output; see the module docstring. ``listing``: the
    input's listing, or the summary of the one a persisted plan was made from; None: the settings are
    checked now, and the listing, made under the lease, by :func:`record_input`."""
    out = config.output
    check_location(out.uri, config.input.uri, out.overwrite)
    owned = _check_owned_or_empty(out.uri, out.overwrite)
    lease = Lease.acquire(out.uri, out.lease_timeout_s, take_over=out.take_over)
    try:
        state_uri = storage.join(out.uri, STATE_FILE)
        if out.overwrite and owned:
            logger.warning("--overwrite: deleted %d detbatch files of %s", clear_output(out.uri), out.uri)
        state = read_json(state_uri)
        if config.input.images_per_unit is None:
            # One call's worth, or the unit size of the run being resumed: units are positions in the
            # output, and output.rows_per_file, which does not change results, may change between runs.
            config = config.model_copy(deep=True)
            config.input.images_per_unit = ((state or {}).get("fingerprint", {}).get("images_per_unit")
                                            or out.rows_per_file)
        wanted = fingerprint(config)
        if state is not None:
            _check_settings(out.uri, state, wanted)
            finished = read_json(storage.join(out.uri, RUN_FILE))
        opened = OpenedOutput(config, lease, wanted, finished if state is not None else None, state)
        if listing is not None:
            record_input(opened, listing)
        return opened
    except BaseException:
        lease.release()
        raise
