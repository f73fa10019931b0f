"""`dogcat batch`: classify a photo library with Ray Data, on a laptop or a cluster.

The job is Ray Data's batch-inference pattern, with dogcat's own pieces at each stage:
1. the driver lists the files (folders searched, globs expanded, as `dogcat predict` does;
   `s3://`, `gs://` and other URIs through the pyarrow filesystem for them) and leaves out those
   the output folder already holds, so running the same job again resumes it;
2. a pool of actors, sized from the CPUs of the cluster's nodes (`plan_for`: one per CPU), each
   holding one ONNX Runtime `Classifier` loaded once, reads and decodes a block of files with
   dogcat.preprocessing (a file that cannot be read becomes its one-line reason, never a failed
   task), scores the photos and decides verdicts with `Classifier.classify_decoded`, the
   scoring path `predict` uses;
3. each block is written as Parquet, one row per file: `predict --csv`'s columns
   (`Prediction.as_row`, its path `printable`) and node (the Ray node that scored it).

The model folder travels through Ray's object store, so the nodes of a cluster need dogcat
installed but not the model or a shared disk. Without `address` a local Ray starts and stops
with the job; with it the job joins that cluster (`ray start --head` on one machine,
`ray start --address HEAD:6379` on the others).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import io
import math
import os
import sys
import tempfile
import warnings as _warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dogcat.artifacts import BATCH_RUNTIMES, ArtifactError
from dogcat.data import IMAGE_SUFFIXES, DataError, expand_paths, skipped_line
from dogcat.errors import DogcatError, UsageError
from dogcat.model_folder import ModelFolder
from dogcat.preprocessing import FORMAT_NAMES, MAX_FILE_BYTES
from dogcat.printable import printable
from dogcat.verdict import row_columns

FILES_PER_BLOCK = 256  # the unit of work Ray schedules, and of one Parquet file (what a resume can skip)
INCOMPLETE_PREFIX = "_incomplete."  # a Parquet file cut short by a crash, set aside (readers skip "_" names)
SCORING_SHARE = 0.8  # of a CPU, for each actor (decode + score); the rest for the Parquet writes (milliseconds each)
ACTORS_START_TIMEOUT_S = 600  # every actor of the plan up before the first block, or the job stops in one line
CONNECT_TIMEOUT_S = 5.0  # for reaching `--address` before Ray tries (Ray itself retries for minutes)
# Object storage: each request bounded, three tries (pyarrow's defaults took 6 s a file once the endpoint
# died, and Ray retried each Parquet write ten times, backing off up to 32 s: 9.5 minutes of silence).
STORAGE_CONNECT_TIMEOUT_S = 5.0
STORAGE_REQUEST_TIMEOUT_S = 30.0
STORAGE_ATTEMPTS = 3
UNREACHABLE = "cannot reach the storage"  # an endpoint gone stops the job in one line, rather than a row per file


class StorageUnreachable(OSError):
    """Raised in an actor when the object storage does not answer: it fails the job at once."""


def _unreachable(reason: str) -> bool:
    """Whether pyarrow's error says the endpoint could not be reached (not: this one file is missing or denied)."""
    return any(mark in reason for mark in ("NETWORK_CONNECTION", "curlCode", "Timeout was reached", "timed out"))


class JobStopped(DogcatError, RuntimeError):
    """The Ray job failed part-way (a node lost for good, the cluster gone): what was written stays, and a rerun resumes."""

    exit_code = 1  # as for files that failed: what was written stays


@dataclass(frozen=True)
class BatchReport:
    """What one `run_batch` did: files found, already done before it, classified by it, and how many of those failed."""

    found: int
    already_done: int
    classified: int
    errors: int
    out_dir: str
    retried: int = 0
    skipped: int = 0  # files in the folders given left out for their extension (named in the log)

    def summary(self) -> str:
        again = f", {self.retried} of them retried after an error" if self.retried else ""
        left_out = f", {self.skipped} skipped (not an image by their extension)" if self.skipped else ""
        return (f"{self.classified} file(s) classified ({self.errors} with an error){again}, {self.already_done} already in "
                f"{self.out_dir}, {self.found} found{left_out}")


@dataclass(frozen=True)
class Plan:
    """How the job uses the cluster: `actors` actors of `actor_cpus` each (decoding, then scoring
    with `threads` ONNX Runtime intra-op threads), and Parquet writes of `write_cpus` each."""

    actors: int
    actor_cpus: float
    write_cpus: float
    threads: int


def plan_for(node_cpus: list[float], actors: int | None = None) -> Plan:
    """Size the job from the CPUs each node reports, so that the actors never hold every CPU.

    An actor per CPU of every node, each decoding its photos and scoring them on one ONNX
    Runtime thread: every core is busy, the decoded photos (150 KB each) never cross the object
    store, and several single-thread sessions outrun one wide one on the same cores. Each asks
    for SCORING_SHARE of a CPU, so that a Parquet write always finds the rest: an actor holding a
    whole CPU (on 1-CPU nodes) left the writes, and with them the job, waiting forever. Ray asks
    one `num_cpus` of every actor, so nodes of less than one CPU scale it down for all.
    `actors` overrides the count: each then gets an equal part of the cluster (and threads to
    match, where that is more than a CPU).
    """
    cpus = [float(c) for c in node_cpus if c > 0]
    if not cpus:
        raise DataError(f"The Ray cluster has no CPUs for dogcat batch. Received: node_cpus={node_cpus}")
    unit = min(1.0, min(cpus))
    write_cpus = round(unit * (1 - SCORING_SHARE), 3)
    if actors is None:
        return Plan(sum(max(1, int(c / unit)) for c in cpus), round(unit * SCORING_SHARE, 3), write_cpus, 1)
    share = min(max(cpus), sum(cpus) / actors)
    return Plan(actors, round(share * SCORING_SHARE, 3), write_cpus, max(1, round(share)))


def run_batch(paths: list[str], out_dir: str, model_path: str | Path | None = None, runtime: str = "onnx",
              address: str | None = None, actors: int | None = None, batch_size: int = 32,
              log: Callable[[str], None] = print, retry_errors: bool = False) -> BatchReport:
    """Classify every image under `paths` into Parquet files in `out_dir`, skipping files already there.

    `actors`: the size of the ONNX Runtime actor pool (default: from the CPUs of the cluster's
    nodes, `plan_for`). `retry_errors`: classify again the files whose row holds an error (a
    bucket that was briefly unreachable), replacing those rows. Everything that can be checked
    without Ray (the model, the paths, the address) is checked before it starts.
    """
    import ray

    if runtime not in BATCH_RUNTIMES:
        raise ArtifactError(f"dogcat batch runs ONNX Runtime: runtime must be one of {BATCH_RUNTIMES}. "
                            f"Received: runtime={runtime!r}")
    if actors is not None and actors < 1:
        raise UsageError(f"actors must be at least 1. Received: actors={actors}")
    skipped: list[str] = []
    found = list_files(paths, skipped)  # the cheap checks first: a typo is said in a second, not after the model loads
    if skipped:
        log(f"dogcat: {skipped_line(skipped)}")
    if not found:
        raise DataError(f"No images found ({FORMAT_NAMES}). Received: paths={paths}")
    if address:
        check_address(address)
    model_files, image_size, warnings = _model_files(model_path, runtime)
    for warning in warnings:  # as `dogcat predict` says them, before the job starts
        log(f"dogcat: warning: {warning}")
    # With retry_errors their rows go first: a crash before the job ends leaves them to do, never twice.
    # Rows hold `printable` paths (a name that is not UTF-8 cannot be an Arrow string): compared as such.
    retried = drop_error_rows(out_dir, {printable(path) for path in found}, log) if retry_errors else 0
    done = done_paths(out_dir, log)
    todo = [path for path in found if printable(path) not in done]
    if not todo:
        log(f"dogcat: all {len(found)} file(s) are already in {out_dir}")
        return BatchReport(len(found), len(found), 0, 0, out_dir, skipped=len(skipped))

    started_here = not ray.is_initialized()
    if started_here:
        # "local": a Ray of this job's own, even where `ray start` left a cluster on this machine.
        # ERROR-level logs only, and none from the workers: the progress bars and dogcat's lines stay readable.
        # NumPy's BLAS on one thread per actor, as in `dogcat predict` (dogcat.cli): the actors are the parallelism.
        ray.init(address=address or "local", logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "OPENBLAS_NUM_THREADS": "1"}})
    try:
        plan = plan_for([node.get("Resources", {}).get("CPU", 0) for node in ray.nodes() if node.get("Alive")], actors)
        # Enough blocks for every actor, several times over: a block is one actor call, and the
        # actors that start first must not take them all.
        blocks = min(len(todo), max(math.ceil(len(todo) / FILES_PER_BLOCK), 4 * plan.actors))
        context = ray.data.DataContext.get_current()
        # Wait for every actor before the first block (set before the dataset, which copies it): otherwise the first one up takes the whole
        # job while a slower node is still loading its model, and a pool that cannot start says
        # so instead of waiting forever. Only at the start: a node lost later does not stop the job.
        waited, context.wait_for_min_actors_s = context.wait_for_min_actors_s, ACTORS_START_TIMEOUT_S
        # Each file by its bytes, to open it, and its printable name, for its row.
        dataset = ray.data.from_items([{"path": printable(path), "file": os.fsencode(path)} for path in todo],
                                      override_num_blocks=blocks)
        # At least one actor, up to the plan: a node lost mid-job takes its actors with it, and the
        # job goes on with the others while Ray restarts them (Ray Data's actors: max_restarts=-1,
        # max_task_retries=-1; its tasks, the writes included, are retried too). Two blocks in
        # flight per actor at most, so the first actors up cannot take every block.
        scored = dataset.map_batches(
            ClassifyBatch, batch_size=None, batch_format="numpy",
            fn_constructor_kwargs={"model_files": ray.put(model_files), "runtime": runtime, "image_size": image_size,
                                   "batch_size": batch_size, "threads": plan.threads},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors, initial_size=plan.actors,
                                               max_tasks_in_flight_per_actor=2),
            num_cpus=plan.actor_cpus,
        )
        log(f"dogcat: {len(todo)} file(s) to classify: {plan.actors} actor(s) of {plan.actor_cpus:g} CPU "
            f"(decoding, then ONNX Runtime on {plan.threads} thread(s)), Parquet writes of {plan.write_cpus:g} CPU")
        try:
            _write_parquet(scored, out_dir, plan.write_cpus, context)
        finally:
            context.wait_for_min_actors_s = waited
    finally:
        if started_here:
            ray.shutdown()
    now_done = done_paths(out_dir, log)
    errors = _count_errors(out_dir, {printable(path) for path in todo})
    return BatchReport(len(found), len(found) - len(todo), len(now_done) - len(done), errors, out_dir, retried,
                       len(skipped))


def _write_parquet(scored, out_dir: str, write_cpus: float, context) -> None:
    """Run the job by writing its rows to `out_dir`; a failure is one JobStopped line (the storage
    named when it is the storage that is gone), and what was written is kept for a rerun."""
    import ray

    sink, sink_path = _filesystem(out_dir)
    with _warnings.catch_warnings():  # Ray warns that a custom list is matched as a regex: none is
        _warnings.simplefilter("ignore", DeprecationWarning)
        # No Ray retries of a write (ten, backing off up to 32 s): the filesystem's own bounded tries only.
        io_retries, context.retried_io_errors = context.retried_io_errors, []
    try:
        scored.write_parquet(sink_path, filesystem=sink, min_rows_per_file=FILES_PER_BLOCK,
                             ray_remote_args={"num_cpus": write_cpus})
    except (ray.exceptions.RayError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        lost = [line.strip() for line in str(error).splitlines() if UNREACHABLE in line or _unreachable(line)]
        if lost:  # the storage, named, rather than Ray's first line
            reason = lost[0][lost[0].find(UNREACHABLE):] if UNREACHABLE in lost[0] else f"{UNREACHABLE}: {lost[0]}"
            raise JobStopped(f"the job stopped: {reason[:300]}; the files written so far are kept: rerun the same "
                             f"command once it answers. Received: out_dir={out_dir!r}") from error
        raise JobStopped(f"the job stopped ({type(error).__name__}: {reason[:300]}); the files written so far are "
                         f"kept: rerun the same command to finish. Received: out_dir={out_dir!r}") from error
    finally:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", DeprecationWarning)
            context.retried_io_errors = io_retries


def check_address(address: str) -> None:
    """Refuse a Ray address nothing listens on within CONNECT_TIMEOUT_S, since `ray.init` would
    retry it for minutes. Only HOST:PORT is probed ("auto" and `ray://` URIs go to Ray as given)."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise DataError(f"Cannot reach the Ray cluster at {address} ({error.strerror or error}): is `ray start --head` "
                        f"running there? Received: address={address!r}") from None
    check_token(address)


def check_token(address: str) -> None:
    """Refuse, in one line naming the fix, a cluster that will not let this machine in: `ray.init`
    would retry a refused token for 20 s and end in a 60-line traceback, and with RAY_AUTH_MODE=token
    but no token on this machine Ray's C++ core aborts the process. One request to the head's GCS
    answers at once; Ray's own warning line about it is kept off the terminal."""
    from ray._raylet import AuthenticationTokenLoader, GcsClient
    from ray.exceptions import AuthenticationError

    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    has_token = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    fix = (f"copy the head's ~/.ray/auth_token to ~/.ray/auth_token on this machine (or point RAY_AUTH_TOKEN_PATH "
           f"at it), then rerun. Received: address={address!r}")
    if token_mode and not has_token:
        raise DataError(f"RAY_AUTH_MODE=token, but this machine has no Ray token: {fix}")
    try:
        with _stderr_silenced():
            GcsClient(address=address)
    except AuthenticationError:
        if token_mode:
            raise DataError(f"The Ray cluster at {address} refused this machine's token (not the head's): {fix}") from None
        if has_token:
            raise DataError(f"The Ray cluster at {address} uses token authentication: export RAY_AUTH_MODE=token "
                            f"(this machine's ~/.ray/auth_token must be the head's), then rerun. "
                            f"Received: address={address!r}") from None
        raise DataError(f"The Ray cluster at {address} uses token authentication: export RAY_AUTH_MODE=token and "
                        f"{fix}") from None
    except Exception:  # anything else is ray.init's to say, as before
        return


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 on /dev/null for the duration: Ray's C++ core writes its warnings there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def list_files(patterns: list[str], skipped: list[str] | None = None) -> list[str]:
    """Image files under `patterns`, as `dogcat predict` finds them; URIs (`s3://bucket/photos/`,
    `gs://.../*.jpg`) are listed through pyarrow's filesystem for their scheme. A local path that
    matches nothing is refused here, before Ray starts: it is a typo far more often than a file
    that vanished. `skipped`, if given, receives the files in the folders given left out for their
    extension, so the job can count and name them."""
    local = [p for p in patterns if not _is_uri(p)]
    left_out: list[Path] = []
    found, missing = expand_paths(local, left_out) if local else ([], [])
    if skipped is not None:
        skipped.extend(map(str, left_out))
    # Absolute, so a row's path names its file whatever the folder a rerun starts in: `photos/a.jpg`
    # then `/home/me/photos/a.jpg` is the same file, resumed, not classified twice.
    found = [os.path.abspath(path) for path in found]
    if missing:
        raise DataError(f"No such file or folder: {', '.join(map(repr, missing[:5]))}"
                        f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}. Received: paths={missing}")
    for uri in (p for p in patterns if _is_uri(p)):
        found.extend(_list_uri(uri, skipped))
    return sorted(dict.fromkeys(found))


def done_paths(out_dir: str, log: Callable[[str], None] = print) -> set[str]:
    """The `path` of every row in `out_dir`'s Parquet files: what a re-run skips.

    A file a crash cut short cannot be read: it is renamed with an `_incomplete.` prefix (which
    Parquet readers skip) and its files are classified again.
    """
    return {path for paths, _ in _output_files(out_dir, log).values() for path in paths}


def drop_error_rows(out_dir: str, paths: set[str], log: Callable[[str], None] = print) -> int:
    """Remove from `out_dir` the rows of `paths` that hold an error, so the job classifies those files again.

    Done before the job, file by file (rewritten beside, then moved over the original): a crash
    part-way leaves each row either still there or gone to be done again, never a file twice.
    Returns how many rows went.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    filesystem, _ = _filesystem(out_dir)
    dropped = 0
    for name, (rows, errors) in _output_files(out_dir, log).items():
        retry = [bool(error) and path in paths for path, error in zip(rows, errors, strict=True)]
        if not any(retry):
            continue
        table = pq.read_table(name, filesystem=filesystem)
        keep = table.filter(pc.invert(pa.array(retry, pa.bool_())))
        if keep.num_rows:
            folder, base = name.rsplit("/", 1)
            beside = f"{folder}/_rewrite.{base}"
            pq.write_table(keep, beside, filesystem=filesystem)
            filesystem.move(beside, name)
        else:
            filesystem.delete_file(name)
        dropped += sum(retry)
    if dropped:
        log(f"dogcat: {dropped} file(s) with an error row are classified again (--retry-errors)")
    return dropped


def _filesystem(out_dir: str):
    return filesystem_for(_absolute(out_dir))


def filesystem_for(uri: str):
    """(pyarrow filesystem, path) for `uri`, as `FileSystem.from_uri` gives them, with S3's requests
    bounded (STORAGE_*): a dead endpoint is then an error in seconds, not minutes."""
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    if isinstance(filesystem, pyarrow.fs.S3FileSystem):
        _, (options,) = filesystem.__reduce__()  # everything from_uri resolved (region, endpoint, scheme)
        options.update(connect_timeout=STORAGE_CONNECT_TIMEOUT_S, request_timeout=STORAGE_REQUEST_TIMEOUT_S)
        filesystem = pyarrow.fs.S3FileSystem(
            **options, retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=STORAGE_ATTEMPTS))
    return filesystem, path


def _output_files(out_dir: str, log: Callable[[str], None]) -> dict[str, tuple[list[str], list[str | None]]]:
    """Each readable Parquet file of `out_dir` (its pyarrow path) -> its rows' paths and errors;
    unreadable ones (cut short) are set aside as `_incomplete.*`."""
    import pyarrow.fs
    import pyarrow.parquet as pq

    filesystem, root = _filesystem(out_dir)
    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=False, allow_not_found=True))
    except (OSError, pyarrow.ArrowException) as error:
        raise DataError(f"Cannot list the output folder: {error}. Received: out_dir={out_dir!r}") from error
    files: dict[str, tuple[list[str], list[str | None]]] = {}
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pyarrow.fs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        if info.base_name.startswith(("_", ".")):
            continue
        try:
            table = pq.read_table(info.path, columns=["path", "error"], filesystem=filesystem)
        except (OSError, pyarrow.ArrowException):
            aside = f"{info.path.rsplit('/', 1)[0]}/{INCOMPLETE_PREFIX}{info.base_name}"
            filesystem.move(info.path, aside)
            log(f"dogcat: warning: {info.path} could not be read (a run cut short?): set aside as {aside}; "
                "its files are classified again")
            continue
        files[info.path] = (table.column("path").to_pylist(), table.column("error").to_pylist())
    return files


def decode_files(batch: dict[str, np.ndarray], image_size: int) -> tuple[list[str], list]:
    """A Ray Data batch -> its rows' paths, and each file as (uint8 image at the model's size, upright
    size) or the one-line reason it could not be read, as `Classifier.classify_decoded` takes them.

    Local files go through the decoder as paths, one at a time; URIs are read through pyarrow, at
    most MAX_FILE_BYTES, since a bucket can hold anything.
    """
    from dogcat.preprocessing import decode_sources

    paths = [str(p) for p in batch["path"]]
    files = [os.fsdecode(bytes(f)) for f in batch["file"]] if "file" in batch else paths
    decoded = []
    for file in files:
        source = _read_uri(file) if _is_uri(file) else file
        decoded.append(str(source) if isinstance(source, Exception) else decode_sources([source], [file], image_size)[0])
    return paths, decoded


class ClassifyBatch:
    """One actor: an ONNX Runtime classifier loaded once from the model files Ray shipped to it,
    which decodes each block of paths (`decode_files`) and scores it."""

    def __init__(self, model_files, runtime: str, image_size: int, batch_size: int = 32, threads: int = 1):
        import ray

        from dogcat.inference import Classifier

        model_files: dict[str, bytes] = ray.get(model_files)  # put once by the driver, fetched once per actor
        self._folder = tempfile.TemporaryDirectory(prefix="dogcat-batch-model-")
        for name, data in model_files.items():
            Path(self._folder.name, name).write_bytes(data)
        # `threads` per call: each actor has its CPU share, and actors sharing a node must not fight over its cores.
        self.classifier = Classifier.from_path(self._folder.name, runtime=runtime,
                                               batch_size=batch_size, threads=threads)
        self.image_size = image_size
        self.node = ray.get_runtime_context().get_node_id()  # in every row: which node scored it
        self.class_names = list(self.classifier.class_names.values())

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        predictions = self.classifier.classify_decoded(*decode_files(batch, self.image_size))
        columns = [*row_columns(self.class_names), "node"]  # which node scored the row, for a cluster's record
        types = {"width": pa.int64(), "height": pa.int64()}
        schema = pa.schema([(c, pa.float64() if c.startswith("p_") else types.get(c, pa.string())) for c in columns])
        return pa.Table.from_pylist([p.as_row(self.class_names) | {"node": self.node} for p in predictions], schema)


def _model_files(model_path: str | Path | None, runtime: str) -> tuple[dict[str, bytes], int, list[str]]:
    """The files an actor needs, read once on the driver, the model's input size, and the loaded
    classifier's warnings (no detector, no ImageNet head); loaded here first, so a missing or stale
    ONNX twin is one line, not a failed actor."""
    from dogcat.inference import Classifier

    folder = ModelFolder.resolve(model_path)
    classifier = Classifier.from_path(folder.keras, runtime=runtime)
    files = {name: path.read_bytes() for name, path in folder.serving_files(runtime).items()}
    return files, classifier.image_size, classifier.warnings


def _is_uri(path: str) -> bool:
    return "://" in path


def _absolute(out_dir: str) -> str:
    return out_dir if _is_uri(out_dir) else os.path.abspath(out_dir)


def _list_uri(uri: str, skipped: list[str] | None = None) -> list[str]:
    """Image files under a URI folder, or matching a URI glob (`s3://bucket/2024/*/cat*.jpg`);
    `skipped`, if given, receives the other files there (not hidden ones)."""
    import pyarrow.fs

    scheme, _, rest = uri.partition("://")
    magic = glob.has_magic(rest)
    base = rest
    if magic:  # list from the last folder before the first wildcard, then match
        parts = rest.split("/")
        first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        base = "/".join(parts[:first])
    try:
        filesystem, root = filesystem_for(f"{scheme}://{base}")
        info = filesystem.get_file_info(root)
        if info.type == pyarrow.fs.FileType.File and not magic:
            return [uri]
        if info.type != pyarrow.fs.FileType.Directory:
            return [uri]  # the decoder says it is missing
        listed = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    except (OSError, pyarrow.ArrowException) as error:
        raise DataError(f"Cannot list {uri}: {error}. Received: path={uri!r}") from error
    prefix = uri[: len(scheme) + 3] if scheme != "file" else "file://"
    files = [f"{prefix}{i.path}" for i in listed if i.type == pyarrow.fs.FileType.File
             and (not magic or fnmatch.fnmatchcase(f"{prefix}{i.path}", uri))]
    if skipped is not None:
        skipped.extend(f for f in files if Path(f).suffix.lower() not in IMAGE_SUFFIXES
                       and not Path(f).name.startswith("."))
    return [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]


def _read_uri(uri: str) -> io.BytesIO | Exception:
    """The bytes of a file on a pyarrow filesystem, or the one-line reason they could not be read."""
    import pyarrow

    try:
        filesystem, path = filesystem_for(uri)
        with filesystem.open_input_stream(path) as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except (OSError, pyarrow.ArrowException) as error:
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        if _unreachable(reason):  # every file after it would wait as long: the job stops, a rerun resumes
            raise StorageUnreachable(f"{UNREACHABLE} of {uri.split('://')[0]}://{path.split('/')[0]} ({reason})") from None
        return OSError(f"cannot read: {reason}")
    if len(data) > MAX_FILE_BYTES:
        return OSError(f"file is larger than {MAX_FILE_BYTES // 2**20} MiB")
    stream = io.BytesIO(data)
    stream.name = uri
    return stream


def _count_errors(out_dir: str, paths: set[str]) -> int:
    """Rows with an error among `paths` in `out_dir` (this run's files)."""
    import pyarrow.dataset as ds

    filesystem, root = _filesystem(out_dir)
    table = ds.dataset(root, format="parquet", filesystem=filesystem).to_table(columns=["path", "error"])
    return sum(1 for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist(), strict=True)
               if error and path in paths)
