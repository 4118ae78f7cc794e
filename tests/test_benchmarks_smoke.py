"""Smoke tests of benchmarks/core.py: each benchmark runs in --quick mode and prints a full table."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.inv"))
REFUSED = {"broken_symmetry"}  # shipped to show a refusal, as in tests/test_examples.py


def run_bench(*args: str) -> dict[str, list[list[str]]]:
    """The printed table's data rows, keyed by example name (one row per batch for inference)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "core.py"), *args, "--quick"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("\n## ", 1)[1].splitlines()[2:]  # after the title and header lines
    rows: dict[str, list[list[str]]] = {}
    for line in table:
        if line and not line.startswith("heavy import:"):
            cells = line.split()
            rows.setdefault(cells[0], []).append(cells)
    return rows


def usable(cells: list[str]) -> bool:
    """Whether a row has numbers: the refused example must fail with a SpecError, every other must not."""
    if cells[0] not in REFUSED:
        assert "FAILED:" not in cells, f"example {cells[0]} failed in the benchmark: {cells}"
        return True
    assert "FAILED:" in cells, f"{cells[0]} is shipped to be refused, yet it ran: {cells}"
    assert cells[cells.index("FAILED:") + 1] == "SpecError:", cells
    return False


def assert_ratios(cells: list[str], columns: list[int]) -> None:
    for i in columns:
        found = re.fullmatch(r"(\S+)x", cells[i])
        assert found, f"column {i} of {cells} is no ratio"
        value = float(found.group(1))
        assert math.isfinite(value) and value > 0, cells


def test_check_bench_is_torch_free():
    rows = run_bench("check")
    assert sorted(rows) == EXAMPLES
    for (cells,) in rows.values():
        assert cells[1] in ("0", "2"), cells
        assert cells[1] == ("2" if cells[0] in REFUSED else "0"), cells
        assert cells[4] == "none", f"the check path imports torch, numpy or onnx: {cells}"
        assert_ratios(cells, [5])


def test_compile_bench():
    rows = run_bench("compile", "--no-export")
    assert sorted(rows) == EXAMPLES
    for (cells,) in rows.values():
        if usable(cells):
            assert float(cells[3]) > 0 and cells[5] == "-"


@pytest.mark.parametrize("extra, ratio_columns", [
    (["--no-export"], [5]),
    # One small example with torch.onnx.export too: its file is what the last column compares to.
    (["--examples", "mlp"], [5, 6]),
])
def test_inference_bench(extra, ratio_columns):
    rows = run_bench("inference", *extra)
    assert sorted(rows) == (["mlp"] if "mlp" in extra else EXAMPLES)
    for per_batch in rows.values():
        assert [cells[1] for cells in per_batch] == ["1", "4"]
        for cells in per_batch:
            if usable(cells):
                assert_ratios(cells, ratio_columns)


def test_smollm2_mac_count_matches_torch_flop_counter():
    """The MAC floor quoted next to the SliceGPT latency, checked against torch's own FLOP count
    (eager attention, whose two matmuls the counter sees), dense and sliced."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from slicegpt_smollm2 import macs_per_token
    from passes.slicegpt import slice_model
    from test_slicegpt_models import tiny_model, token_batches

    model, seq = tiny_model("llama"), 16
    model.set_attn_implementation("eager")
    ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0))
    for sparsity in (None, 0.25):
        if sparsity:
            slice_model(model, token_batches(), sparsity, "shortcut-free")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(input_ids=ids, use_cache=False)
        assert macs_per_token(model, seq) == counter.get_total_flops() // (2 * seq)
