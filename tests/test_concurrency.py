"""Outputs and stores under concurrency and kills: a per-output lock, a replace that never leaves the
final name empty (or is recovered by the next run), cleanup of what killed runs left behind, and
`zoo matrix` ignoring those hidden leftovers."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo.checkpoints import sha256_file
from zoo.errors import UsageError
from zoo.outputs import staged_directory
from zoo.packaging.errors import StoreError
from zoo.packaging.store import LocalStore

REPO = Path(__file__).resolve().parents[1]

# a run writing `final` with staged_directory; it starts once the file `go` exists (so that two of
# them race), writes five files slowly, then waits inside the staged context for `release`, if given
WRITER = r"""
import sys, time
from pathlib import Path
from zoo.outputs import staged_directory

final, tag, go, inside, release = sys.argv[1:6]
while not Path(go).exists():
    time.sleep(0.005)
with staged_directory(Path(final)) as work:
    Path(inside).touch()
    for i in range(5):
        (work / f"part{i}.txt").write_text(tag)
        time.sleep(0.02)
    (work / "manifest.json").write_text(tag)
    while release != "-" and not Path(release).exists():
        time.sleep(0.01)
print("done", tag)
"""

# one LocalStore.publish of `archive` as pkg:1.0.0, once the file `go` exists
PUBLISHER = r"""
import sys, time
from pathlib import Path
from zoo.checkpoints import sha256_file
from zoo.packaging.errors import StoreError
from zoo.packaging.store import LocalStore

root, archive, manifest, go = map(Path, sys.argv[1:5])
while not go.exists():
    time.sleep(0.005)
try:
    published = LocalStore(root).publish(archive, sha256_file(archive), "pkg", "1.0.0", manifest)
except StoreError as exc:
    print("refused:", exc)
    sys.exit(5)
print("already there" if published.already_there else "published")
"""


def _spawn(script: str, *args, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err or ""


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def complete_output(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"part{i}.txt").write_text(tag)
    (folder / "manifest.json").write_text(tag)
    return folder


def tags(folder: Path) -> set[str]:
    return {p.read_text() for p in folder.iterdir()}


def write_new(final: Path, tag: str = "new") -> None:
    with staged_directory(final) as work:
        for i in range(5):
            (work / f"part{i}.txt").write_text(tag)
        (work / "manifest.json").write_text(tag)


# kill windows, injected: what a run killed at each point leaves, then the next run


@pytest.mark.parametrize("had_output", [True, False])
def test_run_killed_while_staging_is_cleaned_up(tmp_path, had_output):
    final = tmp_path / "out/tiny_vit/android"
    if had_output:
        complete_output(final, "old")
    final.parent.mkdir(parents=True, exist_ok=True)
    complete_output(final.parent / f".android.partial-{dead_pid()}", "killed")

    write_new(final)

    assert sorted(p.name for p in final.parent.iterdir()) == ["android"]
    assert tags(final) == {"new"} and len(list(final.iterdir())) == 6


def test_run_killed_between_the_renames_gets_its_old_output_back(tmp_path):
    """Killed after `final → .T.old-PID` and before `staging → final`: the final name is missing."""
    final = tmp_path / "out/tiny_vit/android"
    pid = dead_pid()
    complete_output(final.parent / f".android.old-{pid}", "old")
    complete_output(final.parent / f".android.partial-{pid}", "killed")

    # the next run fails itself, yet restores the old output first
    with pytest.raises(RuntimeError), staged_directory(final) as work:
        (work / "half.txt").write_text("half")
        raise RuntimeError("conversion failed")

    assert sorted(p.name for p in final.parent.iterdir()) == ["android"]
    assert tags(final) == {"old"}

    write_new(final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["android"]
    assert tags(final) == {"new"}


def test_run_killed_after_the_renames_is_cleaned_up(tmp_path):
    final = complete_output(tmp_path / "out/m/server", "current")
    complete_output(final.parent / f".server.old-{dead_pid()}", "old")
    write_new(final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["server"]
    assert tags(final) == {"new"}


def test_leftovers_with_our_own_pid_are_stale(tmp_path):
    """Under the lock, `.T.old-<our pid>` can only be an earlier process's (pid reuse in containers);
    it must not make the rename fail."""
    final = complete_output(tmp_path / "out/m/server", "current")
    complete_output(final.parent / f".server.old-{os.getpid()}", "old")
    complete_output(final.parent / f".server.partial-{os.getpid()}", "killed")
    write_new(final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["server"]
    assert tags(final) == {"new"}


def test_leftovers_of_live_processes_and_other_names_are_left_alone(tmp_path):
    final = tmp_path / "out/m/server"
    final.parent.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [
            complete_output(final.parent / f".server.partial-{live.pid}", "live"),
            complete_output(final.parent / f".server2.partial-{dead_pid()}", "another output's"),
            complete_output(final.parent / ".server.partial-notapid", "not zoo's"),
        ]
        write_new(final)
    finally:
        live.kill()
        live.wait()
    assert all(p.is_dir() for p in keep)
    assert tags(final) == {"new"}


# real processes


def test_two_runs_on_one_output_take_turns(tmp_path):
    for round in range(5):
        final = tmp_path / f"r{round}/out/m/server"
        go = tmp_path / f"go{round}"
        procs = [_spawn(WRITER, final, tag, go, tmp_path / f"in-{round}-{tag}", "-") for tag in ("a", "b")]
        go.touch()
        results = [_finish(p) for p in procs]
        for rc, out, err in results:
            assert rc == 0 and "Traceback" not in err, err
            assert out.startswith("done")
        assert sorted(p.name for p in final.parent.iterdir()) == ["server"]
        assert len(list(final.iterdir())) == 6 and len(tags(final)) == 1  # a complete set from one run


def test_a_waiting_run_says_who_holds_the_output(tmp_path):
    final = tmp_path / "out/m/server"
    go, release = tmp_path / "go", tmp_path / "release"
    go.touch()
    first = _spawn(WRITER, final, "a", go, tmp_path / "in-a", release)
    _wait_for(tmp_path / "in-a")
    err_file = tmp_path / "second.err"
    with err_file.open("w") as err:
        second = _spawn(WRITER, final, "b", go, tmp_path / "in-b", "-", stderr=err)
        deadline = time.monotonic() + 30
        while "waiting for" not in err_file.read_text():
            assert time.monotonic() < deadline, "the second run never said it was waiting"
            time.sleep(0.02)
        assert not (tmp_path / "in-b").exists()  # it has not entered the staged context
        release.touch()
        assert _finish(first)[0] == 0
        assert _finish(second)[0] == 0
    message = err_file.read_text()
    assert f"waiting for {final}: locked by pid {first.pid} (-c " in message
    assert message.count("waiting for") == 1
    assert tags(final) == {"b"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["server"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_then_next_run(tmp_path, sig):
    final = complete_output(tmp_path / "out/m/server", "old")
    go, inside = tmp_path / "go", tmp_path / "inside"
    go.touch()
    victim = _spawn(WRITER, final, "killed", go, inside, tmp_path / "never")
    _wait_for(inside)
    victim.send_signal(sig)
    victim.communicate(timeout=30)
    assert victim.returncode == -sig
    assert (final.parent / f".server.partial-{victim.pid}").is_dir()  # what a kill leaves
    assert tags(final) == {"old"}  # and the old output is still there

    write_new(final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["server"]
    assert tags(final) == {"new"}


# what is at the final path, and filesystem errors


def test_a_file_at_the_output_path_is_refused_and_left_alone(tmp_path):
    final = tmp_path / "out/m/server"
    final.parent.mkdir(parents=True)
    final.write_text("my notes")
    with pytest.raises(UsageError, match="exists and is not a directory") as exc:
        write_new(final)
    assert str(final) in str(exc.value) and exc.value.hint
    assert final.read_text() == "my notes"
    assert sorted(p.name for p in final.parent.iterdir()) == ["server"]


def test_a_symlink_at_the_output_path_is_refused(tmp_path):
    elsewhere = complete_output(tmp_path / "elsewhere", "mine")
    final = tmp_path / "out/m/server"
    final.parent.mkdir(parents=True)
    final.symlink_to(elsewhere)
    with pytest.raises(UsageError):
        write_new(final)
    assert final.is_symlink() and tags(elsewhere) == {"mine"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["server"]


def test_a_file_where_a_parent_folder_should_be(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(UsageError, match=r"out is a file, not a folder"):
        write_new(tmp_path / "out/m/server")
    assert (tmp_path / "out").read_text() == "not a folder"


def test_cli_refuses_a_file_at_the_output_path_with_exit_2(tmp_path, capsys):
    from zoo.cli import main

    final = tmp_path / "out/tiny_vit/android"
    final.parent.mkdir(parents=True)
    final.write_text("my notes")
    code = main(["convert", "--model", "tiny_vit", "--target", "android", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{final} exists and is not a directory" in err and "Traceback" not in err
    assert final.read_text() == "my notes"


def test_a_failed_rename_keeps_the_old_output(tmp_path, monkeypatch):
    final = complete_output(tmp_path / "out/m/server", "old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".server.partial-"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr("zoo.outputs.os.replace", replace)
    with pytest.raises(OSError) as exc:
        write_new(final)
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(final)
    assert tags(final) == {"old"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["server"]


def test_a_failed_write_keeps_the_old_output(tmp_path):
    final = complete_output(tmp_path / "out/m/server", "old")
    with pytest.raises(OSError), staged_directory(final) as work:
        (work / "a.txt").write_text("x")
        raise OSError(errno.EROFS, "Read-only file system", str(work / "b.txt"))
    assert tags(final) == {"old"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["server"]


# LocalStore.publish


def _archive(path: Path, content: bytes) -> tuple[Path, Path]:
    path.write_bytes(content * 4096)
    manifest = path.with_name(path.name + ".manifest.json")
    manifest.write_text(json.dumps({"name": "pkg", "version": "1.0.0"}))
    return path, manifest


def test_concurrent_publishes_of_the_same_archive_both_succeed(tmp_path):
    archive, manifest = _archive(tmp_path / "pkg.tar.gz", b"same")
    for round in range(5):
        store, go = tmp_path / f"store{round}", tmp_path / f"go{round}"
        procs = [_spawn(PUBLISHER, store, archive, manifest, go) for _ in range(2)]
        go.touch()
        results = [_finish(p) for p in procs]
        assert [rc for rc, _, _ in results] == [0, 0], results
        assert all("Traceback" not in err for _, _, err in results)
        assert sorted(out.strip() for _, out, _ in results) == ["already there", "published"]
        folder = store / "pkg"
        assert sorted(p.name for p in folder.iterdir()) == ["1.0.0"]
        assert sha256_file(folder / "1.0.0/pkg-1.0.0.tar.gz") == sha256_file(archive)


def test_concurrent_publishes_of_different_archives_one_is_refused(tmp_path):
    archives = [_archive(tmp_path / f"{tag}.tar.gz", tag.encode()) for tag in ("aaaa", "bbbb")]
    for round in range(5):
        store, go = tmp_path / f"store{round}", tmp_path / f"go{round}"
        procs = [_spawn(PUBLISHER, store, archive, manifest, go) for archive, manifest in archives]
        go.touch()
        results = [_finish(p) for p in procs]
        assert sorted(rc for rc, _, _ in results) == [0, 5], results
        assert all("Traceback" not in err for _, _, err in results)
        winner = archives[[rc for rc, _, _ in results].index(0)][0]
        loser = next(out for rc, out, _ in results if rc == 5)
        assert "already published" in loser
        assert sorted(p.name for p in (store / "pkg").iterdir()) == ["1.0.0"]
        assert sha256_file(store / "pkg/1.0.0/pkg-1.0.0.tar.gz") == sha256_file(winner)


@pytest.mark.parametrize("same", [True, False])
def test_publish_that_loses_the_rename_to_a_lockless_writer(tmp_path, monkeypatch, same):
    """Another writer (one that takes no lock) puts the version in place between our check and our
    rename: the rename fails with ENOTEMPTY, and the recorded sha256 decides."""
    from packaging_helpers import put_in_local_store

    import zoo.packaging.store as store_module

    ours, manifest = _archive(tmp_path / "ours.tar.gz", b"ours")
    theirs = ours if same else _archive(tmp_path / "theirs.tar.gz", b"theirs")[0]
    real_sidecar = store_module.write_sha256_sidecar

    def sidecar_then_the_other_writer(target, digest):
        real_sidecar(target, digest)
        put_in_local_store(tmp_path / "store", "pkg", "1.0.0", theirs)

    monkeypatch.setattr(store_module, "write_sha256_sidecar", sidecar_then_the_other_writer)
    store = LocalStore(tmp_path / "store")
    if same:
        assert store.publish(ours, sha256_file(ours), "pkg", "1.0.0", manifest).already_there
    else:
        with pytest.raises(StoreError, match="already published"):
            store.publish(ours, sha256_file(ours), "pkg", "1.0.0", manifest)
    assert sorted(p.name for p in (tmp_path / "store/pkg").iterdir()) == ["1.0.0"]


def test_publish_removes_what_a_killed_publish_left(tmp_path):
    archive, manifest = _archive(tmp_path / "pkg.tar.gz", b"x")
    stale = tmp_path / f"store/pkg/.1.0.0.publish-{dead_pid()}"
    stale.mkdir(parents=True)
    (stale / "pkg-1.0.0.tar.gz").write_bytes(b"half")
    published = LocalStore(tmp_path / "store").publish(archive, sha256_file(archive), "pkg", "1.0.0", manifest)
    assert not published.already_there
    assert sorted(p.name for p in (tmp_path / "store/pkg").iterdir()) == ["1.0.0"]


# zoo matrix


def test_matrix_ignores_hidden_leftovers(tmp_path):
    from zoo.matrix import collect

    outputs = tmp_path / "out"
    report = {"model": "tiny_vit", "target": "android", "verdict": "pass", "checks": []}
    for folder in ("tiny_vit/android", "tiny_vit/.server.old-20390", "tiny_vit/.server.partial-7", ".hidden/android"):
        (outputs / folder).mkdir(parents=True)
        (outputs / folder / "report.json").write_text(json.dumps(report))
    matrix = collect(outputs=outputs)
    assert (matrix.models, matrix.targets) == (("tiny_vit",), ("android",))
    assert [(c.model, c.target, c.state) for c in matrix.cells] == [("tiny_vit", "android", "pass")]
