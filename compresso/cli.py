"""The ``compresso`` command line: a thin layer over recipe, registry and engine.

Exit codes: 0 success, 2 bad input (recipe, parameters, models that cannot be had, output folder
refused or in use), 1 a failure while running, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import shlex
import signal
import sys

import click
from rich.markup import escape
from rich.table import Table

from compresso import __version__
from compresso.console import configure, console, err_console, print_error


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
    # Shown by `compresso --help` without importing the commands (and torch with them).
    lazy_help = {"evaluate": "Fine-tune and score MODELs on the benchmark and custom tasks; report loyalty and "
                             "efficiency.",
                 "report": "Merge results.json files of evaluations run side by side into one report."}

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, self.lazy_help[name]))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

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
    print_error(message)
    sys.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="compresso")
@click.option("-q", "--quiet", "quiet", count=True, help="Only errors and the final result (no progress, no log lines).")
@click.option("-v", "--verbose", "verbose", count=True,
              help="More: Python log records at INFO from every logger (plugins' included) and transformers' warnings.")
def main(quiet: int, verbose: int) -> None:
    """Make BERT-family encoders smaller and faster: multi-teacher distillation, INT8
    quantization and structured pruning, run from YAML recipes.

    \b
    Examples:
      compresso strategies
      compresso validate recipes/quickstart.yaml
      compresso apply recipes/quickstart.yaml
      compresso apply recipes/distilmulti_ro.yaml --set stages.0.params.max_steps=10
      compresso evaluate runs/quickstart/00-distill --tasks upos,sapn
      compresso -q apply recipes/quickstart.yaml --no-eval
    """
    if quiet and verbose:
        _bad_input("-q and -v contradict each other; pick one")
    configure(-1 if quiet else (1 if verbose else 0))


@main.command()
@click.argument("name", required=False)
def strategies(name: str | None) -> None:
    """List installed strategies (built-in and plugins) with their source distribution; with
    NAME, that strategy's parameters with their types, defaults and descriptions.

    A strategy whose module fails to import is listed with its error; the others still work.

    \b
    Examples:
      compresso strategies
      compresso strategies distill
    """
    from compresso import registry

    if name is not None:
        _describe_strategy(name)
        return
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


def _describe_strategy(name: str) -> None:
    from compresso import registry
    from compresso.registry import parameter_rows

    try:
        entry = registry.entry(name)  # plain or name@distribution
    except (registry.UnknownStrategy, registry.StrategyImportError) as exc:
        _bad_input(str(exc))
    cls = entry.cls
    console.print(f"[bold]{escape(name)}[/bold] — {escape(cls.summary)}", highlight=False)
    console.print(f"{escape(entry.distribution)} {escape(entry.version)} · {escape(entry.target)} · "
                  f"{escape(registry.source_file(cls) or '?')}", highlight=False)
    if cls.__doc__:
        console.print(escape(" ".join(cls.__doc__.split())), highlight=False)
    table = Table(title=f"parameters of {name} (stages.N.params)")
    for col in ("parameter", "type", "default", "description"):
        table.add_column(col)
    for row in parameter_rows(cls.Params):
        table.add_row(*(escape(c) for c in row))
    console.print(table)


def _warn_broken_plugins() -> None:
    """Name installed strategies that failed to load: a broken set-up must not look like a clean one."""
    from compresso import registry

    for entry in registry.broken():
        print_error(f"installed strategy {entry.name!r} ({entry.distribution}) failed to load: {entry.error}; "
                    f"`compresso strategies` lists every strategy", label="warning:", style="bold yellow")


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
    from compresso import api
    from compresso.engine import RunError
    from compresso.evaluation import EvaluationError
    from compresso.models import ModelLoadError
    from compresso.strategy import StrategyError

    try:
        runner = api.prepare(loaded, console=console, **kwargs)
        runner.preflight(network=network)
    except (RunError, ModelLoadError, StrategyError, EvaluationError) as exc:
        _bad_input(loaded.locate(getattr(exc, "recipe_key", None), str(exc)))
    return runner


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), help="Overrides the recipe's output_dir.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (overrides the recipe).")
@click.option("--online", is_flag=True, help="Also ask the Hugging Face Hub whether the recipe's hub ids exist "
                                             "(as apply does first).")
@_set_option
def validate(recipe: str, output_dir: str | None, device: str | None, online: bool, overrides: tuple[str, ...]) -> None:
    """Check a recipe without running anything: every check `apply` makes before work starts
    (output folder, local models, corpora, device, evaluation names and data), except asking the
    Hugging Face Hub whether hub ids exist (their form is checked; --online asks). No network,
    nothing written.

    \b
    Example:
      compresso validate recipes/distilmulti_ro.yaml --set seed=1
    """
    loaded = _load(recipe, overrides)
    _runner(recipe, loaded, network=online, output_dir=output_dir, device=device)
    r = loaded.recipe
    # Everything from the recipe is user text: escaped, so that "[/bold]" in a name prints as written.
    table = Table(title=escape(f"{recipe}: {r.name} — valid"))
    table.add_column("stage")
    table.add_column("strategy")
    table.add_column("params")
    for i, stage in enumerate(r.stages):
        table.add_row(escape(r.stage_dirname(i)), escape(stage.strategy),
                      escape(", ".join(f"{k}={v}" for k, v in stage.params.items()) or "(defaults)"))
    console.print(table)
    teachers = [f"{t.name} ({t.model if t.model is not None else 'stage ' + t.stage})" for t in r.teachers]
    console.print(escape(f"teachers: {', '.join(teachers) or 'none'}"))
    console.print(escape(f"student starts from: {r.student.model}; output: {output_dir or r.output_dir}; "
                         f"evaluate: {'yes' if r.evaluate is not None else 'no'}"))
    from compresso.models import is_local

    hub = sorted({ref for ref in [t.model for t in r.teachers if t.model] + [r.student_ref()[0]] if not is_local(ref)})
    if hub and not online:
        console.print(f"[dim]not contacted (validate stays offline; apply checks them first): "
                      f"{escape(', '.join(hub))}[/dim]")
    _warn_broken_plugins()


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), help="Overrides the recipe's output_dir.")
@click.option("--resume", is_flag=True, help="Continue the run in the output folder (fails if there is none).")
@click.option("--force", is_flag=True, help="Rerun every stage, ignoring finished stages and checkpoints.")
@click.option("--from-stage", metavar="NAME", help="Rerun from this stage on (NN-name, name or strategy).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (overrides the recipe).")
@click.option("--no-eval", "no_eval", is_flag=True,
              help="Skip the recipe's evaluate: section (stages and model cards only).")
@_set_option
def apply(recipe: str, output_dir: str | None, resume: bool, force: bool, from_stage: str | None,
          device: str | None, no_eval: bool, overrides: tuple[str, ...]) -> None:
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
      compresso apply recipes/quickstart.yaml --no-eval
    """
    from compresso import api
    from compresso.engine import Interrupted, RunError, summary_table
    from compresso.evaluation import EvaluationError
    from compresso.models import ModelLoadError
    from compresso.strategy import StageFailure, StrategyError

    def on_sigterm(signum, frame):
        raise Interrupted(signum)

    # SIGTERM (a scheduler's or `kill`'s stop) ends the run like Ctrl-C: run.json says interrupted.
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        loaded = _load(recipe, overrides)
        runner = _runner(recipe, loaded, network=True, output_dir=output_dir, device=device, force=force,
                         resume=resume, from_stage=from_stage, evaluate=not no_eval)
        try:
            result = api.finish(runner)
        except (RunError, StrategyError, ModelLoadError) as exc:
            # Bad input found while running (the folder is in use, a strategy refused its input):
            # finished stages stay, nothing is half-written under a stage's name.
            _bad_input(loaded.locate(getattr(exc, "recipe_key", None), str(exc)))
        except (StageFailure, EvaluationError, OSError) as exc:
            # OSError: the disk filled up, a folder became unwritable... the run is resumable.
            message = f"{exc.strerror or exc} ({exc.filename})" if isinstance(exc, OSError) and exc.filename \
                else str(exc)
            print_error(f"{recipe}: {type(exc).__name__ + ': ' if isinstance(exc, OSError) else ''}{message}")
            print_error(f"{runner.out / 'run.json'} records the failure; fix the cause and run the same command "
                        f"again to resume.", label="", style="dim")
            sys.exit(1)
        except (KeyboardInterrupt, Interrupted) as exc:
            hint = ["compresso", "apply", recipe, "-o", str(runner.out), "--resume"]
            hint += [f"--device={device}"] if device else []
            hint += ["--no-eval"] if no_eval else []
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
        # printed even with -q: the one line a script needs
        click.echo(f"done in {result.seconds:.1f}s → {result.output_dir}")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--revision", help="Branch to push to (default: main).")
@click.option("--message", "commit_message", help="Commit message.")
def publish(folder: str, repo_id: str, private: bool, revision: str | None, commit_message: str | None) -> None:
    """Upload a stage folder (weights, tokenizer, model card README.md) to the Hugging Face Hub.

    Uses huggingface_hub with the token you are logged in with (`hf auth login`, or HF_TOKEN).

    \b
    Example:
      compresso publish runs/quickstart/00-distill my-user/ro-bert-small-distilled --private
    """
    from compresso import api

    try:
        url = api.publish(folder, repo_id, private=private, revision=revision, commit_message=commit_message)
    except FileNotFoundError as exc:
        _bad_input(str(exc))
    except ImportError as exc:
        _bad_input(f"publishing needs huggingface_hub: pip install -e \".[hub]\" ({exc})")
    except Exception as exc:  # no network, a refused token, the hub saying no: one line, never a traceback
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        try:
            from huggingface_hub import get_token

            token = get_token()
        except Exception:
            token = None
        if token:  # the token is never printed, whatever the error quotes
            detail = detail.replace(token, "***")
        print_error(f"publishing {folder} to {repo_id} failed: {detail}. Check the network connection and that "
                    f"you are logged in (`hf auth login`, or HF_TOKEN); HF_HUB_OFFLINE must not be set")
        sys.exit(1)
    click.echo(url)


if __name__ == "__main__":
    main()
