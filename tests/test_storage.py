import pyarrow as pa
import pytest

from varireal_ray import schema, storage


def table(ids):
    return pa.table({"id": ids, "value": [len(i) for i in ids]})


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "data")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_shards_commits_and_manifest_round_trip(root):
    ds = storage.join(root, "generate")
    storage.commit_shard(ds, table(["a", "b"]))
    storage.commit_shard(ds, table(["c"]))
    assert storage.committed_ids(ds) == {"a", "b", "c"}
    with pytest.raises(storage.StorageError, match="has not finished"):
        storage.read_manifest(ds)  # readers trust only the manifest
    manifest = storage.write_manifest(ds, note="x")
    assert manifest["rows"] == 3 and len(manifest["shards"]) == 2 and manifest["note"] == "x"
    got = storage.read_dataset(ds)
    assert sorted(got.column("id").to_pylist()) == ["a", "b", "c"]


def test_uncommitted_shard_is_invisible(root):
    """A shard whose commit record was never written (a crash between the two) is not read."""
    ds = storage.join(root, "generate")
    storage.commit_shard(ds, table(["a"]))
    storage.write_parquet(storage.join(ds, "shards", "part-orphan.parquet"), table(["zzz"]))
    storage.write_manifest(ds)
    assert storage.read_dataset(ds).column("id").to_pylist() == ["a"]
    assert storage.committed_ids(ds) == {"a"}


def test_a_record_a_writer_was_killed_writing_commits_nothing(tmp_path):
    """On local disk a record is written as ``<name>.tmp-<hex>`` and renamed: one a kill left half
    written is no commit, to the readers or to the check that asks whether anything was made (the
    fault tests wait on ``has_commits`` for the first commit for this reason)."""
    ds = str(tmp_path / "generate")
    storage.write_parquet(storage.join(ds, "shards", "part-0.parquet"), table(["a"]))
    (tmp_path / "generate" / storage.COMMITS).mkdir()
    (tmp_path / "generate" / storage.COMMITS / "part-0.json.tmp-0123abcd").write_bytes(b'{"shard": "shards/part-0.par')
    assert not storage.has_commits(ds) and storage.committed_ids(ds) == set()
    storage.commit_shard(ds, table(["b"]))
    assert storage.has_commits(ds) and storage.committed_ids(ds) == {"b"}


def test_write_bytes_is_whole_and_json(root):
    uri = storage.join(root, "x", "file.json")
    storage.write_json(uri, {"k": [1, 2]})
    assert storage.read_json(uri) == {"k": [1, 2]}
    storage.write_json(uri, {"k": 3})  # replaced whole
    assert storage.read_json(uri) == {"k": 3}
    assert storage.list_files(storage.join(root, "x")) == [uri]


def test_check_writable_local(tmp_path):
    storage.check_writable(str(tmp_path / "new" / "run"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(storage.StorageError, match="cannot write"):
        storage.check_writable(str(blocker / "run"))


def test_missing_bucket_fails_clearly(s3_server):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' .* does not exist"):
        storage.check_writable("s3://no-such-bucket/run")


def test_unreachable_endpoint_fails_clearly_and_fast(s3_server, monkeypatch):
    """The preflight does not retry a refused connection (the job's own client does, for a
    minute, to ride out an outage mid-run: that is S3_RETRIES, unchanged)."""
    import time

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match=r"cannot write to s3://some-bucket/run: .*127\.0\.0\.1:9.*check AWS_ENDPOINT_URL"):
        storage.check_writable("s3://some-bucket/run")
    assert time.monotonic() - started < 10  # was 74 s with the job's retries
    patient, _ = storage.filesystem("s3://some-bucket/run")
    assert patient.retries > 1 and storage.filesystem("s3://some-bucket/run", patient=False)[0].retries == 1


def test_read_missing_file_says_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        storage.read_bytes(str(tmp_path / "nope.bin"))


def test_trial_checkpoints_are_stored_whole_fetched_back_and_pruned(root, tmp_path):
    """``train.checkpoint.store``/``fetch`` on local disk and S3: a folder with a subfolder goes up
    whole, the latest comes back byte for byte, and only the newest two are kept."""
    from varireal_ray.train import checkpoint

    trial = storage.join(root, "train", "trials", "mix__seed0")
    assert checkpoint.fetch(trial, tmp_path / "none") is None  # a trial that never checkpointed
    for step in (10, 20, 30):
        folder = tmp_path / f"ckpt{step}"
        (folder / "best").mkdir(parents=True)
        (folder / "state.json").write_text(f'{{"step": {step}}}')
        (folder / "best" / "trained.safetensors").write_bytes(bytes([step]) * 1000)
        checkpoint.store(trial, folder, step)
    back = checkpoint.fetch(trial, tmp_path / "back")
    assert (back / "state.json").read_text() == '{"step": 30}'
    assert (back / "best" / "trained.safetensors").read_bytes() == bytes([30]) * 1000
    latest = storage.read_json(storage.join(trial, "checkpoints", "latest.json"))
    assert latest == {"step": 30, "folder": "step-00000030", "kept": ["step-00000030", "step-00000020"]}
    fs, path = storage.filesystem(storage.join(trial, "checkpoints"))
    assert sorted(p.rstrip("/").rsplit("/", 1)[1] for p in fs.ls(path, detail=False)) == ["latest.json", "step-00000020", "step-00000030"]


def attempts_table(ids, attempt=0):
    return schema.conform({"id": ids, "attempt": [attempt] * len(ids), "outcome": ["retry"] * len(ids)}, schema.ATTEMPT_COLUMNS)


def commit_files(ds):
    return [storage.posixpath.basename(f) for f in storage.list_files(storage.join(ds, storage.COMMITS))]


def test_compaction_folds_records_and_merges_shards_keeping_every_row_once(root):
    ds = storage.join(root, "attempts")
    for k in range(4):
        storage.commit_shard(ds, attempts_table([f"i{k}", f"j{k}"]))
    before = sorted(storage.read_commits_table(ds).to_pylist(), key=str)
    assert storage.compact(ds, merge=True) == {"records": 4, "merged_shards": 4}
    files = commit_files(ds)
    assert len(files) == 1 and files[0].startswith(storage.INDEX_PREFIX)  # one index, no JSON record left
    assert [storage.posixpath.basename(s) for s in storage.list_files(storage.join(ds, storage.SHARDS))] == [
        r["shard"].split("/")[-1] for r in storage.commits(ds)]  # the merged shard alone, the parts deleted
    assert sorted(storage.read_commits_table(ds).to_pylist(), key=str) == before
    storage.commit_shard(ds, attempts_table(["i0"], attempt=1))  # the next round's records join the index
    assert storage.compact(ds, merge=True)["records"] == 1 and len(commit_files(ds)) == 1
    assert storage.read_commits_table(ds, ["id", "attempt"]).num_rows == 9
    assert storage.committed_ids(ds) == {f"{c}{k}" for c in "ij" for k in range(4)}


def test_a_compaction_stopped_before_its_deletes_reads_back_the_same_rows(root, monkeypatch):
    """The crash that could duplicate rows: the index (and the merged shard) written, the records
    and shards it replaces not yet deleted. Every row still reads back once, and the next
    compaction finishes the cleanup."""
    ds = storage.join(root, "attempts")
    for k in range(3):
        storage.commit_shard(ds, attempts_table([f"i{k}"]))
    before = sorted(storage.read_commits_table(ds)["id"].to_pylist())

    def crash(uris):
        raise KeyboardInterrupt("killed before the deletes")

    with monkeypatch.context() as patch:
        patch.setattr(storage, "remove_files", crash)
        with pytest.raises(KeyboardInterrupt):
            storage.compact(ds, merge=True)
    files = commit_files(ds)
    assert len([f for f in files if f.endswith(".json")]) == 3 and len([f for f in files if f.startswith(storage.INDEX_PREFIX)]) == 1
    assert sorted(storage.read_commits_table(ds)["id"].to_pylist()) == before  # not twice: the old records are replaced
    assert storage.compact(ds, merge=True)["records"] == 3
    assert len(commit_files(ds)) == 1 and sorted(storage.read_commits_table(ds)["id"].to_pylist()) == before


def test_carried_columns_are_read_from_the_index_alone(root):
    ds = storage.join(root, "generate")
    rows = [schema.conform({"id": [f"r{k}"], "accepted": [k % 2 == 0]}, schema.ROW_COLUMNS) for k in range(3)]
    for table_ in rows:
        storage.commit_shard(ds, table_, carry=schema.RECORD_COLUMNS["rows"])
    storage.compact(ds)
    storage.remove_tree(storage.join(ds, storage.SHARDS))  # the bookkeeping read must not need a shard
    got = storage.read_commits_table(ds, ["id", "accepted"])
    assert got.schema.field("accepted").type == pa.bool_()
    assert sorted(got.to_pylist(), key=lambda r: r["id"]) == [{"id": f"r{k}", "accepted": k % 2 == 0} for k in range(3)]
