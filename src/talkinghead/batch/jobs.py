"""Job files: what to generate, one job per row, checked before any model loads.

A job file is a CSV file (a header row naming the columns), a JSON Lines file (one
object per line) or a JSON list of objects; a folder of portraits and speech files
with a pairing rule makes the same jobs (`folder_jobs`). Every job has a ``source``,
an ``audio`` and an ``output``; the optional columns are its settings (`SETTING_COLUMNS`),
and a batch's command-line options are the defaults of the columns a row leaves empty.
Relative paths are relative to the job file's folder.

`read_jobs` turns the rows into `BatchJob`s; a row that cannot be one (a value that is
not a number, an unknown key in a JSON line) becomes a `RowFailure` with its reason,
and the other rows go on. `plan_jobs` then sorts the jobs into those to run, those an
earlier run finished (their output exists: resuming) and those that cannot run (a file
missing, a bad setting, two jobs writing the same output), each failure with its
reason. Only a job file that cannot be read at all is an error (`JobFileError`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from talkinghead.errors import MediaError, SettingsError, TalkingHeadError
from talkinghead.face.types import CropConfig
from talkinghead.methods.ditto.pose_controls import POSE_CONTROLS
from talkinghead.validation import check_max_size, check_not_an_input

# What every job names, and what it may set (columns of a CSV file, keys of a JSON line).
REQUIRED_COLUMNS = ("source", "audio", "output")
INT_SETTINGS = ("seed", "steps", "fade_in", "fade_out", "max_size", "resolution", "fps")
FLOAT_SETTINGS = (*POSE_CONTROLS, "crop_scale", "crop_vy")
BOOL_SETTINGS = ("blink", "online", "stream")
TEXT_SETTINGS = ("id", "method", "checkpoints", "emotion")
SETTING_COLUMNS = TEXT_SETTINGS + INT_SETTINGS + FLOAT_SETTINGS + BOOL_SETTINGS
COLUMNS = REQUIRED_COLUMNS + SETTING_COLUMNS

# Settings DiT-Head and DiffTalk jobs take; the rest are Ditto's.
OTHER_METHOD_SETTINGS = {
    "dithead": ("seed", "steps", "fps", "max_size"),
    "difftalk": ("seed", "steps", "resolution", "max_size"),
}
# As `talkinghead generate` runs them: DiT-Head at the paper's 50 fps (2x interpolated).
OTHER_METHOD_DEFAULTS = {"dithead": {"fps": 50}, "difftalk": {"resolution": 256}}
# The name a method's generate entry point gives a setting.
OTHER_METHOD_OPTION_NAMES = {"dithead": {"max_size": "max_side"}}
OTHER_METHOD_CHOICES = {"fps": (25, 50), "resolution": (256, 512)}

SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".mp4", ".mov", ".mkv", ".webm")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")
PAIRINGS = ("stem", "all")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class JobFileError(TalkingHeadError):
    """The job file (or folder) cannot be read as jobs at all."""


@dataclass(frozen=True)
class BatchJob:
    """One video to make.

    key:        names the job in the progress, the summary and the report (``id``, else
                where the row is: ``jobs.csv:3``)
    output:     a video file, or a frames folder (a path ending in "/")
    settings:   Ditto's `DittoPipeline.generate` settings for this job (emotion, seed,
                steps, pose, fades, crop, max_size, blink, online)
    options:    DiT-Head's / DiffTalk's own options (fps, resolution)
    """

    key: str
    source: Path
    audio: Path
    output: str
    method: str = "ditto"
    settings: Mapping[str, Any] = field(default_factory=dict)
    streaming: bool = False
    checkpoints: Path | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def output_path(self) -> Path:
        return Path(self.output)

    @property
    def avatar_key(self) -> str:
        """Jobs with the same key register the same avatar: their source, crop and size."""
        if self.method != "ditto":
            return f"{self.method}:{self.source}"
        crop = self.settings.get("crop", CropConfig())
        return f"{self.source}|{crop.scale}|{crop.vy_ratio}|{self.settings.get('max_size')}"

    def describe(self) -> dict[str, Any]:
        """The job as the report lists it."""
        return {"source": str(self.source), "audio": str(self.audio), "output": self.output}


@dataclass(frozen=True)
class RowFailure:
    """A row that could not become a job, and why."""

    key: str
    reason: str
    source: str | None = None
    audio: str | None = None
    output: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "audio": self.audio, "output": self.output}


@dataclass
class JobList:
    """What a job file holds: its jobs, the rows that are not jobs, and where it is."""

    jobs: list[BatchJob]
    failures: list[RowFailure] = field(default_factory=list)
    origin: Path | None = None
    report_path: Path | None = None  # where the report goes by default (None: beside origin)
    order: list[str] = field(default_factory=list)  # every key, in the file's order

    def __len__(self) -> int:
        return len(self.jobs) + len(self.failures)

    def __post_init__(self) -> None:
        if not self.order:
            self.order = [j.key for j in self.jobs] + [f.key for f in self.failures]


# --- reading rows ------------------------------------------------------------------------------


def _column_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _parse_value(name: str, value: Any) -> Any:
    """A cell or JSON value as the setting's type; None for an empty cell."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = value.strip() if isinstance(value, str) else value
    if name in INT_SETTINGS:
        try:
            if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
                raise ValueError
            return int(text)
        except (TypeError, ValueError):
            raise SettingsError(f"{name} must be a whole number, got {value!r}") from None
    if name in FLOAT_SETTINGS:
        try:
            if isinstance(text, bool):
                raise ValueError
            return float(text)
        except (TypeError, ValueError):
            raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if name in BOOL_SETTINGS:
        if isinstance(text, bool):
            return text
        if str(text).lower() in _TRUE:
            return True
        if str(text).lower() in _FALSE:
            return False
        raise SettingsError(f"{name} must be true or false, got {value!r}")
    if name == "emotion":
        return _parse_emotion(text)
    if not isinstance(text, str):
        raise SettingsError(f"{name} must be text, got {value!r}")
    return text


def _parse_emotion(value: Any) -> Any:
    """As `talkinghead generate --emotion`: a name or 0-7, or a comma list of them."""
    if isinstance(value, (int, list)):
        return value
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    labels: list[Any] = [int(p) if p.isdigit() else p for p in parts]
    return labels[0] if len(labels) == 1 else labels


def generating_methods() -> list[str]:
    """The registered methods with a ``generate`` entry point (audio in, video out)."""
    from talkinghead.methods import METHODS

    return [name for name, m in METHODS.items() if getattr(m, "generate", None)]


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _resolve_output(path: str, base: Path) -> str:
    """Absolute, keeping a trailing "/" (a frames folder) that `Path` would drop."""
    folder = path.endswith(("/", os.sep))
    resolved = str(_resolve(path, base))
    return resolved + "/" if folder else resolved


def job_from_row(
    row: Mapping[str, Any], key: str, base: Path, defaults: Mapping[str, Any] | None = None
) -> BatchJob:
    """One job from a row's values (defaults for what it leaves empty); raises `SettingsError`.

    A default the job's method does not take is left out (a batch-wide ``--emotion`` does
    not stop a DiffTalk job); the same setting in the row itself is an error.
    """
    values: dict[str, Any] = {}
    from_row: set[str] = set()
    for given, is_row in ((defaults or {}, False), (row, True)):
        for name, value in given.items():
            column = _column_name(str(name))
            if column not in COLUMNS:
                raise SettingsError(f"unknown key {name!r}: use {', '.join(COLUMNS)}")
            parsed = _parse_value(column, value)
            if parsed is not None:  # an empty cell keeps the default
                values[column] = parsed
                if is_row:
                    from_row.add(column)
    for name in REQUIRED_COLUMNS:
        if name not in values:
            raise SettingsError(f"no {name} given")
    method = values.get("method", "ditto")
    if method != "ditto":
        allowed = {*REQUIRED_COLUMNS, "id", "method", "checkpoints"}
        allowed |= set(OTHER_METHOD_SETTINGS.get(method, ("seed", "steps")))
    else:
        allowed = set(COLUMNS) - {"resolution", "fps"}
    for column in [c for c in values if c not in allowed and c not in from_row]:
        values.pop(column)
    key = str(values.pop("id", key))
    values.pop("method", None)
    source = _resolve(values.pop("source"), base)
    audio = _resolve(values.pop("audio"), base)
    output = values.pop("output")
    if output == "-":
        raise SettingsError("output '-' (stdout) cannot be used in a batch; name a file")
    output = _resolve_output(output, base)
    streaming = bool(values.pop("stream", False))
    checkpoints = values.pop("checkpoints", None)
    checkpoints = None if checkpoints is None else _resolve(checkpoints, base)
    if method != "ditto":
        from talkinghead.methods import get_method

        chosen = get_method(method)  # an unknown name is refused by name
        if getattr(chosen, "generate", None) is None:
            raise SettingsError(
                f"{method} does not make videos from speech; use {', '.join(generating_methods())}"
            )
        chosen.check_installed()
        allowed = OTHER_METHOD_SETTINGS.get(method, ("seed", "steps"))
        extra = sorted(set(values) - set(allowed))
        if extra or streaming:
            extra += ["stream"] if streaming else []
            raise SettingsError(
                f"{', '.join(extra)}: Ditto setting(s), not used by {method} "
                f"(its jobs take {', '.join(allowed)})"
            )
        if checkpoints is None:
            raise SettingsError(f"a {method} job needs checkpoints (a trained {method} model)")
        check_max_size(values.get("max_size"))
        options = {**OTHER_METHOD_DEFAULTS.get(method, {})}
        names = OTHER_METHOD_OPTION_NAMES.get(method, {})
        options.update(
            {names.get(k, k): values.pop(k) for k in list(values) if k not in ("seed", "steps")}
        )
        for name, value in options.items():
            choices = OTHER_METHOD_CHOICES.get(name)
            if choices and value not in choices:
                raise SettingsError(
                    f"{name} {value}: {method} supports {' or '.join(map(str, choices))}"
                )
        return BatchJob(key, source, audio, output, method, values, False, checkpoints, options)
    if checkpoints is not None:
        raise SettingsError(
            "checkpoints per job are for dithead/difftalk jobs; Ditto's come from the "
            "batch's --checkpoints"
        )
    for name in ("resolution", "fps"):
        if name in values:
            raise SettingsError(f"{name} is a DiffTalk/DiT-Head setting, not used by ditto jobs")
    crop_scale = values.pop("crop_scale", None)
    crop_vy = values.pop("crop_vy", None)
    if crop_scale is not None or crop_vy is not None:
        default = CropConfig()
        values["crop"] = CropConfig(
            scale=default.scale if crop_scale is None else crop_scale,
            vy_ratio=default.vy_ratio if crop_vy is None else crop_vy,
        )
    return BatchJob(key, source, audio, output, "ditto", values, streaming)


def _rows_from_file(path: Path) -> Iterable[tuple[str, Any]]:
    """(where, row) for each row of a CSV / JSONL / JSON job file; a row may be an error."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{path}: cannot read the job file ({exc})") from None
    if suffix in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                yield f"{path.name}:{number}", SettingsError(f"not valid JSON ({exc})")
                continue
            if not isinstance(row, dict):
                yield f"{path.name}:{number}", SettingsError("a JSON line must be an object")
                continue
            yield f"{path.name}:{number}", row
        return
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as exc:
            raise JobFileError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(rows, list):
            raise JobFileError(f"{path}: a JSON job file holds a list of job objects")
        for number, row in enumerate(rows, 1):
            where = f"{path.name}[{number}]"
            yield where, row if isinstance(row, dict) else SettingsError("a job must be an object")
        return
    if suffix != ".csv":
        raise JobFileError(
            f"{path}: unknown job file type {suffix or '(none)'!r}; use .csv, .jsonl or .json, "
            "or a folder of sources and audio"
        )
    reader = csv.DictReader(text.splitlines())
    header = [_column_name(n) for n in (reader.fieldnames or []) if n is not None]
    unknown = [n for n in header if n not in COLUMNS]
    if unknown:
        raise JobFileError(
            f"{path}: unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}"
        )
    missing = [n for n in REQUIRED_COLUMNS if n not in header]
    if missing:
        raise JobFileError(
            f"{path}: no {', '.join(missing)} column; the first row must name the columns "
            f"(at least {', '.join(REQUIRED_COLUMNS)})"
        )
    for row in reader:
        where = f"{path.name}:{reader.line_num}"
        if None in row:  # more cells than the header has columns
            yield where, SettingsError(f"{len(row[None])} cell(s) more than the header's columns")
            continue
        if all(not (v or "").strip() for v in row.values()):
            continue
        yield where, {k: v for k, v in row.items() if k is not None}


def read_jobs(path: str | os.PathLike[str], defaults: Mapping[str, Any] | None = None) -> JobList:
    """The jobs of a CSV / JSON Lines / JSON file; `defaults` fill the columns a row leaves
    empty. Rows that are not jobs are `RowFailure`s; an unreadable file is a `JobFileError`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise JobFileError(f"{path}: job file not found")
    if path.is_dir():
        raise JobFileError(f"{path}: a folder; pair its files with --pair stem|all")
    base = path.resolve().parent
    jobs, failures, order = [], [], []
    for where, row in _rows_from_file(path):
        if isinstance(row, Exception):
            failures.append(RowFailure(where, str(row)))
            order.append(where)
            continue
        try:
            jobs.append(job_from_row(row, where, base, defaults))
            order.append(jobs[-1].key)
        except TalkingHeadError as exc:
            named = {_column_name(str(k)): v for k, v in row.items()}
            failures.append(
                RowFailure(
                    str(named.get("id") or where),
                    str(exc),
                    *(str(named[n]) if named.get(n) else None for n in REQUIRED_COLUMNS),
                )
            )
            order.append(failures[-1].key)
    if not jobs and not failures:
        raise JobFileError(f"{path}: no jobs in the file")
    return JobList(jobs, failures, path.resolve(), order=order)


def folder_jobs(
    folder: str | os.PathLike[str],
    *,
    pair: str = "stem",
    output_dir: str | os.PathLike[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> JobList:
    """Jobs from a folder of portraits (images, videos) and speech files.

    pair "stem": ``name.wav`` speaks with the source of the same stem (``name.jpg``) into
    ``OUTPUT_DIR/name.mp4``; an audio file without its source, or a source without its
    audio, is a failure. pair "all": every source with every audio file, into
    ``OUTPUT_DIR/<source>_<audio>.mp4``. OUTPUT_DIR defaults to ``<folder>/talking``,
    which is left out of the search (as are hidden files).
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise JobFileError(f"{root}: folder not found")
    if pair not in PAIRINGS:
        raise JobFileError(f"unknown pairing {pair!r}: use {' or '.join(PAIRINGS)}")
    out = Path(output_dir).expanduser().resolve() if output_dir else root / "talking"
    sources: dict[str, Path] = {}
    audios: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.resolve() == out:
            continue
        suffix = p.suffix.lower()
        table = (
            sources if suffix in SOURCE_SUFFIXES else audios if suffix in AUDIO_SUFFIXES else None
        )
        if table is None:
            continue
        if p.stem in table:
            raise JobFileError(
                f"{root}: {table[p.stem].name} and {p.name} have the same name; rename one"
            )
        table[p.stem] = p
    if not sources or not audios:
        what = "portraits (.jpg, .png, videos...)" if not sources else "speech files (.wav...)"
        raise JobFileError(f"{root}: no {what} in the folder")
    rows: list[tuple[str, dict[str, Any]]] = []
    failures: list[RowFailure] = []
    if pair == "stem":
        for stem in sorted(set(sources) | set(audios)):
            if stem not in sources:
                failures.append(
                    RowFailure(stem, f"no source named {stem}.* for {audios[stem].name}")
                )
            elif stem not in audios:
                failures.append(
                    RowFailure(stem, f"no audio named {stem}.* for {sources[stem].name}")
                )
            else:
                rows.append((stem, _folder_row(sources[stem], audios[stem], out / f"{stem}.mp4")))
    else:
        for s_stem, source in sources.items():
            for a_stem, audio in audios.items():
                name = f"{s_stem}_{a_stem}"
                rows.append((name, _folder_row(source, audio, out / f"{name}.mp4")))
    jobs = []
    for key, row in rows:
        try:
            jobs.append(job_from_row(row, key, root, defaults))
        except TalkingHeadError as exc:
            failures.append(RowFailure(key, str(exc), row["source"], row["audio"], row["output"]))
    return JobList(jobs, failures, root, out / "batch-report.json")


def _folder_row(source: Path, audio: Path, output: Path) -> dict[str, Any]:
    return {"source": str(source), "audio": str(audio), "output": str(output)}


def load_jobs(
    jobs: str | os.PathLike[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    pair: str = "stem",
    output_dir: str | os.PathLike[str] | None = None,
) -> JobList:
    """A job file (`read_jobs`) or a folder (`folder_jobs`)."""
    path = Path(jobs).expanduser()
    if path.is_dir():
        return folder_jobs(path, pair=pair, output_dir=output_dir, defaults=defaults)
    if output_dir is not None:
        raise JobFileError(
            "--output-dir is for a folder of sources and audio; a job file names its outputs"
        )
    return read_jobs(path, defaults)


# --- checking jobs before the run ---------------------------------------------------------------


def output_done(output: str) -> bool:
    """Whether an earlier run finished this output: writers rename only complete outputs
    into place, so an existing video (or a frames folder with frames) is a finished one."""
    path = Path(output)
    if output.endswith("/"):
        return path.is_dir() and any(path.glob("*.png"))
    return path.is_file() and path.stat().st_size > 0


@dataclass
class BatchPlan:
    """The jobs sorted before a run: to do, finished by an earlier run, and failed."""

    todo: list[BatchJob]
    skipped: list[BatchJob]
    failed: list[tuple[BatchJob | RowFailure, str]]
    origin: Path | None = None
    order: list[str] = field(default_factory=list)  # every key, in the file's order

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.skipped) + len(self.failed)


def check_job(
    job: BatchJob,
    worker_settings: Mapping[str, Any] | None = None,
    audio_seconds: dict[Path, float] | None = None,
) -> float:
    """Everything about a job that can be known without its models: settings, the files
    exist (the audio decodes), the output can be written. Returns the audio's seconds."""
    from talkinghead.validation import check_audio, check_output, check_seed, check_steps

    if job.method == "ditto":
        from talkinghead.methods.ditto.config import DittoConfig
        from talkinghead.methods.ditto.validation import check_ditto_config

        cfg = DittoConfig().replace(**{**(worker_settings or {}), **job.settings})
        check_ditto_config(cfg)
    else:
        check_seed(job.settings.get("seed"))
        if job.settings.get("steps") is not None:
            check_steps(job.settings["steps"])
        if job.checkpoints is not None and not job.checkpoints.is_dir():
            raise MediaError(f"{job.checkpoints}: {job.method} checkpoint folder not found")
    if not job.source.exists():
        raise MediaError(f"{job.source}: source file not found")
    if not job.source.is_file():
        raise MediaError(f"{job.source}: the source is not a file; give a portrait or a video")
    cache = audio_seconds if audio_seconds is not None else {}
    if job.audio not in cache:
        cache[job.audio] = check_audio(job.audio)
    out = job.output_path
    if not job.output.endswith("/"):  # (a frames folder is made by its writer)
        # Output folders are made here, so a job file may name folders that do not exist yet.
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MediaError(
                f"{job.output}: cannot create the output folder ({exc.strerror})"
            ) from None
    check_output(job.output)
    return cache[job.audio]


def plan_jobs(
    jobs: JobList,
    *,
    overwrite: bool = False,
    worker_settings: Mapping[str, Any] | None = None,
    report_path: str | os.PathLike[str] | None = None,
) -> BatchPlan:
    """Sort `jobs` into to-do, finished (skipped unless `overwrite`) and failed-with-reason.

    `worker_settings`: the Ditto settings every worker loads with (face backend, batch
    size...), checked together with each job's own. A job whose output is one of its
    inputs, the job file or `report_path` fails.
    """
    plan = BatchPlan([], [], [(f, f.reason) for f in jobs.failures], jobs.origin, jobs.order)
    outputs: dict[str, str] = {}
    keys: dict[str, int] = {}
    audio_seconds: dict[Path, float] = {}
    for job in jobs.jobs:
        keys[job.key] = keys.get(job.key, 0) + 1
        if keys[job.key] > 1:
            again = replace(job, key=f"{job.key}#{keys[job.key]}")  # one record per key
            plan.failed.append((again, f"another job has the id {job.key!r}; ids must be unique"))
            continue
        target = job.output.rstrip("/")
        if target in outputs:
            plan.failed.append((job, f"{job.output}: job {outputs[target]} writes the same output"))
            continue
        outputs[target] = job.key
        inputs = {"source": job.source, "audio": job.audio, "job file": jobs.origin}
        try:
            check_not_an_input(job.output, {**inputs, "batch report": report_path})
        except MediaError as exc:
            plan.failed.append((job, str(exc)))
            continue
        if not overwrite and output_done(job.output):
            plan.skipped.append(job)
            continue
        try:
            check_job(job, worker_settings, audio_seconds)
        except (TalkingHeadError, TypeError) as exc:
            plan.failed.append((job, " ".join(str(exc).split())))
            continue
        plan.todo.append(job)
    return plan


def check_report_target(report: str | os.PathLike[str], jobs: JobList) -> None:
    """Refuse a report path that is the job file or a job's source or audio (writing the
    report would replace it), before anything runs."""
    named = [("the job file", jobs.origin)]
    named += [
        (f"job {job.key}'s {what}", value)
        for job in jobs.jobs
        for what, value in (("source", job.source), ("audio", job.audio))
    ]
    for what, value in named:
        try:
            check_not_an_input(report, {what: value}, output_is_folder=False)
        except MediaError:
            raise MediaError(
                f"{report}: the report would overwrite {what} ({value}); choose another "
                "with --report"
            ) from None


def stale_temporaries(output: str) -> list[Path]:
    """Temporary files a killed writer left for `output` (the writers' hidden siblings,
    ``.<name>.<random><suffix>``, or ``.<name>.<random>.tmp`` for a frames folder)."""
    path = Path(output.rstrip("/"))
    parent = path.parent
    if not parent.is_dir():
        return []
    suffix = ".tmp" if output.endswith("/") else path.suffix
    return [p for p in parent.glob(f".{path.name}.*{suffix}") if p.name != path.name]


def remove_stale_temporaries(outputs: Sequence[str]) -> int:
    """Remove what `stale_temporaries` finds for each output; returns how many went."""
    import shutil

    removed = 0
    for output in outputs:
        for p in stale_temporaries(output):
            try:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


__all__ = [
    "COLUMNS",
    "PAIRINGS",
    "REQUIRED_COLUMNS",
    "SETTING_COLUMNS",
    "BatchJob",
    "BatchPlan",
    "JobFileError",
    "JobList",
    "RowFailure",
    "check_job",
    "check_report_target",
    "folder_jobs",
    "job_from_row",
    "load_jobs",
    "output_done",
    "plan_jobs",
    "read_jobs",
    "remove_stale_temporaries",
    "stale_temporaries",
]
