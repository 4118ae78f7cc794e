"""`invc verify`: measure a spec's declared symmetries numerically, on torch and on ONNX."""
from __future__ import annotations

from compiler.commands import _spec_args, parse_params, positive, seed
from common.errors import CheckFailed


def register(sub) -> None:
    p = sub.add_parser("verify", help="measure the declared symmetries numerically (torch and ONNX)",
                       description="Sample group elements (permutations; Haar rotations with and without "
                                   "reflection; translations of about 10), run the torch module in fp32 and "
                                   "fp64 and the ONNX model in onnxruntime, and report the max relative "
                                   "equivariance error of every claimed output under every declared group. "
                                   "Exit 1 when a claim fails.")
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
