"""`dogcat` command line: thin wrappers over the library; heavy imports happen per command."""

from __future__ import annotations

import os
import sys

try:  # Ctrl-C while the command starts up: one line and 130, as anywhere later, never a traceback
    import argparse
    import csv
    import math
    import signal
    import warnings
    from contextlib import contextmanager, suppress
    from pathlib import Path

    from dogcat.errors import UsageError
    from dogcat.printable import printable
except KeyboardInterrupt:
    print("dogcat: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

# TensorFlow's C++ start-up chatter is noise for CLI users; errors still show. Set before any import of keras.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# NumPy's BLAS on one thread: `predict` runs one batch per core at once (Classifier.workers), and
# BLAS threads that spin beside them cost a quarter of the rate. Set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

EXIT_FILE_ERRORS = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `cat` or `grep` give when the reader (`head`) leaves early


def main(argv: list[str] | None = None) -> int:
    # Libraries' deprecation notices name files users never wrote; -W or PYTHONWARNINGS bring them back.
    # Scoped to this call, so a program (or test) that calls main() keeps its own filters afterwards.
    try:
        with warnings.catch_warnings():
            if not sys.warnoptions:
                warnings.simplefilter("ignore")
            return _main(argv)
    except KeyboardInterrupt:  # while parsing or importing, before _main's own handler is in place
        return _interrupted()


def run() -> None:
    """The `dogcat` console command: `main`, then exit; a Ctrl-C while the interpreter shuts down
    (ONNX Runtime's and TensorFlow's threads stopping) exits 130 without a traceback."""
    try:  # a Ctrl-C during this import lands before the handler below is in place
        from dogcat.artifacts import note_interrupt

        signal.signal(signal.SIGINT, note_interrupt)
        code = main()
        signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
    except KeyboardInterrupt:  # outside main's own handler: before it, or just after it returned
        signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
        code = _interrupted()
    if code == EXIT_INTERRUPTED:
        # Skip the interpreter's shutdown: it joins every worker thread (concurrent.futures' exit
        # hook), and one that the Ctrl-C left mid-task can hold the exit for as long as it runs.
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):  # a closed pipe: nothing left to say
                stream.flush()
        os._exit(code)
    sys.exit(code)


def _interrupted() -> int:
    print("dogcat: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from dogcat.errors import DogcatError, MissingDependency

    try:
        if args.handler in (_train, _tune, _detector_fit):  # these always run Keras; the others only maybe (export: not when the float twin is current)
            _import_keras_quietly()
        code = args.handler(args)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return code
    except (DogcatError, ModuleNotFoundError) as error:
        if isinstance(error, ModuleNotFoundError) and (error := MissingDependency.of(error)) is None:
            raise  # not an extra's module: a bug, whose traceback is wanted
        print(f"dogcat: error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        # `dogcat predict DIR | head -1`: the reader has all it wanted. Point stdout at devnull so
        # the interpreter's final flush cannot raise again (the recipe in Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return _interrupted()


@contextmanager
def _stderr_parked():
    """Run the block with C-level stderr parked in a temporary file; replay it only if the block fails.

    TensorFlow 2.21 prints absl and oneDNN start-up notices from C++ while importing, ignoring
    TF_CPP_MIN_LOG_LEVEL, which would bury dogcat's one-line messages. On failure they may
    explain why, so then they are shown.
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except KeyboardInterrupt:
            raise  # Ctrl-C: the chatter explains nothing
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _import_keras_quietly() -> None:
    with _stderr_parked():
        import keras  # noqa: F401


def _load_classifier(model: Path | None, runtime: str | None = None):
    """Classifier.from_path with stderr parked: it imports Keras (and its chatter) only when ONNX cannot serve."""
    from dogcat.inference import Classifier

    with _stderr_parked():
        return Classifier.from_path(model, runtime=runtime)


def _parser() -> argparse.ArgumentParser:
    from dogcat import __version__

    parser = argparse.ArgumentParser(prog="dogcat", description="Dog-vs-cat image classifier (MobileNetV2, Keras 3).")
    parser.add_argument("--version", action="version", version=f"dogcat {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    _add_training_commands(commands)
    _add_prediction_commands(commands)
    _add_export_commands(commands)
    _add_app_commands(commands)
    return parser


def _add_training_commands(commands) -> None:
    """data prepare, train, tune, evaluate: making a model and scoring it."""
    from dogcat.artifacts import RUNTIMES

    data = commands.add_parser("data", help="dataset commands").add_subparsers(required=True, metavar="COMMAND")
    prepare = data.add_parser("prepare", help="check, sample, split and copy a folder of labelled photos")
    prepare.add_argument("src", type=Path, help="Kaggle flat folder (cat.N.jpg), PetImages (Cat/, Dog/) or class sub-folders")
    prepare.add_argument("out", type=Path, help="output folder: {train,val,test}/{cat,dog}/ and manifest.csv")
    prepare.add_argument("--per-class", type=int, default=2000, help="images per class (default: 2000)")
    prepare.add_argument("--seed", type=int, default=42, help="sampling and split seed (default: 42)")
    prepare.add_argument("--split", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(handler=_prepare)

    train = commands.add_parser("train", help="fine-tune the classifier; rerun with the same --run-dir to resume")
    train.add_argument("--config", type=Path, help="TOML config (default: built-in defaults, same as configs/default.toml)")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.epochs=3 data.dir=data/x")
    train.add_argument("--run-dir", type=Path, help="run folder (default: <train.output_dir>/<UTC time>)")
    train.set_defaults(handler=_train)

    tune = commands.add_parser("tune", help="search the recipe's open settings (Optuna); rerun with the same --out to resume")
    tune.add_argument("--config", type=Path, help="base TOML config (default: built-in defaults, or the --out folder's own)")
    tune.add_argument("overrides", nargs="*", metavar="section.key=value", help="base config overrides, as for train")
    tune.add_argument("--trials", type=int, default=30, help="finished trials in total, resumed ones included (default: 30)")
    tune.add_argument("--out", type=Path, help="search folder (default: <train.output_dir>/tune-<UTC time>)")
    tune.add_argument("--seed", type=int, help="the sampler's seed (default: train.seed)")
    tune.add_argument("--cache-gib", type=float, default=3.0,
                      help="memory for trunk activations shared between trials (default: 3; 0 shares none)")
    tune.set_defaults(handler=_tune)

    evaluate = commands.add_parser("evaluate", help="score a model on a labelled split")
    evaluate.add_argument("model", type=Path, help=".keras file (class_names.pkl beside it)")
    evaluate.add_argument("data", type=Path, help="prepared dataset folder, or a folder of labelled images")
    evaluate.add_argument("--split", default="test", help="split in the manifest (default: test)")
    evaluate.add_argument("--out", type=Path, help="write test_metrics.json and confusion_matrix.png here "
                          "(the records a model card shows, when DIR is the model's folder)")
    evaluate.add_argument("--runtime", choices=RUNTIMES, help="as for predict")
    evaluate.add_argument("--neither", type=Path, metavar="FOLDER",
                          help="also report the share of this folder's photos (no cat, no dog) called neither")
    evaluate.set_defaults(handler=_evaluate)


def _add_prediction_commands(commands) -> None:
    """predict and batch: verdicts for files."""
    from dogcat.artifacts import BATCH_RUNTIMES, RUNTIMES

    predict = commands.add_parser("predict", help="classify image files, folders or globs")
    predict.add_argument("paths", nargs="+", help="files, folders (searched recursively) or glob patterns")
    predict.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    predict.add_argument("--runtime", choices=RUNTIMES,
                         help="auto (default): ONNX Runtime when a matching export exists, else Keras; "
                              "onnx-int8: the int8 twin (`export --int8`), for bulk work")
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON lines, one object per image")
    output.add_argument("--csv", action="store_true", help="CSV with a header row")
    predict.add_argument("--explain", type=Path, metavar="OUT_DIR",
                         help="write a heatmap of where the model looked over each photo here, one PNG per photo "
                              "(named in the output's `explanation` column)")
    predict.set_defaults(handler=_predict)

    batch = commands.add_parser("batch", help="classify many files with Ray Data into Parquet; rerun to resume")
    batch.add_argument("paths", nargs="+", help="files, folders (searched recursively), globs, or URIs pyarrow reads "
                       "(s3://bucket/photos/)")
    batch.add_argument("--out", required=True, help="output folder for the Parquet files (local or a URI); "
                       "files already in it are skipped")
    batch.add_argument("--model", type=Path, help="a .keras file with its ONNX twin beside it (default: the shipped model)")
    batch.add_argument("--runtime", choices=BATCH_RUNTIMES, default="onnx",
                       help="onnx (default, float32) or onnx-int8 (about 2x faster; `export --int8` first)")
    batch.add_argument("--address", help="join this Ray cluster (HOST:PORT of `ray start --head`); default: a local Ray")
    batch.add_argument("--actors", type=int, help="ONNX Runtime actors (default: from the cluster's CPUs, half of "
                       "each node's for scoring and half for decoding)")
    batch.add_argument("--retry-errors", action="store_true",
                       help="classify again the files whose row in --out holds an error, replacing those rows")
    batch.set_defaults(handler=_batch)


def _add_export_commands(commands) -> None:
    """export and detector fit: what sits beside a model."""
    export = commands.add_parser("export", help="write the ONNX twin of a .keras model beside it (fast CPU inference)")
    export.add_argument("model", type=Path, nargs="?", help=".keras file (default: the shipped model)")
    export.add_argument("--out", type=Path, help="output .onnx path (default: dog_cat_classifier.onnx beside the model)")
    export.add_argument("--int8", action="store_true",
                        help="write the int8 twin dog_cat_classifier.int8.onnx instead (about 2x faster for bulk work; "
                             "needs --data)")
    export.add_argument("--data", type=Path, metavar="DATA_DIR",
                        help="with --int8: the model's prepared dataset; its train photos calibrate the int8 ranges")
    export.set_defaults(handler=_export)

    detector = commands.add_parser("detector", help="the 'neither' detector beside a model").add_subparsers(
        required=True, metavar="COMMAND")
    detector_fit = detector.add_parser("fit", help="fit it for a model on a prepared dataset (train and val splits)")
    detector_fit.add_argument("model", type=Path, help=".keras file (the detector is written beside it)")
    detector_fit.add_argument("data", type=Path, help="prepared dataset folder (the model's training data)")
    detector_fit.add_argument("--turn-away", type=float, help="share of the training and validation cats and dogs "
                              "(out of fold) far enough to be neither (default: predict.turn_away, 0.005)")
    detector_fit.add_argument("--unsure-share", type=float, help="share of them unusual enough to be unsure "
                              "(default: predict.unsure_share, 0.02)")
    detector_fit.set_defaults(handler=_detector_fit)


def _add_app_commands(commands) -> None:
    """app, space build, demo, serve: a model in front of people and programs."""
    from dogcat.artifacts import RUNTIMES

    app = commands.add_parser("app", help="run the Streamlit app in the browser")
    _add_server_arguments(app, port=8501)
    app.set_defaults(handler=_app)

    # Gradio demo and Hugging Face Space (dogcat.space, demos/gradio_app.py).
    space = commands.add_parser("space", help="Hugging Face Space commands").add_subparsers(required=True, metavar="COMMAND")
    space_build = space.add_parser("build", help="write a folder that can be pushed to a Gradio Space as it is")
    space_build.add_argument("out", type=Path, help="output folder (may be a git clone of the Space: other files are kept)")
    space_build.add_argument("--model", type=Path, help="a .keras file or run folder (default: the shipped model)")
    space_build.set_defaults(handler=_space_build)
    demo = commands.add_parser("demo", help="run the Gradio demo (the Space's app) locally")
    _add_server_arguments(demo, port=7860)
    demo.add_argument("--share", action="store_true", help="also a temporary public gradio.live link (72 hours)")
    demo.set_defaults(handler=_demo)

    serve = commands.add_parser("serve", help="the HTTP API (FastAPI on uvicorn; on a Ray cluster with --address)")
    _add_server_arguments(serve, port=8000)
    serve.add_argument("--runtime", choices=RUNTIMES, help="as for predict")
    serve.add_argument("--max-batch", type=_whole_number, default=32,
                       help="photos in one model call, and images in one batch request (default: 32)")
    serve.add_argument("--batch-wait-ms", type=_milliseconds, default=5.0,
                       help="how long a request waits for others to share its model call (default: 5)")
    serve.add_argument("--token-file", type=Path,
                       help="require `Authorization: Bearer TOKEN`, the file's first line (or set $DOGCAT_API_TOKEN)")
    serve.add_argument("--address", help="deploy on this Ray cluster with Ray Serve (HOST:PORT of `ray start --head`, "
                       "or `local` for a Ray started here)")
    serve.add_argument("--replicas", type=_whole_number, help="with --address: copies of the model (default: 1)")
    serve.set_defaults(handler=_serve)


def _whole_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more. Received: {text!r}")
    return int(text)


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and 0 <= value <= 1000):
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds from 0 to 1000. Received: {text!r}")
    return value


def _add_server_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=port, help=f"port (default: {port})")


def _port(text: str) -> int:
    """A TCP port, checked here so a bad one is a usage line, not a server's traceback."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 65535. Received: port={text!r}")
    return port


def _prepare(args: argparse.Namespace) -> int:
    from dogcat.data import prepare

    report = prepare(args.src, args.out, per_class=args.per_class, seed=args.seed,
                     fractions=tuple(args.split), progress=not args.quiet)
    print(report.summary())
    return 0


def _train(args: argparse.Namespace) -> int:
    from dogcat.config import load_config
    from dogcat.model_folder import CONFIG_FILENAME
    from dogcat.train import train

    run_dir = args.run_dir
    config_path = args.config
    if config_path is None and run_dir is not None and (run_dir / CONFIG_FILENAME).is_file():
        config_path = run_dir / CONFIG_FILENAME  # resuming: the run's own config is the default
    config = load_config(config_path, args.overrides)
    try:
        train(config, run_dir)
    except KeyboardInterrupt:
        where = run_dir or "the run folder printed above"
        print(f"dogcat: interrupted; run the same command with --run-dir {where} to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _tune(args: argparse.Namespace) -> int:
    from dogcat.config import load_config
    from dogcat.model_folder import CONFIG_FILENAME
    from dogcat.tune import default_out, tune

    config_path = args.config
    if config_path is None and args.out is not None and (args.out / CONFIG_FILENAME).is_file():
        config_path = args.out / CONFIG_FILENAME  # resuming: the search's own base config is the default
    if not (math.isfinite(args.cache_gib) and args.cache_gib >= 0):  # int(nan * 2**30) would raise a traceback
        raise UsageError(f"--cache-gib must be a finite number, 0 or more. Received: cache_gib={args.cache_gib}")
    config = load_config(config_path, args.overrides)
    out = args.out or default_out(config)
    try:
        tune(config, args.trials, out, seed=args.seed, memo_bytes=int(args.cache_gib * 2**30))
    except KeyboardInterrupt:
        print(f"dogcat: interrupted; run the same command with --out {out} to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from dogcat.evaluate import evaluate, format_metrics

    classifier = _load_classifier(args.model, args.runtime)
    _warn_about_verdicts(classifier)
    metrics = evaluate(classifier, args.data, args.split, args.out, neither_dir=args.neither)
    print(format_metrics(metrics))
    for skipped in metrics["skipped"]:
        print(f"dogcat: skipped {printable(str(skipped['path']))}: {skipped['reason']}", file=sys.stderr)
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Rows stream out in input order as each batch is classified (`| head` stops early), with a
    progress bar on stderr when that is a terminal. A file that cannot be read is one row, in its
    place; stderr also names it when stdout is JSON or CSV (for a program, read by a person)."""
    from tqdm import tqdm

    from dogcat.data import DataError, expand_in_order, skipped_line
    from dogcat.inference import Prediction
    from dogcat.preprocessing import FORMAT_NAMES

    skipped: list[Path] = []
    listed = expand_in_order(args.paths, skipped)
    if skipped:
        print(f"dogcat: {skipped_line(skipped)}", file=sys.stderr)
    if not listed:
        raise DataError(f"No images found ({FORMAT_NAMES}). Received: paths={args.paths}")
    if args.explain is not None and args.explain.exists() and not args.explain.is_dir():
        # Before any work: found out after classifying, it would lose every row.
        raise DataError(f"--explain must name a folder that can be made (a file is in the way). "
                        f"Received: explain={str(args.explain)!r}")
    if args.explain is not None:
        _check_writable(args.explain)  # made with its missing parents (`--explain out/explain`, as with --out)
    classifier = _load_classifier(args.model, args.runtime)
    _warn_about_verdicts(classifier)
    names = list(classifier.class_names.values())
    sources = [path for path, why in listed if why is None]
    write_row = _row_writer(args, names, width=max(len(printable(path)) for path, _ in listed))
    batches = classifier.predict_batches(sources, explain=args.explain is not None)
    done: list[Prediction] = []
    failed = 0
    unwritten: list[str] = []  # why overlays could not be written (a disk that filled up): said once, rows go on
    with tqdm(total=len(sources), unit="photo", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
              dynamic_ncols=True) as progress:
        for path, why in listed:
            if why is not None:
                result = Prediction(path, error=why)
            else:
                if not done:
                    sys.stdout.flush()  # the rows so far reach a pipe now, not at the end
                    done = next(batches)
                    progress.update(len(done))
                result = done.pop(0)
            explanation = None if args.explain is None else _explain(result, args.explain, unwritten)
            with tqdm.external_write_mode(file=sys.stdout):
                write_row(result, explanation)
                if result.error and (args.json or args.csv):
                    print(f"dogcat: error: {printable(result.source)}: {result.error}", file=sys.stderr)
            failed += result.error is not None
    if failed and not (args.json or args.csv):
        print(f"dogcat: {failed} of {len(listed)} file(s) could not be read; their rows say why", file=sys.stderr)
    return EXIT_FILE_ERRORS if failed else 0


def _check_writable(folder: Path) -> None:
    """Refuse an --explain folder that cannot be written (a read-only mount, no permission, a full disk)
    before any work: found out at the first overlay, it cost a traceback and the rows."""
    import tempfile

    from dogcat.data import DataError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dogcat-probe-"):
            pass
    except OSError as error:
        raise DataError(f"Cannot write overlays into the --explain folder ({error.strerror or error}). "
                        f"Received: explain={printable(str(folder))!r}") from None


def _explain(result, folder: Path, unwritten: list[str]) -> str:
    """The overlay's path for `result`'s row, written into `folder`; "" where there is none or it could
    not be written (the first failure is said on stderr, and the rows go on)."""
    from dogcat.explain import write_overlays

    try:
        written = write_overlays([result], folder)[0]
    except OSError as error:
        if not unwritten:
            print(f"dogcat: warning: cannot write overlays into {printable(str(folder))} ({error.strerror or error}); "
                  "the rows go on without them", file=sys.stderr)
        unwritten.append(str(error))
        return ""
    return printable(str(written or ""))


def _row_writer(args: argparse.Namespace, names: list[str], width: int):
    """A function that prints one prediction's row (after printing the header, for CSV and the table)."""
    explaining = args.explain is not None
    if args.json:
        from dogcat.artifacts import strict_json

        def json_row(result, explanation: str | None) -> None:
            row = result.as_row(names)
            if explaining:  # the `explanation` field appears only with --explain: existing consumers see no change
                row["explanation"] = explanation or None
            print(strict_json(row))

        return json_row
    if args.csv:
        from dogcat.verdict import row_columns

        columns = [*row_columns(names), *(["explanation"] if explaining else [])]
        writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")  # None is written as an empty cell
        writer.writeheader()

        def csv_row(result, explanation: str | None) -> None:
            row = {key: f"{value:.6f}" if isinstance(value, float) else value for key, value in result.as_row(names).items()}
            writer.writerow(row | ({"explanation": explanation} if explaining else {}))

        return csv_row
    print(f"{'path':<{width}}  {'verdict':<9}  " + "  ".join(f"p({n})" for n in names)
          + ("  explanation" if explaining else ""))

    def table_row(result, explanation: str | None) -> None:
        if result.error:
            print(f"{printable(result.source):<{width}}  error: {result.error}")
            return
        print(f"{printable(result.source):<{width}}  {result.verdict:<9}  "
              + "  ".join(f"{result.probabilities[n]:{len(n) + 3}.4f}" for n in names)
              + (f"  {explanation}" if explaining else ""))

    return table_row


def _warn_about_verdicts(classifier) -> None:
    """The classifier's one-line warnings (a slower runtime than its files promise, fewer verdicts), on stderr."""
    for warning in classifier.warnings:
        print(f"dogcat: warning: {warning}", file=sys.stderr)


def _detector_fit(args: argparse.Namespace) -> int:
    from dogcat.export import fit_detector_beside

    fit_detector_beside(args.model, args.data, args.turn_away, args.unsure_share)
    return 0


def _batch(args: argparse.Namespace) -> int:
    import ray  # noqa: F401  (before any work: missing, it is one line naming the ray extra)

    from dogcat.batch import run_batch

    report = run_batch(args.paths, args.out, args.model, args.runtime, args.address, args.actors,
                       log=lambda line: print(line, file=sys.stderr), retry_errors=args.retry_errors)
    print(report.summary())
    if report.errors:
        print(f"dogcat: {report.errors} file(s) could not be classified: their rows in {args.out} say why",
              file=sys.stderr)
    return EXIT_FILE_ERRORS if report.errors else 0


def _export(args: argparse.Namespace) -> int:
    from dogcat.export import export_int8, export_onnx
    from dogcat.inference import Classifier
    from dogcat.model_folder import ModelFolder

    model = ModelFolder.resolve(args.model).keras
    if args.data is not None and not args.int8:
        raise UsageError(f"--data calibrates the int8 twin: add --int8. Received: data={str(args.data)!r}")
    if args.int8:
        if args.data is None:
            raise UsageError("--int8 needs --data DATA_DIR: training photos to calibrate with. Received: data=None")
        with _stderr_parked():  # Keras's start-up chatter, when the float twin must be exported first
            out = export_int8(model, args.data, args.out)
    else:
        with _stderr_parked():
            out = export_onnx(model, args.out)
    if args.out is None:  # beside the model: prove that predict will pick it up
        runtime = "onnx-int8" if args.int8 else "onnx"
        assert Classifier.from_path(model, runtime=runtime).runtime == runtime
    print(f"wrote {out}")
    return 0


def _app(args: argparse.Namespace) -> int:
    import importlib.util

    from dogcat.artifacts import ArtifactError, bundled_file
    from dogcat.errors import MissingDependency

    if importlib.util.find_spec("streamlit") is None:  # else `python -m streamlit` fails after the exec, unexplained
        raise MissingDependency.of(ModuleNotFoundError(name="streamlit"))
    script = bundled_file("demos", "streamlit_app.py")
    if script is None:
        raise ArtifactError("The Streamlit app (demos/streamlit_app.py) is missing from this installation.")
    env = dict(os.environ)
    if args.model is not None:
        _load_classifier(args.model)  # fail here, in one line, rather than inside the page
        env["DOGCAT_MODEL"] = str(args.model.resolve())
    _check_port_free(args.host, args.port)  # Streamlit's own "Port 8501 is not available" names no way out
    # Replace this process, so Ctrl-C and a supervisor's SIGTERM reach Streamlit directly.
    os.execve(sys.executable, _app_command(script, args.host, args.port), env)
    return 0  # not reached


def _check_port_free(host: str, port: int) -> None:
    """Raise UsageError, in one line that says what to do, when another server holds `host:port`."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UsageError(f"Cannot serve on {host}:{port} ({os.strerror(error.errno) if error.errno else error}): "
                             f"another program uses it; pick a free one with --port N. Received: port={port}") from None


def _app_command(script: Path, host: str, port: int) -> list[str]:
    """The Streamlit command line for `dogcat app`.

    Streamlit's own upload limit (200 MB by default) is set to dogcat's MAX_FILE_BYTES, so a
    bigger upload is refused by the server before it is held in memory, and the uploader says
    the limit dogcat applies (Streamlit's "MB" is 2**20 bytes).
    """
    from dogcat.preprocessing import MAX_FILE_BYTES

    return [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.address", host, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
        "--server.maxUploadSize", str(MAX_FILE_BYTES // 2**20),
    ]


def _space_build(args: argparse.Namespace) -> int:
    from dogcat.space import build_space

    out = build_space(args.out, args.model)
    print(f"Wrote a Hugging Face Space (Gradio) to {out}: app.py, requirements.txt, README.md, dogcat/, models/, examples/")
    print(f"Try it:  pip install -r {out / 'requirements.txt'} && python {out / 'app.py'}")
    print(f"Push it: hf auth login && hf upload USER/SPACE_NAME {out} . --repo-type space")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import importlib.util

    from dogcat.model_folder import ModelFolder
    from dogcat.space import find_gradio_app

    app = find_gradio_app()
    import gradio  # noqa: F401  (before the model loads: missing, it is one line naming the gradio extra)

    if args.model is not None:
        os.environ["DOGCAT_MODEL"] = str(ModelFolder.resolve(args.model).keras.resolve())  # the app loads $DOGCAT_MODEL at import
    spec = importlib.util.spec_from_file_location("dogcat_gradio_app", app)
    module = importlib.util.module_from_spec(spec)
    with _stderr_parked():  # Keras's start-up chatter, if the model needs it
        spec.loader.exec_module(module)  # builds the app and loads the model, once
    _warn_about_verdicts(module.CLASSIFIER)  # the app's own warning went to the parked stderr
    module.launch(server_name=args.host, server_port=args.port, share=args.share,
                  share_hint="For a temporary public link: dogcat demo --share")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    from dogcat.errors import MissingDependency, UsageError

    needed = ("fastapi", "uvicorn", "prometheus_client", "python_multipart", *(("ray",) if args.address else ()))
    for name in needed:  # checked here, for one line before any work
        if importlib.util.find_spec(name) is None:
            raise MissingDependency.of(ModuleNotFoundError(name=name))
    from dogcat.serve import create_app, deploy_on_ray, model_file, read_token, serve_locally

    if args.replicas is not None and args.address is None:
        raise UsageError(f"--replicas places copies on a Ray cluster: add --address HEAD:PORT. Received: "
                         f"replicas={args.replicas}")
    token = read_token(args.token_file)
    if args.address is not None:
        print(f"dogcat: deploying {args.replicas or 1} replica(s) on {args.address}; Ray Serve answers on "
              f"http://{args.host}:{args.port} (Ctrl-C or SIGTERM removes them)", file=sys.stderr)
        deploy_on_ray(args.address, args.replicas or 1, args.host, args.port, args.model, args.runtime,
                      args.max_batch, args.batch_wait_ms, token, log=lambda line: print(f"dogcat: {line}", file=sys.stderr))
        return 0
    classifier = _load_classifier(args.model, args.runtime)  # first: a bad --model is one line, not a server log
    _warn_about_verdicts(classifier)
    _check_port_free(args.host, args.port)
    app = create_app(model_file(args.model), classifier=classifier, max_batch=args.max_batch,
                     batch_wait_ms=args.batch_wait_ms, token=token)
    print(f"dogcat: serving {classifier.runtime} on http://{args.host}:{args.port} (API docs at /docs; "
          f"{'bearer token required' if token else 'no token'})", file=sys.stderr)
    serve_locally(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
