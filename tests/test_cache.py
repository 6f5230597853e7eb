"""The content-addressed cache: entries that survive concurrency and tampering, conversions and steps
reused only when nothing they depend on changed (and said so), and the matrix on every executor."""

import json
import os
import threading

import pytest
from conftest import checkpointed_teacher, teacher_block

from zoo import cache
from zoo.checkpoints import sha256_file
from zoo.cli import main
from zoo.matrix import collect, executors, merge
from zoo.pipeline import convert
from zoo.registry import load_registry


def _checkpointed(tmp_path, names=("ck_a", "ck_b"), seed=0):
    """A registry of trained tiny teachers (their own checkpoints), written to tmp_path."""
    text = "".join(checkpointed_teacher(tmp_path, name, seed * 100 + i) for i, name in enumerate(names))
    registry = tmp_path / "reg.toml"
    registry.write_text(text)
    return registry


# ---- entries ----


def test_entry_round_trip_and_a_tampered_entry_is_a_miss(tmp_path):
    src = tmp_path / "src"
    (src / "pkg.mlpackage").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"onnx bytes")
    (src / "pkg.mlpackage" / "weights.bin").write_bytes(b"w" * 1000)
    entry = cache.store("steps", "k" * 64, src, ["model.onnx", "pkg.mlpackage"], {"seconds": 1.5})
    assert set(entry.meta["files"]) == {"model.onnx", "pkg.mlpackage/weights.bin"}

    dest = tmp_path / "dest"
    assert cache.restore(cache.lookup("steps", "k" * 64), dest)
    assert (dest / "pkg.mlpackage" / "weights.bin").read_bytes() == b"w" * 1000

    (entry.path / "files" / "model.onnx").write_bytes(b"tampered")  # a cache someone edited
    assert not cache.restore(cache.lookup("steps", "k" * 64), tmp_path / "dest2")
    assert cache.lookup("steps", "k" * 64) is None  # evicted, so the next run writes a good one


def test_two_writers_of_one_key_both_succeed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(1 << 20))
    results = []

    def write():
        results.append(cache.store("conversions", "c" * 64, src, ["a.bin"], {}))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r is not None for r in results)
    kind = cache.cache_root() / "conversions"
    assert [p.name for p in kind.iterdir()] == ["c" * 64]  # one entry, no temporaries left
    assert cache.restore(cache.lookup("conversions", "c" * 64), tmp_path / "out")


def test_prune_evicts_least_recently_used_first(tmp_path, monkeypatch):
    # a cache of its own, without the shared teacher embeddings earlier tests may have filled
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 10_000)
    for i, key in enumerate(("old", "mid", "new")):
        entry = cache.store("steps", key * 16, src, ["f"], {})
        os.utime(entry.path / cache.ENTRY_FILE, (1000 + i, 1000 + i))
    cache.lookup("steps", "old" * 16)  # used now: the most recent
    removed, freed = cache.prune(15_000)
    assert removed == 2 and freed >= 20_000
    assert cache.lookup("steps", "old" * 16) is not None
    assert cache.lookup("steps", "mid" * 16) is None and cache.lookup("steps", "new" * 16) is None
    assert cache.parse_size("1.5G") == int(1.5 * (1 << 30)) and cache.parse_size("500M") == 500 << 20


# ---- conversions ----


def test_unchanged_conversion_comes_from_the_cache_and_says_so(tmp_path, capsys):
    registry = load_registry()
    first = convert("tiny_vit", "server", out_root=tmp_path / "out", registry=registry, latency_runs=20)
    assert "cache" not in first.report.info and first.report.timings["total"] > 0
    second = convert("tiny_vit", "server", out_root=tmp_path / "out", registry=registry, latency_runs=20)
    assert second.report.info["cache"].startswith("cached (from conversions/")
    # the same rows, same statuses, values and fidelity — each labelled as not re-run
    assert [(c.name, c.status, c.value, c.fidelity) for c in second.report.checks] == [
        (c.name, c.status, c.value, c.fidelity) for c in first.report.checks
    ]
    assert all("not re-run" in c.detail and c.origin.startswith("cached conversion") for c in second.report.checks)
    manifest = json.loads((second.out_dir / "manifest.json").read_text())
    assert manifest["cache"]["entry"].startswith("conversions/")
    assert manifest["report_sha256"] == sha256_file(second.out_dir / "report.json")

    # --no-cache does the work again and the report makes no cache claim
    code = main(
        ["convert", "--model", "tiny_vit", "--target", "server", "--out", str(tmp_path / "out")]
        + ["--latency-runs", "20", "-q", "--no-cache"]
    )
    assert code == 0
    data = json.loads((tmp_path / "out/tiny_vit/server/report.json").read_text())
    assert "cache" not in data["info"] and data["timings"]["total"] > 0


def test_a_change_after_the_steps_reuses_the_steps_and_re_runs_validation(tmp_path):
    registry = load_registry()
    convert("tiny_efficientnet", "android", out_root=tmp_path / "a", registry=registry, latency_runs=20)
    again = convert("tiny_efficientnet", "android", out_root=tmp_path / "a", registry=registry, latency_runs=25)
    assert "cache" not in again.report.info  # validation ran again (a new latency setting)
    latency = [c for c in again.report.checks if c.name.startswith("latency")]
    assert latency and not any("not re-run" in c.detail for c in latency)
    # the conversion's own rows came from the cached steps, labelled
    carried = [c for c in again.report.checks if c.origin.startswith("cached ")]
    assert carried and all(c.origin.startswith(("cached torch_to_onnx", "cached onnx_to_ort")) for c in carried)


def test_a_tampered_cached_artifact_is_never_served(tmp_path):
    registry = load_registry()
    first = convert("tiny_vit", "server", out_root=tmp_path / "out", registry=registry, validate=False)
    good = sha256_file(first.out_dir / "model.onnx")
    root = cache.cache_root()
    for onnx in (root / "conversions").rglob("model.onnx"):
        onnx.write_bytes(b"not the model")
    for onnx in (root / "steps").rglob("model.onnx"):
        onnx.write_bytes(b"not the model")
    second = convert("tiny_vit", "server", out_root=tmp_path / "out", registry=registry, validate=False)
    assert "cache" not in second.report.info
    assert sha256_file(second.out_dir / "model.onnx") == good


def test_changing_one_checkpoint_recomputes_exactly_that_models_cells(tmp_path):
    registry = _checkpointed(tmp_path)
    kwargs = dict(targets=["server", "android"], outputs=tmp_path / "out", convert=True, registry_paths=[registry])
    cold = collect(models=["ck_a", "ck_b"], **kwargs)
    assert [c.state for c in cold.cells] == ["pass"] * 4 and not any(c.cached for c in cold.cells)
    warm = collect(models=["ck_a", "ck_b"], **kwargs)
    assert all(c.cached for c in warm.cells)

    _checkpointed(tmp_path, names=("ck_a",), seed=7)  # new weights for ck_a only
    text = (tmp_path / "reg.toml").read_text()
    registry.write_text(text + teacher_block("ck_b", tmp_path / "ck_b.safetensors"))
    changed = collect(models=["ck_a", "ck_b"], **kwargs)
    assert {(c.model, c.target): bool(c.cached) for c in changed.cells} == {
        ("ck_a", "server"): False,
        ("ck_a", "android"): False,
        ("ck_b", "server"): True,
        ("ck_b", "android"): True,
    }


# ---- the matrix: executors, shards ----


CRASHING_FACTORY = """
import os, signal

def factory(**kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # as a native crash in a toolchain would
"""


def test_process_executor_matches_local_and_isolates_a_crash(tmp_path, write_registry, monkeypatch):
    (tmp_path / "crashing_factory.py").write_text(CRASHING_FACTORY)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = write_registry(
        '[models.crasher]\nrole = "teacher"\narchitecture = "crashing_factory:factory"\n'
        'embedding_dim = 8\ninput_size = 32\nembedding_space = "x"\n'
    )
    kwargs = dict(targets=["server"], convert=True, registry_paths=[registry], latency_runs=20)
    with monkeypatch.context() as patch:  # the thread budget is part of the key: the one of --jobs 2
        patch.setenv("ZOO_THREADS", str(executors.threads_per_cell(2)))
        local = collect(models=["tiny_vit"], outputs=tmp_path / "a", **kwargs)
    started = []
    with monkeypatch.context() as patch:
        patch.setitem(executors.RUNNERS, "process", lambda jobs, *a: started.extend(jobs) or iter(()))
        warm = collect(models=["tiny_vit"], outputs=tmp_path / "a", jobs=2, **kwargs)
    assert started == [] and warm.cell("tiny_vit", "server").cached  # restored here: no worker spawned
    monkeypatch.setenv("ZOO_CACHE", "off")  # the workers do the work again
    # one worker: the crash kills it, and a fresh one takes the next cell
    both = collect(models=["crasher", "tiny_vit"], outputs=tmp_path / "b", executor="process", **kwargs)
    crashed = both.cell("crasher", "server")
    assert crashed.state == "error" and "killed by signal 9" in crashed.detail
    parallel = both.cell("tiny_vit", "server")
    assert parallel.state == local.cell("tiny_vit", "server").state == "pass"
    assert [(c.name, c.status) for c in parallel.report.checks] == [
        (c.name, c.status) for c in local.cell("tiny_vit", "server").report.checks
    ]
    assert parallel.out_dir == str(tmp_path / "b" / "tiny_vit" / "server")


def test_ray_executor_reproduces_the_process_executor_cell_for_cell(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("ZOO_CACHE", "off")
    kwargs = dict(models=["tiny_vit", "tiny_efficientnet"], targets=["server"], convert=True, jobs=2, latency_runs=20)
    processes = collect(outputs=tmp_path / "p", **kwargs)
    on_ray = collect(outputs=tmp_path / "r", executor="ray", **kwargs)
    assert [(c.model, c.target, c.state) for c in on_ray.cells] == [
        (c.model, c.target, c.state) for c in processes.cells
    ]
    for a, b in zip(processes.cells, on_ray.cells, strict=True):
        rows = {
            c.name + c.artifact: (c.status, c.value)
            for c in a.report.checks
            if not c.name.startswith(("latency", "throughput"))
        }
        assert rows == {
            c.name + c.artifact: (c.status, c.value)
            for c in b.report.checks
            if not c.name.startswith(("latency", "throughput"))
        }


def test_plan_and_merge_round_trip_two_shards(tmp_path, capsys):
    selection = ["--models", "tiny_vit", "tiny_efficientnet", "--targets", "server", "android", "-q"]
    assert main(["matrix", "plan", "--shards", "2", *selection]) == 0
    plan = json.loads(capsys.readouterr().out)
    shards = [entry["shard"] for entry in plan["include"]]
    assert shards == ["1/2", "2/2"]
    cells = [cell for entry in plan["include"] for cell in entry["cells"]]
    assert sorted(cells) == sorted(f"{m}/{t}" for m in ("tiny_vit", "tiny_efficientnet") for t in ("server", "android"))
    for entry in plan["include"]:  # each shard holds both models and both targets
        assert {c.split("/")[1] for c in entry["cells"]} == {"server", "android"}

    out = str(tmp_path / "out")
    for shard in shards:
        report_dir = tmp_path / shard.replace("/", "-of-")
        args = ["matrix", "--convert", "--shard", shard, "--outputs", out, "--report-dir", str(report_dir)]
        assert main([*args, "--latency-runs", "20", *selection]) == 0
    merged_dir = tmp_path / "merged"
    parts = [str(tmp_path / f"{k}-of-2" / "matrix.json") for k in (1, 2)]
    assert main(["matrix", "merge", *parts, "--report-dir", str(merged_dir), "-q"]) == 0
    merged = json.loads((merged_dir / "matrix.json").read_text())
    assert merged["totals"]["cells"] == {"pass": 4, "fail": 0, "error": 0, "missing": 0}
    assert {p.name for p in merged_dir.iterdir()} == {"matrix.json", "matrix.md", "junit.xml", "matrix.html"}
    capsys.readouterr()
    # a shard merged twice is refused, one line
    assert main(["matrix", "merge", parts[0], parts[0], "--report-dir", str(tmp_path / "x"), "-q"]) == 2
    assert "more than one shard report" in capsys.readouterr().err


def test_merge_keeps_plan_order():
    from zoo.matrix import Cell, Matrix

    a = Matrix(("m",), ("t2",), (Cell("m", "t2", "pass"),))
    b = Matrix(("m",), ("t1", "t2"), (Cell("m", "t1", "fail"),))
    merged = merge([a, b])
    assert merged.targets == ("t2", "t1") and [c.target for c in merged.cells] == ["t2", "t1"]
