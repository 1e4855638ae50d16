"""Runs a recipe: stages in order, each on the previous stage's output.

Every stage writes ``output_dir/NN-name/`` atomically: it is built in ``.tmp-NN-name`` and
renamed into place only when complete, so a folder that exists is a finished stage. The engine
writes only inside ``output_dir``: it refuses a folder that is neither new, empty nor a compresso
run, holds an exclusive lock on it (``.lock``) while it runs, and checks every path it deletes
or renames against it. A stage is
skipped when its ``stage.json`` carries the same content key (input key + strategy + version +
params + teachers + seed); a stage that was interrupted resumes from its checkpoints in
``.work/NN-name`` (strategies that checkpoint read them from ``ctx.work_dir``).
The engine knows nothing about any particular strategy.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import shlex
import sys
import random
import shutil
import subprocess
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compresso import registry
from compresso.models import check_available, folder_fingerprint, is_local, load_bundle, save_bundle
from compresso.recipe import LoadedRecipe, Recipe, check_device
from compresso.strategy import (
    BUNDLE_META,
    CompressionStrategy,
    ModelBundle,
    RunContext,
    StageFailure,
    TeacherRef,
    write_json,
)


class RunError(Exception):
    """The run cannot start as asked (nothing to resume, unknown --from-stage, ...)."""


class Interrupted(BaseException):
    """The process was asked to stop (SIGTERM); handled like Ctrl-C: checkpoints kept, run.json
    says ``interrupted``. A BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signal_number: int):
        self.signal_number = signal_number
        super().__init__(f"stopped by signal {signal_number}")


@dataclass
class StageOutcome:
    index: int
    dirname: str
    strategy: str
    status: str  # "ran" | "skipped"
    seconds: float
    path: Path
    key: str
    metrics: dict = field(default_factory=dict)
    parameters: int | None = None
    size_bytes: int | None = None
    input_path: str | None = None


@dataclass
class RunResult:
    output_dir: Path
    stages: list[StageOutcome]
    evaluation: dict | None = None
    seconds: float = 0.0

    @property
    def final_stage(self) -> Path | None:
        """The last stage's folder: the run's product."""
        return self.stages[-1].path if self.stages else None


def select_device(spec: str, local_rank: int = 0) -> torch.device:
    try:
        check_device(spec)
    except ValueError as exc:
        raise RunError(f"device: {exc}") from None
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {spec!r} asked for, but torch sees no CUDA device "
                       f"(torch {torch.__version__}); use device: cpu or auto")
    if spec.startswith("cuda:") and int(spec[5:]) >= torch.cuda.device_count():
        raise RunError(f"device {spec!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(spec)


LOCK_FILE = ".lock"


def is_compresso_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run this engine wrote (its run.json says so)."""
    try:
        manifest = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "resolved_recipe" in manifest and "status" in manifest


PSEUDO_FILE_SYSTEMS = ("/proc", "/sys", "/dev")
"""Kernel views, not storage: a folder there cannot hold a run (and writing into one is never meant)."""


def symlinks_inside(folder: Path) -> list[Path]:
    """Every symbolic link under ``folder`` (not followed). compresso never makes one, so in a
    folder it owns a link can only point its writes, renames and deletions somewhere else."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            if os.path.islink(os.path.join(top, name)):
                found.append(Path(top) / name)
    return found


def check_writable_folder(out: Path, what: str = "output folder") -> None:
    """A folder compresso may create or write: not a dangling or looping symbolic link, not under
    a kernel pseudo file system, and (when new) creatable in its nearest existing parent."""
    if str(out).strip() == "":
        raise RunError(f"the {what} is an empty string; name a folder")
    try:
        out.exists()
    except (OSError, ValueError) as exc:
        raise RunError(f"{what} {str(out)[:80]}... cannot be used: {getattr(exc, 'strerror', None) or exc}") from None
    if out.is_symlink() and not out.exists():
        raise RunError(f"{what} {out} is a symbolic link that leads nowhere (it points at itself, loops or "
                       f"dangles): give a real folder")
    try:
        resolved = out.resolve(strict=False)
    except (OSError, RuntimeError) as exc:
        raise RunError(f"{what} {out} cannot be resolved: {getattr(exc, 'strerror', None) or exc}") from None
    for pseudo in PSEUDO_FILE_SYSTEMS:
        if resolved == Path(pseudo) or Path(pseudo) in resolved.parents:
            raise RunError(f"{what} {out} lies under {pseudo}, a kernel pseudo file system, not storage: "
                           f"give a folder on a disk")
    if out.exists() and not out.is_dir():
        raise RunError(f"{what} {out} is a file, not a folder")
    if not out.exists():
        parent = resolved.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise RunError(f"{what} {out} cannot be created: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"{what} {out} cannot be created: {parent} is not writable")


def check_output_dir(out: Path) -> None:
    """Refuse an output folder that is a file, or an existing folder that is neither empty nor a
    compresso run: the engine would otherwise overwrite and delete files it does not own. In a
    compresso run, a symbolic link is refused too (it would redirect the engine's writes)."""
    check_writable_folder(out)
    if out.is_dir():
        try:
            entries = [p.name for p in out.iterdir()]
        except OSError as exc:
            raise RunError(f"output folder {out} cannot be read: {exc.strerror or exc}") from None
        if entries and not is_compresso_run(out) and set(entries) != {LOCK_FILE}:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunError(f"output folder {out} already holds files that are not a compresso run ({shown}); "
                           f"give an empty or new folder (--output-dir), so that nothing of yours is overwritten")
        links = symlinks_inside(out)
        if links:
            raise RunError(f"output folder {out} holds a symbolic link, {links[0]} -> {os.readlink(links[0])}; "
                           f"compresso never makes one, and would write through it outside the folder: remove it")


def lock_holder(out: Path) -> str | None:
    """Who holds the run folder's lock (their pid, host and command), or None if nobody does.
    Only reads: a process that died released its lock with it (the kernel drops flock locks)."""
    import fcntl

    try:
        with os.fdopen(os.open(out / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "another process"
            return None
    except OSError:
        return None


class RunLock:
    """An exclusive ``flock`` on ``output_dir/.lock`` for the length of a run. The file records
    the holder, for the message a second process gets; the lock itself dies with its process."""

    def __init__(self, out: Path):
        self.out, self.handle = out, None

    def acquire(self) -> None:
        import fcntl

        try:
            # O_NOFOLLOW: a symbolic link put in place of the lock file is an error, never followed.
            fd = os.open(self.out / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
            handle = os.fdopen(fd, "a+")
        except OSError as exc:
            raise RunError(f"cannot create the lock file {self.out / LOCK_FILE}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunError(f"output folder {self.out} is in use by another compresso run ({holder}); wait for it "
                           f"to finish or use another --output-dir") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {platform.node()}, started "
                         f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}: "
                         f"{shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])}\n")
            handle.flush()
        except OSError as exc:  # a full disk: no empty lock file left behind
            (self.out / LOCK_FILE).unlink(missing_ok=True)
            try:
                handle.close()  # tries the write once more, and fails the same way
            except OSError:
                pass
            raise RunError(f"cannot write the lock file {self.out / LOCK_FILE}: {exc.strerror or exc}") from None
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the flock
            self.handle = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sha(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(ref: str, revision: str | None) -> dict:
    """Identity of a model reference: a local folder by its files' sizes and mtimes, a hub id by revision."""
    if is_local(ref):
        root = Path(ref).expanduser()
        return {"path": str(root.resolve()), "files": folder_fingerprint(root)}
    return {"hub": ref, "revision": revision or "main"}


def file_fingerprints(value) -> dict[str, list]:
    """Size and mtime of every existing file named in a parameter tree (corpus files, data), so
    that changing a file's contents at the same path invalidates the stage."""
    found: dict[str, list] = {}
    if isinstance(value, dict):
        for v in value.values():
            found.update(file_fingerprints(v))
    elif isinstance(value, (list, tuple)):
        for v in value:
            found.update(file_fingerprints(v))
    elif isinstance(value, str) and len(value) < 4096 and "\n" not in value:
        p = Path(value).expanduser()
        try:
            if p.is_file():
                st = p.stat()
                found[str(p.resolve())] = [st.st_size, st.st_mtime_ns]
        except OSError:
            pass
    return found


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def package_versions(extra_distributions: set[str]) -> dict[str, str]:
    out = {}
    for name in sorted({"compresso", "torch", "transformers", "tokenizers", "safetensors"} | extra_distributions):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


CONFIG_COUNT_LIMITS = {"num_labels": 100_000, "num_hidden_layers": 1_000, "num_layers": 1_000, "n_layers": 1_000}


def host_memory_bytes() -> int | None:
    """Physical memory of this machine (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def override_config(config, overrides: dict) -> None:
    """Set ``student.config`` values on a model configuration; a setting it does not have, a value
    its setter refuses, or a count too large to build, is a RunError naming the key."""
    for key, value in overrides.items():
        try:
            known = not key.startswith("_") and hasattr(config, key)
        except Exception:  # a property whose getter fails on an earlier override (id2label: 1.5)
            known = True
        if not known:
            raise RunError(f"student.config.{key}: {type(config).__name__} has no such setting")
        limit = CONFIG_COUNT_LIMITS.get(key)
        if limit is not None and isinstance(value, int) and not isinstance(value, bool) and value > limit:
            # transformers builds one label entry per label and one module per layer, even on the meta
            # device: 2**64 of them never finish
            raise RunError(f"student.config.{key}: {value}; at most {limit:,} are accepted")
        try:
            setattr(config, key, value)
        except Exception as exc:  # a property whose setter checks its value (num_labels, id2label...)
            raise RunError(f"student.config.{key}: {type(config).__name__} refuses {value!r}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def initial_bundle(recipe: Recipe, seed: int) -> ModelBundle:
    ref, revision = recipe.student_ref()
    bundle = load_bundle(ref, revision=revision, trust_remote_code=recipe.trust_remote_code)
    if recipe.student.config:
        # A student of a given shape with fresh weights (e.g. an undistilled baseline).
        config = bundle.model.config
        override_config(config, recipe.student.config)
        torch.manual_seed(seed)
        bundle.model = type(bundle.model)(config)
        bundle.lineage = bundle.lineage + [{"random_init": True, "config": recipe.student.config}]
    bad = nonfinite_part(bundle)
    if bad is not None:
        where = "student.config: the student built with these settings" if recipe.student.config else \
            f"student.model: {ref}"
        raise RunError(f"{where} has a non-finite {bad} (inf or nan); nothing can be trained from it")
    return bundle


def nonfinite_part(bundle: ModelBundle) -> str | None:
    """What in the bundle's model is not finite (a weight, or the output of a forward pass on a
    short text), or None when all is finite. Catches a broken configuration or stage before it is
    trained on or saved."""
    model = bundle.model
    if not isinstance(model, torch.nn.Module):
        return None
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
        if type(data) is not torch.Tensor:
            continue  # a quantized tensor subclass (torchao's Int8Tensor) has no isfinite; the forward pass below checks it
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):
            return f"weight {name}"
    if bundle.format != "transformers" or bundle.tokenizer is None:
        return None
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return None
    inputs = bundle.tokenizer("compresso checks the output", return_tensors="pt")
    accepted = inspect.signature(model.forward).parameters  # e.g. no token_type_ids for DistilBERT
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        inputs = {k: v for k, v in inputs.items() if k in accepted}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(**inputs)
    finally:
        model.train(was_training)
    first = output[0] if isinstance(output, (tuple, list)) or hasattr(output, "to_tuple") else output
    if torch.is_tensor(first) and first.is_floating_point() and not bool(torch.isfinite(first).all()):
        return "output of a forward pass"
    return None


def save_any(bundle: ModelBundle, path: Path) -> None:
    if bundle.format == "transformers":
        save_bundle(bundle, path)
    else:
        registry.get(bundle.format).save(bundle, path)


def inside(root: Path, path: Path) -> Path:
    """``path``, once proven to lie strictly inside ``root`` (symbolic links resolved): the only
    paths the engine deletes or renames."""
    base, target = root.resolve(), path.resolve()
    if target == base or base not in target.parents:
        raise RunError(f"refusing to touch {path}: it is not inside the output folder {root}")
    return path


def _remove_tree(root: Path, path: Path) -> None:
    if path.is_symlink():
        raise RunError(f"refusing to delete {path}: it is a symbolic link, and compresso never makes one")
    if path.exists():
        shutil.rmtree(inside(root, path))


def _replace_dir(tmp: Path, final: Path, root: Path) -> None:
    """Put a finished folder in place; the previous one goes only after the new one is there."""
    inside(root, tmp), inside(root, final)
    old = final.with_name(f".old-{final.name}")
    _remove_tree(root, old)
    if final.is_symlink() or final.exists():
        if final.is_symlink() or not final.is_dir():
            raise RunError(f"refusing to replace {final}: it is not a folder compresso wrote")
        final.rename(old)
    tmp.rename(final)
    _remove_tree(root, old)


def _init_distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def recipe_key(key: str | None):
    """Label an error raised within with the recipe key it concerns (``exc.recipe_key``), so that
    the message can point at the recipe's line; a label set closer to the cause is kept."""
    try:
        yield
    except Exception as exc:
        if key is not None and getattr(exc, "recipe_key", None) is None:
            try:
                exc.recipe_key = key
            except AttributeError:  # an exception type that takes no attributes
                pass
        raise


class Runner:
    """One run of one recipe. Build it, call ``preflight()`` (no side effects), then ``run()``."""

    def __init__(self, loaded: LoadedRecipe, output_dir: str | Path | None = None, device: str | None = None,
                 force: bool = False, resume: bool = False, from_stage: str | None = None,
                 console: Console | None = None):
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.output_dir_given = output_dir is not None  # -o: errors about the folder are not the recipe's
        self.out = Path(output_dir or self.recipe.output_dir).expanduser()  # `output_dir: ~/runs/x` means home
        self.force, self.resume, self.from_stage = force, resume, from_stage
        if force and from_stage is not None:
            raise RunError("--force reruns every stage and --from-stage reruns from one stage on: give one of them")
        if force and resume:
            raise RunError("--resume and --force contradict each other; pick one")
        self.lock = RunLock(self.out)
        self.console = console or Console()
        self.rank, self.world_size, local_rank = _init_distributed()
        self.device = select_device(device or self.recipe.device, local_rank)
        self.teachers = {t.name: TeacherRef(t.name, self._teacher_path(t), t.revision, self.recipe.trust_remote_code,
                                            stage=self._teacher_stage_dirname(t))
                         for t in self.recipe.teachers}
        self.strategies: list[CompressionStrategy] = []
        for stage in self.recipe.stages:
            cls = registry.get(stage.strategy)  # the recipe loader has checked it
            self.strategies.append(cls(cls.Params.model_validate(stage.params)))
        self.first_forced = self._first_forced_stage()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _first_forced_stage(self) -> int | None:
        if self.force:
            return 0
        if self.from_stage is None:
            return None
        for i in range(len(self.recipe.stages)):
            if self.recipe.stage_matches(i, self.from_stage):
                return i
        names = [self.recipe.stage_dirname(i) for i in range(len(self.recipe.stages))]
        raise RunError(f"--from-stage {self.from_stage!r} matches no stage; stages: {', '.join(names)}")

    def _teacher_stage_dirname(self, teacher) -> str | None:
        index = self.recipe.teacher_stage(teacher)
        return None if index is None else self.recipe.stage_dirname(index)

    def _teacher_path(self, teacher) -> str:
        """A teacher's model reference: its hub id or folder, or the folder of the stage it is."""
        dirname = self._teacher_stage_dirname(teacher)
        return teacher.model if dirname is None else str(self.out / dirname)

    def _visible_teachers(self, index: int) -> dict[str, TeacherRef]:
        """The teachers stage ``index`` may use: every hub or folder teacher, and the teachers that are
        the outputs of earlier stages."""
        return {t.name: self.teachers[t.name] for t in self.recipe.teachers
                if (j := self.recipe.teacher_stage(t)) is None or j < index}

    def _context(self, index: int) -> RunContext:
        dirname = self.recipe.stage_dirname(index)
        return RunContext(stage_dir=self.out / f".tmp-{dirname}", work_dir=self.out / ".work" / dirname,
                          device=self.device, seed=self.recipe.seed, teachers=self._visible_teachers(index),
                          base_dir=Path.cwd(), console=self.console, rank=self.rank,
                          world_size=self.world_size)

    def preflight(self, network: bool = True) -> None:
        """Everything that can fail before work starts, without writing anything: the output
        folder, models available, the student's config overrides, strategies' own checks, the
        evaluation's model names and task data. ``network=False`` (``compresso validate``) skips
        asking the hub whether hub ids exist, and no check made here (a strategy's included) can
        reach the network; local folders are checked either way."""
        if not network:
            from compresso.models import hub_offline

            with hub_offline():
                return self._preflight(network=False)
        return self._preflight(network=True)

    def _preflight(self, network: bool) -> None:
        with recipe_key(None if self.output_dir_given else "output_dir"):
            check_output_dir(self.out)
        if self.is_main:
            holder = lock_holder(self.out)
            if holder is not None:
                raise RunError(f"output folder {self.out} is in use by another compresso run ({holder})")
        if self.resume and not (self.out / "run.json").is_file():
            raise RunError(f"--resume: {self.out} holds no run (no run.json); run without --resume to start one")
        refs = [(f"teachers.{i}.model", t.model, t.revision) for i, t in enumerate(self.recipe.teachers)
                if t.model is not None]
        if not self.recipe.teacher(self.recipe.student.model):
            refs.append(("student.model", *self.recipe.student_ref()))
        for key, ref, revision in refs:
            if network or is_local(ref):
                with recipe_key(key):
                    check_available(ref, revision, self.recipe.trust_remote_code)
        if self.recipe.student.config and (network or is_local(self.recipe.student_ref()[0])):
            with recipe_key("student.config"):
                self._check_student_config()
        for i, strategy in enumerate(self.strategies):
            with recipe_key(f"stages.{i}.params"):
                strategy.preflight(self._context(i))
        if self.recipe.evaluate is not None:
            # Names and task data now (seconds), not after hours of training.
            from compresso.evaluation import check_data, select_models

            with recipe_key("evaluate.models" if "models" in self.recipe.evaluate else "evaluate"):
                select_models(self._eval_models([(i, self.recipe.stage_dirname(i),
                                                  self.out / self.recipe.stage_dirname(i), None)
                                                 for i in range(len(self.recipe.stages))]),
                              self._evaluate_config().models)
            with recipe_key("evaluate.data_dir" if "data_dir" in self.recipe.evaluate else "evaluate"):
                check_data(self.recipe.evaluate)

    def _evaluate_config(self):
        from compresso.evaluation import EvaluateConfig

        return EvaluateConfig.model_validate(self.recipe.evaluate)

    def _check_student_config(self) -> None:
        """The ``student.config`` overrides name real settings and give a model that can be built."""
        from transformers import AutoConfig, AutoModelForMaskedLM

        ref, revision = self.recipe.student_ref()
        try:
            config = AutoConfig.from_pretrained(ref, revision=revision, trust_remote_code=self.recipe.trust_remote_code)
        except Exception as exc:  # a broken config.json, an unknown model type
            raise RunError(f"student.model: cannot read the config of {ref}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        override_config(config, self.recipe.student.config)
        try:
            with torch.device("meta"):  # shapes only: no memory, no time
                model = AutoModelForMaskedLM.from_config(config, trust_remote_code=self.recipe.trust_remote_code)
        except Exception as exc:
            raise RunError(f"student.config: the model cannot be built with these settings: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        # The student is built in host memory first (fp32): one that cannot fit would be killed mid-run.
        nbytes = sum(p.numel() * 4 for p in model.parameters())
        memory = host_memory_bytes()
        if memory is not None and nbytes > memory:
            raise RunError(f"student.config: these settings build a model of {nbytes / 4:,.0f} parameters "
                           f"({nbytes / 2**30:,.1f} GiB in fp32), more than this machine's "
                           f"{memory / 2**30:,.1f} GiB of memory")

    def _stage_key(self, index: int, input_key: str, keys: list[str]) -> str:
        stage, strategy = self.recipe.stages[index], self.strategies[index]
        entry = registry.entry(stage.strategy)
        params = strategy.params.model_dump(mode="json")
        teachers = {}
        for t in self.recipe.teachers:
            j = self.recipe.teacher_stage(t)
            if j is None:
                teachers[t.name] = model_fingerprint(t.model, t.revision)
            elif j < index:  # a stage's output as teacher: that stage's own key
                teachers[t.name] = {"stage": keys[j]}
        return _sha({
            "input": input_key, "strategy": stage.strategy, "version": entry.version,
            "source": registry.source_fingerprint(type(strategy)),  # an edited plugin reruns, same version or not
            "params": params, "files": file_fingerprints(params), "seed": self.recipe.seed,
            "teachers": teachers,
        })

    def _manifest(self, status: str, started: float, outcomes: list[StageOutcome], error: str | None = None,
                  evaluation: dict | None = None) -> dict:
        dists = {registry.entry(s.strategy).distribution for s in self.recipe.stages}
        return {
            "recipe": str(self.loaded.path), "name": self.recipe.name, "resolved_recipe": self.loaded.raw,
            "status": status, "error": error, "seed": self.recipe.seed,
            "device": str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})"
                                          if self.device.type == "cuda" else ""),
            "world_size": self.world_size,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "seconds": round(time.time() - started, 2),
            "versions": package_versions(dists), "git_commit": git_commit(),
            "python": platform.python_version(), "host": platform.node(),
            "stages": [{"stage": o.dirname, "strategy": o.strategy, "status": o.status, "seconds": round(o.seconds, 2),
                        "input": o.input_path, "key": o.key, "parameters": o.parameters, "size_bytes": o.size_bytes}
                       for o in outcomes],
            "evaluation": evaluation,
        }

    def run(self) -> RunResult:
        started = time.time()
        outcomes: list[StageOutcome] = []
        if self.is_main:
            check_output_dir(self.out)  # again: the folder may have changed since preflight
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()  # before run.json: a second process must not touch this run
        try:
            if self.is_main:
                write_json(self.out / "run.json", self._manifest("running", started, outcomes))
            try:
                result = self._run_stages(started, outcomes)
            except BaseException as exc:
                if self.is_main:
                    status = "interrupted" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else "failed"
                    try:
                        write_json(self.out / "run.json", self._manifest(
                            status, started, outcomes, error="".join(traceback.format_exception_only(exc)).strip()))
                    except OSError:  # e.g. the disk is full: the cause itself is what must be reported
                        pass
                raise
        finally:
            if self.is_main:
                self._tidy()
            self.lock.release()
        return result

    def _tidy(self) -> None:
        """Leave no scratch behind: the half-written ``.tmp-*`` of a stage that stopped (its
        checkpoints, in ``.work/``, are what a resume needs) and empty ``.work/`` folders."""
        for tmp in self.out.glob(".tmp-*"):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(inside(self.out, tmp), ignore_errors=True)
        work = self.out / ".work"
        if work.is_dir() and not work.is_symlink():
            for sub in work.iterdir():
                if sub.is_dir() and not sub.is_symlink() and not any(sub.iterdir()):
                    sub.rmdir()
            if not any(work.iterdir()):
                work.rmdir()

    def _stage_input(self, index: int, keys: list[str], student_key: str) -> tuple[str, str, str | None]:
        """(kind, reference, key) of what stage ``index`` starts from.

        kind is "stage" (reference: the stage's index as text), "teacher" (reference: its name) or
        "student"."""
        spec = self.recipe.stages[index].input
        if spec is None:
            return ("stage", str(index - 1), keys[index - 1]) if index > 0 else ("student", "student", student_key)
        if spec == "student":
            return "student", "student", student_key
        source = self.recipe.stage_index(spec, before=index)
        if source is not None:
            return "stage", str(source), keys[source]
        t = self.recipe.teacher(spec)
        return "teacher", spec, _sha({"teacher": model_fingerprint(t.model, t.revision)})

    def _input_path(self, kind: str, ref: str) -> str:
        if kind == "stage":
            return str(self.out / self.recipe.stage_dirname(int(ref)))
        if kind == "teacher":
            return self.recipe.teacher(ref).model
        return self.recipe.student_ref()[0]

    def _run_stages(self, started: float, outcomes: list[StageOutcome]) -> RunResult:
        ref, revision = self.recipe.student_ref()
        student_key = _sha({"student": model_fingerprint(ref, revision), "config": self.recipe.student.config,
                            "seed": self.recipe.seed})
        keys: list[str] = []
        last: tuple[int, ModelBundle] | None = None  # the previous stage's output, still in memory
        for i, stage in enumerate(self.recipe.stages):
            dirname = self.recipe.stage_dirname(i)
            final = self.out / dirname
            kind, source, input_key = self._stage_input(i, keys, student_key)
            key = self._stage_key(i, input_key, keys)
            keys.append(key)
            forced = self.first_forced is not None and i >= self.first_forced
            done = final / "stage.json"
            info = json.loads(done.read_text()) if not forced and done.is_file() else {}
            if info.get("key") == key:
                outcomes.append(StageOutcome(i, dirname, stage.strategy, "skipped", 0.0, final, key,
                                             info.get("metrics", {}), info.get("model", {}).get("parameters"),
                                             info.get("model", {}).get("size_bytes"),
                                             self._input_path(kind, source)))
                self.console.print(f"[dim]stage {dirname}: unchanged since last run, skipped[/dim]")
                last = None
                continue
            # Strategies may change their input in place, so an input other than the output just
            # made is loaded afresh (never the cached teacher objects used for distillation).
            if kind == "stage" and last is not None and last[0] == int(source):
                bundle = last[1]
            elif kind == "stage":
                bundle = load_bundle(self._input_path(kind, source))
            elif kind == "teacher":
                t = self.recipe.teacher(source)
                bundle = load_bundle(t.model, revision=t.revision, trust_remote_code=self.recipe.trust_remote_code)
            else:
                bundle = initial_bundle(self.recipe, self.recipe.seed)
            outcome, new = self._run_stage(i, bundle, key, forced)
            outcome.input_path = self._input_path(kind, source)
            outcomes.append(outcome)
            last = (i, new)
            if self.is_main:
                write_json(self.out / "run.json", self._manifest("running", started, outcomes))

        evaluation = self._evaluate(outcomes) if self.recipe.evaluate is not None else None
        result = RunResult(self.out, outcomes, evaluation, time.time() - started)
        if self.is_main:
            write_json(self.out / "run.json", self._manifest("finished", started, outcomes, evaluation=evaluation))
        return result

    def _run_stage(self, index: int, bundle: ModelBundle, key: str, forced: bool) -> tuple[StageOutcome, ModelBundle]:
        stage, strategy = self.recipe.stages[index], self.strategies[index]
        dirname = self.recipe.stage_dirname(index)
        ctx = self._context(index)
        if self.is_main:
            _remove_tree(self.out, ctx.stage_dir)  # leftovers of an interrupted attempt
            if forced:
                _remove_tree(self.out, ctx.work_dir)  # --force / --from-stage: no resuming from old checkpoints
            ctx.stage_dir.mkdir(parents=True)
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
        _barrier(self.world_size)
        self.console.rule(f"stage {dirname} · {stage.strategy}")
        seed_everything(self.recipe.seed + index)
        t0 = time.time()
        input_lineage = list(bundle.lineage)
        new = strategy.apply(bundle, ctx)
        seconds = time.time() - t0
        bad = nonfinite_part(new)
        if bad is not None:  # before anything is saved under the stage's name
            raise StageFailure(f"stage {dirname} ({stage.strategy}) produced a model with a non-finite {bad} "
                               f"(inf or nan); nothing was saved")
        entry = registry.entry(stage.strategy)
        new.lineage = input_lineage + [{"stage": dirname, "strategy": stage.strategy, "version": entry.version,
                                        "params": strategy.params.model_dump(mode="json"), "key": key}]
        params = parameter_count(new.model)
        size = None
        if self.is_main:
            try:
                save_any(new, ctx.stage_dir)
            except OSError:
                raise
            except Exception as exc:  # safetensors reports a full disk as its own SafetensorError
                raise StageFailure(f"stage {dirname}: the model could not be saved into {ctx.stage_dir}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            size = sum(p.stat().st_size for p in ctx.stage_dir.iterdir() if p.suffix in (".safetensors", ".onnx"))
            write_json(ctx.stage_dir / "stage.json", {
                "stage": dirname, "strategy": stage.strategy, "distribution": entry.distribution,
                "version": entry.version, "params": strategy.params.model_dump(mode="json"), "key": key,
                "input": input_lineage[-1] if input_lineage else None, "seconds": round(seconds, 2),
                "finished": datetime.now(timezone.utc).isoformat(), "metrics": ctx.metrics,
                "model": {"format": new.format, "parameters": params, "size_bytes": size,
                          "class": type(new.model).__name__},
            })
            _replace_dir(ctx.stage_dir, self.out / dirname, self.out)
            shutil.rmtree(inside(self.out, ctx.work_dir), ignore_errors=True)
        _barrier(self.world_size)
        return (StageOutcome(index, dirname, stage.strategy, "ran", seconds, self.out / dirname, key,
                             dict(ctx.metrics), params, size), new)

    def _eval_models(self, stages: list[tuple[int, str, Path, str | None]]) -> list:
        """The models an evaluation can name: teachers, stages ``(index, dirname, path, input)``,
        and the student when it is not a teacher."""
        from compresso.evaluation import EvalModel

        models = [EvalModel(name=t.name, path=self._teacher_path(t), role="teacher", strategy=None, input_path=None,
                            params=None) for t in self.recipe.teachers]
        for index, dirname, path, input_path in stages:
            models.append(EvalModel(name=dirname, path=str(path), role="student",
                                    strategy=self.recipe.stages[index].strategy,
                                    input_path=input_path, params=self.recipe.stages[index].params))
        if not self.recipe.teacher(self.recipe.student.model):
            # The model the recipe starts from, when it is not a teacher, can be scored as "student"
            # (e.g. the fp32 model beside its INT8 version).
            models.insert(len(self.recipe.teachers), EvalModel(
                name="student", path=self.recipe.student_ref()[0], role="student",
                strategy=None, input_path=None, params=None))
        return models

    def _evaluate(self, outcomes: list[StageOutcome]) -> dict | None:
        from compresso.evaluation import evaluate_models

        if not self.is_main:
            return None
        models = self._eval_models([(o.index, o.dirname, o.path, o.input_path) for o in outcomes])
        self.console.rule("evaluation")
        return evaluate_models(models, self.recipe.evaluate, self.recipe.report, self.out / "evaluation",
                               self.device, self.recipe.seed, self.console)


def summary_table(result: RunResult) -> Table:
    table = Table(title=escape(f"compresso run · {result.output_dir}"), show_lines=False)  # a path may hold [
    for col in ("stage", "strategy", "status", "time", "parameters", "size"):
        table.add_column(col, justify="right" if col in ("time", "parameters", "size") else "left")
    for o in result.stages:
        table.add_row(o.dirname, o.strategy, o.status, f"{o.seconds:.1f}s" if o.status == "ran" else "-",
                      f"{o.parameters / 1e6:.2f} M" if o.parameters else "-",
                      f"{o.size_bytes / 2**20:.1f} MiB" if o.size_bytes else "-")
    return table


__all__ = ["Runner", "RunResult", "RunError", "StageOutcome", "summary_table", "BUNDLE_META"]
