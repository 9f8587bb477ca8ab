"""How an output reaches its place, chosen by the storage it is written to.

A nightly job is killed at any moment (a lost driver, a pre-empted node, a scheduler's timeout),
and whoever reads its output next (tomorrow's ``--previous-model``, ``KMeansModel.load``, the
assign job) must then see either the old complete output or the new complete one: never a mix,
never half a file, and never nothing when ``--overwrite`` was replacing a good output. Storage
differs in what it can do in one step, so there are two protocols (the README's "How outputs are
committed"):

- **rename** (local disks, HDFS, ABFS with a hierarchical namespace: a directory rename is one
  atomic metadata operation). The run writes into a hidden staging directory beside ``DIR``, marks
  it ``_SUCCESS`` and renames it into place. With ``--overwrite`` the old ``DIR`` is first renamed
  aside (to a hidden sibling) and deleted only once the new one is in place; a crash between the
  two renames leaves the old output aside, which readers fall back on and the next run restores.
- **manifest** (object stores: ``s3a``, ``s3``, ``s3n``, ``gs``, where "rename" is a copy and a
  delete of every object, neither atomic nor cheap). Nothing is renamed: the run writes its files
  under ``DIR/run-<run id>/`` (the names the README documents, inside), then writes ``DIR/_SUCCESS``
  last, in one PUT, as a JSON manifest listing exactly the files of the run. Readers go through
  the manifest and read only what it lists, so a failed run's files are invisible; the next
  successful run deletes them after its own manifest is written.

Small files (``model.json``, ``checkpoint.json``, the manifest) are replaced in one step where the
filesystem can (POSIX ``rename(2)`` locally, HDFS's rename with overwrite), and written directly
on object stores, where an object appears only once its upload is complete.

Tests kill real jobs at the named points below (``pause``); nothing else uses that hook.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import posixpath
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from kmeans_dist.errors import MissingInput, cleanup

#: the marker a complete output directory carries (as Hadoop's committers write)
SUCCESS = "_SUCCESS"
#: schemes of object stores: no atomic rename, but an atomic PUT of one object
OBJECT_STORES = ("s3a", "s3", "s3n", "gs")
#: extra schemes (comma-separated) to commit by manifest: other object-store connectors
#: (oss, cos, wasb, ...); "file" makes local paths use it too (the tests do)
MANIFEST_SCHEMES_ENV = "KMEANS_DIST_MANIFEST_SCHEMES"
#: what a manifest says it is, so an empty or foreign _SUCCESS is never taken for one
MANIFEST_FORMAT = "kmeans-dist-manifest"
RUN_PREFIX = "run-"

#: test hook: the commit point where the process stops and waits to be killed, the file it
#: writes its pid into when it gets there, and how many passes through that point to let by first
PAUSE_AT_ENV = "KMEANS_DIST_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "KMEANS_DIST_TEST_PAUSE_FILE"
PAUSE_SKIP_ENV = "KMEANS_DIST_TEST_PAUSE_SKIP"
_passed: dict[str, int] = {}

log = logging.getLogger("kmeans_dist")


def pause(point: str) -> None:
    """At the commit point the tests named in ``KMEANS_DIST_TEST_PAUSE_AT`` (after letting
    ``KMEANS_DIST_TEST_PAUSE_SKIP`` passes by), announce it (pid into
    ``KMEANS_DIST_TEST_PAUSE_FILE``) and wait to be killed; a no-op otherwise.

    The points: ``begin`` (the run's directory made, no file written), ``small-file-written
    NAME`` (a small file's temporary copy written, the target not replaced yet), ``wrote NAME``
    (a small file in place), ``staged`` (rename: every file and ``_SUCCESS`` in the staging
    directory), ``aside`` (rename: the old output moved aside, the new one not in place),
    ``replaced`` (rename: the new output in place, the old one not deleted yet),
    ``before-manifest`` and ``after-manifest`` (manifest: every file written; the manifest
    written, the earlier runs' files not deleted yet)."""
    if os.environ.get(PAUSE_AT_ENV) != point:
        return
    _passed[point] = _passed.get(point, 0) + 1
    if _passed[point] <= int(os.environ.get(PAUSE_SKIP_ENV, "0")):
        return
    marker = os.environ[PAUSE_FILE_ENV]
    with open(marker + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(marker + ".tmp", marker)
    time.sleep(600)
    raise RuntimeError(f"paused at commit point {point} and was not killed")


def uses_manifest(scheme: str) -> bool:
    """Whether outputs on storage of this URI scheme are committed by manifest (no rename)."""
    extra = os.environ.get(MANIFEST_SCHEMES_ENV, "")
    return scheme in OBJECT_STORES or scheme in {s.strip() for s in extra.split(",") if s}


# --------------------------------------------------------------------------- small files


def write_small(fs, path: str, data: bytes) -> None:
    """Write a whole small file so that a reader sees the old content or the new, nothing else:
    a temporary file replaced over ``path`` in one step, or (object stores) one PUT."""
    name = posixpath.basename(path.rstrip("/"))
    if not fs.can_replace(path):
        fs.write(path, data)
        pause(f"wrote {name}")
        return
    tmp = fs.child(fs.parent(path), f".{name}.{uuid.uuid4().hex}.tmp")
    fs.write(tmp, data)
    pause(f"small-file-written {name}")
    try:
        fs.replace(tmp, path)
    except BaseException:
        if fs.kind(tmp) is not None:
            fs.delete(tmp)
        raise
    pause(f"wrote {name}")


# --------------------------------------------------------------------------- manifests


def read_manifest(fs, directory: str) -> dict | None:
    """``directory``'s manifest, None when it has none (no ``_SUCCESS`` or a plain marker)."""
    path = fs.child(directory, SUCCESS)
    if fs.kind(path) != "file":
        return None
    try:
        manifest = json.loads(fs.read(path).decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def _listed(manifest: dict, name: str | None) -> list[str]:
    """The manifest's files of output entry ``name`` (a file or a directory; None: all)."""
    run = manifest["run"]
    if name is None:
        return list(manifest["files"])
    own = f"{run}/{name}"
    return [f for f in manifest["files"] if f == own or f.startswith(own + "/")]


def _siblings(fs, path: str, suffix: str) -> list[str]:
    """The hidden siblings ``.NAME.<token><suffix>`` the rename protocol makes beside ``path``."""
    parent = fs.parent(path)
    if fs.kind(parent if parent is not None else ".") != "dir":
        return []
    name = posixpath.basename(path.rstrip("/"))
    return sorted(fs.child(parent, n) for n in fs.names(parent if parent is not None else ".")
                  if n.startswith(f".{name}.") and n.endswith(suffix))


def _aside_of(fs, path: str) -> str | None:
    """The complete old output moved aside from ``path`` by an overwrite that never finished."""
    asides = _siblings(fs, path, ".aside")
    return asides[-1] if asides else None


def resolve(fs, path: str) -> list[str]:
    """What to read for ``path``: the files a manifest lists for it when ``path`` is an output
    directory committed by manifest or an entry of one (``DIR/model.json``, ``DIR/assignments``);
    the old output moved aside when an overwrite died half way; else ``path`` itself.

    An output directory on manifest storage that holds runs but no manifest is refused: its
    files are a failed (or running) job's, and never a committed output.
    """
    manifest = read_manifest(fs, path)
    if manifest is not None:
        return [fs.child(path, f) for f in _listed(manifest, None)]
    parent = fs.parent(path)
    name = posixpath.basename(path.rstrip("/"))
    manifest = None if parent is None else read_manifest(fs, parent)
    if manifest is not None:
        files = _listed(manifest, name)
        if not files:
            raise MissingInput(f"{name} is not in the committed output {parent} "
                                    f"(its {SUCCESS} manifest does not list it)")
        return [fs.child(parent, f) for f in files]
    for directory in (path, parent):
        if directory is not None and uses_manifest(fs.scheme(directory)) \
                and fs.kind(directory) == "dir" \
                and any(n.startswith(RUN_PREFIX) for n in fs.names(directory)):
            raise MissingInput(f"{directory} holds no committed output (no {SUCCESS} "
                                    "manifest: its run failed or is still running)")
    if fs.kind(path) is None:  # the output itself, or the one it is an entry of, moved aside?
        for missing, rest in [(path, None)] + ([(parent, name)] if parent is not None else []):
            aside = _aside_of(fs, missing)
            if aside is not None:
                return [aside if rest is None else fs.child(aside, rest)]
    return [path]


# --------------------------------------------------------------------------- output directories


def recover(fs, path: str) -> None:
    """Undo what a killed run of the rename protocol left beside ``path``: its old output, moved
    aside by an overwrite, goes back into place if nothing replaced it (else it is deleted), and
    its staging directory is deleted. (One run per output directory at a time.)"""
    if uses_manifest(fs.scheme(path)):
        return
    asides = _siblings(fs, path, ".aside")
    if asides and fs.kind(path) is None:
        if not fs.rename(asides.pop(), path):
            raise OSError(f"could not restore the previous output of {path}")
    for leftover in asides + _siblings(fs, path, ".staging"):
        fs.delete(leftover)


def exists(fs, path: str) -> bool:
    """Whether ``path`` holds an output (or anything else) that a run must not write over.
    On manifest storage a directory holding only failed runs does not count."""
    if fs.kind(path) is None:
        return False
    if not uses_manifest(fs.scheme(path)) or fs.kind(path) != "dir":
        return True
    return any(not n.startswith(RUN_PREFIX) for n in fs.names(path))


def run_id() -> str:
    """A new run's id: when it started (UTC, so runs list in order) and a random part."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@contextmanager
def output_dir(fs, path: str, overwrite: bool) -> Iterator[str]:
    """Yield where the run writes its files; commit them to ``path`` when the block ends
    without error (by rename or by manifest, see the module's docstring); on error the old
    output is left as it was."""
    if uses_manifest(fs.scheme(path)):
        with _by_manifest(fs, path, overwrite) as where:
            yield where
    else:
        with _by_rename(fs, path) as where:
            yield where


@contextmanager
def _by_rename(fs, path: str) -> Iterator[str]:
    parent = fs.parent(path)
    name = posixpath.basename(path.rstrip("/"))
    token = uuid.uuid4().hex
    staging = fs.child(parent, f".{name}.{token}.staging")
    fs.mkdirs(staging)

    def remove_staging() -> None:
        if fs.kind(staging) is not None:
            fs.delete(staging)

    with cleanup(remove_staging, f"removing the staging directory {staging}"):
        pause("begin")
        yield staging
        fs.write(fs.child(staging, SUCCESS), b"")
        pause("staged")
        aside = None
        if fs.kind(path) is not None:
            aside = fs.child(parent, f".{name}.{token}.aside")
            if not fs.rename(path, aside):
                raise OSError(f"could not move the previous output {path} aside")
            pause("aside")
        if not fs.rename(staging, path):
            if aside is not None:
                fs.rename(aside, path)
            raise OSError(f"could not move the finished output into {path}")
        pause("replaced")
        if aside is not None:
            fs.delete(aside)


@contextmanager
def _by_manifest(fs, path: str, overwrite: bool) -> Iterator[str]:
    run = RUN_PREFIX + run_id()
    root = fs.child(path, run)
    fs.mkdirs(root)
    try:
        pause("begin")
        yield root
    except BaseException:
        try:
            fs.delete(root)
        except Exception:  # noqa: BLE001 - never hide the run's own error: a leftover run is
            log.warning("could not delete the failed run %s", root, exc_info=True)  # ignored
        raise
    files = sorted(f"{run}/{f}" for f in fs.files(root) if not _hidden(f))
    pause("before-manifest")
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "run": run,
                "committed": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "files": files}
    write_small(fs, fs.child(path, SUCCESS), (json.dumps(manifest, indent=1) + "\n").encode())
    pause("after-manifest")
    # the new output is committed: earlier runs' files (and, with overwrite, whatever else was
    # in the directory) go; an error here leaves garbage, never a broken output
    for entry in fs.names(path):
        if entry not in (SUCCESS, run) and (overwrite or entry.startswith(RUN_PREFIX)):
            fs.delete(fs.child(path, entry))


def _hidden(relative: str) -> bool:
    """Hadoop's convention: a name starting with '_' or '.' is not data (Spark's _SUCCESS,
    .crc checksums, _temporary)."""
    return any(part.startswith(("_", ".")) for part in relative.split("/"))
