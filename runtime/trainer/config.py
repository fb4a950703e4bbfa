"""The training configuration: one flat dataclass, saved as JSON next to every run.

Every field is also a command-line flag of `nlc train` (underscores become dashes), so the
table below is the whole interface. Task parameters carry the task's name as a prefix.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from nlc.errors import NlcError

TASKS = ("mqar", "niah", "lm")
# Above this no optimizer step is meaningful, and Adam overflows float32 well before 1e38.
MAX_LR = 1e6
# sizes beyond any run one machine can hold (a config.json is a file anyone may edit: 10^7
# layers ended in an allocator's bad_alloc, 10^9 eval examples ran for hours)
MAX_SIZES = {"d_model": 1 << 20, "n_layers": 1 << 12, "batch_size": 1 << 20,
             "seq_len": 1 << 24, "vocab_size": 1 << 24, "mlp_ratio": 1 << 8,
             "eval_examples": 1 << 24, "steps": 1 << 40, "keep_last": 1 << 20}

# Fields that fix the shapes of the weights and optimizer state: a checkpoint written under
# other values cannot be loaded, and resuming refuses it (runtime/trainer/checkpoint.py).
SHAPE_FIELDS = ("task", "vocab_size", "d_model", "n_layers", "mlp", "mlp_ratio", "optimizer",
                "spec_overrides", "layer")


@dataclass
class TrainConfig:
    # what to train
    spec: str = field(default="builtin:attention", metadata={
        "help": "the mixer: a layer spec (.nl) or builtin:attention"})
    spec_overrides: dict = field(default_factory=dict, metadata={
        "help": "dims/hypers of the spec to override (nlc train -D NAME=VALUE)"})
    layer: str = field(default="", metadata={
        "help": "the layer or model of SPEC to train, by name (default: the file's one layer, "
                "or its one model)"})
    mlp: str = field(default="builtin:mlp", metadata={
        "help": "the block's second half: builtin:mlp, none, or a layer spec such as CMS"})
    optimizer: str = field(default="adamw", metadata={
        "help": "adamw, or an optimizer spec (.nl) compiled to a torch.optim.Optimizer"})
    task: str = field(default="mqar", metadata={"help": "mqar, niah or lm"})

    # the language model around the mixer
    vocab_size: int = field(default=0, metadata={"help": "0 = the task's vocabulary"})
    d_model: int = field(default=128, metadata={"help": "model width"})
    n_layers: int = field(default=2, metadata={"help": "number of blocks"})
    mlp_ratio: int = field(default=4, metadata={"help": "hidden width of builtin:mlp / d_model"})

    # optimization
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={
        "help": "global batch (sequences per step, split over the ranks)"})
    seq_len: int = field(default=256, metadata={"help": "tokens per sequence"})
    carry_state: int = field(default=0, metadata={
        "help": "segment length: train and evaluate each sequence as consecutive segments of "
                "this many tokens, the layers' states carried (detached) from one to the next "
                "and reset at the next sequence; 0 = off (runtime/trainer/segments.py)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={
        "help": "the cosine schedule ends at lr * min_lr_ratio"})
    warmup: int = field(default=100, metadata={
        "help": "linear warmup steps, at most a tenth of --steps"})
    weight_decay: float = field(default=0.1, metadata={
        "help": "AdamW weight decay (matrices and embeddings only)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm; 0 = off"})
    seed: int = field(default=0, metadata={"help": "seeds the weights and the data order"})
    stop_accuracy: float = field(default=0.0, metadata={
        "help": "end the run at the first eval whose accuracy reaches this (Zoology: 0.99); "
                "0 = never"})
    time_budget: float = field(default=0.0, metadata={
        "help": "seconds of training after which the run ends early (evaluated and saved as at "
                "its last step); 0 = none"})

    # evaluation, logging, checkpoints
    eval_interval: int = field(default=100, metadata={"help": "steps between evaluations; 0 = end only"})
    eval_examples: int = field(default=512, metadata={"help": "sequences in the eval set"})
    log_interval: int = field(default=10, metadata={"help": "steps between metric lines"})
    checkpoint_interval: int = field(default=100, metadata={
        "help": "steps between checkpoints; 0 = end only"})
    keep_last: int = field(default=3, metadata={"help": "checkpoints kept"})
    out: str = field(default="runs/run", metadata={
        "help": "the run folder (nlc train: runs/<spec name>-<task>)"})

    # hardware
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast (CUDA only)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    cuda_graphs: bool = field(default=False, metadata={
        "help": "capture the model's forward and backward as CUDA graphs (one CUDA device, "
                "fixed batch shape): the step replays as one launch, which speeds up layers "
                "made of many small kernels, such as MLP memories"})
    compile_chunks: bool = field(default=False, metadata={
        "help": "torch.compile the chunk bodies of MLP memories (the dual, frozen and coupled "
                "chunked forms; NLC_COMPILE_CHUNKS=1 does the same) once, for every chunk "
                "and layer: their elementwise passes fuse (Hope's LM step 1.45x with "
                "--cuda-graphs on an H100); compiling adds about a minute"})
    tf32: bool = field(default=False, metadata={
        "help": "float32 matmuls, and the dual chunk form's float32 products, on TF32 tensor "
                "cores (CUDA): faster for layers whose state stays float32 under autocast, "
                "such as MLP memories, with 10-bit mantissas in those products"})

    # task: mqar (Zoology, Arora et al. 2023)
    mqar_vocab_size: int = field(default=8192, metadata={"help": "MQAR vocabulary"})
    mqar_num_kv_pairs: int = field(default=16, metadata={"help": "key-value pairs per sequence"})
    mqar_power_a: float = field(default=0.01, metadata={
        "help": "query gaps g drawn with p(g) ~ (g + 1)^(a - 1)"})
    mqar_random_non_queries: bool = field(default=True, metadata={
        "help": "fill non-query positions with random tokens (else 0)"})

    # task: niah (RULER S-NIAH-1, Hsieh et al. 2024)
    niah_digits: int = field(default=7, metadata={"help": "digits of the needle's number"})
    niah_eval_lengths: list = field(default_factory=list, metadata={
        "item": int,
        "help": "after training, evaluate needles at these sequence lengths too, eval_examples "
                "at each (runtime/trainer/lengths.py); [] = none"})
    niah_depth_bands: int = field(default=4, metadata={
        "help": "depth bands the needles of niah_eval_lengths are spread over, equally"})

    # task: lm (bytes)
    lm_files: list = field(default_factory=list, metadata={
        "help": "text files or folders (default: the Python standard library's sources)"})
    lm_val_fraction: float = field(default=0.1, metadata={"help": "share of files held out"})

    def validate(self) -> TrainConfig:
        """Raise NlcError for values no run can use; return self."""
        if self.task not in TASKS:
            raise NlcError(f"unknown task '{self.task}' (expected one of {', '.join(TASKS)})")
        positive = ("d_model", "n_layers", "steps", "batch_size", "seq_len", "eval_examples",
                    "log_interval", "keep_last")
        for name in positive:
            if getattr(self, name) < 1:
                raise NlcError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_interval", "checkpoint_interval", "vocab_size", "mlp_ratio"):
            if getattr(self, name) < 0:
                raise NlcError(f"{name} must not be negative, got {getattr(self, name)}")
        for name, most in MAX_SIZES.items():  # a config.json is a file anyone may edit
            if getattr(self, name) > most:
                raise NlcError(f"{name} must be at most {most}, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise NlcError(f"{f.name} must be a finite number, got {value}")
        if not 0 <= self.carry_state <= self.seq_len:
            raise NlcError(f"carry_state must be between 0 (off) and seq_len {self.seq_len}, "
                           f"got {self.carry_state}")
        if not 0 < self.lr <= MAX_LR:
            raise NlcError(f"lr must be positive and at most {MAX_LR:g}, got {self.lr:g}")
        if self.cuda_graphs and self.compile:
            raise NlcError("cuda_graphs and compile cannot be combined",
                           hint="pass one of --cuda-graphs and --compile")
        if self.compile_chunks and self.compile:
            raise NlcError("compile_chunks and compile cannot be combined: a model compiled "
                           "as a whole traces its chunks in its own graph",
                           hint="pass one of --compile-chunks and --compile")
        if self.cuda_graphs and self.carry_state:
            raise NlcError("cuda_graphs and carry_state cannot be combined: a graph replays "
                           "one fixed call, and carried segments pass states between calls",
                           hint="pass one of --cuda-graphs and --carry-state")
        for name in ("grad_clip", "weight_decay", "time_budget"):
            if getattr(self, name) < 0:
                raise NlcError(f"{name} must not be negative, got {getattr(self, name):g}")
        for name in ("beta1", "beta2", "lm_val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise NlcError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.stop_accuracy <= 1.0:
            raise NlcError(f"stop_accuracy must be in [0, 1], got {self.stop_accuracy}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise NlcError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        self._validate_niah_lengths()
        self._validate_task_options()
        if self.mqar_power_a <= 0:
            raise NlcError(f"mqar_power_a must be positive, got {self.mqar_power_a}")
        if not self.out.strip():
            raise NlcError("out must name a run folder, got an empty string",
                           hint="pass --out runs/NAME (a run never writes into the current "
                                "folder by accident)")
        self._validate_overrides()
        if self.layer and self.spec.startswith("builtin:"):
            raise NlcError(f"layer names a declaration of a .nl spec; {self.spec} has none",
                           hint="drop --layer, or pass a spec file")
        return self

    def _validate_niah_lengths(self) -> None:
        if self.niah_depth_bands < 1:
            raise NlcError(f"niah_depth_bands must be at least 1, got {self.niah_depth_bands}")
        lengths = self.niah_eval_lengths
        if not lengths:
            return
        if self.task != "niah":
            raise NlcError(f"niah_eval_lengths is for the niah task, not {self.task}")
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in lengths):
            raise NlcError(f"niah_eval_lengths must be whole numbers, got {lengths}")
        from nlc.runtime.trainer.niah import min_seq_len
        shortest = min_seq_len(self.niah_digits)
        if min(lengths) < shortest:
            raise NlcError(f"niah_eval_lengths: {min(lengths)} tokens cannot hold a "
                           f"{self.niah_digits}-digit needle and its question (at least "
                           f"{shortest})")
        if len(set(lengths)) != len(lengths):
            raise NlcError(f"niah_eval_lengths: a length given twice in {lengths}")
        if self.niah_depth_bands > self.eval_examples:  # a band would hold no needle
            raise NlcError(f"niah_depth_bands {self.niah_depth_bands} is more than "
                           f"eval_examples {self.eval_examples}: a band would hold no needle",
                           hint="pass fewer --niah-depth-bands or more --eval-examples")

    def _validate_task_options(self) -> None:
        """An option of another task (`--mqar-vocab-size` with `--task lm`) set away from its
        default would be ignored: refuse it rather than train without it."""
        for f in dataclasses.fields(self):
            task = f.name.split("_")[0]
            if task not in TASKS or task == self.task:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
                else f.default
            if getattr(self, f.name) != default:
                raise NlcError(f"{f.name} is an option of the {task} task; this run's task is "
                               f"{self.task}", hint=f"drop --{f.name.replace('_', '-')}, or "
                                                    f"pass --task {task}")
        if self.task == "mqar":  # before a run starts, so that the CLI names the flags
            from nlc.runtime.trainer.mqar import check_mqar
            check_mqar(self.seq_len, self.mqar_vocab_size, self.mqar_num_kv_pairs)

    def _validate_overrides(self, where: str = "config") -> None:
        for name, value in self.spec_overrides.items():
            if not isinstance(name, str) or isinstance(value, bool) \
                    or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise NlcError(f"{where}: spec_overrides: {name!r} must map to a finite "
                               f"number, got {value!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> TrainConfig:
        """Build from a dict, refusing unknown keys and values of the wrong type."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise NlcError(f"{where}: unknown config field(s): {', '.join(unknown)}")
        values = {}
        for name, value in data.items():
            values[name] = _coerce(name, value, type(getattr(cls(), name)), where)
        config = cls(**values)
        config._validate_overrides(where)
        return config

    @classmethod
    def from_json(cls, text: str, where: str = "config") -> TrainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise NlcError(f"{where}: not valid JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(data, dict):
            raise NlcError(f"{where}: expected a JSON object of config fields")
        return cls.from_dict(data, where)

    def shape(self) -> dict:
        """The fields a checkpoint must agree on (SHAPE_FIELDS)."""
        return {name: getattr(self, name) for name in SHAPE_FIELDS}


def _coerce(name: str, value, kind: type, where: str):
    """JSON gives ints for floats (1 for 1.0); anything else of the wrong type is an error."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise NlcError(f"{where}: field '{name}' must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):  # JSON's NaN and Infinity parse
        raise NlcError(f"{where}: field '{name}' must be a finite number, got {value!r}")
    return value
