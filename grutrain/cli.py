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

from grutrain.files import json_text
from grutrain.errors import GrutrainError
from grutrain.tasks import task_names

TASKS = task_names()  # `grutrain init`'s choices

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
    from grutrain.config.schema import config_to_yaml
    from grutrain.tasks import load_config

    cfg = load_config(config, overrides or [])
    if print_config:
        sys.stdout.write(config_to_yaml(cfg))
        return
    from grutrain.trainer.fit import fit as run_fit

    # Under torchrun only rank 0 talks.
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    from grutrain.progress import set_quiet

    set_quiet(quiet)  # notes (a new token cache) too
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


@app.command(epilog="Example: grutrain prepare configs/charlm.yaml data.path=big.txt   (then grutrain fit reuses the cache)")
def prepare(
    config: Path = typer.Argument(..., help="YAML config of a language model, e.g. configs/bpe.yaml"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides key=value, e.g. data.path=big.txt"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Tokenise the config's text file once into its token cache (fit does this itself when needed)."""
    from grutrain.tasks import load_config
    from grutrain.commands.prepare import prepare as run_prepare

    info = run_prepare(load_config(config, overrides or []), progress=not as_json)
    if as_json:
        sys.stdout.write(json_text.dumps(info) + "\n")
        return
    out.print(f"{info['tokens']:,} {info['tokenizer']} tokens (vocabulary {info['vocab_size']}, {info['dtype']}) "
              f"in {info['cache']}  ({info['seconds']:.1f} s)")


cache_app = typer.Typer(add_completion=False, rich_markup_mode=None,
                        help="List token caches (id, size, source) or remove them with `grutrain cache rm`.")
app.add_typer(cache_app, name="cache")
CACHE_DIR_HELP = "the cache directory (default: $GRUTRAIN_CACHE_DIR, else ~/.cache/grutrain/tokens; a config's data.cache_dir)"


@cache_app.callback(invoke_without_command=True, epilog="Example: grutrain cache; grutrain cache rm alice29-char-0123abcd")
def cache(
    ctx: typer.Context,
    cache_dir: Optional[Path] = typer.Option(None, "--dir", help=CACHE_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """List the token caches: id, size, tokeniser, tokens and the text they were made from."""
    if ctx.invoked_subcommand is not None:
        return
    from grutrain.commands.cache import list_caches
    from grutrain.errors import escaped
    from grutrain.files.inputs import format_bytes

    entries = list_caches(str(cache_dir) if cache_dir else None)
    if as_json:
        sys.stdout.write(json_text.dumps({"caches": entries}) + "\n")
        return
    for e in entries:
        if e["id"] is None:
            out.print(f"(unfinished)  {format_bytes(e['bytes'])}  {escaped(e['files'][0])}  (removed by rm --all)")
        else:
            gone = "" if e["source_exists"] else "  (source gone)"
            out.print(f"{e['id']}  {format_bytes(e['bytes'])}  {e['tokenizer']}, {e['tokens']:,} tokens  "
                      f"from {escaped(e['source'])}{gone}")
    total = sum(e["bytes"] for e in entries)
    out.print(f"{len(entries)} cache{'s' * (len(entries) != 1)}, {format_bytes(total)}")


@cache_app.command("rm", epilog="Example: grutrain cache rm alice29-char-0123abcd, or grutrain cache rm --all")
def cache_rm(
    ids: Optional[List[str]] = typer.Argument(None, help="cache ids, as `grutrain cache` lists them"),
    everything: bool = typer.Option(False, "--all", help="remove every cache (and unfinished temporaries)"),
    cache_dir: Optional[Path] = typer.Option(None, "--dir", help=CACHE_DIR_HELP),
) -> None:
    """Remove token caches (a later fit rebuilds what it needs)."""
    from grutrain.commands.cache import remove_caches
    from grutrain.files.inputs import format_bytes

    removed = remove_caches(ids or [], str(cache_dir) if cache_dir else None, everything)
    out.print(f"removed {len(removed)} cache{'s' * (len(removed) != 1)}, {format_bytes(sum(e['bytes'] for e in removed))}")


@app.command("eval", epilog="Example: grutrain eval runs/charlm-1/checkpoints/best.pt --split test --json")
def eval_command(
    checkpoint: Path = typer.Argument(..., help="a checkpoint file (.pt)"),
    split: Literal["val", "test"] = typer.Option("val", "--split", help="which held-out split"),
    data: Optional[Path] = typer.Option(None, "--data", help="evaluate on all of this data file instead (text for lm; CSV for forecast; JSONL/CSV/.ts for classify)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout and nothing else"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also draw the task's figure to this file (.png): "
                                        "lm loss by position, forecasts vs actual, classify confusion matrix"),
    origins: Optional[int] = typer.Option(None, "--origins", min=1, help="forecast: score the last N forecast "
                                          "origins of each series, one horizon apart (rolling origin), baselines too"),
) -> None:
    """Metrics of a saved model on a held-out split or another data file (lm: loss, perplexity, bits per character)."""
    from grutrain.commands.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, split=split, data_path=data, device=device, plot=plot, origins=origins)
    if as_json:
        sys.stdout.write(json_text.dumps(result) + "\n")
        return
    counted = next((f"{result[k]} {k}" for k in ("tokens", "examples", "windows") if k in result), None)
    out.print(f"{result['checkpoint']} (step {result['step']}) on {result['split']}" + (f": {counted}" if counted else ""))
    scores = {k: v for k, v in result.items() if isinstance(v, float)}
    is_baseline = lambda k: k.startswith(("naive_", "seasonal_naive_", "baseline/"))  # noqa: E731
    out.print("  ".join(f"{k} {v:.4f}" for k, v in scores.items() if not is_baseline(k)))
    if any(is_baseline(k) for k in scores):
        out.print("baselines: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items() if is_baseline(k)))
    if plot is not None:
        out.print(f"plot written to {plot}")


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
    from grutrain.commands.sample import sample_checkpoint

    text = sample_checkpoint(checkpoint, prompt, length, temperature=temperature, top_k=top_k, seed=seed, device=device)
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
    from grutrain.commands.predict import predict_to

    text, count = predict_to(checkpoint, input, output, fmt, device)
    if text is not None:
        sys.stdout.write(text)
    else:
        out.print(f"{count} predictions written to {output}")


@app.command(epilog="Example: grutrain bench --shape 100,16,32,128 --repeats 30 --json")
def bench(
    shape: Optional[List[str]] = typer.Option(None, "--shape", help="T,B,I,H to time (repeatable); default: the standard shapes"),
    repeats: int = typer.Option(25, "--repeats", min=1, help="timed repetitions per implementation and shape"),
    warmup: int = typer.Option(3, "--warmup", min=0),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=1024, help="torch CPU threads"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or mps"),
    trainer: bool = typer.Option(True, "--trainer/--no-trainer", help="also time grutrain fit against a bare PyTorch loop"),
    generation: bool = typer.Option(True, "--generation/--no-generation",
                                    help="also time sample's per-token loop against torch.nn.GRU stepping one token"),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16 (autocast; torch.nn.GRU timed under it too)"),
    markdown: bool = typer.Option(False, "--markdown", help="print the layer table as Markdown with command and machine"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout and nothing else"),
) -> None:
    """Time the fast GRU, the reference loop and torch.nn.GRU side by side (training step, forward, memory)."""
    from grutrain.commands.bench import run_bench

    command = "grutrain " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "grutrain bench"
    result = run_bench(shape or [], repeats=repeats, warmup=warmup, threads=threads, device=device, trainer=trainer,
                       generation=generation, precision=precision, markdown_command=command if markdown else None,
                       status=(Console(stderr=True) if as_json else out).status,
                       show=None if as_json else _print_bench_part)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")


def _print_bench_part(part) -> None:
    if isinstance(part, str):
        out.print(part)
    else:  # the layer table is wide: don't squeeze it into 80 columns when stdout is a file
        Console(highlight=False, width=None if out.is_terminal else 180).print(part)


@app.command(epilog="Example: grutrain kernels   (builds the native GRU kernel now, then says what model.kernel=auto runs)")
def kernels(
    build: bool = typer.Option(True, "--build/--no-build", help="build the kernel if it is not in the cache yet"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout and nothing else"),
) -> None:
    """Build the native GRU kernel ahead of use; report its cache path, build time and what auto selects."""
    from grutrain.commands.kernels import format_kernels_report, kernels_report

    report = kernels_report(build=build)
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        out.print(format_kernels_report(report))


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
    from grutrain.commands.runs import compare_runs

    if as_json and as_csv:
        raise typer.BadParameter("give --json or --csv, not both")
    rendered = compare_runs(dirs or [], sort=sort, fmt="json" if as_json else "csv" if as_csv else "table")
    if isinstance(rendered, str):
        sys.stdout.write(rendered)
    else:
        _print_full_width(rendered)


def _print_full_width(rendered) -> None:
    """Piped to a file or a log, keep a table's full width rather than folding it into 80 columns."""
    if out.is_terminal:
        out.print(rendered)
        return
    from rich.measure import Measurement

    width = max(out.width, Measurement.get(out, out.options.update_width(1000), rendered).maximum)
    Console(highlight=False, width=width).print(rendered)


@app.command("lr-find", epilog="Example: grutrain lr-find configs/charlm.yaml --steps 200   "
                               "(writes lr-find/charlm-1/lr_find.csv, .png and .json)")
def lr_find(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/charlm.yaml"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides key=value, e.g. train.batch_size=32"),
    start: float = typer.Option(1e-7, "--start", help="the first learning rate"),
    end: float = typer.Option(10.0, "--end", help="the last learning rate"),
    steps: int = typer.Option(200, "--steps", help="training steps from --start to --end"),
    smoothing: float = typer.Option(0.98, "--smoothing", help="beta of the loss's moving average (fastai's 0.98)"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="where the CSV, PNG and JSON go "
                                              "[default: a fresh lr-find/<run.name>-N]; never inside runs/"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps [default: train.device]"),
) -> None:
    """Learning-rate range test: train a throwaway model with the lr growing exponentially, suggest an lr."""
    from grutrain.commands import lr_find as finder
    from grutrain.tasks import load_config

    cfg = load_config(config, overrides or [])
    with out.status(f"lr-find: {steps} steps from {start:g} to {end:g}...") as status:
        def progress(step: int, lr: float, loss: float) -> None:
            status.update(f"lr-find: step {step}/{steps}  lr {lr:.2e}  loss {loss:.4f}")

        result, written = finder.run_range_test(cfg, start, end, steps, smoothing=smoothing, output_dir=output_dir,
                                                device=device, progress=progress)
    for line in finder.explain(result, configured_lr=cfg.optim.lr):
        out.print(line)
    out.print("wrote " + ", ".join(str(p) for p in written.values()))
    if "png" not in written:
        from grutrain.plots import PLOT_EXTRA_MESSAGE

        print(f"note: no PNG: {PLOT_EXTRA_MESSAGE}", file=sys.stderr)


@app.command(epilog="Example: grutrain export runs/charlm-1/checkpoints/best.pt --format onnx --output charlm.onnx")
def export(
    checkpoint: Path = typer.Argument(..., help="a checkpoint file (.pt)"),
    output: Path = typer.Option(..., "--output", "-o", help="the file to write; <output>.json goes beside it"),
    fmt: Optional[Literal["onnx", "pt2", "state-dict"]] = typer.Option(
        None, "--format", help="onnx (onnxruntime), pt2 (torch.export) or state-dict (torch.nn.GRU-based "
                               "models); default: from --output's extension (.onnx, .pt2, .pt)"),
) -> None:
    """Export a trained model for use outside grutrain, checked against grutrain's own outputs."""
    from grutrain.commands.export import export_checkpoint, metadata_path

    meta = export_checkpoint(checkpoint, output, fmt)
    out.print(f"wrote {output} ({meta['format']}) and {metadata_path(output)}")
    for kind in ("inputs", "outputs"):
        out.print(f"{kind}: " + ", ".join(f"{item['name']} {item['shape']}" for item in meta[kind]))
    out.print(f"checked: max |exported - grutrain| = {meta['check']['max_abs_difference']:.3g} "
              f"(batch {meta['check']['batch']}, sequence {meta['check']['sequence']})")


@app.command(epilog="Example: grutrain init lm --output my-charlm.yaml, then grutrain fit my-charlm.yaml")
def init(
    task: Literal[TASKS] = typer.Argument(..., help=", ".join(TASKS[:-1]) + " or " + TASKS[-1]),  # type: ignore[valid-type]
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="the file to write [default: <task>.yaml]; "
                                          "an existing file is never overwritten"),
) -> None:
    """Write a commented starter config for a task; it trains as written on the data shipped with grutrain."""
    from grutrain.commands.init import missing_data, write_starter

    path = write_starter(task, output)
    out.print(f"wrote {path}; train with: grutrain fit {path}")
    missing = missing_data(path)
    if missing:
        print(f"note: its data.path {missing!r} is not here; run from the grutrain checkout or edit data.path",
              file=sys.stderr)


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """click's exception class `name`: typer 0.2x carries its own copy of click (typer._click), older
    typers use click itself; either may raise it."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_USAGE_ERRORS = _click_exceptions("UsageError")
_ABORTS = _click_exceptions("Abort")


def _usage_line(exc) -> str:
    """A usage error as one line: what is wrong, the command's usage, where the help is."""
    message = " ".join(exc.format_message().split())
    if exc.ctx is None:
        return message
    usage = " ".join(exc.ctx.get_usage().split())
    return f"{message.rstrip('.')}. {usage} (see '{exc.ctx.command_path} --help')"


def _fail(message: str, code: int = 1) -> None:
    from grutrain.errors import escaped

    print(f"error: {escaped(message)}", file=sys.stderr)  # a path's newline or ESC shown, not acted on
    sys.exit(code)


def _missing_cwd() -> str | None:
    """A working directory deleted under the shell: said before torch is imported (which then fails hard)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return "the current directory no longer exists (it was deleted); cd to an existing directory and run again"
    return None


def run() -> None:
    """The `grutrain` process: main, then quiet signals while the interpreter shuts down. By then every
    command has finished its work, but torch's exit hooks still run, and a Ctrl-C landing in one printed a
    KeyboardInterrupt traceback ("Exception ignored in atexit callback"); now the process just ends, 128 + the
    signal."""
    try:
        main()
    finally:
        _quiet_exit_on_signals()


def _quiet_exit_on_signals() -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken: nothing more can be said
                pass
        os._exit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, leave)


def main(argv: list[str] | None = None) -> None:
    from grutrain import allocator
    from grutrain.files import streams

    problem = streams.prepare() or _missing_cwd()  # closed descriptors, stderr's encoding, a deleted cwd
    if problem:
        _fail(problem)
    allocator.keep_freed_memory()  # tensors reuse freed pages instead of faulting in new ones
    try:
        # standalone_mode=False: usage errors come back here, to be told in one line like any other.
        code = app(args=argv, prog_name="grutrain", standalone_mode=False)
        raise SystemExit(code if isinstance(code, int) else 0)
    except SystemExit as exc:
        problem = streams.finish_stdout()  # a full disk shows only when stdout is flushed
        if problem and not exc.code:
            _fail(problem)
        raise
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `grutrain`: the help, as before
            exc.show()
            sys.exit(exc.exit_code)
        _fail(_usage_line(exc), exc.exit_code)
    except _ABORTS:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except GrutrainError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    # The environment, not the input: one line, never a traceback.
    except UnicodeEncodeError as exc:
        streams.silence_stdout()
        _fail(streams.describe_encode_error(exc))
    except OSError as exc:
        streams.silence_stdout()
        _fail(streams.describe_os_error(exc))
    except MemoryError:
        _fail("out of memory; use a smaller model, batch or data file")
