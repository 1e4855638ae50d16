"""The ``compresso`` command line: a thin layer over recipe, registry and engine.

Exit codes: 0 success, 2 bad input (recipe, parameters, models that cannot be had, output folder
refused or in use), 1 a failure while running, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compresso import __version__, registry

console = Console(stderr=False)
err_console = Console(stderr=True)


class LazyGroup(click.Group):
    """Imports heavy subcommands (the evaluation suite) only when they are used."""

    def invoke(self, ctx):
        # click would turn Ctrl-C into "Aborted!" with exit 1; compresso's convention is 130.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            sys.exit(130)

    lazy = {"evaluate": "compresso.evaluation.cli:evaluate", "report": "compresso.evaluation.merge:report"}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib

            module, attr = self.lazy[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                error = f"{type(exc).__name__}: {exc}"

                @click.command(name, help=f"(unavailable: {error})", context_settings={"ignore_unknown_options": True})
                @click.argument("args", nargs=-1, type=click.UNPROCESSED)
                def unavailable(args):
                    _bad_input(f"`compresso {name}` cannot load: {error}. "
                               f"Install the extras with: pip install -e \".[all]\" -c constraints.txt")

                return unavailable
        return super().get_command(ctx, name)


def _bad_input(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    sys.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="compresso")
def main() -> None:
    """Make BERT-family encoders smaller and faster: multi-teacher distillation, INT8
    quantization and structured pruning, run from YAML recipes.

    \b
    Examples:
      compresso strategies
      compresso validate recipes/quickstart.yaml
      compresso apply recipes/quickstart.yaml
      compresso apply recipes/distilmulti_ro.yaml --set stages.0.params.max_steps=10
      compresso evaluate runs/quickstart/00-distill --tasks upos,sapn
    """
    # compresso draws its own progress bars; transformers' per-file loading bars only add noise.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@main.command()
def strategies() -> None:
    """List installed strategies (built-in and plugins) with their source distribution.

    A strategy whose module fails to import is listed with its error; the others still work.
    """
    table = Table(title="compresso strategies (entry-point group compresso.strategies)")
    for col in ("name", "version", "distribution", "summary"):
        table.add_column(col)
    broken = 0
    for name, entry in sorted(registry.discover().items()):
        if entry.cls is None:
            broken += 1
            table.add_row(f"[red]{escape(name)}[/red]", entry.version, entry.distribution,
                          f"[red]failed to load: {escape(entry.error or '')}[/red]")
        else:
            table.add_row(f"[bold]{escape(name)}[/bold]", entry.version, entry.distribution, escape(entry.summary))
    console.print(table)
    if broken:
        console.print(f"[yellow]{broken} strategy(ies) failed to load; the others are usable.[/yellow]")


_set_option = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                           help="Override a recipe value (YAML-parsed), e.g. --set stages.0.params.max_steps=10. Repeatable.")


def _load(recipe_path: str, overrides: tuple[str, ...]):
    from compresso.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe_path, list(overrides))
    except RecipeError as exc:
        _bad_input(str(exc))


def _runner(recipe: str, loaded, network: bool, **kwargs):
    """A Runner with every pre-run check done (output folder, models, strategies' preflight,
    evaluation names and data), or exit 2."""
    from compresso.engine import Runner, RunError
    from compresso.evaluation import EvaluationError
    from compresso.models import ModelLoadError
    from compresso.strategy import StrategyError

    try:
        runner = Runner(loaded, console=console, **kwargs)
        runner.preflight(network=network)
    except (RunError, ModelLoadError, StrategyError, EvaluationError) as exc:
        _bad_input(f"{recipe}: {exc}")
    return runner


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), help="Overrides the recipe's output_dir.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (overrides the recipe).")
@_set_option
def validate(recipe: str, output_dir: str | None, device: str | None, overrides: tuple[str, ...]) -> None:
    """Check a recipe without running anything: every check `apply` makes before work starts
    (output folder, local models, corpora, device, evaluation names and data), except asking the
    Hugging Face Hub whether hub ids exist. No network, nothing written.

    \b
    Example:
      compresso validate recipes/distilmulti_ro.yaml --set seed=1
    """
    loaded = _load(recipe, overrides)
    _runner(recipe, loaded, network=False, output_dir=output_dir, device=device)
    r = loaded.recipe
    table = Table(title=f"{recipe}: {r.name} — valid")
    table.add_column("stage")
    table.add_column("strategy")
    table.add_column("params")
    for i, stage in enumerate(r.stages):
        table.add_row(r.stage_dirname(i), stage.strategy,
                      ", ".join(f"{k}={v}" for k, v in stage.params.items()) or "(defaults)")
    console.print(table)
    console.print(f"teachers: {', '.join(f'{t.name} ({t.model})' for t in r.teachers) or 'none'}")
    console.print(f"student starts from: {r.student.model}; output: {r.output_dir}; "
                  f"evaluate: {'yes' if r.evaluate is not None else 'no'}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), help="Overrides the recipe's output_dir.")
@click.option("--resume", is_flag=True, help="Continue the run in the output folder (fails if there is none).")
@click.option("--force", is_flag=True, help="Rerun every stage, ignoring finished stages and checkpoints.")
@click.option("--from-stage", metavar="NAME", help="Rerun from this stage on (NN-name, name or strategy).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (overrides the recipe).")
@_set_option
def apply(recipe: str, output_dir: str | None, resume: bool, force: bool, from_stage: str | None,
          device: str | None, overrides: tuple[str, ...]) -> None:
    """Run a recipe: each stage on the previous stage's output, then evaluation and reports.

    Finished stages whose inputs and parameters are unchanged are skipped; an interrupted
    stage resumes from its checkpoints. Each stage lands in OUTPUT_DIR/NN-stage/ as a
    save_pretrained folder plus stage.json; OUTPUT_DIR/run.json records the whole run.

    \b
    Examples:
      compresso apply recipes/quickstart.yaml
      compresso apply recipes/distill_int8.yaml -o runs/try1 --set stages.0.params.max_steps=50
      compresso apply recipes/distilmulti_ro.yaml --resume
      compresso apply recipes/distill_int8.yaml --from-stage quantize
    """
    from compresso.engine import Interrupted, RunError, summary_table
    from compresso.evaluation import EvaluationError
    from compresso.strategy import StageFailure, StrategyError

    def on_sigterm(signum, frame):
        raise Interrupted(signum)

    # SIGTERM (a scheduler's or `kill`'s stop) ends the run like Ctrl-C: run.json says interrupted.
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        loaded = _load(recipe, overrides)
        runner = _runner(recipe, loaded, network=True, output_dir=output_dir, device=device, force=force,
                         resume=resume, from_stage=from_stage)
        try:
            result = runner.run()
        except (RunError, StrategyError) as exc:
            # Bad input found while running (the folder is in use, a strategy refused its input):
            # finished stages stay, nothing is half-written under a stage's name.
            _bad_input(f"{recipe}: {exc}")
        except (StageFailure, EvaluationError) as exc:
            err_console.print(f"[bold red]error:[/bold red] {escape(f'{recipe}: {exc}')}", highlight=False)
            err_console.print(f"[dim]{escape(str(runner.out / 'run.json'))} records the failure; fix the cause and "
                              f"run the same command again to resume.[/dim]")
            sys.exit(1)
        except (KeyboardInterrupt, Interrupted) as exc:
            hint = ["compresso", "apply", recipe, "-o", str(runner.out), "--resume"]
            hint += [f"--device={device}"] if device else []
            for item in overrides:
                hint += ["--set", item]
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped by SIGTERM"
            err_console.print(f"[yellow]{what}; checkpoints are kept. To continue: {escape(shlex.join(hint))}[/yellow]",
                              highlight=False, soft_wrap=True)
            sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM)
    except Interrupted:
        err_console.print("[yellow]stopped by SIGTERM before the run started; nothing was written[/yellow]")
        sys.exit(128 + signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if runner.is_main:
        console.print(summary_table(result))
        console.print(f"done in {result.seconds:.1f}s → {result.output_dir}")


if __name__ == "__main__":
    main()
