"""`invc slice`, `invc eval-ppl`, `invc export` and `invc generate`: SliceGPT on Hugging Face model directories."""
from __future__ import annotations

import sys
from pathlib import Path

from compiler.commands import positive


def register(sub) -> None:
    # No torch import here: registering must stay cheap for the commands that never touch a model.
    p = sub.add_parser("slice", help="rotate and slice the residual stream of a HF causal LM (SliceGPT)",
                       description="SliceGPT on a Hugging Face causal LM directory; see passes/slicegpt/README.md.")
    p.add_argument("model", type=Path, nargs="?", help="HF model directory (config, weights, tokenizer)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of stream dimensions to drop, in [0, 1) (default 0.25)")
    p.add_argument("--schedule", default=None,
                   help="shortcut mode: one sparsity per block, comma-separated (e.g. 0.1,0.2,0.3), "
                        "for the stream each block writes; replaces --sparsity")
    p.add_argument("--calib", type=Path, nargs="+", help="calibration text files")
    p.add_argument("-o", "--output", type=Path, help="directory to write (atomically)")
    p.add_argument("--mode", default="shortcut-free",
                   help="shortcut-free (default): one rotation for the whole stream, no extra parameters; "
                        "shortcut: one rotation per block, joined by shortcut matrices")
    p.add_argument("--seq-len", type=positive(int), default=512)
    p.add_argument("--samples", type=positive(int), default=32, help="calibration sequences")
    p.add_argument("--batch-size", type=positive(int), default=4)
    p.add_argument("--multiple", type=positive(int), default=8, help="kept dimensions are rounded down to this multiple")
    p.add_argument("--untie-head", action="store_true",
                   help="give a tied head its own table so the result stays a plain model of its family "
                        "(shortcut mode always does)")
    p.add_argument("--refit", type=positive(float), nargs="?", const=True, default=None, metavar="RIDGE",
                   help="shortcut-free mode: after slicing, refit every norm's readers by ridge least squares to "
                        "reproduce the dense block on the calibration text (ridge 0.1 unless given). It helps on "
                        "text like the calibration text and hurts on other kinds, so it is off by default")
    p.add_argument("--onnx", action="store_true", help="also write OUT_DIR/model.onnx, checked with onnxruntime")
    p.add_argument("--print-passes", action="store_true", help="print the steps slice runs with these options and exit")
    p.add_argument("--dump-after", action="append", default=[], metavar="STEP",
                   help="print what the model and the steps so far hold after this step (repeatable)")
    p.set_defaults(run=run_slice)

    e = sub.add_parser("eval-ppl", help="perplexity of a dense or sliced model directory on a text")
    e.add_argument("model", type=Path)
    e.add_argument("--text", type=Path, nargs="+", required=True)
    e.add_argument("--seq-len", type=positive(int), default=512)
    e.add_argument("--samples", type=positive(int), default=None, help="at most this many sequences (default: all)")
    e.add_argument("--batch-size", type=positive(int), default=4)
    e.set_defaults(run=run_eval)

    x = sub.add_parser("export", help="write a dense or sliced model directory as an ONNX decoder with a KV cache",
                       description="Writes the decoder step: input_ids, attention_mask, position_ids and "
                                   "past_key_values.{i}.key/value in; logits and present.{i}.key/value out. "
                                   "The file is written only once onnxruntime matches torch on it.")
    x.add_argument("model", type=Path)
    x.add_argument("-o", "--output", type=Path, required=True,
                   help="the .onnx file to write (MODEL_DIR/model.onnx is where `invc generate` looks)")
    x.set_defaults(run=run_export)

    g = sub.add_parser("generate", help="continue a prompt with a dense or sliced model directory",
                       description="Prints the prompt and its continuation as they are decoded. --runtime onnx "
                                   "(default) decodes MODEL_DIR/model.onnx (from `invc export` or `invc slice "
                                   "--onnx`) in onnxruntime with its KV cache; --runtime torch runs the model's "
                                   "own generate(). Greedy unless --temperature or --top-p is given; sampling "
                                   "is seeded. Stops after --max-new-tokens or the model's end-of-text token.")
    g.add_argument("model", type=Path, help="HF model directory, dense or sliced, with its tokenizer")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=positive(int), default=32)
    g.add_argument("--runtime", choices=("onnx", "torch"), default="onnx")
    g.add_argument("--onnx", type=Path, default=None, help="the decoder file (default MODEL_DIR/model.onnx)")
    g.add_argument("--temperature", type=positive(float), default=None,
                   help="sample from softmax(logits / T) instead of taking the most likely token")
    g.add_argument("--top-p", type=positive(float), default=None,
                   help="sample only from the most likely tokens whose probabilities reach P, in (0, 1]")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    g.set_defaults(run=run_generate)


def _schedule(text: str | None) -> list[float] | None:
    from common.errors import InvcError
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise InvcError(f"--schedule {text!r}: not a comma-separated list of sparsities") from None


def _progress(desc: str):
    from tqdm import tqdm
    # Shortcut-mode calibration steps through blocks, the rest through batches: no unit is named.
    return lambda it: tqdm(it, desc=desc, file=sys.stderr, leave=False)


def run_slice(args) -> int:
    from common.errors import InvcError
    from common.files import check_output
    from compiler.commands import _dump
    from passes.slicegpt import checkpoint
    from passes.slicegpt.onnx_export import export_onnx
    from passes.slicegpt.pipeline import Files, Job, report, steps

    files = Files(args.model, args.calib, args.output, args.seq_len, args.samples, args.batch_size)
    job = Job(_options(args), files=files)
    if args.print_passes:
        print(steps(job))
        return 0
    missing = [name for name, given in (("MODEL_DIR", args.model), ("--calib", args.calib), ("-o", args.output))
               if given is None]
    if missing:
        raise InvcError(f"slice needs {', '.join(missing)} (or --print-passes)")
    check_output(args.output, [args.model, *args.calib], "sliced model", checkpoint.PLAN)
    seconds: dict[str, float] = {}
    job = steps(job).run(job, args.dump_after, _dump, seconds)
    _print_report(args, job, report(job, seconds))
    if args.onnx:
        err = export_onnx(job.model, args.output / "model.onnx")
        print(f"  onnx: {args.output / 'model.onnx'} (onnxruntime vs torch: {err:.1e} relative)")
    return 0


def _options(args):
    """The options, with --mode and --schedule checked before anything is read."""
    from common.errors import InvcError
    from passes.slicegpt.pipeline import Options
    from passes.slicegpt.refit import RIDGE
    from passes.slicegpt.slicing import MODES

    if args.mode not in MODES:
        raise InvcError(f"--mode {args.mode!r}: choose one of {', '.join(MODES)}")
    return Options(args.sparsity, args.mode, args.multiple, args.untie_head, _schedule(args.schedule),
                   refit=RIDGE if args.refit is True else args.refit, progress=_progress("calibrating"))


def _print_report(args, job, report) -> None:
    schedule = job.options.schedule
    level = f"schedule {schedule}" if schedule else f"sparsity {report.sparsity}"
    print(f"sliced {args.model} -> {args.output} ({report.mode}, {level})")
    print(f"  structure: {report.structure}")
    print(f"  parameters: {report.params_before:,} -> {report.params_after:,} "
          f"({100.0 * report.params_after / report.params_before:.1f}%), "
          f"{report.shortcuts} shortcut matrices, head map: {'yes' if report.head_map else 'no'}")
    print(f"  calibration: {sum(len(b['input_ids']) for b in job.batches)} x {args.seq_len} tokens; "
          f"time {report.seconds:.1f} s")
    print("  refit: " + ("off" if report.refit is None else f"ridge {report.refit:g}"))
    for block, dim in zip(report.blocks, report.dims):
        print(f"  {block}: stream {report.width} -> {dim}")
    print(f"  format: {job.saved}")


def run_eval(args) -> int:
    from passes.slicegpt import checkpoint, data

    model = checkpoint.load(args.model)
    tok = data.tokenizer(args.model)
    rows = data.token_sequences(tok, data.read_texts(args.text), args.seq_len, args.samples)
    ppl = data.perplexity(model, rows, args.batch_size, progress=_progress("evaluating"))
    print(f"perplexity {ppl:.3f} on {len(rows)} x {args.seq_len} tokens ({args.model})")
    return 0


def run_export(args) -> int:
    from common.files import check_output
    from passes.slicegpt import checkpoint
    from passes.slicegpt.onnx_export import export_onnx

    # Every file of the model directory may be read by loading it; an earlier export may be replaced.
    reads = [f for f in checkpoint.model_dir(args.model).iterdir() if f.suffix != ".onnx"]
    check_output(args.output, reads, "ONNX model")
    model = checkpoint.load(args.model)
    err = export_onnx(model, args.output)
    print(f"wrote {args.output} (onnxruntime vs torch: {err:.1e} relative)")
    return 0


def run_generate(args) -> int:
    from common.errors import InvcError
    from passes.slicegpt import data

    sampling = _sampling(args)
    onnx_file = args.onnx or args.model / "model.onnx"
    if args.runtime == "onnx" and not onnx_file.is_file():
        raise InvcError(f"{onnx_file}: no such ONNX file; write it with `invc export {args.model} -o {onnx_file}` "
                        f"(or run with --runtime torch)")
    tok = data.tokenizer(args.model)
    prompt = tok(args.prompt)["input_ids"]
    if not prompt:
        raise InvcError("--prompt: no tokens; give some text to continue")
    printer = _Printer(tok, prompt)
    if args.runtime == "onnx":
        _decode_onnx(onnx_file, prompt, args.max_new_tokens, sampling, args.seed, _stop_tokens(args.model), printer)
    else:
        _decode_torch(args.model, prompt, args.max_new_tokens, sampling, args.seed, printer)
    printer.end()
    return 0


def _sampling(args) -> tuple[float, float] | None:
    """(temperature, top_p) to sample with, or None for greedy decoding."""
    from common.errors import InvcError
    if args.temperature is None and args.top_p is None:
        return None
    if args.top_p is not None and args.top_p > 1:
        raise InvcError(f"--top-p {args.top_p:g}: must be in (0, 1]")
    return (args.temperature or 1.0, args.top_p or 1.0)


def _stop_tokens(model_dir: Path) -> frozenset[int]:
    """The end-of-text ids HF generate() stops at: the generation config's, else the model config's."""
    import transformers
    try:
        config = transformers.GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: generate() derives one from config.json
        config = transformers.GenerationConfig.from_model_config(transformers.AutoConfig.from_pretrained(model_dir))
    eos = config.eos_token_id
    return frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)


def _decode_onnx(path: Path, prompt: list[int], max_new_tokens: int, sampling, seed: int, stop, printer) -> None:
    from runtime.generate import Decoder, generate, greedy, sampler

    pick = greedy if sampling is None else sampler(*sampling, seed=seed)
    for token in generate(Decoder(path), prompt, max_new_tokens, pick, stop):
        printer.add([token])


def _decode_torch(model_dir: Path, prompt: list[int], max_new_tokens: int, sampling, seed: int, printer) -> None:
    import torch

    from passes.slicegpt import checkpoint

    model = checkpoint.load(model_dir)
    torch.manual_seed(seed)
    options = dict(do_sample=False) if sampling is None else \
        dict(do_sample=True, temperature=sampling[0], top_p=sampling[1], top_k=0)
    ids = torch.tensor([prompt])
    with torch.no_grad():   # the mask given: generate() would otherwise mask every id equal to pad_token_id
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                       streamer=_Streamer(printer), **options)


class _Printer:
    """Prints the prompt, then the text of the new tokens as they come."""

    def __init__(self, tok, prompt: list[int]):
        self.tok, self.tokens, self.shown = tok, list(prompt), ""
        self._show()

    def add(self, tokens: list[int]) -> None:
        self.tokens += tokens
        self._show()

    def _show(self) -> None:
        text = self.tok.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.shown) and not text.endswith("\ufffd"):   # wait for a character's last byte
            sys.stdout.write(text[len(self.shown):])
            sys.stdout.flush()
            self.shown = text

    def end(self) -> None:
        sys.stdout.write("\n")


class _Streamer:
    """HF generate()'s streamer protocol: the prompt first, then each new token; passes the new ones on."""

    def __init__(self, printer: _Printer):
        self.printer, self.prompt_seen = printer, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.printer.add(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self) -> None:
        pass
