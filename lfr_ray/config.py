"""The typed configuration tree: dataclasses, loaded from YAML with ``a.b=value`` overrides.

Every section is a frozen dataclass with a docstring per field. ``load_config`` builds the tree
from a YAML file plus command-line overrides and rejects, before any work starts, an unknown key
or a bad value with a ``ConfigError`` that names the key and says what is allowed.

This module imports neither Ray nor torch, so notebooks and unit tests load it instantly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml

DEMO_DATA = str(Path(__file__).parent / "assets" / "demo.jsonl.gz")
CONFIG_DIR = Path(__file__).parent / "configs"  # shipped YAML configs (``configs/`` links here)


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key."""


def _fail(key: str, msg: str) -> None:
    raise ConfigError(f"config key '{key}': {msg}")


def _check_positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            _fail(f"{prefix}.{name}", f"must be > 0, got {value!r}")


def _check_non_negative(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            _fail(f"{prefix}.{name}", f"must be >= 0, got {value!r}")


def _check_fraction(key: str, value: float, *, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        _fail(key, f"must be a fraction in {interval}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Raw text in, tokenized fixed-length blocks out (``lfr-ray prepare``)."""

    inputs: tuple[str, ...] = ()
    """Files, directories or URIs (``s3://``, ``gs://``) of raw text; empty means the bundled demo corpus.

    A relative path that does not exist from the working directory is looked up inside the package,
    so ``assets/debug.jsonl.gz`` names the bundled debug sample wherever lfr-ray is installed."""
    format: Literal["auto", "jsonl", "parquet", "text", "hf"] = "auto"
    """Input format; ``auto`` decides per file from its suffix (a directory with ``dataset_info.json`` is ``hf``)."""
    text_field: str = "text"
    """Column or JSON key holding the document text."""
    domain_field: Optional[str] = "source"
    """Column or JSON key holding the document's domain/source label; null gives every document ``unknown``."""
    id_field: Optional[str] = "id"
    """Column or JSON key holding a document id; null (or a missing value) uses ``<file name>:<row>``."""
    output_dir: str = "data/demo"
    """Where the prepared blocks, tokenizer and metadata are written."""
    tokenizer: Optional[str] = None
    """A local Hugging Face tokenizer directory; null trains a byte-level BPE on the corpus."""
    vocab_size: int = 4096
    """Vocabulary size (tokens) of the trained byte-level BPE; ignored with ``tokenizer``."""
    tokenizer_train_chars: int = 50_000_000
    """At most this many characters of the training split (in input order) train the BPE."""
    block_len: int = 128
    """Tokens a model sees per block; each stored block holds ``block_len + 1`` ids for next-token targets."""
    val_frac: float = 0.02
    """Fraction of documents (chosen by a hash of the document key) held out for validation; 0 disables."""
    val_inputs: tuple[str, ...] = ()
    """Separate validation inputs; when given, ``val_frac`` is ignored and no training document is held out."""
    max_error_locations: int = 5
    """How many offending ``file:line`` locations per kind of bad input the log and metadata keep."""
    rows_per_unit: int = 20_000
    """Rows of a Parquet/HF file per parallel read unit (a unit is read, tokenized and packed by one task)."""
    num_cpus_per_task: float = 1.0
    """CPUs each Ray Data preparation task reserves."""

    def validate(self, prefix: str = "data", *, check_paths: bool = True) -> None:
        for key in ("text_field",):
            if not getattr(self, key):
                _fail(f"{prefix}.{key}", "must be a non-empty string")
        if self.block_len < 2:
            _fail(f"{prefix}.block_len", f"must be an integer >= 2, got {self.block_len!r}")
        if self.vocab_size < 260:
            _fail(f"{prefix}.vocab_size", f"must be >= 260 (256 bytes plus specials), got {self.vocab_size!r}")
        _check_positive(self, prefix, "tokenizer_train_chars", "rows_per_unit", "num_cpus_per_task")
        _check_non_negative(self, prefix, "max_error_locations")
        if not 0 <= self.val_frac < 1:
            _fail(f"{prefix}.val_frac", f"must be in [0, 1), got {self.val_frac!r}")
        if not check_paths:
            return
        for key in ("inputs", "val_inputs"):
            for path in getattr(self, key):
                if not _exists(path):
                    _fail(f"{prefix}.{key}", f"path does not exist: {path}")
        if self.tokenizer is not None and "://" not in self.tokenizer and not Path(self.tokenizer).is_dir():
            _fail(f"{prefix}.tokenizer", f"must be a local tokenizer directory, not found: {self.tokenizer}")

    @property
    def resolved_inputs(self) -> tuple[str, ...]:
        return tuple(resolve_path(p) for p in self.inputs) or (DEMO_DATA,)

    @property
    def resolved_val_inputs(self) -> tuple[str, ...]:
        return tuple(resolve_path(p) for p in self.val_inputs)


def resolve_path(path: str) -> str:
    """A URI or existing path as given; else the same relative path inside the package, if it exists."""
    if "://" in path or Path(path).exists():
        return path
    packaged = Path(__file__).parent / path
    return str(packaged) if packaged.exists() else path


def _exists(path: str) -> bool:
    return "://" in path or Path(resolve_path(path)).exists()


@dataclass(frozen=True)
class ModelConfig:
    """The causal LM trained from scratch (random weights); the vocabulary comes from the prepared data."""

    arch: Literal["llama", "gpt2"] = "llama"
    """``llama`` (LlamaForCausalLM) or ``gpt2`` (GPT2LMHeadModel)."""
    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads; must divide ``hidden_size``."""
    intermediate_size: int = 0
    """MLP width; 0 means ``4 * hidden_size`` for gpt2 and ``8/3 * hidden_size`` (rounded to 32) for llama."""
    tie_embeddings: bool = True
    """Share the input embedding and output projection weights."""
    dropout: float = 0.0
    """Dropout probability (gpt2 only; llama has none)."""

    def validate(self, prefix: str = "model") -> None:
        _check_positive(self, prefix, "hidden_size", "num_layers", "num_heads")
        _check_non_negative(self, prefix, "intermediate_size")
        if self.hidden_size % self.num_heads:
            _fail(f"{prefix}.num_heads", f"must divide hidden_size={self.hidden_size}, got {self.num_heads}")
        if not 0 <= self.dropout < 1:
            _fail(f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout!r}")

    def ffn_size(self) -> int:
        if self.intermediate_size:
            return self.intermediate_size
        if self.arch == "gpt2":
            return 4 * self.hidden_size
        return 32 * -(-(8 * self.hidden_size // 3) // 32)


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of the LFR schedule."""

    kind: Literal["learn", "focus", "review"] = "learn"
    """``learn``: all blocks, random order; ``focus``: the hardest ``keep_frac``; ``review``: all blocks again."""
    passes: float = 1.0
    """Passes over this phase's own block set (> 0); a fraction trains the first steps of the last pass's order,
    ``round(passes * steps_per_pass)`` steps in all (token budgets of baselines are matched this way)."""
    keep_frac: float = 1.0
    """Fraction of blocks a focus phase keeps (picked by ``strategy``); must be 1 for learn/review."""
    strategy: Literal["hardest", "sample", "diverse", "forgotten-first"] = "hardest"
    """How a focus phase picks its blocks from the latest losses (``selection.py``): ``hardest`` (the paper's top-k),
    ``sample`` (k without replacement, P rising with loss, see ``temperature``), ``diverse`` (the hardest within each
    group, quotas proportional to group size, see ``group_by``), ``forgotten-first`` (blocks whose loss rose since
    their previous record first, then by loss). Focus phases only."""
    temperature: float = 1.0
    """``sample`` only: P(block) ~ exp(z / temperature), z the standardized loss; 0 = hardest, ``.inf`` = uniform."""
    group_by: Literal["domain", "cluster"] = "domain"
    """``diverse`` only: the groups are the blocks' domains, or k-means clusters of a per-block feature emitted by
    this phase's scoring pass (needs ``stats_source`` score or both; ``scoring.num_clusters`` clusters)."""
    stats_source: Literal["record", "score", "both"] = "record"
    """Where this phase's per-block losses come from: ``record`` (the training forward pass), ``score`` (a scoring
    pass over all blocks with the weights at the phase's start, before its selection; the training pass then
    records nothing) or ``both``. Not on the first phase (its start is the untrained model)."""

    def validate(self, prefix: str) -> None:
        _check_positive(self, prefix, "passes")
        _check_fraction(f"{prefix}.keep_frac", self.keep_frac)
        if self.kind != "focus" and self.keep_frac != 1.0:
            _fail(f"{prefix}.keep_frac", f"only a focus phase drops blocks; a {self.kind} phase needs 1.0")
        if self.kind != "focus" and self.strategy != "hardest":
            _fail(f"{prefix}.strategy", f"only a focus phase selects blocks; a {self.kind} phase needs 'hardest'")
        if not self.temperature >= 0:  # also rejects NaN
            _fail(f"{prefix}.temperature", f"must be >= 0 (0 = hardest, .inf = uniform), got {self.temperature!r}")
        if self.group_by == "cluster" and self.strategy != "diverse":
            _fail(f"{prefix}.group_by", "'cluster' only applies to strategy 'diverse'")
        if self.group_by == "cluster" and self.stats_source == "record":
            _fail(f"{prefix}.group_by", "clusters come from this phase's scoring pass: set stats_source to "
                                        "'score' or 'both', or group_by to 'domain'")


def paper_schedule() -> tuple[PhaseConfig, ...]:
    """The paper's GPT-2 schedule: learn 1; focus 50% once; review 1; focus 30% twice."""
    return (
        PhaseConfig("learn", 1),
        PhaseConfig("focus", 1, 0.5),
        PhaseConfig("review", 1),
        PhaseConfig("focus", 2, 0.3),
    )


@dataclass(frozen=True)
class ScheduleConfig:
    """The sequence of phases; any sequence is allowed as long as it starts with a learn phase."""

    phases: tuple[PhaseConfig, ...] = field(default_factory=paper_schedule)
    """Phases in order; a focus phase needs a recorded loss for every block, so a learn phase comes first."""

    def validate(self, prefix: str = "schedule") -> None:
        if not self.phases:
            _fail(f"{prefix}.phases", "must hold at least one phase")
        if self.phases[0].kind != "learn":
            _fail(f"{prefix}.phases.0.kind", "the first phase must be 'learn' (focus needs recorded losses)")
        if self.phases[0].stats_source != "record":
            _fail(f"{prefix}.phases.0.stats_source", "must be 'record': a scoring pass at step 0 would score the "
                                                     "untrained model")
        for i, phase in enumerate(self.phases):
            phase.validate(f"{prefix}.phases.{i}")

    def needs_scoring(self) -> bool:
        """Whether any phase runs a scoring pass (and so needs the scoring pool's resources)."""
        return any(p.stats_source != "record" for p in self.phases)


@dataclass(frozen=True)
class TrainConfig:
    """Ray Train workers, optimisation and the learning-rate schedule."""

    num_workers: int = 1
    """Data-parallel Ray Train workers."""
    use_gpu: bool = False
    """One GPU per worker, NCCL and bf16 autocast; false trains on CPU with gloo in float32."""
    cpus_per_worker: float = 1.0
    """CPUs each training worker reserves."""
    micro_batch_size: int = 16
    """Blocks per worker per forward/backward."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_frac: float = 0.1
    """Learning rate at the end of the cosine decay, as a fraction of ``lr``."""
    warmup_frac: float = 0.05
    """Fraction of the run's optimizer steps spent in linear warmup."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to biases, norms and embeddings)."""
    beta2: float = 0.95
    """AdamW beta2 (beta1 is 0.9)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""
    seed: int = 0
    """Seed for weights, data order and selection tie-breaking."""
    log_every_steps: int = 20
    """Steps between status lines and rows of ``metrics.jsonl``."""
    eval_every_steps: int = 100
    """Steps between validation-loss evaluations (and at every phase end)."""
    eval_max_blocks: int = 512
    """Validation blocks evaluated (evenly spaced over block ids, so every domain is represented); 0 means all."""
    checkpoint_every_steps: int = 200
    """Steps between checkpoints (and at every phase end)."""
    stats_flush_every_steps: int = 10
    """Steps a worker buffers per-block losses before sending them to the statistics actor."""
    max_failures: int = 2
    """Worker failures Ray Train retries from the latest checkpoint."""
    node_resource: Optional[str] = None
    """A custom Ray resource that only the training node type offers (``lfr_train`` in ``cluster.yaml``).

    Each worker reserves ``NODE_RESOURCE_PER_WORKER`` (0.001) of it besides its CPUs and GPU, so workers
    are placed only on nodes that declare it (one unit admits up to 1,000 workers) and the autoscaler
    starts such a node when none is free. Null: any node with free CPUs (and GPUs) will do."""

    def validate(self, prefix: str = "train") -> None:
        _check_positive(
            self, prefix, "num_workers", "cpus_per_worker", "micro_batch_size", "grad_accum_steps", "lr",
            "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "stats_flush_every_steps",
        )
        _check_non_negative(self, prefix, "weight_decay", "grad_clip", "eval_max_blocks", "max_failures")
        _check_fraction(f"{prefix}.min_lr_frac", self.min_lr_frac, allow_zero=True)
        if not 0 <= self.warmup_frac < 1:
            _fail(f"{prefix}.warmup_frac", f"must be in [0, 1), got {self.warmup_frac!r}")
        if not 0 < self.beta2 < 1:
            _fail(f"{prefix}.beta2", f"must be in (0, 1), got {self.beta2!r}")
        if self.node_resource is not None:
            _check_custom_resource(f"{prefix}.node_resource", self.node_resource)

    def global_batch_blocks(self) -> int:
        """Blocks per optimizer step across all workers."""
        return self.num_workers * self.micro_batch_size * self.grad_accum_steps

    def worker_resources(self) -> dict[str, float]:
        """What each Ray Train worker reserves (``ScalingConfig.resources_per_worker``)."""
        resources = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = 1.0
        if self.node_resource is not None:
            resources[self.node_resource] = NODE_RESOURCE_PER_WORKER
        return resources


NODE_RESOURCE_PER_WORKER = 0.001
"""Units of ``node_resource`` one worker reserves: a marker for placement, not a capacity limit."""

_BUILTIN_RESOURCES = ("CPU", "GPU", "TPU", "memory", "object_store_memory")


def _check_custom_resource(key: str, name: str) -> None:
    if not name or any(c.isspace() for c in name) or name in _BUILTIN_RESOURCES or ":" in name:
        _fail(key, f"must name a custom resource declared by a node type (e.g. 'lfr_train'): no spaces, no ':', "
                   f"not one of {', '.join(_BUILTIN_RESOURCES)}; got {name!r}")


@dataclass(frozen=True)
class ScoringConfig:
    """The scoring pass (``scoring.py``): every training block's loss under fixed weights, on a Ray Data actor pool.

    Used by ``lfr-ray score`` and by phases with ``stats_source`` score or both. Inside a run the pool needs
    resources beyond the training workers': ``min_actors`` actors plus Ray Data's read tasks must fit beside them
    (an autoscaling cluster adds nodes for the pool; a fixed one must have them free)."""

    checkpoint: Optional[str] = None
    """``lfr-ray score`` only: a Ray Train checkpoint directory (``model.pt``) or an exported model directory
    (``save_pretrained``); null scores the run's ``model/`` if the run is complete, else its latest checkpoint."""
    batch_size: int = 64
    """Blocks per forward pass in each scoring actor."""
    min_actors: int = 1
    """Actors the pool starts with and keeps; the pass waits until this many fit on the cluster."""
    max_actors: int = 1
    """Actors the pool may grow to while input is queued (an autoscaling cluster adds nodes for them)."""
    num_cpus_per_actor: float = 0.5
    """CPUs each actor reserves (fractions allowed); torch uses ``max(1, round(num_cpus_per_actor))`` threads.
    Leave headroom: a pool that takes every CPU starves Ray Data's read tasks and the pass hangs."""
    num_gpus_per_actor: float = 0.0
    """GPUs each actor reserves, at most 1; > 0 scores on CUDA with bf16 autocast, 0 on CPU in float32."""
    num_cpus_per_read_task: float = 0.25
    """CPUs each Ray Data Parquet read task reserves; small, so reads run beside a busy actor pool."""
    part_blocks: int = 65_536
    """Blocks per output part (``part-NNNNN.parquet``, block ids ``[i * part_blocks, (i + 1) * part_blocks)``):
    the unit of resume; a crashed pass redoes at most the parts it had not finished."""
    emit_features: bool = False
    """``lfr-ray score``: also write each block's feature (see ``feature_dim``). In a run, a phase with
    ``group_by: cluster`` emits them whatever this says."""
    feature_dim: int = 16
    """Width of the per-block feature: the mean final hidden state over the block's tokens times a fixed seeded
    Gaussian projection to this many dims (keeps 4 * feature_dim bytes per block on disk and on the driver)."""
    num_clusters: int = 8
    """k-means clusters of the features for ``diverse`` with ``group_by: cluster``."""
    kmeans_sample_blocks: int = 100_000
    """k-means is fitted on a seeded sample of this many blocks, then every block gets its nearest centroid."""
    kmeans_iters: int = 25
    """Lloyd iterations of k-means (after k-means++ seeding)."""
    node_resource: Optional[str] = None
    """A custom resource that only the scoring node type declares (``lfr_score`` in ``cluster.yaml``);
    each scoring actor then reserves a sliver of it, so the pool lands on that node type. Null: anywhere."""

    def validate(self, prefix: str = "scoring") -> None:
        _check_positive(self, prefix, "batch_size", "min_actors", "max_actors", "num_cpus_per_actor",
                        "num_cpus_per_read_task", "part_blocks", "feature_dim", "kmeans_iters")
        if self.max_actors < self.min_actors:
            _fail(f"{prefix}.max_actors", f"must be >= min_actors={self.min_actors}, got {self.max_actors}")
        if not 0 <= self.num_gpus_per_actor <= 1:
            _fail(f"{prefix}.num_gpus_per_actor", f"must be in [0, 1] (0 = CPU), got {self.num_gpus_per_actor!r}")
        if self.num_clusters < 2:
            _fail(f"{prefix}.num_clusters", f"must be >= 2, got {self.num_clusters}")
        if self.kmeans_sample_blocks < self.num_clusters:
            _fail(f"{prefix}.kmeans_sample_blocks", f"must be >= num_clusters={self.num_clusters}, "
                                                    f"got {self.kmeans_sample_blocks}")
        if self.node_resource is not None:
            _check_custom_resource(f"{prefix}.node_resource", self.node_resource)

    def actor_resources(self) -> dict[str, float]:
        """What one scoring actor reserves."""
        resources = {"CPU": self.num_cpus_per_actor}
        if self.num_gpus_per_actor:
            resources["GPU"] = self.num_gpus_per_actor
        if self.node_resource is not None:
            resources[self.node_resource] = NODE_RESOURCE_PER_WORKER
        return resources


@dataclass(frozen=True)
class RunConfig:
    """Where a run lives; re-running with the same name resumes it."""

    name: str = "demo"
    """Run name; the run directory is ``<root_dir>/<name>``."""
    root_dir: str = "runs"
    """Local directory holding run directories; on a multi-node cluster a shared filesystem mounted at the
    same path on every node (the statistics actor and the driver write there)."""
    storage_path: Optional[str] = None
    """Where Ray Train writes checkpoints: an absolute path every node sees, or a ``s3://``/``gs://`` URI;
    they go to ``<storage_path>/<name>/``. Null: ``<run dir>/train``."""

    def validate(self, prefix: str = "run") -> None:
        if not self.name or "/" in self.name:
            _fail(f"{prefix}.name", f"must be a non-empty name without '/', got {self.name!r}")
        if self.storage_path is not None and "://" not in self.storage_path and not Path(self.storage_path).is_absolute():
            _fail(f"{prefix}.storage_path", f"must be an absolute path or a URI such as s3://bucket/lfr, "
                                            f"got {self.storage_path!r}")

    def run_dir(self) -> Path:
        return Path(self.root_dir).absolute() / self.name


COMPARE_METHODS = ("lfr", "random", "static-prune")
"""Built-in methods of ``lfr-ray compare``; see ``lfr_ray/baselines.py`` for how each schedule is derived.
``compare.variants`` adds named LFR schedules beside them."""


@dataclass(frozen=True)
class CompareVariant:
    """A named LFR schedule that ``lfr-ray compare`` runs beside ``lfr`` (the schedule in ``schedule``).

    It shares everything with the other methods but its phase list, and must train the same number of optimizer
    steps as ``schedule.phases`` (checked on the prepared data; the error says which ``passes`` would match)."""

    name: str = ""
    """Method name, listed in ``compare.methods``; its runs are ``<name>-s<seed>``."""
    phases: tuple[PhaseConfig, ...] = ()
    """Its phases, written as ``schedule.phases`` (e.g. the same schedule with ``stats_source: score`` on the focus
    phases)."""

    def validate(self, prefix: str) -> None:
        if not self.name or "/" in self.name or self.name in COMPARE_METHODS:
            _fail(f"{prefix}.name", f"must be a non-empty name without '/' and not a built-in method "
                                    f"({', '.join(COMPARE_METHODS)}), got {self.name!r}")
        ScheduleConfig(self.phases).validate(prefix)


@dataclass(frozen=True)
class CompareConfig:
    """``lfr-ray compare``: several methods and seeds on the same prepared data, then one report.

    Every run shares the model, data, learning-rate schedule shape and token budget of the LFR schedule
    in ``schedule``; only the phase list differs (``lfr_ray/baselines.py``). Ignored by ``lfr-ray run``."""

    name: str = "compare"
    """Comparison name; its runs and report live in ``<root_dir>/<name>/`` (runs as ``<method>-s<seed>``)."""
    root_dir: str = "runs"
    """Directory holding comparison directories."""
    methods: tuple[str, ...] = COMPARE_METHODS
    """``lfr``: the schedule in ``schedule``; ``random``: one learn phase of the same token budget (ordinary
    random-order multi-epoch training); ``static-prune``: a short learn phase, then the hardest
    ``static_prune_keep_frac`` of the blocks for the rest of the budget; or the name of a ``variants`` entry.
    ``random`` is the report's reference."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """``train.seed`` of each run (weights, data order); every method runs once per seed."""
    variants: tuple[CompareVariant, ...] = ()
    """Further LFR schedules to compare, each with a ``name`` (listed in ``methods``) and ``phases``."""
    static_prune_learn_passes: float = 0.25
    """Passes (a fraction of an epoch) of the learn phase whose model scores the blocks for static-prune."""
    static_prune_keep_frac: float = 0.5
    """Fraction of blocks static-prune keeps (the hardest by the loss after its learn phase)."""
    scoring_cost_frac: float = 1 / 3
    """Compute of a scoring forward pass per token, as a fraction of a training step's (forward + backward)."""

    def validate(self, prefix: str = "compare") -> None:
        if not self.name or "/" in self.name:
            _fail(f"{prefix}.name", f"must be a non-empty name without '/', got {self.name!r}")
        names = [v.name for v in self.variants]
        for i, variant in enumerate(self.variants):
            variant.validate(f"{prefix}.variants.{i}")
            if variant.name in names[:i]:
                _fail(f"{prefix}.variants.{i}.name", f"{variant.name!r} is defined twice")
            if variant.name not in self.methods:
                _fail(f"{prefix}.variants.{i}.name", f"{variant.name!r} is not in {prefix}.methods; list it there "
                                                     f"to run it, or remove the variant")
        known = (*COMPARE_METHODS, *names)
        unknown = [m for m in self.methods if m not in known]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            _fail(f"{prefix}.methods", f"must list distinct methods out of {', '.join(known)} (names of "
                                       f"{prefix}.variants count too), got {list(self.methods)!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            _fail(f"{prefix}.seeds", f"must list at least one seed, without repeats, got {list(self.seeds)!r}")
        _check_positive(self, prefix, "static_prune_learn_passes")
        _check_fraction(f"{prefix}.static_prune_keep_frac", self.static_prune_keep_frac)
        _check_non_negative(self, prefix, "scoring_cost_frac")

    def variant_schedules(self) -> dict[str, ScheduleConfig]:
        """``{name: schedule}`` of the variants."""
        return {v.name: ScheduleConfig(v.phases) for v in self.variants}


@dataclass(frozen=True)
class Config:
    """The whole configuration of an lfr-ray run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    run: RunConfig = field(default_factory=RunConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def validate(self, *, check_paths: bool = True) -> "Config":
        """Check every section; ``check_paths=False`` skips the existence of local input paths
        (a training worker on another node, or a report on a run whose raw text is gone)."""
        for f in dataclasses.fields(self):
            if f.name == "data":
                self.data.validate("data", check_paths=check_paths)
            else:
                getattr(self, f.name).validate(f.name)
        return self

    def with_absolute_paths(self) -> "Config":
        """Every local path made absolute (packaged ``assets/...`` inputs resolved), so the driver,
        the workers and a later resume from another working directory read the same files."""

        def fix(path: str) -> str:
            return path if "://" in path else str(Path(resolve_path(path)).absolute())

        data = dataclasses.replace(
            self.data,
            inputs=tuple(fix(p) for p in self.data.inputs),
            val_inputs=tuple(fix(p) for p in self.data.val_inputs),
            output_dir=fix(self.data.output_dir),
            tokenizer=None if self.data.tokenizer is None else fix(self.data.tokenizer),
        )
        return dataclasses.replace(self, data=data, run=dataclasses.replace(self.run, root_dir=fix(self.run.root_dir)))

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Building the tree from plain data, with type checks that name the key
# --------------------------------------------------------------------------------------------


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as e:
                errors.append(e)
        _fail(key, f"expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            _fail(key, f"expected {_describe(tp)}, got {value!r}")
        return value
    if origin is tuple:
        (item_tp, *_rest) = get_args(tp)
        if isinstance(value, str) and item_tp is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            _fail(key, f"expected {_describe(tp)}, got {value!r}")
        return tuple(_convert(item_tp, v, f"{key}.{i}") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail(prefix or "<root>", f"expected {_describe(cls)}, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        _fail(f"{where}{unknown[0]}", f"unknown key; allowed keys here: {', '.join(names)}")
    kwargs = {
        name: _convert(hints[name], value, f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _set_override(tree: dict[str, Any], dotted: str, raw: str) -> None:
    """Apply ``a.b.c=value``; list elements are addressed by index (``schedule.phases.1.keep_frac``)."""
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                _fail(here, f"list index out of range (the list has {len(node)} items)")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if node is None:
                    node = {}
        else:
            _fail(here, f"cannot set a sub-key of a {type(node).__name__} value")


def parse_overrides(overrides: typing.Iterable[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), raw))
    return pairs


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Build and validate a ``Config`` from a YAML file (or defaults) and ``key.sub=value`` overrides."""
    tree: dict[str, Any] = Config().to_dict()
    if path is not None:
        path = Path(path)
        if not path.exists() and (CONFIG_DIR / path).exists():
            path = CONFIG_DIR / path
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _merge(tree, loaded, "")
    for key, raw in parse_overrides(overrides):
        _set_override(tree, key, raw)
    return _build(Config, tree, "").validate().with_absolute_paths()


def _merge(base: dict[str, Any], new: dict[str, Any], prefix: str) -> None:
    for key, value in new.items():
        here = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{here}.")
        else:
            base[key] = value


def config_from_dict(data: dict[str, Any], *, check_paths: bool = False) -> Config:
    """Rebuild a validated config from ``Config.to_dict()`` output (e.g. a run's ``config.yaml``).

    Input paths are not checked by default: the config was checked where it was loaded.
    """
    return _build(Config, data, "").validate(check_paths=check_paths)
