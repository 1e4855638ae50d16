"""Recipes: YAML in, typed and validated objects out, with errors that point at lines.

Everything is checked before anything runs: the recipe's own keys, every stage's parameters
against its strategy's schema, the ``evaluate``/``report`` sections, and that every local file
named exists. Relative paths are resolved against the current working directory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compresso import registry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TeacherSpec(_Strict):
    name: str = Field(description="Short name used in reports and by `student.model`.")
    model: str = Field(description="Hub id or local folder.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")


class StudentSpec(_Strict):
    model: str = Field(description="The model the first stage starts from: a teacher's name, a hub id or a folder.")
    revision: str | None = None
    config: dict[str, Any] | None = Field(
        None, description="Config overrides; when given, the student is built from the (overridden) config "
                          "with fresh random weights instead of the pretrained ones.")


class StageSpec(_Strict):
    strategy: str
    name: str | None = Field(None, description="Stage folder name; defaults to the strategy name.")
    input: str | None = Field(
        None, description="What this stage starts from: an earlier stage's name, a teacher's name, or "
                          "'student' (the recipe's student). Default: the previous stage's output.")
    params: dict[str, Any] = Field(default_factory=dict)


class Recipe(_Strict):
    name: str
    seed: int = 42
    output_dir: str
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    trust_remote_code: bool = False
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
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _stage_inputs(self):
        seen: set[str] = set()
        names = [t.name for t in self.teachers]
        for i, stage in enumerate(self.stages):
            if stage.input is not None and stage.input not in seen | set(names) | {"student"}:
                raise ValueError(
                    f"stages.{i}.input: {stage.input!r} is not an earlier stage ({', '.join(sorted(seen)) or 'none'}), "
                    f"a teacher ({', '.join(names) or 'none'}) or 'student'")
            seen |= {self.stage_dirname(i), stage.name or stage.strategy}
        return self

    def stage_matches(self, index: int, name: str) -> bool:
        """Whether ``name`` refers to stage ``index``: its folder (NN-name), name or strategy."""
        stage = self.stages[index]
        return name in (self.stage_dirname(index), stage.name, stage.strategy)

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

    def stage_dirname(self, index: int) -> str:
        stage = self.stages[index]
        return f"{index:02d}-{stage.name or stage.strategy}"


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


def _line_map(text: str) -> dict[tuple, int]:
    """Map each key path (tuple of keys/indices) to the 1-based line where it appears."""
    lines: dict[tuple, int] = {}

    def walk(node, path: tuple):
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


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
        node = data
        for i, part in enumerate(parts[:-1]):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                raise RecipeError(path, [Problem(key, f"--set: {_keypath(tuple(parts[:i + 1]))} "
                                                      f"does not exist in the recipe", None)]) from None
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except (IndexError, TypeError):
            raise RecipeError(path, [Problem(key, "--set: cannot set this key", None)]) from None
        touched.add(tuple(parts))
    return touched


def _pydantic_problems(err: ValidationError, prefix: tuple, lines, overridden) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("value_error",):
            msg = f"{msg} (got {e['input']!r})"
        line = None if any(loc[:len(o)] == o for o in overridden) else _line_for(lines, loc)
        out.append(Problem(_keypath(loc), msg + (" [from --set]" if line is None and overridden else ""), line))
    return out


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    raw: dict
    """The resolved recipe as plain data (after overrides), recorded in run.json."""


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> LoadedRecipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(path, [Problem("", "recipe file not found", None)])
    return parse_recipe(path.read_text(), path, overrides, check_files)


def recipe_from_dict(data: dict, overrides: list[str] | None = None, check_files: bool = True,
                     label: str = "<recipe dict>") -> LoadedRecipe:
    """A recipe given as Python data (a notebook's dict), checked exactly like a file; errors
    name the key path (there are no lines)."""
    if not isinstance(data, dict):
        raise RecipeError(label, [Problem("", f"expected a mapping of recipe keys, got {type(data).__name__}", None)])
    return parse_recipe(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), Path(label), overrides,
                        check_files, lines_known=False)


def parse_recipe(text: str, path: Path, overrides: list[str] | None = None, check_files: bool = True,
                 lines_known: bool = True) -> LoadedRecipe:
    """Validate recipe text; ``path`` names it in errors (and in run.json)."""
    try:
        data = yaml.safe_load(text)
        lines = _line_map(text) if lines_known else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RecipeError(path, [Problem("", f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                         mark.line + 1 if mark else None)]) from None
    if not isinstance(data, dict):
        raise RecipeError(path, [Problem("", "expected a mapping of recipe keys at the top level", 1)])
    data = copy.deepcopy(data)
    overridden = apply_overrides(data, overrides or [], path)
    line_of = lambda loc: None if any(loc[:len(o)] == o for o in overridden) else _line_for(lines, loc)  # noqa: E731

    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(path, _pydantic_problems(err, (), lines, overridden)) from None

    problems: list[Problem] = []
    # Stage parameters, against each strategy's own schema.
    for i, stage in enumerate(recipe.stages):
        try:
            cls = registry.get(stage.strategy)
        except (registry.UnknownStrategy, registry.StrategyImportError) as exc:
            problems.append(Problem(f"stages.{i}.strategy", str(exc), line_of(("stages", i, "strategy"))))
            continue
        try:
            cls.Params.model_validate(stage.params)
        except ValidationError as err:
            problems += _pydantic_problems(err, ("stages", i, "params"), lines, overridden)
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
    if check_files:
        from compresso.models import is_local

        for i, t in enumerate(recipe.teachers):
            if is_local(t.model) and not (Path(t.model).expanduser() / "config.json").is_file():
                what = "does not exist" if not Path(t.model).expanduser().exists() else "holds no config.json"
                problems.append(Problem(f"teachers.{i}.model", f"local model folder {t.model} {what}",
                                        line_of(("teachers", i, "model"))))
    if problems:
        raise RecipeError(path, problems)
    return LoadedRecipe(recipe=recipe, path=path, raw=data)


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not ref.startswith((".", "/", "~"))
