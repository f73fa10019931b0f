"""`dogcat batch`: classify a photo library with Ray Data, on a laptop or a cluster.

The job is Ray Data's batch-inference pattern, with dogcat's own pieces at each stage:
1. the driver lists the files (folders searched, globs expanded, as `dogcat predict` does;
   `s3://`, `gs://` and other URIs through the pyarrow filesystem for them) and leaves out those
   the output folder already holds, so running the same job again resumes it;
2. Ray tasks read and decode the files with dogcat.preprocessing (`map_batches`); a file that
   cannot be read becomes its one-line reason, never a failed task;
3. a pool of actors, each holding one ONNX Runtime `Classifier` loaded once, scores the photos
   and decides verdicts with `Classifier.classify_decoded`, the scoring path `predict` uses;
4. each block is written as Parquet, one row per file: path, verdict, label, p_<class>,
   width, height, looks_like, p_looks_like (the top ImageNet class), error (null where the file was read).

The model folder travels through Ray's object store, so the nodes of a cluster need dogcat
installed but not the model or a shared disk. Without `address` a local Ray starts and stops
with the job; with it the job joins that cluster (`ray start --head` on one machine,
`ray start --address HEAD:6379` on the others).
"""

from __future__ import annotations

import fnmatch
import glob
import io
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dogcat.artifacts import (
    BATCH_RUNTIMES,
    CHECKSUMS_FILENAME,
    CLASS_NAMES_FILENAME,
    DETECTOR_FILENAME,
    IMAGENET_HEAD_FILENAME,
    INT8_ONNX_FILENAME,
    MODEL_FILENAME,
    ONNX_FILENAME,
    ArtifactError,
)
from dogcat.data import IMAGE_SUFFIXES, DataError, expand_paths
from dogcat.detector import imagenet_head_path
from dogcat.preprocessing import MAX_FILE_BYTES

FILES_PER_BLOCK = 256  # the unit of work Ray schedules, and of one Parquet file (what a resume can skip)
INCOMPLETE_PREFIX = "_incomplete."  # a Parquet file cut short by a crash, set aside (readers skip "_" names)


@dataclass(frozen=True)
class BatchReport:
    """What one `run_batch` did: files found, already done before it, classified by it, and how many of those failed."""

    found: int
    already_done: int
    classified: int
    errors: int
    out_dir: str

    def summary(self) -> str:
        return (f"{self.classified} file(s) classified ({self.errors} with an error), {self.already_done} already in "
                f"{self.out_dir}, {self.found} found")


def run_batch(paths: list[str], out_dir: str, model_path: str | Path | None = None, runtime: str = "onnx",
              address: str | None = None, actors: int | None = None, batch_size: int = 32,
              log: Callable[[str], None] = print) -> BatchReport:
    """Classify every image under `paths` into Parquet files in `out_dir`, skipping files already there.

    `actors`: the size of the ONNX Runtime actor pool (default: one per node of the cluster, since
    one ONNX Runtime session already uses all of a node's cores).
    """
    import ray

    from dogcat.inference import default_model_path

    if runtime not in BATCH_RUNTIMES:
        raise ArtifactError(f"dogcat batch runs ONNX Runtime: runtime must be one of {BATCH_RUNTIMES}. "
                            f"Received: runtime={runtime!r}")
    if actors is not None and actors < 1:
        raise ArtifactError(f"actors must be at least 1. Received: actors={actors}")
    model_files, image_size, warnings = _model_files(Path(model_path) if model_path else default_model_path(), runtime)
    for warning in warnings:  # as `dogcat predict` says them, before the job starts
        log(f"dogcat: warning: {warning}")
    found = list_files(paths)
    if not found:
        raise DataError(f"No images found (JPEG, PNG, WebP, BMP or GIF). Received: paths={paths}")
    done = done_paths(out_dir, log)
    todo = [path for path in found if path not in done]
    if not todo:
        log(f"dogcat: all {len(found)} file(s) are already in {out_dir}")
        return BatchReport(len(found), len(found), 0, 0, out_dir)

    started_here = not ray.is_initialized()
    if started_here:
        # "local": a Ray of this job's own, even where `ray start` left a cluster on this machine.
        ray.init(address=address or "local", logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    try:
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        pool = actors or max(1, nodes)
        blocks = max(1, math.ceil(len(todo) / FILES_PER_BLOCK))
        dataset = ray.data.from_items([{"path": path} for path in todo], override_num_blocks=blocks)
        decoded = dataset.map_batches(decode_files, batch_size=FILES_PER_BLOCK, batch_format="numpy",
                                      fn_kwargs={"image_size": image_size}, num_cpus=1)
        scored = decoded.map_batches(
            ClassifyBatch, batch_size=batch_size, batch_format="numpy",
            fn_constructor_kwargs={"model_files": ray.put(model_files), "runtime": runtime},
            compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1,
            scheduling_strategy="SPREAD",
        )
        scored.write_parquet(_absolute(out_dir), min_rows_per_file=FILES_PER_BLOCK)
    finally:
        if started_here:
            ray.shutdown()
    now_done = done_paths(out_dir, log)
    errors = _count_errors(out_dir, set(todo))
    return BatchReport(len(found), len(found) - len(todo), len(now_done) - len(done), errors, out_dir)


def list_files(patterns: list[str]) -> list[str]:
    """Image files under `patterns`, as `dogcat predict` finds them; URIs (`s3://bucket/photos/`,
    `gs://.../*.jpg`) are listed through pyarrow's filesystem for their scheme. Paths that match
    nothing are returned too, so the job gives each its row with an error."""
    local = [p for p in patterns if not _is_uri(p)]
    found, missing = expand_paths(local) if local else ([], [])
    for uri in (p for p in patterns if _is_uri(p)):
        found.extend(_list_uri(uri))
    return sorted(dict.fromkeys(found + missing))


def done_paths(out_dir: str, log: Callable[[str], None] = print) -> set[str]:
    """The `path` of every row in `out_dir`'s Parquet files: what a re-run skips.

    A file a crash cut short cannot be read: it is renamed with an `_incomplete.` prefix (which
    Parquet readers skip) and its files are classified again.
    """
    import pyarrow.fs
    import pyarrow.parquet as pq

    filesystem, root = pyarrow.fs.FileSystem.from_uri(_absolute(out_dir))
    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=False, allow_not_found=True))
    except (OSError, pyarrow.ArrowException) as error:
        raise DataError(f"Cannot list the output folder: {error}. Received: out_dir={out_dir!r}") from error
    done: set[str] = set()
    for info in infos:
        if info.type != pyarrow.fs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        if info.base_name.startswith(("_", ".")):
            continue
        try:
            table = pq.read_table(info.path, columns=["path"], filesystem=filesystem)
        except (OSError, pyarrow.ArrowException):
            aside = f"{info.path.rsplit('/', 1)[0]}/{INCOMPLETE_PREFIX}{info.base_name}"
            filesystem.move(info.path, aside)
            log(f"dogcat: warning: {info.path} could not be read (a run cut short?): set aside as {aside}; "
                "its files are classified again")
            continue
        done.update(table.column("path").to_pylist())
    return done


def decode_files(batch: dict[str, np.ndarray], image_size: int) -> dict[str, np.ndarray]:
    """A Ray Data batch of paths -> uint8 images at the model's size, upright sizes and errors.

    Local files go through the decoder as paths; URIs are read through pyarrow, at most
    MAX_FILE_BYTES, since a bucket can hold anything.
    """
    from dogcat.inference import decode_sources

    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
    sizes = np.zeros((len(paths), 2), np.int64)
    errors = []
    for index, path in enumerate(paths):
        source = _read_uri(path) if _is_uri(path) else path
        item = str(source) if isinstance(source, Exception) else decode_sources([source], [path], image_size)[0]
        if isinstance(item, str):
            errors.append(item)
        else:
            images[index], sizes[index] = item
            errors.append("")
    return {"path": np.array(paths, dtype=object), "image": images, "size": sizes, "error": np.array(errors, dtype=object)}


class ClassifyBatch:
    """One ONNX Runtime classifier per actor, loaded once from the model files Ray shipped to it."""

    def __init__(self, model_files, runtime: str):
        import ray

        from dogcat.inference import Classifier

        model_files: dict[str, bytes] = ray.get(model_files)  # put once by the driver, fetched once per actor
        self._folder = tempfile.TemporaryDirectory(prefix="dogcat-batch-model-")
        for name, data in model_files.items():
            Path(self._folder.name, name).write_bytes(data)
        self.classifier = Classifier.from_path(Path(self._folder.name, MODEL_FILENAME), runtime=runtime)
        self.class_names = list(self.classifier.class_names.values())

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        decoded = [error if error else (image, (int(size[0]), int(size[1])))
                   for image, size, error in zip(batch["image"], batch["size"], batch["error"], strict=True)]
        predictions = self.classifier.classify_decoded(paths, decoded)
        columns = {
            "path": pa.array(paths, pa.string()),
            "verdict": pa.array([p.verdict for p in predictions], pa.string()),
            "label": pa.array([p.label for p in predictions], pa.string()),
        }
        for name in self.class_names:
            columns[f"p_{name}"] = pa.array([p.probabilities[name] if p.probabilities else None for p in predictions],
                                            pa.float64())
        columns["width"] = pa.array([p.size[0] if p.size else None for p in predictions], pa.int64())
        columns["height"] = pa.array([p.size[1] if p.size else None for p in predictions], pa.int64())
        columns["looks_like"] = pa.array([p.looks_like.name if p.looks_like else None for p in predictions], pa.string())
        columns["p_looks_like"] = pa.array([p.looks_like.probability if p.looks_like else None for p in predictions],
                                           pa.float64())
        columns["error"] = pa.array([p.error for p in predictions], pa.string())
        return pa.table(columns)


def _model_files(model_path: Path, runtime: str) -> tuple[dict[str, bytes], int, list[str]]:
    """The files an actor needs, read once on the driver, the model's input size, and the loaded
    classifier's warnings (no detector, no ImageNet head); loaded here first, so a missing or stale
    ONNX twin is one line, not a failed actor."""
    from dogcat.inference import Classifier

    if model_path.is_dir():
        model_path = model_path / MODEL_FILENAME
    classifier = Classifier.from_path(model_path, runtime=runtime)
    names = [MODEL_FILENAME, CLASS_NAMES_FILENAME, ONNX_FILENAME]
    names += [INT8_ONNX_FILENAME] if runtime == "onnx-int8" else []
    names += [name for name in (DETECTOR_FILENAME, CHECKSUMS_FILENAME) if model_path.with_name(name).is_file()]
    files = {name: model_path.with_name(name).read_bytes() for name in names}
    head = imagenet_head_path(model_path)  # the detector's ImageNet head: beside the model, or the shipped one
    if head is not None:
        files[IMAGENET_HEAD_FILENAME] = head.read_bytes()
    return files, classifier.image_size, classifier.warnings


def _is_uri(path: str) -> bool:
    return "://" in path


def _absolute(out_dir: str) -> str:
    return out_dir if _is_uri(out_dir) else os.path.abspath(out_dir)


def _list_uri(uri: str) -> list[str]:
    """Image files under a URI folder, or matching a URI glob (`s3://bucket/2024/*/cat*.jpg`)."""
    import pyarrow.fs

    scheme, _, rest = uri.partition("://")
    magic = glob.has_magic(rest)
    base = rest
    if magic:  # list from the last folder before the first wildcard, then match
        parts = rest.split("/")
        first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        base = "/".join(parts[:first])
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(f"{scheme}://{base}")
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
             and Path(i.base_name).suffix.lower() in IMAGE_SUFFIXES]
    return [f for f in files if not magic or fnmatch.fnmatchcase(f, uri)]


def _read_uri(uri: str) -> io.BytesIO | Exception:
    """The bytes of a file on a pyarrow filesystem, or the one-line reason they could not be read."""
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except (OSError, pyarrow.ArrowException) as error:
        return OSError(f"cannot read: {str(error).splitlines()[0]}")
    if len(data) > MAX_FILE_BYTES:
        return OSError(f"file is larger than {MAX_FILE_BYTES // 2**20} MiB")
    stream = io.BytesIO(data)
    stream.name = uri
    return stream


def _count_errors(out_dir: str, paths: set[str]) -> int:
    """Rows with an error among `paths` in `out_dir` (this run's files)."""
    import pyarrow.dataset as ds

    table = ds.dataset(_absolute(out_dir), format="parquet").to_table(columns=["path", "error"])
    return sum(1 for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist(), strict=True)
               if error and path in paths)
