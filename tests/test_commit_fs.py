"""The Hadoop FileSystem calls the commit protocols make (kmeans_dist.io._HadoopFS), in the test
session's JVM: what tests/test_commit.py relies on when it kills jobs at commit points."""

from __future__ import annotations

import datetime
import json
import os

from kmeans_dist import commit, io
from kmeans_dist.model import KMeansModel


def test_a_small_file_is_replaced_in_place_with_its_checksum(spark, tmp_path):
    fs = io._fs()
    path = str(tmp_path / "model.json")
    for text in ("first\n", "second, longer than the first\n", "3\n"):
        io.write_text(path, text)
        # Hadoop's local filesystem checks its .crc on read: a stale one would fail here
        assert io.read_text(path) == text
    assert sorted(os.listdir(tmp_path)) == [".model.json.crc", "model.json"]  # no temporaries
    assert fs.can_replace(path) and fs.scheme(path) == "file"


def test_rename_overwrite_replaces_the_target(spark, tmp_path):
    """FileContext.rename(src, dst, Options.Rename.OVERWRITE), the HDFS path, called from py4j."""
    fs = io._fs()
    src, dst = tmp_path / "new.json", tmp_path / "old.json"
    src.write_text("new\n")
    dst.write_text("old\n")
    fs.rename_overwrite(str(src), str(dst))
    assert dst.read_text() == "new\n" and not src.exists()


def test_listing_names_and_files_relative_to_the_directory(spark, tmp_path):
    fs = io._fs()
    (tmp_path / "run" / "assignments").mkdir(parents=True)
    (tmp_path / "run" / "model.json").write_text("{}")
    (tmp_path / "run" / "assignments" / "part-0.parquet").write_bytes(b"x")
    assert sorted(fs.names(str(tmp_path / "run"))) == ["assignments", "model.json"]
    assert sorted(fs.files(str(tmp_path / "run"))) == ["assignments/part-0.parquet",
                                                       "model.json"]


def test_an_output_moved_aside_is_read_and_put_back(spark, tmp_path):
    """The state an overwrite killed between its two renames leaves (see test_commit.py)."""
    out = tmp_path / "out"
    aside = tmp_path / ".out.0123abcd.aside"
    aside.mkdir()
    (aside / "model.json").write_text("old\n")
    (aside / commit.SUCCESS).write_text("")
    staging = tmp_path / ".out.4567cdef.staging"
    staging.mkdir()
    assert io.read_text(str(out / "model.json")) == "old\n"
    io.check_output_dir(str(out), overwrite=True)
    assert (out / "model.json").read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_manifest_commit_through_hadoop_lists_spark_parts_and_cleans_older_runs(
        spark, tmp_path, monkeypatch):
    """Two runs with --overwrite; before the second, a file no run wrote is put in the
    directory: once the second run's manifest is written, only it and its run are left. The
    manifest's fields, and the README's recipe for reading it with spark.read.parquet."""
    monkeypatch.setenv(commit.MANIFEST_SCHEMES_ENV, "file")  # local paths as an object store
    out = str(tmp_path / "out")
    runs = []
    for rows in (3, 5):
        if rows == 5:
            (tmp_path / "out" / "foreign.txt").write_text("another tool's file\n")
        started = datetime.datetime.now(datetime.timezone.utc)
        with io.staged_dir(out, overwrite=True) as where:
            KMeansModel([[float(rows)]], ["a"]).save(f"{where}/model.json")
            if rows == 5:  # one Spark write: the first job of a session is slow
                spark.range(rows).coalesce(1).write.parquet(f"{where}/assignments")
        ended = datetime.datetime.now(datetime.timezone.utc)
        runs.append(commit.read_manifest(io._fs(), out)["run"])
    manifest = json.loads((tmp_path / "out" / commit.SUCCESS).read_text())
    assert manifest["format"] == "kmeans-dist-manifest" and manifest["version"] == 1
    assert started <= datetime.datetime.fromisoformat(manifest["committed"]) <= ended
    assert manifest["run"] == runs[1]
    files = manifest["files"]
    assert files[-1] == f"{runs[1]}/model.json" and len(files) == 2  # no _SUCCESS, no .crc
    assert files[0].startswith(f"{runs[1]}/assignments/part-")
    assert KMeansModel.load(f"{out}/model.json").centroids.tolist() == [[5.0]]
    assert io.read_output(f"{out}/assignments").count() == 5
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == [commit.SUCCESS,
                                                                          runs[1]]
    # the README's recipe, as written (DIR and manifest as above)
    DIR = out  # noqa: N806 - the README's name
    recipe = spark.read.parquet(*[f"{DIR}/{f}" for f in manifest["files"]
                                  if "/assignments/" in f])
    assert sorted(r["id"] for r in recipe.collect()) == [0, 1, 2, 3, 4]


def test_a_directory_with_neither_runs_nor_manifest_is_read_as_it_is(spark, tmp_path,
                                                                    monkeypatch):
    """On manifest storage, a DIR another tool (or an earlier version) wrote: plain files, an
    empty _SUCCESS, no run and no manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv(commit.MANIFEST_SCHEMES_ENV, "file")
    out = tmp_path / "plain"
    (out / "assignments").mkdir(parents=True)
    (out / commit.SUCCESS).write_text("")
    (out / "model.json").write_text(KMeansModel([[2.0]], ["a"]).to_json())
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0]}), out / "assignments" / "part-0.parquet")
    fs = io._fs()
    assert commit.uses_manifest(fs.scheme(str(out))) and commit.read_manifest(fs, str(out)) is None
    assert commit.resolve(fs, f"{out}/assignments") == [f"{out}/assignments"]
    assert KMeansModel.load(f"{out}/model.json").centroids.tolist() == [[2.0]]
    assert sorted(r["a"] for r in io.read_output(f"{out}/assignments").collect()) == [1.0, 2.0,
                                                                                      3.0]
