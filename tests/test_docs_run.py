"""Every ```python block of README.md and docs/*.md runs as written, on a CPU-only machine,
against small real outputs made here: a doc example that no longer runs is a bug.

* **One test per block**, named ``file:line`` (the line of the opening fence), so a failure
  names the block; the traceback's line numbers are the doc's.
* **Blocks of one file share a namespace, in order**, like a notebook: the docs read that way
  (docs/loading.md's ``DataLoader`` block uses the ``ds`` made in the block above it).
* **Where they run.** Each file's blocks run in a fresh Python process (so TensorFlow's and JAX's
  threads, a ``torch.distributed`` process group or a chdir never leak into the tests that
  fork later in the session), in a folder holding what the docs name: ``bank/`` (a fractal
  bank), ``train.h5``, ``cifar-ipmix.h5`` (4 copies), ``OUT.h5`` and ``augmented.h5`` (real
  ``ipmix augment`` outputs of 256 sources, enough for the docs' batches of 128 and 256).
  Two blocks describe another kind of output under the same name and run in a folder of its
  own, chosen by the marker comment already on the line before their fence (``WORKSPACES``):
  the JSD recipe (``train.h5`` made with ``--jsd``) and the codec decode example (``OUT.h5``
  PNG-coded). The process has torchrun's environment for one process (``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so the DDP block's
  ``init_process_group`` runs as it would under ``torchrun --nproc-per-node=1``.
* **Shortened loops.** Training loops run 2 epochs instead of 100 (``SHORTEN``: each rewrite
  is plain text, listed, and only ever shortens a loop).
* **Skips.** A block that imports torch, tensorflow, jax, grain or dask (directly or through
  its ``ipmix_cli.readers`` adapter) is skipped, with the reason, when that framework is not
  installed; a later block of its file that then misses one of its names (``NameError``) is
  skipped too, naming the block it depends on.
* **Opt-outs.** A block preceded by ``<!-- not-run: reason -->`` is not run (only for what
  needs a cluster, a GPU or S3); ``test_opt_outs_are_few_and_give_a_reason`` lists them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\s*$")
NOT_RUN = re.compile(r"^<!-- not-run: (?P<reason>.+?) -->$")
MAX_OPT_OUTS = 2  # raise only for a block that truly needs a cluster, a GPU or S3

# marker comment on the line before a fence -> the workspace that block runs in
WORKSPACES = {"<!-- recipe: torch-jsd -->": "jsd", "<!-- codec-decode-example -->": "coded"}
# text rewrites that shorten the docs' training loops (applied where they occur)
SHORTEN = {"range(100)": "range(2)", "epochs=100": "epochs=2"}
# top-level module a block imports -> the distribution it needs (for the skip reason)
FRAMEWORKS = {
    "torch": "torch",
    "tensorflow": "tensorflow",
    "jax": "jax",
    "grain": "grain",
    "dask": "dask",
    "distributed": "distributed",
    "dask_jobqueue": "dask-jobqueue",
}
# ipmix adapters that import their framework
ADAPTERS = {"torch": "torch", "tf": "tensorflow", "jax": "jax"}
CHILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    """One ```python block: where it is, what is on the line before it, and its code."""

    doc: Path
    line: int  # 1-based line of the opening fence
    marker: str  # the line before the fence, stripped
    code: str

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def opt_out(self) -> str | None:
        """The reason given by a ``<!-- not-run: reason -->`` marker, else None."""
        match = NOT_RUN.match(self.marker)
        return match.group("reason") if match else None

    def frameworks(self) -> list[str]:
        """Top-level framework modules the block imports, directly or through an adapter."""
        found = []
        for match in re.finditer(r"^\s*(?:import|from)\s+([\w.]+)", self.code, re.M):
            module = match.group(1)
            top = module.split(".")[0]
            if top in FRAMEWORKS:
                found.append(top)
            elif module.startswith("ipmix_cli.readers."):
                adapter = ADAPTERS.get(module.split(".")[2])
                found.extend([adapter] if adapter else [])
        for name in re.findall(r"^\s*from\s+ipmix_cli\.readers\s+import\s+(.+)$", self.code, re.M):
            for part in name.split(","):
                adapter = ADAPTERS.get(part.split(" as ")[0].strip())
                found.extend([adapter] if adapter else [])
        return sorted(set(found))

    def runnable_code(self) -> str:
        """The code as the doc prints it, loops shortened, padded so line numbers match."""
        code = self.code
        for old, new in SHORTEN.items():
            code = code.replace(old, new)
        return "\n" * self.line + code


def extract_blocks(doc: Path) -> list[Block]:
    """Every ```python block of ``doc``, in order."""
    lines = doc.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            marker = lines[i - 1].strip() if i else ""
            blocks.append(Block(doc, i + 1, marker, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return blocks


ALL_BLOCKS = [block for doc in DOC_FILES for block in extract_blocks(doc)]


# --- the outputs the docs name ------------------------------------------------------------


def _make_outputs(root: Path) -> dict[str, Path]:
    """The workspaces: real bank and augment outputs under the names the docs use."""
    from fractals import FractalOptions
    from ipmix_cli.augment.config import IPMixConfig
    from ipmix_cli.jobs.augment_job import run_augment
    from ipmix_cli.jobs.augment_spec import AugmentSpec
    from ipmix_cli.jobs.bank_job import BankSpec, generate_bank

    base, jsd, coded = root / "base", root / "jsd", root / "coded"
    for folder in (base, jsd, coded):
        folder.mkdir()
    options = FractalOptions(size=48, points=2000)
    generate_bank(BankSpec(out=base / "bank", count=4, seed=5, options=options), jobs=1)
    data = root / "data.npz"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    np.savez(data, images=images, labels=np.arange(256) % 10)

    def augment(out: Path, copies: int = 2, jsd: bool = False, codec: str = "raw") -> None:
        config = IPMixConfig.preset("cifar", jsd=jsd)
        spec = AugmentSpec(
            input=data, mixing_set=base / "bank", out=out, config=config, copies=copies, codec=codec
        )
        run_augment(spec, jobs=1)

    for name in ("train", "OUT", "augmented"):
        augment(base / f"{name}.h5")
    augment(base / "cifar-ipmix.h5", copies=4)  # the README's --copies 4
    augment(jsd / "train.h5", jsd=True)
    augment(coded / "OUT.h5", codec="png")
    return {"base": base, "jsd": jsd, "coded": coded}


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _make_outputs(tmp_path_factory.mktemp("docs-run"))


# --- running one file's blocks in a child process ----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_doc(doc: Path, workspaces: dict[str, Path], results: Path) -> str:
    """Run ``doc``'s blocks in a fresh interpreter; per-block results go to ``results``.
    Returns the child's output tail (for a child that died before reporting a block)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MPLBACKEND", "Agg")
    # what torchrun sets for a single process: the DDP block runs as it would under it
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    spaces = json.dumps({k: str(v) for k, v in workspaces.items()})
    command = [sys.executable, __file__, str(doc), spaces, str(results)]
    proc = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=ROOT
    )
    return (proc.stdout + proc.stderr)[-4000:] + f"\n(exit status {proc.returncode})"


_CACHE: dict[Path, tuple[dict, str]] = {}


def _results_for(doc: Path, workspaces: dict[str, Path], tmp: Path) -> tuple[dict, str]:
    """Each file's child runs once, when the first of its blocks is tested."""
    if doc not in _CACHE:
        results = tmp / f"{doc.name}.json"
        tail = _run_doc(doc, workspaces, results)
        found = json.loads(results.read_text()) if results.exists() else {}
        _CACHE[doc] = (found, tail)
    return _CACHE[doc]


def _child(doc: Path, spaces: dict[str, str], results: Path) -> None:
    """In the child: exec the blocks in order in one namespace; record each outcome."""
    namespace: dict = {"__name__": "__main__"}
    outcome: dict[str, dict] = {}
    skipped: list[str] = []  # blocks not run, whose names a later block may miss
    for block in extract_blocks(doc):
        start = time.perf_counter()
        if block.opt_out:
            outcome[str(block.line)] = {"status": "opt-out", "detail": block.opt_out}
        elif absent := [m for m in block.frameworks() if importlib.util.find_spec(m) is None]:
            reason = f"{FRAMEWORKS[absent[0]]} is not installed"
            outcome[str(block.line)] = {"status": "skipped", "detail": reason}
            skipped.append(f"line {block.line} ({reason})")
        else:
            try:
                os.chdir(spaces[WORKSPACES.get(block.marker, "base")])
                exec(compile(block.runnable_code(), str(block.doc), "exec"), namespace)  # noqa: S102
            except NameError as error:
                if skipped:  # a name from a block that could not run here
                    reason = f"{error}, after skipped block {', '.join(skipped)}"
                    outcome[str(block.line)] = {"status": "skipped", "detail": reason}
                else:
                    detail = traceback.format_exc(limit=-8)
                    outcome[str(block.line)] = {"status": "failed", "detail": detail}
            except BaseException:  # noqa: BLE001 - report every failure, SystemExit included
                detail = traceback.format_exc(limit=-8)
                outcome[str(block.line)] = {"status": "failed", "detail": detail}
            else:
                outcome[str(block.line)] = {"status": "passed", "detail": ""}
        outcome[str(block.line)]["seconds"] = round(time.perf_counter() - start, 2)
        results.write_text(json.dumps(outcome))  # after each block: survives a crash


# --- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.name for b in ALL_BLOCKS])
def test_doc_block_runs(
    block: Block, workspaces: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    if block.opt_out:
        pytest.skip(f"{block.name} opted out in the doc: {block.opt_out}")
    results, tail = _results_for(block.doc, workspaces, tmp_path_factory.getbasetemp())
    result = results.get(str(block.line))
    assert result is not None, f"{block.name}: the process died before this block:\n{tail}"
    if result["status"] == "skipped":
        pytest.skip(f"{block.name}: {result['detail']}")
    assert result["status"] == "passed", f"{block.name} failed:\n{result['detail']}"


def test_blocks_are_found() -> None:
    """The extraction sees the docs' blocks (a renamed fence would silently test nothing)."""
    per_file = {doc.name: len(extract_blocks(doc)) for doc in DOC_FILES}
    assert per_file["README.md"] >= 2 and per_file["loading.md"] >= 8, per_file
    assert all(b.code.strip() for b in ALL_BLOCKS)


def test_opt_outs_are_few_and_give_a_reason() -> None:
    """Opting out is visible: the list is printed (``pytest -s``) and capped."""
    opted = [(b.name, b.opt_out) for b in ALL_BLOCKS if b.opt_out]
    print(f"{len(opted)} of {len(ALL_BLOCKS)} doc blocks opted out:")
    for name, reason in opted:
        print(f"  {name}: {reason}")
    assert len(opted) <= MAX_OPT_OUTS, opted
    assert all(len(reason) > 10 for _, reason in opted)
    # a marker that is misspelt or not right above a fence would silently opt out nothing
    for doc in DOC_FILES:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if "not-run" in line:
                where = f"{doc.relative_to(ROOT)}:{i + 1}"
                assert NOT_RUN.match(line.strip()), f"{where}: write <!-- not-run: reason -->"
                assert i + 1 < len(lines) and FENCE.match(lines[i + 1]), f"{where}: no fence"


def test_shorten_rewrites_only_loop_counts() -> None:
    """Each rewrite in SHORTEN turns up in some block (none is stale) and only shrinks a
    count, so what runs is what the doc prints, for fewer steps."""
    code = "".join(b.code for b in ALL_BLOCKS)
    for old, new in SHORTEN.items():
        assert old in code, f"{old!r} no longer in any doc block: drop it from SHORTEN"
        assert re.sub(r"\d+", "", old) == re.sub(r"\d+", "", new)


if __name__ == "__main__":  # the child process of _run_doc
    _child(Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3]))
