"""Recipes: YAML in, typed and validated objects out, with errors that point at lines.

Everything is checked before anything runs: the recipe's own keys, every stage's parameters
against its strategy's schema, the formats along the stage chain, the ``evaluate``/``report``
sections, and that every local file named exists. Relative paths are resolved against the current
working directory.

The file itself is read defensively: it must be UTF-8 text of bounded size, duplicate keys are
errors, and a document whose aliases expand beyond ``MAX_VALUES`` values or nest deeper than
``MAX_DEPTH`` is refused before anything walks it (a few hundred bytes of YAML aliases can
otherwise expand to billions of values).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from compresso import registry

MAX_RECIPE_BYTES = 1_000_000
MAX_DEPTH = 64
MAX_VALUES = 100_000

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_plain_name(value: str) -> str:
    """Names that become folder names: letters, digits, '.', '_', '-', starting with a letter or
    digit, at most 64 characters (so never a path, '..', or a control character)."""
    if not _PLAIN_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain name: use letters, digits, '.', '_' and '-', starting "
                         f"with a letter or digit, at most 64 characters (it becomes a folder name)")
    return value


def check_path_length(value: str) -> str:
    """Model references and folders must fit the file system's limits (255 bytes a name, 4096 in
    all), or every later probe of the path fails with an OS error instead of a recipe error."""
    parts = value.encode("utf-8", "surrogatepass").split(b"/")
    if len(value.encode("utf-8", "surrogatepass")) > 4096 or any(len(p) > 255 for p in parts):
        raise ValueError("too long for a file, folder or model name (at most 255 bytes between slashes, "
                         "4096 in all)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class TeacherSpec(_Strict):
    name: str = Field(description="Short name used in reports, by `student.model` and by stages' parameters.")

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str):
        return check_plain_name(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None):
        return v if v is None else check_path_length(v)

    model: str | None = Field(None, description="Hub id or local folder.")
    stage: str | None = Field(None, description="Instead of `model`: a stage of this recipe (its name or folder "
                                                "name) whose output is this teacher, for the stages after it "
                                                "(e.g. a fine-tuned task model as a teacher of task distillation).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.stage is None):
            raise ValueError("give a teacher either `model` (a hub id or folder) or `stage` (an earlier stage's "
                             "output), not " + ("both" if self.model else "neither"))
        if self.stage is not None and self.revision is not None:
            raise ValueError("revision is for hub models; a stage's output has none")
        return self


class StudentSpec(_Strict):
    model: str = Field(description="The model the first stage starts from: a teacher's name, a hub id or a folder.")
    revision: str | None = None
    config: dict[str, Any] | None = Field(
        None, description="Config overrides; when given, the student is built from the (overridden) config "
                          "with fresh random weights instead of the pretrained ones.")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str):
        return check_path_length(v)


class StageSpec(_Strict):
    strategy: str
    name: str | None = Field(None, description="Stage folder name; defaults to the strategy name.")
    input: str | None = Field(
        None, description="What this stage starts from: an earlier stage's name, a teacher's name, or "
                          "'student' (the recipe's student). Default: the previous stage's output.")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str | None):
        return v if v is None else check_plain_name(v)


def check_device(v: str) -> str:
    if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {v!r}")
    return v


class Recipe(_Strict):
    name: str
    seed: int = Field(42, ge=0, lt=2**63, strict=True)
    output_dir: str = Field(min_length=1)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    trust_remote_code: StrictBool = False
    teachers: list[TeacherSpec] = Field(default_factory=list)
    student: StudentSpec
    stages: list[StageSpec] = Field(default_factory=list)
    evaluate: dict[str, Any] | None = None
    report: dict[str, Any] | None = None

    @field_validator("teachers")
    @classmethod
    def _unique_teacher_names(cls, v: list[TeacherSpec]):
        names = [t.name for t in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"teacher names must be unique; repeated: {', '.join(sorted(dup))}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str):
        return check_device(v)

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v: str):
        if not v.strip():
            raise ValueError("output_dir is blank; name the run's folder")
        return check_path_length(v)

    @model_validator(mode="after")
    def _stage_inputs(self):
        seen: set[str] = set()
        names = [t.name for t in self.teachers]
        stage_teachers = {t.name: t.stage for t in self.teachers if t.stage is not None}
        for i, stage in enumerate(self.stages):
            if stage.input is not None and stage.input not in seen | set(names) | {"student"}:
                raise ValueError(
                    f"stages.{i}.input: {stage.input!r} is not an earlier stage ({', '.join(sorted(seen)) or 'none'}), "
                    f"a teacher ({', '.join(names) or 'none'}) or 'student'")
            if stage.input in stage_teachers and stage.input not in seen:
                raise ValueError(f"stages.{i}.input: teacher {stage.input!r} is the output of stage "
                                 f"{stage_teachers[stage.input]!r}; name that stage as the input")
            try:
                check_plain_name(self.stage_label(i))
            except ValueError as exc:  # the folder name comes from the strategy's name here
                raise ValueError(f"stages.{i}.{'name' if stage.name else 'strategy'}: {exc}") from None
            seen |= {self.stage_dirname(i), self.stage_label(i)}
        for j, t in enumerate(self.teachers):
            if t.stage is not None and self.stage_index(t.stage) is None:
                raise ValueError(f"teachers.{j}.stage: {t.stage!r} is not a stage of this recipe (stages: "
                                 f"{', '.join(self.stage_dirname(i) for i in range(len(self.stages))) or 'none'})")
        if self.student.model in stage_teachers:
            raise ValueError(f"student.model: teacher {self.student.model!r} is the output of stage "
                             f"{stage_teachers[self.student.model]!r}, which does not exist before the first stage; "
                             f"use that stage as a later stage's `input` instead")
        return self

    def teacher_stage(self, teacher: TeacherSpec) -> int | None:
        """The index of the stage whose output is ``teacher`` (None for a hub or folder teacher)."""
        return None if teacher.stage is None else self.stage_index(teacher.stage)

    def stage_matches(self, index: int, name: str) -> bool:
        """Whether ``name`` refers to stage ``index``: its folder (NN-name), name or strategy."""
        stage = self.stages[index]
        return name in (self.stage_dirname(index), stage.name, stage.strategy, self.stage_label(index))

    def stage_index(self, name: str, before: int | None = None) -> int | None:
        """The latest stage (before index ``before``) called ``name``."""
        for i in reversed(range(len(self.stages) if before is None else before)):
            if self.stage_matches(i, name):
                return i
        return None

    def teacher(self, name: str) -> TeacherSpec | None:
        return next((t for t in self.teachers if t.name == name), None)

    def student_ref(self) -> tuple[str, str | None]:
        """The student's model reference, with a teacher's name resolved to its model."""
        t = self.teacher(self.student.model)
        return (t.model, t.revision) if t else (self.student.model, self.student.revision)

    def stage_label(self, index: int) -> str:
        """The stage's name, or its strategy's (without a ``@distribution`` qualifier)."""
        stage = self.stages[index]
        return stage.name or stage.strategy.split("@", 1)[0]

    def stage_dirname(self, index: int) -> str:
        return f"{index:02d}-{self.stage_label(index)}"


@dataclass
class Problem:
    key: str
    message: str
    line: int | None


class RecipeError(Exception):
    """One or more problems in a recipe, each with file, line and key path."""

    def __init__(self, path: str | Path, problems: list[Problem]):
        self.path, self.problems = str(path), problems
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}"]
        for p in self.problems:
            where = f"{self.path}:{p.line}" if p.line else f"{self.path}"
            lines.append(f"  {where}: {p.key or '(top level)'}: {p.message}")
        return "\n".join(lines)


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (YAML would silently keep the last one).
    Keys brought in by a merge (``<<: *anchor``) may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"key {key_node.value!r} appears twice (first on line {seen[key]})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _DocumentTooLarge(Exception):
    def __init__(self, message: str, line: int | None):
        self.message, self.line = message, line
        super().__init__(message)


def _check_node_graph(root) -> None:
    """Refuse documents that nest too deep or expand (through aliases) to too many values.
    Each node is sized once (aliases share nodes), so the check itself is linear in the text."""
    sizes: dict[int, int] = {}

    def size(node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _DocumentTooLarge(f"nested more than {MAX_DEPTH} levels deep", node.start_mark.line + 1)
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v, depth + 1) for v in node.value)
        if total > MAX_VALUES:
            raise _DocumentTooLarge(f"expands to more than {MAX_VALUES} values (through YAML aliases?); "
                                    f"a recipe is much smaller", node.start_mark.line + 1)
        sizes[id(node)] = total
        return total

    size(root, 0)


def _line_map(root) -> dict[tuple, int]:
    """Map each key path (tuple of keys/indices) to the 1-based line where it appears. Aliased
    nodes are walked once: paths under a second use fall back to the alias's own line."""
    lines: dict[tuple, int] = {}
    walked: set[int] = set()

    def walk(node, path: tuple):
        lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in walked:
            return
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if key is None:
                    continue
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def parse_yaml(text: str) -> tuple[Any, dict[tuple, int]]:
    """``(data, line map)`` of one YAML document, read safely and within bounds. Raises
    ``yaml.YAMLError`` (with a mark where known) or ``_DocumentTooLarge``."""
    loader = _RecipeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            raise _DocumentTooLarge("nested too deeply to read", None) from None
        if root is None:
            return None, {}
        _check_node_graph(root)
        return loader.construct_document(root), _line_map(root)
    finally:
        loader.dispose()


def _yaml_problem(exc: Exception) -> Problem:
    if isinstance(exc, _DocumentTooLarge):
        return Problem("", f"refused: the document {exc.message}", exc.line)
    mark = getattr(exc, "problem_mark", None)
    return Problem("", f"not valid YAML: {getattr(exc, 'problem', None) or exc}", mark.line + 1 if mark else None)


def _find_nul(value, path: tuple = ()) -> tuple | None:
    """The key path of the first string (or key) holding a NUL character: no file name or model
    name can contain one, and the operating system would reject it deep inside a run."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and "\x00" in k:
                return path + (k,)
            found = _find_nul(v, path + (k,))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_nul(v, path + (i,))
            if found is not None:
                return found
    return None


def _find_nonfinite(value, path: tuple = ()) -> tuple | None:
    """The key path of the first number that is inf or nan, anywhere in the recipe (a model's
    configuration, evaluation settings, a stage's parameters): no setting means one."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_nonfinite(v, path + (k,))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_nonfinite(v, path + (i,))
            if found is not None:
                return found
    return None


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    # Fall back to the nearest ancestor that the file mentions (e.g. for a missing key).
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _keypath(loc: tuple) -> str:
    return ".".join(str(x) for x in loc)


def apply_overrides(data: dict, overrides: list[str], path: str | Path) -> set[tuple]:
    """Apply ``key.path=value`` overrides in place (values parsed as YAML). Returns the keys set."""
    touched = set()
    for item in overrides:
        if "=" not in item:
            raise RecipeError(path, [Problem(item, "--set expects key.path=value", None)])
        key, raw = item.split("=", 1)
        parts: list[Any] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
        try:
            value, _ = parse_yaml(raw)
        except (yaml.YAMLError, _DocumentTooLarge) as exc:
            problem = _yaml_problem(exc)
            raise RecipeError(path, [Problem(key, f"--set: the value {raw!r} is {problem.message}", None)]) from None
        node = data
        for i, part in enumerate(parts[:-1]):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                raise RecipeError(path, [Problem(key, f"--set: {_keypath(tuple(parts[:i + 1]))} "
                                                      f"does not exist in the recipe", None)]) from None
        try:
            node[parts[-1]] = value
        except (IndexError, TypeError, KeyError):
            raise RecipeError(path, [Problem(key, "--set: cannot set this key", None)]) from None
        touched.add(tuple(parts))
    return touched


_KEYED_MESSAGE = re.compile(r"([A-Za-z_][\w]*(?:\.\w+)+): (.*)", re.S)


def _key_tuple(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def _pydantic_problems(err: ValidationError, prefix: tuple, lines, overridden) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        keyed = _KEYED_MESSAGE.match(msg) if not e["loc"] else None
        if keyed:  # a check across keys that names the key it is about: point at that key's line
            loc = prefix + _key_tuple(keyed.group(1))
            msg = keyed.group(2)
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("value_error",):
            got = repr(e["input"])
            msg = f"{msg} (got {got if len(got) <= 200 else got[:200] + '...'})"
        line = None if any(loc[:len(o)] == o for o in overridden) else _line_for(lines, loc)
        out.append(Problem(_keypath(loc), msg + (" [from --set]" if line is None and overridden else ""), line))
    return out


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    raw: dict
    """The resolved recipe as plain data (after overrides), recorded in run.json."""
    lines: dict = field(default_factory=dict)
    """Key path (tuple) → line in the file, for keys the file sets (not --set)."""

    def locate(self, key: str | None, message: str) -> str:
        """``file:line: key: message`` for an error about ``key`` found after loading (a missing
        data folder, an unknown model name); ``file: message`` without a key."""
        if not key:
            return f"{self.path}: {message}"
        line = _line_for(self.lines, _key_tuple(key)) if self.lines else None
        where = f"{self.path}{f':{line}' if line else ''}"
        return f"{where}: {message}" if message.startswith(key) else f"{where}: {key}: {message}"


def read_recipe_text(path: Path) -> str:
    """The recipe file's text: UTF-8, no NUL bytes, at most ``MAX_RECIPE_BYTES``."""
    try:
        if not path.is_file():
            what = "is a folder, not a recipe file" if path.is_dir() else "recipe file not found"
            raise RecipeError(path, [Problem("", what, None)])
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError(path, [Problem("", f"{size} bytes: too large for a recipe "
                                                 f"(at most {MAX_RECIPE_BYTES}); is this the right file?", None)])
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(path, [Problem("", f"cannot read it: {exc.strerror or exc}", None)]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError(path, [Problem("", f"not UTF-8 text (byte {exc.start} cannot be decoded); a recipe is "
                                             f"a YAML text file", raw[:exc.start].count(b"\n") + 1)]) from None
    if "\x00" in text:
        raise RecipeError(path, [Problem("", "holds NUL bytes: a binary file, not a YAML recipe",
                                         text[:text.index("\x00")].count("\n") + 1)])
    return text


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> LoadedRecipe:
    path = Path(path)
    return parse_recipe(read_recipe_text(path), path, overrides, check_files)


def recipe_from_dict(data: dict, overrides: list[str] | None = None, check_files: bool = True,
                     label: str = "<recipe dict>") -> LoadedRecipe:
    """A recipe given as Python data (a notebook's dict), checked exactly like a file; errors
    name the key path (there are no lines)."""
    if not isinstance(data, dict):
        raise RecipeError(label, [Problem("", f"expected a mapping of recipe keys, got {type(data).__name__}", None)])
    data = _plain_data(data, (), label)
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError as exc:  # e.g. an object YAML cannot represent
        raise RecipeError(label, [Problem("", f"cannot be represented as plain data: {exc}", None)]) from None
    return parse_recipe(text, Path(label), overrides, check_files, lines_known=False)


def _plain_data(value, path: tuple, label: str):
    """A recipe dict as YAML-representable data: ``pathlib`` paths become strings (a notebook
    builds paths with them), tuples lists; any other object is an error naming its key."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)):
                raise RecipeError(label, [Problem(_keypath(path) or "(top level)",
                                                  f"key {k!r} is a {type(k).__name__}; keys are strings", None)])
            out[k] = _plain_data(v, path + (k,), label)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_data(v, path + (i,), label) for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise RecipeError(label, [Problem(_keypath(path), f"a {type(value).__name__} cannot be part of a recipe; use "
                                                      f"plain values (strings, numbers, lists, mappings)", None)])


def parse_recipe(text: str, path: Path, overrides: list[str] | None = None, check_files: bool = True,
                 lines_known: bool = True) -> LoadedRecipe:
    """Validate recipe text; ``path`` names it in errors (and in run.json)."""
    try:
        data, lines = parse_yaml(text)
    except (yaml.YAMLError, _DocumentTooLarge) as exc:
        raise RecipeError(path, [_yaml_problem(exc)]) from None
    if not lines_known:
        lines = {}
    if not isinstance(data, dict):
        raise RecipeError(path, [Problem("", "expected a mapping of recipe keys at the top level", 1)])
    data = copy.deepcopy(data)
    overridden = apply_overrides(data, overrides or [], path)
    line_of = lambda loc: None if any(loc[:len(o)] == o for o in overridden) else _line_for(lines, loc)  # noqa: E731
    nul = _find_nul(data)
    if nul is not None:
        raise RecipeError(path, [Problem(_keypath(nul), "contains a NUL character", line_of(nul))])
    try:
        json.dumps(data, allow_nan=True, default=str)
        nonfinite = _find_nonfinite(data)
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. a self-referencing alias
        raise RecipeError(path, [Problem("", f"cannot be represented as plain data: {exc}", None)]) from None
    if nonfinite is not None:
        raise RecipeError(path, [Problem(_keypath(nonfinite), "not a finite number (inf or nan); give a real value",
                                         line_of(nonfinite))])

    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(path, _pydantic_problems(err, (), lines, overridden)) from None

    problems: list[Problem] = []
    # Stage parameters, against each strategy's own schema.
    strategies: list[Any] = []
    for i, stage in enumerate(recipe.stages):
        strategies.append(None)
        try:
            cls = registry.get(stage.strategy)
        except (registry.UnknownStrategy, registry.StrategyImportError) as exc:
            problems.append(Problem(f"stages.{i}.strategy", str(exc), line_of(("stages", i, "strategy"))))
            continue
        try:
            strategies[-1] = cls(cls.Params.model_validate(stage.params))
        except ValidationError as err:
            problems += _pydantic_problems(err, ("stages", i, "params"), lines, overridden)
        except Exception as exc:  # a plugin's validator or constructor failing in its own code
            problems.append(Problem(f"stages.{i}.params", f"{stage.strategy} rejected its parameters: "
                                                          f"{type(exc).__name__}: {exc}",
                                    line_of(("stages", i, "params"))))
    problems += _format_problems(recipe, strategies, line_of)
    # Evaluation and report sections belong to the evaluation suite.
    for section in ("evaluate", "report"):
        if getattr(recipe, section) is not None:
            from compresso.evaluation import config as eval_config

            schema = eval_config.EvaluateConfig if section == "evaluate" else eval_config.ReportConfig
            try:
                schema.model_validate(getattr(recipe, section))
            except ValidationError as err:
                problems += _pydantic_problems(err, (section,), lines, overridden)
    # The student must name a teacher or a model that exists.
    names = [t.name for t in recipe.teachers]
    if recipe.student.model not in names and not _looks_like_hub_id(recipe.student.model) \
            and not Path(recipe.student.model).expanduser().exists():
        problems.append(Problem("student.model",
                                f"{recipe.student.model!r} is neither a teacher name ({', '.join(names) or 'no teachers'}),"
                                f" an existing folder, nor a hub id", line_of(("student", "model"))))
    from compresso.models import is_local

    for i, t in enumerate(recipe.teachers):
        if t.model is not None and not is_local(t.model) and not _looks_like_hub_id(t.model):
            problems.append(Problem(f"teachers.{i}.model",
                                    f"{t.model!r} is neither an existing folder nor a hub id (name or owner/name)",
                                    line_of(("teachers", i, "model"))))
    if check_files:
        for i, t in enumerate(recipe.teachers):
            if t.model is not None and is_local(t.model) and not (Path(t.model).expanduser() / "config.json").is_file():
                what = "does not exist" if not Path(t.model).expanduser().exists() else "holds no config.json"
                problems.append(Problem(f"teachers.{i}.model", f"local model folder {t.model} {what}",
                                        line_of(("teachers", i, "model"))))
    if problems:
        raise RecipeError(path, problems)
    kept = {loc: n for loc, n in lines.items() if not any(loc[:len(o)] == o for o in overridden)}
    return LoadedRecipe(recipe=recipe, path=path, raw=data, lines=kept)


def saved_format(ref: str) -> str:
    """The format of a model reference: a local folder's ``compresso.json`` says, else transformers."""
    meta = Path(ref).expanduser() / "compresso.json"
    try:
        fmt = json.loads(meta.read_text()).get("format", "transformers") if meta.is_file() else "transformers"
    except (OSError, ValueError, AttributeError):
        return "transformers"
    return fmt if isinstance(fmt, str) else "transformers"


def _format_problems(recipe: Recipe, strategies: list, line_of) -> list[Problem]:
    """Walk the stage chain with each strategy's declared input and output formats, so that a
    stage that would refuse its input is found before any stage runs."""
    problems: list[Problem] = []
    outputs: list[str | None] = []
    student = recipe.student_ref()[0]
    for i, (stage, strategy) in enumerate(zip(recipe.stages, strategies)):
        if stage.input is None:
            source = (recipe.stage_dirname(i - 1), outputs[i - 1]) if i else ("the student", saved_format(student))
        elif stage.input == "student":
            source = ("the student", saved_format(student))
        elif (j := recipe.stage_index(stage.input, before=i)) is not None:
            source = (recipe.stage_dirname(j), outputs[j])
        else:
            source = (f"teacher {stage.input}", saved_format(recipe.teacher(stage.input).model))  # a model teacher
        where, fmt = source
        if strategy is None or fmt is None:
            outputs.append(None)
            continue
        accepted = type(strategy).accepts_formats
        if accepted is not None and fmt not in accepted:
            problems.append(Problem(
                f"stages.{i}.strategy",
                f"{stage.strategy} takes models in the format(s) {', '.join(sorted(accepted))}, but its input "
                f"({where}) is in the {fmt!r} format", line_of(("stages", i, "strategy"))))
            outputs.append(None)
            continue
        try:
            outputs.append(strategy.output_format(fmt))
        except Exception as exc:  # a plugin's own code: report, do not crash validation
            problems.append(Problem(f"stages.{i}.strategy", f"{stage.strategy}.output_format failed: "
                                                            f"{type(exc).__name__}: {exc}",
                                    line_of(("stages", i, "strategy"))))
            outputs.append(None)
    return problems


_HUB_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def _looks_like_hub_id(ref: str) -> bool:
    """The form of a Hugging Face Hub id (``name`` or ``owner/name``); checked without the network."""
    return bool(_HUB_ID.fullmatch(ref)) and ".." not in ref and "--" not in ref
