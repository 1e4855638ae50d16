"""The ``distill`` strategy's recipe parameters (see docs/distillation.md for the long form)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from compresso.strategy import InputPath, StrategyParams


class DistillParams(StrategyParams):
    # Teachers ------------------------------------------------------------------------------
    teachers: list[str] | dict[str, float] | None = Field(
        None, description="Teachers to distil from, by recipe name: a list (equal weights) or a mapping "
                          "name -> weight. Default: every teacher of the recipe, equal weights.")
    teacher_weighting: Literal["static", "entropy"] = Field(
        "static", description="static: the weights above. entropy: at each position, the weights above times "
                              "exp(-H / entropy_temperature) over the teachers that supervise it, H the "
                              "teacher's entropy in the vocabulary space all teachers share, so confident "
                              "teachers count more.")
    teacher_mixing: Literal["arithmetic", "geometric"] = Field(
        "arithmetic", description="How several teachers' soft targets combine. arithmetic: the weighted sum of "
                                  "one KL per teacher, each in its own target space (for teachers in one space "
                                  "the same gradient as the KL to the weighted mean of their distributions). "
                                  "geometric: one KL to the normalised weighted geometric mean of the teachers' "
                                  "distributions at T, taken in the student's vocabulary: a teacher with another "
                                  "tokenizer gives each student id its column's probability, split among the ids "
                                  "of that column as a teacher with the student's tokenizer splits it (one is "
                                  "needed). Needs unmapped_mass: other and no loss_chunk_rows.")
    entropy_temperature: float | Literal["auto"] = Field(
        "auto", description="Scale tau (nats) of the entropy weighting. auto: calibrated before training on "
                            "the held-out slice as the mean gap between the teachers' entropies at positions "
                            "they both supervise (so a typical gap weighs e:1, not all-or-nothing).")

    # Student -------------------------------------------------------------------------------
    num_layers: int | None = Field(None, ge=1, description="Student depth; layers are taken evenly spaced "
                                                           "from the input model, first and last kept. "
                                                           "Default: half of the input's layers.")
    layers: list[int] | Literal["all"] | None = Field(
        None, description="Explicit input layers to keep (0-based), e.g. [0, 2, 4, 7, 9, 11], or 'all' to "
                          "keep every layer (recovery training after pruning).")

    # Corpus --------------------------------------------------------------------------------
    corpus: list[InputPath] = Field(default_factory=list,
                                    description="Text files, one document per line (.txt, .gz, .xz, .bz2).")
    dataset: str | None = Field(None, description="Instead of `corpus`: a Hugging Face dataset id, streamed.")
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    max_documents: int | None = Field(None, ge=1, description="Use at most this many training documents "
                                                              "(an epoch ends there).")
    max_undecodable: float = Field(0.05, ge=0, le=1, exclude=True,  # a check, not a result: not hashed
                                   description="Refuse a corpus file when more than this share of its first "
                                               "MiB is not valid UTF-8 (a warning above 0.1%).")
    heldout_documents: int = Field(1000, ge=0, description="The corpus's first N documents: never trained on, "
                                                           "used for the final held-out metrics.")

    # Batches -------------------------------------------------------------------------------
    seq_len: int = Field(128, ge=8, description="Student sequence length; documents are packed into rows.")
    teacher_seq_len: int | None = Field(None, ge=8, description="Row length limit for teachers with another "
                                                                "tokenizer (default seq_len).")
    batch_size: int = Field(32, ge=1, description="Rows per micro-batch, per data-parallel rank.")
    grad_accum_steps: int = Field(1, ge=1)
    max_steps: int = Field(1000, ge=1, description="Optimizer steps.")

    # Optimisation --------------------------------------------------------------------------
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warm-up share of max_steps; "
                                                              "then lr_schedule.")
    lr_schedule: Literal["linear", "constant"] = Field(
        "linear", description="After the warm-up: linear = linear decay to 0 at max_steps; constant = the "
                              "learning rate stays at lr (the students saved at snapshot_steps are then each "
                              "the same run stopped early, whatever max_steps is).")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.98), description="AdamW's (beta1, beta2), each in [0, 1).")
    adam_eps: float = Field(1e-6, gt=0)
    max_grad_norm: float | None = Field(5.0, gt=0, description="Gradient clipping; null turns it off.")

    # Loss ----------------------------------------------------------------------------------
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft-target loss.")
    alpha_ce: float = Field(5.0, ge=0, description="Weight of T^2 * KL(teacher || student) (positions: ce_scope).")
    ce_scope: Literal["all", "masked"] = Field(
        "all", description="Where the soft-target KL is taken. all (DistilBERT's default): every non-pad "
                           "position, for a teacher with another tokenizer every student token aligned with "
                           "one of its pieces. masked (DistilBERT's restrict_ce_to_mask): masked positions only.")
    unmapped_mass: Literal["other", "renormalise"] = Field(
        "other", description="Teachers with another tokenizer: other = each side's probability outside the "
                             "shared vocabulary goes to one extra 'other' entry of the KL; renormalise = both "
                             "distributions are restricted to the shared vocabulary and renormalised.")
    alpha_mlm: float = Field(2.0, ge=0, description="Weight of the masked-LM cross-entropy on true tokens.")
    alpha_cos: float = Field(1.0, ge=0, description="Weight of the cosine loss on last hidden states.")
    alpha_hidden_mse: float = Field(0.0, ge=0, description="Weight of the intermediate hidden-state MSE.")
    hidden_layer_map: dict[int, int] | None = Field(
        None, description="For the hidden MSE: student hidden-state index -> teacher hidden-state index "
                          "(0 = embeddings, i = output of layer i). Default: student layer i, copied from "
                          "input layer L[i], -> teacher hidden state L[i] + 1 (teachers as deep as the input); "
                          "round(i * teacher_layers / student_layers) for teachers of another depth.")
    project_hidden: Literal["auto", "always", "never"] = Field(
        "auto", description="Learned linear projection from student to teacher hidden states: auto = for "
                            "every teacher the student was not initialised from, or whose width differs.")

    # Masking -------------------------------------------------------------------------------
    mask_prob: float = Field(0.15, gt=0, lt=1)
    mask_replace_prob: float = Field(0.8, ge=0, le=1, description="Of the masked: share replaced by [MASK].")
    mask_random_prob: float = Field(0.1, ge=0, le=1, description="Of the masked: share replaced by a random "
                                                                 "token (the rest stay unchanged).")
    whole_word_mask: bool = Field(True, description="Mask whole words (needed by teachers with another "
                                                    "tokenizer); false: DistilBERT's token-level masking.")
    mlm_smoothing: float = Field(0.7, ge=0, description="Token-level masking only: a token is picked with "
                                                        "probability proportional to count^-mlm_smoothing "
                                                        "(DistilBERT's 0.7; 0 picks every token alike).")
    smoothing_documents: int = Field(20000, ge=1, description="Training documents counted for the token "
                                                              "frequencies of mlm_smoothing.")

    # Runtime -------------------------------------------------------------------------------
    checkpoint_every: int = Field(500, ge=1, description="Checkpoint every N optimizer steps (and at the end).")
    log_every: int = Field(20, ge=1, description="Read losses back from the device every N steps.")
    snapshot_steps: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="Also save the student at these optimizer steps (each below "
                                          "max_steps), as save_pretrained folders STAGE/snapshots/step-N with a "
                                          "snapshot.json (step, tokens); a checkpoint is written at each, so a "
                                          "resumed run never trains past one it has not saved.")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the student's and the teachers' encoders and MLM heads, and the loss pieces "
                            "(soft-target KL with the push-forward, teachers' log-probs, pooling; batches are then "
                            "kept seq_len wide, so shapes never change); auto = on CUDA devices. The first steps "
                            "take longer while it compiles; docs/performance.md has the measured effect.")
    teacher_cuda_graphs: bool = Field(
        False, description="CUDA only: replay each teacher's encoder pass from a CUDA graph (one per batch shape; "
                           "batches are then kept seq_len wide; the teachers are then not compiled). The host then "
                           "issues one launch per teacher and step instead of hundreds: it pays at small batches, not at "
                           "large ones (docs/performance.md, speed switches), so it is off by default.")
    student_cuda_graphs: bool = Field(
        False, description="CUDA only, one process: replay the student's encoder pass, forward and backward, from "
                           "CUDA graphs in training (one pair per batch shape; batches are then kept seq_len wide; "
                           "the student's encoder is then not compiled, its MLM head still is). For small batches, "
                           "where the host's per-kernel work sets the pace; at large batches it is slower than the "
                           "compiled student (docs/performance.md, speed switches).")
    teacher_float8: bool = Field(
        False, description="CUDA GPUs of compute capability 8.9+ (Ada, Hopper, Blackwell) only: the linear layers of "
                           "the teachers' encoder layers run in float8 (torchao; weights scaled per row once, "
                           "activations per row on the fly), their embeddings and MLM heads stay bf16. Scaling the "
                           "activations costs a pass over each, so it pays only for wide teachers and large batches "
                           "(docs/performance.md, float8 teachers, has the measured passes and the agreement of "
                           "the soft targets with bf16's). Off by default.")
    loss_chunk_rows: int | None = Field(
        None, ge=1, description="Compute the student's vocabulary logits and the soft-target and masked-LM losses "
                                "this many positions at a time, the gradient of each chunk taken at once, so the "
                                "full (positions x vocabulary) logits never exist: far less memory with "
                                "ce_scope: all. Same loss; null computes all positions at once.")
    num_workers: int | None = Field(None, ge=0, description="Tokenizer worker processes; default 0 on CPU; "
                                                            "on GPU the cores per process less 2, at most 12.")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty layer list leaves no student; give at least one layer index")
            if any(i < 0 for i in v):
                raise ValueError(f"layer indices are 0-based and non-negative, got {v}")
            dup = sorted({i for i in v if v.count(i) > 1})
            if dup:
                raise ValueError(f"layer indices repeat: {dup}")
        return v

    @field_validator("teachers")
    @classmethod
    def _teachers(cls, v):
        if isinstance(v, dict):
            bad = {k: w for k, w in v.items() if not w > 0}
            if bad:
                raise ValueError(f"teacher weights must be positive, got {bad}")
        if v is not None and len(v) == 0:
            raise ValueError("an empty teacher list; leave the key out to use every teacher of the recipe")
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError(f"a teacher is named twice in {v}")
        return v

    @field_validator("snapshot_steps")
    @classmethod
    def _snapshots(cls, v):
        if v != sorted(set(v)):
            raise ValueError(f"snapshot_steps must be increasing, without repeats, got {v}")
        return v

    @field_validator("entropy_temperature")
    @classmethod
    def _tau(cls, v):
        if v != "auto" and not v > 0:
            raise ValueError(f"entropy_temperature must be a positive number of nats or 'auto', got {v}")
        return v

    @field_validator("hidden_layer_map")
    @classmethod
    def _layer_map(cls, v):
        if v is not None and any(s < 1 or t < 0 for s, t in v.items()):
            raise ValueError("student hidden-state indices start at 1 (layer outputs) and teacher indices "
                             "at 0 (embeddings)")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.layers is not None and self.num_layers is not None:
            raise ValueError("give either num_layers or layers, not both")
        if bool(self.corpus) == bool(self.dataset):
            raise ValueError("give the training text as either `corpus` (a list of text files) or `dataset` "
                             "(a hub dataset id)" + (", not both" if self.corpus else ""))
        if self.alpha_ce + self.alpha_mlm + self.alpha_cos + self.alpha_hidden_mse <= 0:
            raise ValueError("all loss weights (alpha_ce, alpha_mlm, alpha_cos, alpha_hidden_mse) are 0: "
                             "nothing to train on")
        if self.mask_replace_prob + self.mask_random_prob > 1:
            raise ValueError("mask_replace_prob + mask_random_prob must not exceed 1")
        if self.whole_word_mask and {"mlm_smoothing", "smoothing_documents"} & self.model_fields_set:
            raise ValueError("mlm_smoothing applies to token-level masking; set whole_word_mask: false to use it")
        if self.snapshot_steps and self.snapshot_steps[-1] >= self.max_steps:
            raise ValueError(f"snapshot_steps {self.snapshot_steps} must all be below max_steps {self.max_steps} "
                             "(the student at max_steps is the stage's output)")
        if self.teacher_mixing == "geometric" and self.unmapped_mass != "other":
            raise ValueError("teacher_mixing: geometric needs unmapped_mass: other (a foreign teacher's "
                             "probability outside the shared vocabulary is what it gives the student's unmapped ids)")
        if self.teacher_mixing == "geometric" and self.loss_chunk_rows:
            raise ValueError("teacher_mixing: geometric mixes whole rows of teacher log-probs; remove "
                             "loss_chunk_rows to use it")
        if self.teacher_seq_len is not None and self.teacher_seq_len < self.seq_len // 2:
            raise ValueError(f"teacher_seq_len {self.teacher_seq_len} is under half of seq_len "
                             f"{self.seq_len}: rows would be mostly empty")
        return self

    def teacher_weights(self, available: list[str]) -> dict[str, float]:
        """Chosen teachers with their (unnormalised) weights; unknown names are the caller's error."""
        if self.teachers is None:
            return {name: 1.0 for name in available}
        if isinstance(self.teachers, dict):
            return dict(self.teachers)
        return {name: 1.0 for name in self.teachers}
