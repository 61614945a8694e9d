"""``yap classifier train`` and ``yap classifier eval``.

Settings come from the same place as the server's ([core] in plugins.toml or
the environment): YAP_CACHE_DIR, TOOL_MODEL, TOOL_DECISION_THRESHOLD,
TOOL_HISTORY_TOKENS, TOOL_DTYPE, TOOL_CUDA_GRAPHS.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import msgspec
from yap_core.settings import Config, CoreSettings, SettingsError


def _settings() -> CoreSettings:
    try:
        return Config.discover().section("core", CoreSettings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("classifier")
def classifier_group() -> None:
    """Screenshot-intent classifier: build the default model, evaluate a model."""


@classifier_group.command("train")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder to write the model to. Default: the cache ($YAP_CACHE_DIR/classifier/<key>).")
@click.option("--force", is_flag=True, help="Train even if the model is already built.")
def train_command(out: Path | None, force: bool) -> None:
    """Fine-tune the bundled MiniLM encoder on the project's data set."""
    from tqdm import tqdm

    from yap_classifier import train

    settings = _settings()
    recipe = train.Recipe()
    target = out or train.default_model_dir(train.default_cache_dir(settings.yap_cache_dir), recipe)
    if train.is_built(target) and not force:
        click.echo(f"already built: {target} (use --force to train again)")
        return
    started = time.perf_counter()
    with tqdm(desc="training", unit="step", file=sys.stderr) as bar:

        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        train.build(target, recipe=recipe, force=force, on_step=on_step)
    click.echo(f"built {target} in {time.perf_counter() - started:.0f}s")


@classifier_group.command("eval")
@click.option("--model", "model_path", help="Model folder or hub id. Default: TOOL_MODEL, else the built default.")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSONL: {history, utterance, label} per line.")
def eval_command(model_path: str | None, data_path: Path) -> None:
    """Print one JSON object: accuracy, precision, recall, f1, n, p50_ms, p95_ms, dtype, cuda_graphs."""
    from yap_classifier import train
    from yap_classifier.evaluate import evaluate
    from yap_classifier.examples import DataError, read_examples
    from yap_classifier.model import ModelError, SequenceClassifier

    settings = _settings()
    try:
        examples = read_examples(data_path)
    except DataError as exc:
        raise click.ClickException(str(exc)) from exc
    model_id = model_path or settings.tool_model
    if model_id is None:
        default = train.default_model_dir(train.default_cache_dir(settings.yap_cache_dir))
        if not train.is_built(default):
            raise click.ClickException(f"the default model is not built yet ({default}); run `yap classifier train`")
        model_id = str(default)
    try:
        # eval decides one example at a time: graphs for batch 1 only.
        model = SequenceClassifier.load(
            model_id,
            window_tokens=settings.tool_history_tokens,
            dtype=settings.tool_dtype,
            cuda_graphs=settings.tool_cuda_graphs,
            batch_size=1,
        )
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    report = evaluate(model, examples, threshold=settings.tool_decision_threshold)
    click.echo(msgspec.json.encode(report).decode())
