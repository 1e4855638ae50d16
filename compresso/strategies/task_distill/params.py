"""The ``task_distill`` strategy's recipe parameters (docs/tasks.md has the long form)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from compresso.evaluation.config import FinetuneOverrides
from compresso.strategies.finetune.params import TaskDataParams
from compresso.strategy import InputPath


class TaskDistillParams(FinetuneOverrides, TaskDataParams):
    """The task and its data as ``finetune`` takes them (``TaskDataParams``: task, data_dir, source,
    hub_dataset, max_train_examples, ...); ``lr``, ``epochs``, ``batch_size``, ``eval_batch_size``,
    ``max_length``, ``warmup_ratio``, ``weight_decay``, ``max_grad_norm`` and ``patience`` are
    evaluation's fine-tuning settings (``FinetuneOverrides``, each left out keeps the task's
    default), given flat; ``head`` comes from the teachers."""

    head: Literal["siamese", "cross"] | None = Field(
        None, description="Not accepted here: the student takes the teachers' head (their task block).")

    seed: int | None = Field(None, ge=0, description="Seed of the head's initialisation and the batch order; "
                                                     "default: the recipe's seed.")

    # Teachers ------------------------------------------------------------------------------
    teachers: list[str] = Field(
        min_length=1, description="Fine-tuned task models to distil from, by name: recipe teachers whose model is a "
                                  "task model, or earlier stages that made one (a `finetune` stage, say). Their task "
                                  "blocks must agree: same task, same kind, same labels.")
    teacher_weights: dict[str, float] | None = Field(
        None, description="Weight of each teacher in the ensemble, by name (renormalised to sum to 1). Default: "
                          "equal weights.")
    ensemble: Literal["arithmetic", "geometric"] = Field(
        "arithmetic", description="How the teachers' softened probabilities are combined: arithmetic = their "
                                  "weighted mean; geometric = the weighted mean of their log-probabilities, "
                                  "renormalised (a class must be likely under every teacher). Regression: the "
                                  "weighted mean of the teachers' scores either way.")

    # Labelled and unlabelled data (the task and its data: TaskDataParams, as in `finetune`) --------
    labelled_examples: PositiveInt | None = Field(
        None, description="Keep the gold labels of only this many training examples (a fixed random subset); the "
                          "others are used without labels when `unlabelled_task_text` is on, else dropped. "
                          "Default: every training example keeps its label.")

    # Loss ----------------------------------------------------------------------------------
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the soft targets and of the "
                                                      "student's distribution in the KL term.")
    alpha_kd: float = Field(1.0, ge=0, description="Weight of T^2 * KL(teachers' soft targets || student) "
                                                   "(classification: per example; tagging: per word). "
                                                   "Regression: weight of the MSE to the teachers' scores.")
    alpha_ce: float = Field(1.0, ge=0, description="Weight of the cross-entropy on gold labels (regression: the "
                                                   "MSE to the gold scores); examples without a gold label have "
                                                   "none.")
    alpha_hidden: float = Field(
        0.0, ge=0, description="Weight of 1 - cos(student, teacher) between last hidden states, token by token. "
                               "Taken only from teachers that share the student's tokenizer and hidden size "
                               "(others are skipped, and stage.json says why); with no such teacher it is an "
                               "error. Not for the siamese STS head.")

    # Unlabelled text -----------------------------------------------------------------------
    unlabelled_corpus: list[InputPath] = Field(
        default_factory=list, description="Text files, one document per line (.txt, .gz, .xz, .bz2): each line is "
                                          "one more training example labelled by the teachers (KD loss only). "
                                          "Tagging tasks split a line into words at spaces and punctuation. Not "
                                          "for sentence-pair tasks.")
    max_unlabelled: PositiveInt = Field(10000, description="Read at most this many corpus lines.")
    max_unlabelled_words: PositiveInt = Field(
        128, description="Tagging: a corpus line is cut after this many words (task sentences are short).")
    unlabelled_task_text: bool = Field(
        False, description="Use the task's training examples that `labelled_examples` leaves without gold labels "
                           "as teacher-labelled text.")

    @field_validator("teachers")
    @classmethod
    def _unique(cls, v: list[str]):
        dup = sorted({t for t in v if v.count(t) > 1})
        if dup:
            raise ValueError(f"a teacher is named twice: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.teacher_weights is not None:
            unknown = sorted(set(self.teacher_weights) - set(self.teachers))
            if unknown:
                raise ValueError(f"teacher_weights names {', '.join(unknown)}, not among teachers "
                                 f"({', '.join(self.teachers)})")
            missing = [t for t in self.teachers if t not in self.teacher_weights]
            if missing:
                raise ValueError(f"teacher_weights gives no weight to {', '.join(missing)}; weigh every teacher "
                                 f"or leave teacher_weights out (equal weights)")
            bad = {k: w for k, w in self.teacher_weights.items() if not w > 0}
            if bad:
                raise ValueError(f"teacher weights must be positive, got {bad}")
        if self.alpha_kd + self.alpha_ce + self.alpha_hidden <= 0:
            raise ValueError("alpha_kd, alpha_ce and alpha_hidden are all 0: nothing to train on")
        if self.head is not None:
            raise ValueError("head: the student's head is the teachers' (their task block); leave it out")
        if self.unlabelled_task_text and self.labelled_examples is None:
            raise ValueError("unlabelled_task_text uses the training examples that labelled_examples leaves "
                             "unlabelled; set labelled_examples too")
        return self

    def weights(self) -> dict[str, float]:
        """Each teacher's ensemble weight, summing to 1."""
        raw = {t: (self.teacher_weights or {}).get(t, 1.0) for t in self.teachers}  # validated: all or none
        total = sum(raw.values())
        return {t: w / total for t, w in raw.items()}
