"""`invc verify`: measure a spec's declared symmetries numerically, on torch and on ONNX."""
from __future__ import annotations

from compiler.commands import _spec_args, parse_params, positive, seed
from common.errors import CheckFailed


def register(sub) -> None:
    register_frame_average(sub)
    p = sub.add_parser("verify", help="measure the declared symmetries numerically (torch and ONNX)",
                       description="Sample group elements (permutations; Haar rotations with and without "
                                   "reflection; translations of about 10), run the torch module in fp32 and "
                                   "fp64 and the ONNX model in onnxruntime, and report the max relative "
                                   "equivariance error of every claimed output under every declared group. "
                                   "A claim that fails in fp64 is traced to the first op that breaks it "
                                   "(its source line and module). Exit 1 when a claim fails.")
    _spec_args(p)
    p.add_argument("--onnx", help="the ONNX file to check (default: compile the spec in memory)")
    p.add_argument("--trials", type=positive(int), default=4, help="group elements sampled per group (default 4)")
    p.add_argument("--tol", type=positive(float), default=1e-4, help="pass mark: max relative error in fp32 (default 1e-4)")
    p.add_argument("--plot", metavar="PNG", help="also draw the error along rotation orbits (NERO-style) to PNG")
    p.add_argument("--seed", type=seed, default=0, help="seed of parameters, inputs and group elements")
    p.set_defaults(run=_verify)


def _verify(args) -> int:
    from compiler.verify import plot_format, plot_orbits, verify
    params = parse_params(args.param)
    if args.plot:  # refused before the slow work: a format matplotlib lacks, or an input in its place
        from common.files import check_output
        from dsl.program import load
        plot_format(args.plot)
        check_output(args.plot, [*load(args.spec).texts, *filter(None, [args.onnx])], "plot")
    report = verify(args.spec, args.onnx, args.model, args.trials, args.tol, args.seed, params=params)
    print(report)
    if args.plot:
        path = plot_orbits(args.spec, args.plot, args.model, args.onnx, seed=args.seed, params=params)
        print(f"orbits plotted to {path}")
    if not report.ok:
        failed = sorted({f"{m.output} under {m.group}" for m in report.rows if not m.ok})
        raise CheckFailed(f"symmetry not kept: {', '.join(failed)}")
    return 0


# -- frame-average ---------------------------------------------------------------------------------
FRAME_AVERAGE = """\
def backbone = torch({source}{args})
model frame_averaged() {{
  symmetry {group}
{inputs}
  y = frame_average(backbone, [{names}], group="{group}", out="{out}"{canonical})
  output y is {out}
}}
"""


def register_frame_average(sub) -> None:
    p = sub.add_parser("frame-average", help="make a torch model exactly O(3)/E(3) invariant or equivariant, as ONNX",
                       description="Capture a torch model (pkg.module:factory, beside the current folder, or a saved "
                                   "model.pt2), wrap it in frame averaging (Puny et al., 2022) and compile it to ONNX. "
                                   "The spec it compiles is printed, or saved with --save-spec, to check, verify or "
                                   "extend. Example: invc frame-average layers:Net -i pos:f32[B,N,3]:position "
                                   "-i q:f32[B,N,1]:scalar --out vector -o net.onnx")
    p.add_argument("model", help='"pkg.module:factory" or "model.pt2"')
    p.add_argument("-i", "--input", action="append", required=True, metavar="NAME:DTYPE[DIMS]:ROLE",
                   help="the model's inputs, in order; roles: position, vector, scalar (repeatable)")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="an argument of the factory")
    p.add_argument("--group", default="E(3)", choices=["E(3)", "SE(3)", "O(3)", "SO(3)"],
                   help="the group to average over (default E(3))")
    p.add_argument("--out", default="invariant", choices=["invariant", "vector", "position"],
                   help="what the output is (default invariant)")
    p.add_argument("--canonical", action="store_true", help="one canonical frame instead of all (1 backbone call)")
    p.add_argument("-o", "--output", required=True, help="the ONNX file to write")
    p.add_argument("--save-spec", metavar="FILE", help="also write the spec it compiled")
    p.set_defaults(run=_frame_average)


def frame_average_spec(model: str, inputs: list[str], args: dict, group: str, out: str, canonical: bool) -> str:
    """The spec `invc frame-average` compiles: the model as a torch def, averaged over `group`."""
    ports = [_port(text) for text in inputs]
    given = "".join(f", {k}={_value(v)}" for k, v in args.items())
    return FRAME_AVERAGE.format(source=_value(model), args=given, group=group, out=out,
                                inputs="\n".join(f"  input {n}: {t} is {r}" for n, t, r in ports),
                                names=", ".join(n for n, _, _ in ports), canonical=", canonical=true" if canonical else "")


def _port(text: str) -> tuple[str, str, str]:
    import re
    found = re.fullmatch(r"\s*(\w+)\s*:\s*(\w+\s*\[[\w\s,]*\])\s*:\s*(position|vector|scalar)\s*", text)
    if not found:
        from common.errors import InvcError
        raise InvcError(f"--input {text!r}: expected NAME:DTYPE[DIMS]:ROLE, e.g. pos:f32[B,N,3]:position, "
                        "with ROLE position, vector or scalar")
    return found.group(1), found.group(2), found.group(3)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        if '"' in v or "\n" in v:
            from common.errors import InvcError
            raise InvcError(f"{v!r}: a spec string cannot hold a quote or a newline")
        return f'"{v}"'
    return repr(v)


def _frame_average(args) -> int:
    from pathlib import Path
    from compiler.driver import compile
    from dsl.program import load_text
    text = frame_average_spec(args.model, args.input, parse_params(args.arg), args.group, args.out, args.canonical)
    out = Path(args.output)
    spec = Path(args.save_spec) if args.save_spec else Path.cwd() / f"{out.stem}.inv"  # modules resolve from here
    result = compile(load_text(text, str(spec)), out=out)
    if args.save_spec:
        from common.files import atomic_file, check_output
        check_output(spec, [out], "spec")
        with atomic_file(spec, "spec") as f:
            f.write(text.encode())
    print(text if not args.save_spec else f"spec saved to {spec}")
    print(f"{args.model}: frame-averaged over {args.group} -> {out} ({result.onnx_bytes / 1024:.1f} KiB, "
          f"{result.onnx_nodes} ONNX nodes, {result.parameters:,} parameters, {result.seconds['total'] * 1000:.0f} ms)")
    return 0
