"""SliceGPT as one printable pipeline of named steps, like the compile pipeline (compiler/driver.py):
`invc slice --print-passes` prints it; `slice_model`, `calibrate` and `invc slice` run it.

Each step is a small function from the Job to the Job: it reads what the steps before it found and
adds its own result. A pipeline holds only the steps its options run (shortcut mode calibrates
sequentially and is not refit; a calibration given in advance is reused), so what prints is what runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from passes.base import PassError, Pipeline, Step
from passes.slicegpt import checkpoint, data, rotation, selfcheck
from passes.slicegpt import refit as refitting
from passes.slicegpt.calibration import moments, pca, seen
from passes.slicegpt.modules import count_parameters
from passes.slicegpt.sequential import sequential_rotations
from passes.slicegpt.slicing import DEFAULT_SPARSITY, Calibration, SliceReport, group_dims, rotation_groups
from passes.slicegpt.standard import standard_model
from passes.slicegpt.structure import Structure, discover


@dataclass(frozen=True)
class Options:
    """How to slice; `slice_model` says what each one means."""
    sparsity: float | None = None
    mode: str = "shortcut-free"
    multiple: int = 8
    untie_head: bool = False
    schedule: list[float] | None = None
    self_check: float | None = selfcheck.TOLERANCE
    refit: float | None = None
    progress: Callable[[Iterable], Iterable] = lambda it: it


@dataclass(frozen=True)
class Files:
    """What `invc slice` reads before the steps that work in memory, and where it writes after them."""
    model: Path
    calib: list[Path]
    out: Path
    seq_len: int = 512
    samples: int = 32
    batch_size: int = 4


@dataclass
class Job:
    """The model and what the steps have found so far, each in its own field."""
    options: Options
    model: nn.Module | None = None
    batches: list[dict] | None = None
    files: Files | None = None
    structure: Structure | None = None
    calibration: Calibration | None = None
    groups: list[int] = field(default_factory=list)     # the rotation group of each stream position
    dims: list[int] = field(default_factory=list)       # the width each group keeps
    params_before: int = 0
    tokenizer: object = None
    reference: selfcheck.Reference | None = None
    rotated: rotation.Rotation | None = None
    refit: float | None = None                          # the ridge, once the refit ran
    saved: str = ""                                     # the format `save` wrote

    def __str__(self) -> str:
        """What --dump-after prints: the model's size and what the steps have found so far."""
        m, s, cal, r = self.model, self.structure, self.calibration, self.rotated
        rows = sum(len(b["input_ids"]) for b in self.batches or [])
        found = {"model": m is not None and f"{type(m).__name__}, {count_parameters(m):,} parameters",
                 "structure": s is not None and s.summary(),
                 "widths": bool(self.dims) and f"{self.dims} (one per rotation group)",
                 "calibration": self.batches is not None and f"{rows} sequences",
                 "rotations": cal is not None and f"{len(cal.rotations)} ({cal.mode} mode)",
                 "adapters": r is not None and f"{len(r.adapters.shortcuts)} shortcuts, head map: "
                                               f"{'no' if r.adapters.head_map is None else 'yes'}",
                 "saved": bool(self.saved) and f"{self.files.out} ({self.saved})"}
        return "\n".join(f"{name:<12}{value}" for name, value in found.items() if value)


@dataclass(frozen=True)
class EachPart(Step):
    """A step whose own steps run on every part that `fn` gives, one part after the other: within a part
    they run in order, and the parts interleave them. The value itself is handed on."""
    inner: tuple[Step, ...] = ()

    def __call__(self, value):
        for part in self.fn(value):
            for step in self.inner:
                part = step(part)
        return value

    def __str__(self) -> str:
        return super().__str__() + "".join(f"\n{'':6}{s.name:<16} {s.doc}" for s in self.inner)


# -- the steps, in pipeline order ---------------------------------------------------------------------
def _step(name: str, doc: str):
    """Decorator: the function becomes the pipeline step `name`."""
    return lambda fn: Step(name, fn, doc)


@_step("load", "read the model directory")
def load(job: Job) -> Job:
    job.model = checkpoint.load(job.files.model)
    job.params_before = count_parameters(job.model)
    return job


@_step("untie_head", "give a tied head its own copy of the token table (shortcut mode always does)")
def untie_head(job: Job) -> Job:
    """Shortcut mode must: shared, the table is the embedding's, sliced to the embedding output's
    subspace, while the head reads the last block's, so every logit would also lose what the two do
    not share (SmolLM2 at 25%: dense perplexity x2.82 instead of x1.91 in domain, x5.38 instead of
    x3.55 on unseen prose). A structure discovered on the tied model names the embedding as the
    head's table, so it is discovered again."""
    model = job.model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    if job.structure is not None and job.structure.tied:
        job.structure = None
    return job


@_step("discover", "find the residual stream in the torch.export graph; refuse widths that cannot be kept")
def find_stream(job: Job) -> Job:
    o = job.options
    if job.structure is None:
        job.structure = discover(job.model)
    job.groups = rotation_groups(job.structure, o.mode)
    job.dims = group_dims(job.structure, o.mode, o.sparsity, o.schedule, o.multiple)
    return job


@_step("tokenize", "cut the calibration text into rows of --seq-len tokens")
def tokenize(job: Job) -> Job:
    f = job.files
    job.tokenizer = data.tokenizer(f.model)
    rows = data.token_sequences(job.tokenizer, data.read_texts(f.calib), f.seq_len, f.samples)
    job.batches = data.batches(rows, f.batch_size)
    return job


@_step("calibrate", "one pass over the dense model: the PCA of the stream where the norms read it")
def calibrate_dense(job: Job) -> Job:
    sums = moments(job.model, job.structure, job.batches, job.groups, job.options.progress)
    job.calibration = Calibration(job.structure, job.options.mode, job.groups, [pca(seen(m)) for m in sums])
    return job


@_step("calibrate", "block by block: each block's PCA on the stream as the earlier blocks, sliced, leave it")
def calibrate_sequentially(job: Job) -> Job:
    rotations = sequential_rotations(job.model, job.structure, job.batches, job.groups, job.dims, job.options.progress)
    job.calibration = Calibration(job.structure, job.options.mode, job.groups, rotations, job.dims)
    return job


@_step("calibrate", "reuse the calibration given, if it was computed for these widths")
def reuse_calibration(job: Job) -> Job:
    job.calibration.check_reuse(job.dims)
    return job


@_step("reference", "the dense model's logits and block outputs on one calibration sequence, for self_check")
def reference(job: Job) -> Job:
    vocab = job.model.get_submodule(job.structure.embeddings[0].module).weight.shape[0]
    job.reference = selfcheck.record(job.model, job.structure, selfcheck.probe(job.batches, vocab))
    return job


def _parts(job: Job) -> list[rotation.Part]:
    """Start rotating: the parts that `rotate` folds, rotates and writes back, one after the other."""
    job.rotated = rotation.start(job.model, job.structure, job.calibration.rotations, job.calibration.groups)
    return rotation.parts(job.rotated)


rotate = EachPart("rotate", _parts, "in float64, one part at a time (the embeddings, each residual add, the head):",
                  inner=(Step("fuse_norms", rotation.fuse_norms,
                              "fold each norm's scale and bias into its readers; centre writers (LayerNorm)"),
                         Step("rotate_axes", rotation.rotate_axes,
                              "readers ·Q, writers Qᵀ·; shortcuts between rotations; the map before a tied head"),
                         Step("write_back", rotation.write_back, "the part's weights, in the model's dtype")))


@_step("replace_norms", "every stream norm becomes RMSNorm over the original width; install the adapters")
def replace_norms(job: Job) -> Job:
    rotation.replace_norms(job.rotated)
    return job


@_step("self_check", "the rotated model must compute what the dense one did, or slicing is refused")
def self_check(job: Job) -> Job:
    cal = job.calibration
    selfcheck.verify(job.model, job.structure, job.reference, cal.rotations, cal.groups, job.options.self_check)
    return job


@_step("refit", "block by block, ridge least squares: the sliced readers reproduce the dense block")
def refit(job: Job) -> Job:
    o = job.options
    refitting.refit(job.model, job.structure, job.batches, job.dims[0], o.refit, o.progress)
    job.refit = o.refit
    return job


@_step("slice", "keep the leading d dims of every stream axis")
def cut(job: Job) -> Job:
    r, o = job.rotated, job.options
    rotation.cut(job.model, job.structure, r.adapters, r.axes, job.calibration.groups, job.dims)
    r.adapters.plan.update(mode=job.calibration.mode, sparsity=_level(o))
    if o.schedule is not None:
        r.adapters.plan["schedule"] = list(o.schedule)
    return job


@_step("save", "write the directory atomically, as a plain family checkpoint where possible")
def save(job: Job) -> Job:
    std, why = standard_model(job.model) if job.options.mode == "shortcut-free" else (None, "shortcut mode")
    checkpoint.save_sliced(job.model, job.files.out, job.tokenizer, std)
    job.saved = "plain family checkpoint" if std is not None else f"invc sliced checkpoint ({why})"
    return job


def steps(job: Job) -> Pipeline:
    """The steps `job` runs, in order: those its options and inputs call for."""
    o, files, checks = job.options, job.files is not None, job.options.self_check is not None
    refits = o.refit is not None and o.mode == "shortcut-free" and (files or job.batches is not None)
    wanted = [(load, files), (untie_head, o.untie_head or o.mode == "shortcut"), (find_stream, True), (tokenize, files),
              (_calibration(job), True), (reference, checks), (rotate, True), (replace_norms, True),
              (self_check, checks), (refit, refits), (cut, True), (save, files)]
    return Pipeline([step for step, runs in wanted if runs])


def _calibration(job: Job) -> Step:
    if job.calibration is not None:
        return reuse_calibration
    return calibrate_sequentially if job.options.mode == "shortcut" else calibrate_dense


def report(job: Job, seconds: dict) -> SliceReport:
    """What slicing did: sizes, widths, adapters, and the time of every step between reading and writing."""
    s, cal, adapters = job.structure, job.calibration, job.rotated.adapters
    written = {b.block: job.dims[cal.groups[k]] for k, b in enumerate(s.branches, start=1)}
    spent = sum(t for name, t in seconds.items() if name not in ("load", "tokenize", "save"))
    return SliceReport(cal.mode, _level(job.options), s.width, max(job.dims), job.params_before,
                       count_parameters(job.model), spent, s.summary(), list(written), len(adapters.shortcuts),
                       adapters.head_map is not None, cal, list(written.values()), job.refit)


def _level(o: Options) -> float | None:
    return DEFAULT_SPARSITY if o.sparsity is None and o.schedule is None else o.sparsity


# -- the Python front door -----------------------------------------------------------------------------
def calibrate(model: nn.Module, batches: Iterable[dict], mode: str = "shortcut-free",
              structure: Structure | None = None, progress: Callable[[Iterable], Iterable] = lambda it: it,
              sparsity: float | None = None, schedule: list[float] | None = None,
              multiple: int = 8) -> Calibration:
    """Discover (unless `structure` is given for an identical model) and compute the PCA rotations.
    Shortcut mode learns each block's rotation on the stream already sliced to the widths that
    `sparsity` or `schedule` give; shortcut-free ignores them. Shortcut mode first gives a tied head
    its own table (the untie_head step)."""
    model.eval()
    job = Job(Options(sparsity, mode, multiple, schedule=schedule, progress=progress), model, batches,
              structure=structure)
    first = [untie_head] if mode == "shortcut" else []
    return Pipeline([*first, find_stream, _calibration(job)]).run(job).calibration


def slice_model(model: nn.Module, batches: Iterable[dict] | None = None, sparsity: float | None = None,
                mode: str = "shortcut-free", multiple: int = 8, untie_head: bool = False,
                structure: Structure | None = None, calibration: Calibration | None = None,
                progress: Callable[[Iterable], Iterable] = lambda it: it,
                schedule: list[float] | None = None,
                self_check: float | None = selfcheck.TOLERANCE,
                refit: float | None = None) -> SliceReport:
    """Slice `model` in place. `batches` yields dicts with input_ids (and optionally attention_mask).

    `sparsity` (default 0.25) applies to every block; `schedule` (shortcut mode only) instead gives one
    sparsity per block, for the stream that block writes.

    `structure` skips discovery when an identical model was already discovered (names are reused);
    `calibration` skips calibration too, reusing one computed on an identical model (and its mode).
    untie_head gives a tied head its own table, so that a shortcut-free RMSNorm model needs no map
    before the head and stays a plain model of its family (at the cost of vocab x d parameters).
    Shortcut mode always does.

    `self_check` is the relative tolerance of the check between rotating and slicing: the rotated model
    must reproduce the dense logits and block outputs on the first calibration sequence, or slicing is
    refused, naming the first block that diverges. None skips it (for models in low precision).

    `refit` is the ridge of the closed-form correction after slicing (refit.py, `refitting.RIDGE` is the
    one chosen on the dev texts): every norm's readers are refit on the calibration batches so that the
    sliced block reproduces the dense one. It runs in shortcut-free mode when `batches` are given; None, the
    default, skips it: it helps on text like the calibration text and hurts on other kinds. `report.refit`
    says if it ran."""
    model.eval()
    if untie_head:
        structure = calibration = None   # both describe the tied model
    if calibration is None and batches is None:
        raise PassError("slice_model needs calibration batches or a calibration")
    options = Options(sparsity, calibration.mode if calibration else mode, multiple, untie_head, schedule,
                      self_check, refit, progress)
    job = Job(options, model, None if batches is None else list(batches), calibration=calibration,
              structure=calibration.structure if calibration else structure, params_before=count_parameters(model))
    seconds: dict[str, float] = {}
    return report(steps(job).run(job, seconds=seconds), seconds)
