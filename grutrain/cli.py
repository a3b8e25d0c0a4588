"""The `grutrain` command: a thin Typer layer over plain functions.

No ML logic here. Functions return values or raise GrutrainError; only `main` turns errors
into a message on stderr and an exit code (0 ok, 1 bad input, 2 bad usage, 130/143 interrupted).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.console import Console

from grutrain.errors import GrutrainError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train and use GRU sequence models from a YAML config.",
    epilog="Example: grutrain fit configs/charlm.yaml train.max_steps=500, then "
    "grutrain sample runs/charlm-1/checkpoints/best.pt --prompt Alice",
)
# soft_wrap: a piped log gets the lines as written, not re-wrapped at 80 columns.
out = Console(highlight=False, soft_wrap=True)


@app.command(epilog="Example: grutrain fit configs/charlm.yaml optim.lr=0.003 model.hidden_size=128 train.max_steps=500")
def fit(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/charlm.yaml"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides key=value, e.g. optim.lr=0.01"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in run.dir (or the latest runs/<name>-N) from last.pt"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete what run.dir holds and start again"),
    print_config: bool = typer.Option(False, "--print-config", help="print the resolved config and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing while training"),
) -> None:
    """Train a model as CONFIG says, with key=value overrides."""
    from grutrain.config import config_to_yaml, load_config

    cfg = load_config(config, overrides or [])
    if print_config:
        sys.stdout.write(config_to_yaml(cfg))
        return
    from grutrain.train import fit as run_fit

    # Under torchrun only rank 0 talks.
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    summary = run_fit(cfg, resume=resume, overwrite=overwrite, progress="none" if quiet else "auto")
    if quiet:
        return
    out.print(f"\nrun: {summary['run_dir']}  ({summary['step']} steps, {summary['wall_time_s']:.0f} s)")
    for split in ("val", "test"):
        values = {k.split("/", 1)[1]: v for k, v in summary["final"].items() if k.startswith(split + "/")}
        if values:
            out.print(f"{split}: " + "  ".join(f"{name} {value:.4g}" for name, value in values.items()))
    if summary["baselines"]:
        out.print("baselines: " + "  ".join(f"{k} {v:.4g}" for k, v in summary["baselines"].items()))
    if summary.get("sample"):
        out.print("sample:")
        sys.stdout.write(summary["sample"] + "\n")


@app.command("eval", epilog="Example: grutrain eval runs/charlm-1/checkpoints/best.pt --split test --json")
def eval_command(
    checkpoint: Path = typer.Argument(..., help="a checkpoint file (.pt)"),
    split: Literal["val", "test"] = typer.Option("val", "--split", help="which held-out split"),
    data: Optional[Path] = typer.Option(None, "--data", help="evaluate on this text file instead (all of it)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout and nothing else"),
) -> None:
    """Loss, perplexity and bits per character of a saved model."""
    from grutrain.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, split=split, data_path=data, device=device)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    out.print(f"{result['checkpoint']} (step {result['step']}) on {result['split']}: {result['tokens']} tokens")
    out.print(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  bpc {result['bpc']:.4f}")


@app.command(epilog='Example: grutrain sample runs/charlm-1/checkpoints/best.pt --prompt "Alice was" --length 300 --seed 1')
def sample(
    checkpoint: Path = typer.Argument(..., help="a checkpoint file (.pt)"),
    prompt: str = typer.Option("", "--prompt", help="text to start from"),
    length: int = typer.Option(200, "--length", min=0, help="tokens to generate"),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0, help="0 = always the most likely token"),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="sample among the k most likely tokens"),
    seed: Optional[int] = typer.Option(None, "--seed", help="same seed, same text"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
) -> None:
    """Generate text from a trained language model."""
    from grutrain.checkpoint import load_checkpoint
    from grutrain.data.text import Vocabulary
    from grutrain.runtime import resolve_device
    from grutrain.sample import generate
    from grutrain.tasks import load_trained_model

    dev = resolve_device(device)
    payload = load_checkpoint(checkpoint, map_location=dev)
    model, cfg = load_trained_model(payload, dev, source=str(checkpoint))
    if cfg.task != "lm":
        raise GrutrainError(f"{checkpoint} is a {cfg.task} model; sample generates text from language models (task lm)")
    data_cfg = payload["config"]["data"]
    text = generate(model, Vocabulary(payload["vocab"]), prompt, length, tokenizer=data_cfg["tokenizer"],
                    lowercase=data_cfg["lowercase"], temperature=temperature, top_k=top_k, seed=seed, device=dev)
    sys.stdout.write(text + "\n")


@app.command(epilog="Example: grutrain predict runs/sunspots-1/checkpoints/best.pt --input data/sunspots.csv --output forecast.csv")
def predict(
    checkpoint: Path = typer.Argument(..., help="a checkpoint file (.pt) of a forecast or classify model"),
    input: Path = typer.Option(..., "--input", help="forecast: a CSV like the training data; classify: JSONL, CSV or .ts examples"),
    output: Optional[Path] = typer.Option(None, "--output", help="write here (.csv or .jsonl) instead of stdout"),
    fmt: Optional[Literal["csv", "jsonl"]] = typer.Option(None, "--format", help="default: from --output's extension, else jsonl"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
) -> None:
    """Forecasts (the horizon after the input's end, on the original scale) or class labels with probabilities."""
    from grutrain.predict import format_rows, output_format, predict_checkpoint

    rows = predict_checkpoint(checkpoint, input, device)
    text = format_rows(rows, output_format(output, fmt))
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise GrutrainError(f"cannot write --output {str(output)!r}: {exc.strerror or exc}") from None
    out.print(f"{len(rows)} predictions written to {output}")


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise GrutrainError(f"--shape {text!r} is not T,B,I,H (four positive integers, e.g. 35,32,28,256)")
    return tuple(int(p) for p in parts)


@app.command(epilog="Example: grutrain bench --shape 100,16,32,128 --repeats 30 --json")
def bench(
    shape: Optional[List[str]] = typer.Option(None, "--shape", help="T,B,I,H to time (repeatable); default: the standard shapes"),
    repeats: int = typer.Option(25, "--repeats", min=1, help="timed repetitions per implementation and shape"),
    warmup: int = typer.Option(3, "--warmup", min=0),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or mps"),
    trainer: bool = typer.Option(True, "--trainer/--no-trainer", help="also time grutrain fit against a bare PyTorch loop"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout and nothing else"),
) -> None:
    """Time the fast GRU, the reference loop and torch.nn.GRU side by side (training step, forward, memory)."""
    from grutrain import bench as benchmarks
    from grutrain.runtime import resolve_device

    dev = resolve_device(device)
    shapes = [_parse_shape(s) for s in shape] if shape else benchmarks.STANDARD_SHAPES
    console = Console(stderr=True) if as_json else out
    with console.status("timing GRU layers (interleaved, medians)..."):
        layers = benchmarks.bench_layers(shapes, repeats=repeats, warmup=warmup, threads=threads, device=dev)
    result = {"device": str(dev), "threads": threads or __import__("torch").get_num_threads(), "layers": layers}
    if not as_json:
        out.print(benchmarks.format_layer_table(layers))
    if trainer:
        with console.status("timing grutrain fit against a bare PyTorch loop..."):
            result["trainer"] = benchmarks.bench_trainer(threads=threads, device=dev)
        if not as_json:
            out.print(benchmarks.format_trainer_result(result["trainer"]))
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")


@app.command(epilog="Example: grutrain runs runs/sweep --sort val/perplexity   (or --json, --csv for scripts)")
def runs(
    dirs: Optional[List[Path]] = typer.Argument(None, metavar="DIR",
                                                help="run directories or directories of runs [default: runs]"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout and nothing else"),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV: a header line, then one line per run"),
    sort: Optional[str] = typer.Option(None, "--sort", metavar="METRIC",
                                       help="sort by a metric or config key, e.g. val/perplexity or optim.lr; "
                                            "-METRIC sorts descending"),
) -> None:
    """Compare runs: status, the config values that differ between them, best and final metrics, steps, time."""
    from grutrain import runs as run_table

    if as_json and as_csv:
        raise typer.BadParameter("give --json or --csv, not both")
    table = run_table.collect_runs(dirs or [], sort=sort)
    if as_json:
        sys.stdout.write(run_table.runs_to_json(table))
    elif as_csv:
        sys.stdout.write(run_table.runs_to_csv(table))
    else:
        from rich.measure import Measurement

        rendered = run_table.format_runs_table(table, sort=sort)
        # Piped to a file or a log, keep the table's full width rather than folding it into 80 columns.
        if out.is_terminal:
            out.print(rendered)
        else:
            width = max(out.width, Measurement.get(out, out.options.update_width(1000), rendered).maximum)
            Console(highlight=False, width=width).print(rendered)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="grutrain")
    except GrutrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
