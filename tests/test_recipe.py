"""Recipe validation: good recipes load into typed objects, bad ones name file, line and key."""

import sys
import textwrap

import pytest

from compresso import registry
from compresso.recipe import RecipeError, load_recipe
from tests.tiny import STRATEGIES_SOURCE, install_distribution, tiny_bert


@pytest.fixture()
def plugin_path(tmp_path, monkeypatch):
    root = install_distribution(tmp_path / "site", "compresso-test-strategies", {"engine_test_strategies": STRATEGIES_SOURCE},
                                {"keep_layers": "engine_test_strategies:KeepLayers"})
    monkeypatch.syspath_prepend(str(root))
    registry.discover.cache_clear()
    yield root
    sys.modules.pop("engine_test_strategies", None)
    registry.discover.cache_clear()


@pytest.fixture()
def model_dir(tmp_path):
    return tiny_bert(tmp_path / "tiny")


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
name: demo
seed: 3
output_dir: {out}
teachers:
  - name: big
    model: {model}
student:
  model: big
stages:
  - strategy: keep_layers
    params:
      layers: 2
"""


def test_good_recipe_loads_typed(tmp_path, plugin_path, model_dir):
    path = write(tmp_path, GOOD.format(out=tmp_path / "run", model=model_dir))
    loaded = load_recipe(path)
    r = loaded.recipe
    assert r.name == "demo" and r.seed == 3
    assert r.teachers[0].name == "big"
    assert r.student_ref() == (str(model_dir), None)
    assert r.stages[0].params == {"layers": 2}
    assert r.stage_dirname(0) == "00-keep_layers"


def problems(exc_info):
    return [(p.key, p.line, p.message) for p in exc_info.value.problems]


def test_unknown_key_reports_line_and_path(tmp_path, plugin_path, model_dir):
    text = GOOD.format(out=tmp_path / "run", model=model_dir).replace("seed: 3", "seed: 3\nsed: 4")
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, text))
    assert ("sed", 3, "unknown key") in problems(exc)
    assert f"{tmp_path / 'recipe.yaml'}:3: sed: unknown key" in str(exc.value)


def test_wrong_type_and_missing_key(tmp_path, plugin_path, model_dir):
    text = GOOD.format(out=tmp_path / "run", model=model_dir).replace("seed: 3", "seed: three")
    text = text.replace("name: demo\n", "")
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, text))
    found = problems(exc)
    assert any(k == "seed" and line == 1 and "integer" in m and "three" in m for k, line, m in found)
    assert any(k == "name" and "required" in m for k, _, m in found)


def test_unknown_strategy_lists_available(tmp_path, plugin_path, model_dir):
    text = GOOD.format(out=tmp_path / "run", model=model_dir).replace("strategy: keep_layers", "strategy: shrinkify")
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, text))
    (key, line, message), = problems(exc)
    assert key == "stages.0.strategy" and line == 10
    assert "unknown strategy 'shrinkify'" in message and "keep_layers" in message


def test_bad_strategy_parameter(tmp_path, plugin_path, model_dir):
    text = GOOD.format(out=tmp_path / "run", model=model_dir).replace("layers: 2", "layers: 0\n      colour: red")
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, text))
    found = problems(exc)
    assert ("stages.0.params.colour", 13, "unknown key") in found
    assert any(k == "stages.0.params.layers" and line == 12 and "greater than or equal to 1" in m for k, line, m in found)


def test_missing_teacher_folder(tmp_path, plugin_path):
    path = write(tmp_path, GOOD.format(out=tmp_path / "run", model=tmp_path / "nowhere"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    (key, line, message), = problems(exc)
    assert key == "teachers.0.model" and line == 6 and "does not exist" in message


def test_student_must_name_a_teacher_or_model(tmp_path, plugin_path, model_dir):
    text = GOOD.format(out=tmp_path / "run", model=model_dir).replace("model: big", "model: ./no/such/dir")
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, text))
    assert problems(exc)[0][0] == "student.model"


def test_invalid_yaml_points_at_line(tmp_path):
    path = write(tmp_path, "name: x\nstages: [\n  - a: b\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert "not valid YAML" in str(exc.value)
    assert problems(exc)[0][1] is not None


def test_set_overrides(tmp_path, plugin_path, model_dir):
    path = write(tmp_path, GOOD.format(out=tmp_path / "run", model=model_dir))
    loaded = load_recipe(path, ["stages.0.params.layers=3", "seed=9", "output_dir=elsewhere"])
    assert loaded.recipe.stages[0].params["layers"] == 3 and loaded.recipe.seed == 9
    assert loaded.recipe.output_dir == "elsewhere"
    with pytest.raises(RecipeError) as exc:
        load_recipe(path, ["stages.0.params.layers=zero"])
    (key, line, message), = problems(exc)
    assert key == "stages.0.params.layers" and line is None and "[from --set]" in message
    with pytest.raises(RecipeError, match="stages.5 does not exist"):
        load_recipe(path, ["stages.5.params.layers=3"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(path, ["seed"])


def test_duplicate_teacher_names(tmp_path, plugin_path, model_dir):
    text = GOOD.format(out=tmp_path / "run", model=model_dir).replace(
        "student:", f"  - name: big\n    model: {model_dir}\nstudent:")
    with pytest.raises(RecipeError, match="repeated: big"):
        load_recipe(write(tmp_path, text))
