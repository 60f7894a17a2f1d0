"""One builder per cache folder under torchrun (dataset/once.py): processes started as torchrun
starts them (RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK, a gloo process group), each calling the real
build_store on a real file. Every build is recorded by the process that runs it (the real
_write_store, wrapped to write its rank to a file first), so the count of builds is observed,
not inferred from log lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO, field_case, free_port

CHILD = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    import dataset.store as store
    from dataset.tokenizer import load_tokenizer
    from model.errors import UserError
    from trainer.runtime import cleanup

    tok_dir, scenarios = sys.argv[1], json.loads(sys.argv[2])
    rank, node = int(os.environ["RANK"]), int(os.environ["GROUP_RANK"])
    real = store._write_store
    log = None

    def recorded(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{rank}\\n")
        return real(*args, **kwargs)

    store._write_store = recorded
    tok = load_tokenizer(tok_dir)
    dist.init_process_group("gloo")
    out = []
    for data, caches, log in scenarios:
        try:
            s = store.build_store([data], tok, caches[node], num_proc=1)
            out.append({"folder": str(s.folder), "tokens": s.num_tokens})
        except UserError as e:
            out.append({"error": str(e)})
    cleanup()  # the trainers' shutdown
    print(json.dumps(out))
""")


def launch(
    world: int, per_node: int, tok: Path, scenarios: list[tuple[Path, list[Path], Path]]
) -> list[list[dict]]:
    """``world`` processes on ``world / per_node`` simulated nodes, started as torchrun starts
    them; each builds the store of every scenario ``(data file, cache folder per node, build
    log)`` in turn. Per scenario, each rank's result."""
    port = free_port()
    plan = json.dumps([(str(d), [str(c) for c in caches], str(log)) for d, caches, log in scenarios])
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank % per_node),
            "LOCAL_WORLD_SIZE": str(per_node),
            "GROUP_RANK": str(rank // per_node),
        }
        args = [sys.executable, "-c", CHILD, str(tok), plan]
        procs.append(
            subprocess.Popen(
                args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    per_rank = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        per_rank.append(json.loads(stdout.strip().splitlines()[-1]))
    return [list(results) for results in zip(*per_rank, strict=True)]


def builds(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


@pytest.mark.slow
def test_two_processes_build_once(tmp_path, field_tokenizer_dir):
    data = field_case("val_interleaved.jsonl")
    cache = tmp_path / "cache"
    (got,) = launch(2, 2, field_tokenizer_dir, [(data, [cache], tmp_path / "builds.txt")])
    assert builds(tmp_path / "builds.txt") == [0]  # rank 0 built; rank 1 waited, then opened it
    assert got[0] == got[1] and got[0]["tokens"] > 0
    assert [p.name for p in cache.iterdir()] == [Path(got[0]["folder"]).name]  # no probe, no temporary


@pytest.mark.slow
def test_two_nodes_build_once_per_copy_of_the_cache(tmp_path, field_tokenizer_dir):
    """2 simulated nodes x 2 local ranks (LOCAL_RANK / GROUP_RANK as torchrun sets them): a cache
    folder all four see is built by rank 0 alone, and found by the next start; a folder per node
    is built by each node's local rank 0 (ranks 0 and 2); a bad row stops every rank with the
    builder's one line and leaves nothing a later run could take for a store."""
    data = field_case("val_interleaved.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    shared, nodes = [tmp_path / "shared"] * 2, [tmp_path / "node0", tmp_path / "node1"]
    logs = [tmp_path / f"builds{i}.txt" for i in range(4)]
    first, again, per_node, failed = launch(
        4,
        2,
        field_tokenizer_dir,
        [(data, shared, logs[0]), (data, shared, logs[1]), (data, nodes, logs[2]), (bad, shared, logs[3])],
    )
    assert [builds(log) for log in logs] == [[0], [], [0, 2], [0]]
    assert len({r["tokens"] for r in first + again + per_node}) == 1
    assert {Path(r["folder"]).parent for r in per_node} == set(nodes)
    for cache in (shared[0], *nodes):
        assert len(list(cache.glob("store-*/meta.json"))) == 1
        assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no probe, no temporary
    assert len({r["error"] for r in failed}) == 1 and failed[0]["error"].startswith(f"{bad}:2:")
    assert len(list(shared[0].glob("store-*"))) == 1  # only the good file's store
