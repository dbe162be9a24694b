import pyarrow as pa
import pyarrow.parquet as pq

from detbatch.detect import sink
from detbatch.detect.detector import SCORED_SCHEMA


def _scored(unit, indices, last_index=None, dets=1):
    n = len(indices)
    return pa.Table.from_pydict(
        {
            "unit": [unit] * n, "index": indices, "last": [i == last_index for i in indices],
            "uri": [f"u{unit}/{i}" for i in indices], "image_id": [unit * 100 + i for i in indices],
            "width": [10] * n, "height": [10] * n, "status": ["ok"] * n, "error": [None] * n,
            "category_id": [[1] * dets] * n, "category": [["cat"] * dets] * n,
            "score": [[0.5] * dets] * n, "box": [[1.0, 2.0, 3.0, 4.0] * dets] * n,
        },
        schema=SCORED_SCHEMA,
    )


def test_write_parts_splits_runs_and_commits(tmp_path):
    batch = pa.concat_tables([_scored(1, [4, 5]), _scored(0, [0, 1, 2], last_index=2), _scored(1, [7])])
    summary = sink.write_parts(batch, str(tmp_path)).to_pydict()
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == ["00000000-0000000-0000003-last.parquet", "00000001-0000004-0000006.parquet", "00000001-0000007-0000008.parquet"]
    assert sorted(p.name for p in (tmp_path / "detections").iterdir()) == names
    assert dict(zip(summary["unit"], summary["detections"])) == {0: 3, 1: 3}
    det = pq.read_table(tmp_path / "detections" / names[0])
    assert det.schema == sink.DETECTIONS_SCHEMA
    assert det.column("x_max").to_pylist() == [3.0] * 3


def test_commit_log_finished_partial_and_debris(tmp_path):
    sink.write_parts(_scored(0, [0, 1, 2], last_index=2), str(tmp_path))
    sink.write_parts(_scored(1, [0, 1]), str(tmp_path))  # unit 1 interrupted
    (tmp_path / "detections" / "00000001-0000002-0000004.parquet").write_bytes(b"crash debris")
    log = sink.read_commit_log(str(tmp_path))
    assert log.finished == {0}
    assert log.skip(1) == [(0, 2)] and log.skip(2) == []
    assert log.debris == [str(tmp_path / "detections" / "00000001-0000002-0000004.parquet")]
    assert log.committed_images == 5


def test_unit_with_hole_is_not_finished(tmp_path):
    sink.write_parts(_scored(0, [0, 1]), str(tmp_path))
    sink.write_parts(_scored(0, [3, 4], last_index=4), str(tmp_path))
    log = sink.read_commit_log(str(tmp_path))
    assert log.finished == set() and log.skip(0) == [(0, 2), (3, 5)]


def test_overlapping_parts_never_double_count(tmp_path):
    sink.write_parts(_scored(0, [0, 1, 2]), str(tmp_path))
    sink.write_parts(_scored(0, [2, 3], last_index=3), str(tmp_path))
    log = sink.read_commit_log(str(tmp_path))
    assert log.skip(0) == [(0, 3)] and 0 not in log.finished
    assert any("0000002-0000004-last" in d for d in log.debris)


def test_empty_output_has_empty_log(tmp_path):
    log = sink.read_commit_log(str(tmp_path / "none"))
    assert log.ranges == {} and log.finished == set() and log.debris == []


def test_the_commit_log_of_200k_parts_is_read_from_names_alone(monkeypatch):
    """200,000 committed parts (and their detections) read from two listings, no file opened."""
    names = [sink.part_name(u, 0, 2, True, 1) for u in range(200_000)]
    listed = []

    def list_names(uri, hidden=False):
        listed.append(uri)
        return names

    def no_reads(*args, **kwargs):
        raise AssertionError("a part was read")

    monkeypatch.setattr(sink.storage, "list_names", list_names)
    monkeypatch.setattr(sink.storage, "read_bytes", no_reads)
    monkeypatch.setattr(sink.storage, "open_input", no_reads)
    log = sink.read_commit_log("s3://b/out")
    assert len(log.finished) == 200_000 and log.committed_images == 400_000 and not log.debris
    assert sorted(listed) == ["s3://b/out/detections", "s3://b/out/images"]
