"""A seeded recipe fuzzer: a few hundred mutations of every shipped recipe (its keys and values, its
text, and the student's model configuration), each validated in
process the way `compresso validate` does it (recipe loader, then every pre-run check of the
engine). Every outcome must be "valid" or a clean bad-input error (exit 2); never another
exception (a traceback), and nothing may be written anywhere."""

import copy
import math
import random
import zlib
from pathlib import Path

import pytest
import yaml

from compresso.engine import Runner, RunError
from compresso.evaluation import EvaluationError
from compresso.models import ModelLoadError
from compresso.recipe import RecipeError, load_recipe
from compresso.strategy import StrategyError
from tests.test_eval_data import small_release
from tests.tiny import WORDS, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
MUTATIONS = 300
BAD_INPUT = (RecipeError, RunError, ModelLoadError, StrategyError, EvaluationError)

HOSTILE = [None, True, False, -1, 0, 1, 2**64, -2**63, 1e308, math.inf, -math.inf, math.nan, "", " ", "x/../../victim",
           "../..", "/", ".", "~", "a\x00b", "\x1b[31m", "ä" * 3, "x" * 5000, [], {}, [1, [2, [3]]], {"k": "v"},
           "cuda:99", "tpu", "auto", "student", "distill", "quantize", "prune", "00-distill", "bert-cased",
           "../shared/corpus/none.txt", "[", "{a: 1}", "1e-4", "yes"]
TEXT_NOISE = ["[", "]", "{", "}", ": ", "- ", "&a ", "*a", "*nowhere ", "<<: *a\n", "!!python/object/apply:os.system ['x']",
              "\t", "'", '"', "\\", "%YAML 1.1\n", "---\n", "...\n", "? ", "|\n", ">-\n", "\x00", "#", "\ufeff", "!!binary x"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Tiny stand-ins for ../shared, so that the fuzzed recipes exercise every check in CI."""
    root = tmp_path_factory.mktemp("fuzz_fixtures")
    teachers = root / "teachers"
    from transformers import BertConfig, BertForMaskedLM

    tok = tiny_tokenizer()
    for name in ("a", "b"):  # 512 positions, as the shipped recipes' teachers have
        BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=512)).save_pretrained(teachers / name)
        tok.save_pretrained(teachers / name)
    corpus = root / "corpus.txt"
    rng = random.Random(0)
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(3000)) + "\n")
    small_release(root / "data", with_train=True)
    return {"teachers": teachers, "corpus": corpus, "data": root / "data"}


def localise(value, fx, out: Path):
    """The recipe with ../shared paths replaced by the tiny fixtures."""
    if isinstance(value, dict):
        return {k: (str(out) if k == "output_dir" else localise(v, fx, out)) for k, v in value.items()}
    if isinstance(value, list):
        return [localise(v, fx, out) for v in value]
    if isinstance(value, str):
        if value.startswith("../shared/teachers/"):
            return str(fx["teachers"] / ("a" if "cased" in value and "uncased" not in value else "b"))
        if value.startswith("../shared/corpus/"):
            return str(fx["corpus"])
        if value.startswith("../shared/data"):
            return str(fx["data"])
    return value


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def mutate_data(data, rng: random.Random):
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        candidates = [p for p in paths(data) if p]
        if not candidates:
            break
        target = rng.choice(candidates)
        parent = data
        for part in target[:-1]:
            parent = parent[part]
        key = target[-1]
        op = rng.random()
        if op < 0.45:
            parent[key] = copy.deepcopy(rng.choice(HOSTILE))
        elif op < 0.6:
            del parent[key]
        elif op < 0.7 and isinstance(parent, dict):
            name = str(key)
            i = rng.randrange(len(name) + 1)
            parent[name[:i] + rng.choice("xs_") + name[i + 1:]] = parent.pop(key)
        elif op < 0.8 and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op < 0.9:
            parent[key] = [parent[key]]
        else:
            parent[key] = {"nested": parent[key]}
    return data


CONFIG_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "layer_norm_eps",
               "initializer_range", "hidden_dropout_prob", "attention_probs_dropout_prob", "vocab_size",
               "max_position_embeddings", "type_vocab_size", "hidden_act", "num_labels", "id2label",
               "torch_dtype", "architectures", "model_type", "no_such_setting", "_name_or_path", "__class__"]
CONFIG_VALUES = HOSTILE + [0, 1, 2, 3, 7, 16, 17, 1e-12, 1e300, -1e300, 0.5, 2**31, "gelu", "relu", "nope",
                           "bert", "float16", ["BertForMaskedLM"], {0: "a"}]


def mutate_student_config(data, rng: random.Random):
    """``student.config``: the model's own settings, overridden with odd keys and values."""
    data = copy.deepcopy(data)
    student = data.get("student")
    if not isinstance(student, dict):
        return data
    if rng.random() < 0.1:
        student["config"] = copy.deepcopy(rng.choice(HOSTILE))
    else:
        student["config"] = {rng.choice(CONFIG_KEYS): copy.deepcopy(rng.choice(CONFIG_VALUES))
                             for _ in range(rng.randint(1, 3))}
    return data


def mutate_text(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        op, i = rng.random(), rng.randrange(len(lines))
        if op < 0.25:
            del lines[i]
        elif op < 0.5:
            lines.insert(i, lines[i])  # often a duplicate key
        elif op < 0.85:
            j = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:j] + rng.choice(TEXT_NOISE) + lines[i][j:]
        else:
            lines = lines[:i]
    return "\n".join(lines)


def check(path: Path, out: Path) -> str:
    """'valid' or 'bad input'; anything else propagates and fails the test."""
    try:
        loaded = load_recipe(path)
        runner = Runner(loaded, output_dir=out if loaded.recipe.output_dir == str(out) else None)
        runner.preflight(network=False)
    except BAD_INPUT as exc:
        assert str(exc).strip(), "an error without a message"
        return "bad input"
    return "valid"


def snapshot(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.is_dir()) for p in root.rglob("*"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_fuzzed_recipes_are_valid_or_clean_errors(recipe, fixtures, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "out"
    base = localise(yaml.safe_load(recipe.read_text()), fixtures, out)
    base_text = yaml.safe_dump(base, sort_keys=False, allow_unicode=True)
    path = tmp_path / "fuzzed.yaml"
    path.write_text(base_text)
    loaded = load_recipe(path)  # the shipped recipe itself is valid (on the tiny fixtures)
    Runner(loaded, output_dir=out).preflight(network=False)
    before_fixtures = snapshot(fixtures["teachers"].parent)
    before_root = sorted(p.name for p in Path("/").iterdir())  # output_dir: / must not leave a run.json there
    rng = random.Random(zlib.crc32(recipe.name.encode()))
    outcomes = {"valid": 0, "bad input": 0}
    for n in range(MUTATIONS):
        op = rng.random()
        if op < 0.15:
            text = yaml.safe_dump(mutate_student_config(base, rng), sort_keys=False, allow_unicode=True)
        elif op < 0.5:
            text = yaml.safe_dump(mutate_data(base, rng), sort_keys=False, allow_unicode=True)
        else:
            text = mutate_text(base_text, rng)
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            outcomes[check(path, out)] += 1
        except Exception as exc:  # the point of the test: show the mutation that caused a traceback
            raise AssertionError(f"mutation {n} of {recipe.name} raised {type(exc).__name__}: {exc}\n"
                                 f"--- recipe ---\n{text}") from exc
    # Validation writes nothing: not the output folder, not the working directory, not the fixtures.
    assert not out.exists() and not any(work.iterdir())
    assert snapshot(fixtures["teachers"].parent) == before_fixtures
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "fuzzed.yaml"]
    assert sorted(p.name for p in Path("/").iterdir()) == before_root
    assert outcomes["bad input"] > 0 and sum(outcomes.values()) == MUTATIONS
