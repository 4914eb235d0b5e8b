"""The job commands of `vosd`: serve, submit, status, watch, stop, cancel, jobs.

Each function is a typer command (registered in streamer/cli/app.py). Imports of Redis, rich and the daemon
happen inside the functions, so `vosd --help` stays instant. Every command reads the same configuration
as the daemon (``--config`` or VOSD_* variables) to find Redis: with no ``redis.url`` that is the
daemon's embedded server under ``data_dir``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from streamer.api.server import ApiServer
    from streamer.config import VosdConfig
    from streamer.queue.jobs import DaemonLoad, JobQueue, JobRecord

ConfigPath = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML configuration (default: built-in defaults).")
]


@contextmanager
def _queue(config_path: Path | None) -> Iterator[JobQueue]:
    """A JobQueue on the configured Redis: the daemon's embedded server when it runs, else a temporary one
    stopped after the command (streamer/queue/redis_server.py: ownership)."""
    import redis

    from streamer.config import ConfigError, load_config
    from streamer.queue.jobs import JobQueue, KeyNames
    from streamer.queue.redis_server import resolve_redis

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    endpoint = resolve_redis(config.redis.url, config.data_dir)
    client = redis.Redis.from_url(endpoint.url, decode_responses=True)
    try:
        yield JobQueue(
            client,
            keys=KeyNames(config.redis.key_prefix),
            visibility_timeout_s=config.redis.visibility_timeout_s,
            max_attempts=config.redis.max_attempts,
        )
    finally:
        client.close()
        endpoint.close()  # stops only a temporary server this command started because no daemon runs


def _record_or_exit(queue: JobQueue, job_id: str) -> JobRecord:
    from streamer.queue.jobs import JobNotFound

    try:
        return queue.get(job_id)
    except JobNotFound:
        typer.echo(f"no job {job_id!r}", err=True)
        raise typer.Exit(1) from None


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` pairs; values are JSON when they parse (10, true, 0.5), text otherwise."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected name=value, got {pair!r}", param_hint="--option")
        try:
            options[name] = json.loads(text)
        except json.JSONDecodeError:
            options[name] = text
    return options


def _local(path: str) -> str:
    """Absolute path for an existing local file, so the daemon finds it from its own directory."""
    candidate = Path(path).expanduser()
    return str(candidate.resolve()) if candidate.exists() else path


def serve_command(config: ConfigPath = None) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C."""
    import logging

    from streamer.config import ConfigError, load_config
    from streamer.daemon import DaemonSettings, serve
    from streamer.queue.redis_server import RedisStartError

    try:
        settings = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s daemon %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger(__name__).info("config: %s", json.dumps(settings.summary()))
    api = _start_api(settings)
    try:
        serve(DaemonSettings.from_config(settings))
    except RedisStartError as exc:  # a wrong password, a busy data_dir: one clear line, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        if api is not None:
            api.stop()


def _start_api(settings: VosdConfig) -> ApiServer | None:
    """The HTTP API when ``http.listen`` is set (streamer/api); exit 2 when it cannot listen."""
    if not settings.http.listen:
        return None
    from streamer.api.server import ApiStartError, start_api

    try:
        return start_api(settings)
    except ApiStartError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def submit_command(
    source: Annotated[
        str, typer.Argument(help="Video file, stream URL (rtsp://, udp://, http://) or camera.")
    ],
    mask: Annotated[
        Path | None, typer.Option("--mask", "-m", help="First-frame index mask (PNG). Without it: auto mode.")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="xmem (needs --mask), auto (TMO seeds and watches XMem) or tmo (TMO's "
                                      "masks only). Default: xmem with --mask, auto without.")
    ] = None,
    objects: Annotated[
        int | None, typer.Option(min=1, max=255, help="Auto mode: seed up to N separate components.")
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option("--live/--batch", help="Live: newest frames, drops counted. Default: from the source."),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output directory.")] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-O", help="XMem option, name=value (repeatable).")
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option("--max-frames", min=1, help="Stop after this many frames.")
    ] = None,
    overlay: Annotated[
        bool | None, typer.Option("--overlay/--no-overlay", help="Write overlay.mp4 (config default).")
    ] = None,
    masks: Annotated[
        bool | None, typer.Option("--masks/--no-masks", help="Write palette PNG masks (config default).")
    ] = None,
    rle: Annotated[
        bool | None, typer.Option("--rle/--no-rle", help="Write masks.jsonl, RLE (config default).")
    ] = None,
    config: ConfigPath = None,
) -> None:
    """Queue a job; prints its id."""
    from streamer.ingest.sources import is_live_uri
    from streamer.modes import ModeError, job_mode_options

    try:
        how = job_mode_options(mask is not None, mode, objects)
    except ModeError as exc:
        typer.echo(f"not submitted: {exc}", err=True)
        raise typer.Exit(2) from None
    options = {**_parse_options(option or []), **how}
    # Unset: the serving daemon's writer config decides (e.g. configs/live-camera.yaml writes no PNGs).
    options.update({k: v for k, v in (('overlay', overlay), ('masks', masks), ('rle', rle)) if v is not None})
    if output is not None:
        options["output_dir"] = str(output.expanduser().resolve())
    if max_frames is not None:
        options["max_frames"] = max_frames
    if mask is not None and not mask.is_file():
        typer.echo(f"mask {mask} not found", err=True)
        raise typer.Exit(2)
    with _queue(config) as queue:
        try:
            record = queue.submit(
                _local(source),
                mask_path=str(mask.resolve()) if mask is not None else None,
                live=is_live_uri(source) if live is None else live,
                options=options,
                mode=how["mode"],
            )
        except ValueError as exc:  # unsupported source scheme; nothing was queued
            typer.echo(f"not submitted: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo(record.id)


def _row(record: JobRecord) -> dict[str, Any]:
    row = record.model_dump(mode="json")
    if record.state.value == "running" and record.source_state is not None:
        row["seconds_without_frame"] = _seconds_without_frame(record)
    return row


def _seconds_without_frame(record: JobRecord) -> float | None:
    """Since the source's last frame, or since the run started when it never delivered one."""
    since = record.last_frame_at or record.started_at
    return None if since is None else round(max(0.0, time.time() - since), 1)


def _source_health(record: JobRecord) -> str:
    """What a running job's source is doing, e.g. "reconnecting: 3 attempts, 42 s without a frame"."""
    if record.state.value != "running" or record.source_state is None:
        return ""
    if record.source_state == "streaming":
        return "streaming"
    idle = _seconds_without_frame(record)
    text = f"{record.source_state}: {record.reconnect_attempts} attempts"
    return text if idle is None else f"{text}, {idle:.0f} s without a frame"


def status_command(
    job: Annotated[str | None, typer.Argument(help="Job id; all recent jobs when omitted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    config: ConfigPath = None,
) -> None:
    """Show one job's status (state, progress, error, outputs), or every recent job."""
    with _queue(config) as queue:
        records = [_record_or_exit(queue, job)] if job else queue.list_jobs()
    if as_json:
        payload: Any = _row(records[0]) if job else [_row(r) for r in records]
        typer.echo(json.dumps(payload, indent=2))
        return
    _print_table(records, detailed=job is not None)


def jobs_command(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many jobs, newest first.")] = 50,
    config: ConfigPath = None,
) -> None:
    """List recent jobs, newest first, the dead letters, and the daemons serving the queue."""
    with _queue(config) as queue:
        records = queue.list_jobs(limit=limit)
        dead = queue.dead_letters()
        daemons = queue.daemon_statuses()
        loads = queue.daemon_loads()
    _print_table(records, detailed=False)
    _print_daemons(daemons, loads)
    if dead:
        typer.echo(f"\n{len(dead)} dead-lettered job(s):")
        for entry in dead:
            typer.echo(f"  {entry.get('job_id')}: {entry.get('reason')}")


def _print_daemons(statuses: dict[str, dict[str, str]], loads: dict[str, DaemonLoad | None]) -> None:
    """One line per live daemon: its load, restarts of its processes, and Redis outages it rode out."""
    if not statuses:
        typer.echo("\nno daemon is running: queued jobs wait for `vosd serve`")
        return
    typer.echo(f"\n{len(statuses)} daemon(s):")
    for name, fields in statuses.items():
        load = loads.get(name)
        jobs = f"{load.running}/{load.capacity} jobs" if load is not None else "load unknown"
        restarts = sum(int(v) for k, v in fields.items() if k.startswith("restarts:") and v.isdigit())
        outages = fields.get("redis_outages", "0")
        away = fields.get("redis_last_outage_s")
        redis_note = f", redis away {outages}x (last {away} s)" if away else ""
        typer.echo(f"  {name} pid {fields.get('pid')}: {jobs}, {restarts} process restart(s){redis_note}")


def _print_table(records: list[JobRecord], *, detailed: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160 if not sys.stdout.isatty() else None)
    if detailed and records:
        record = records[0]
        for name, value in _row(record).items():
            console.print(f"[bold]{name}[/bold]: {value}")
        return
    table = Table("id", "state", "frames", "fps", "dropped", "source", "source state", "error")
    for record in records:
        total = f"/{record.frames_total}" if record.frames_total is not None else ""
        health = _source_health(record)
        error = record.error or (record.source_error if health.startswith(("connecting", "reconn")) else "")
        table.add_row(
            record.id,
            record.state.value + (" (stopped early)" if record.stopped_early else ""),
            f"{record.frames_done}{total}",
            f"{record.fps:.1f}",
            str(record.frames_dropped),
            record.source,
            health,
            error or "",
        )
    console.print(table)


def watch_command(
    job: Annotated[str, typer.Argument(help="Job id.")],
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between status reads.")
    ] = 0.5,
    config: ConfigPath = None,
) -> None:
    """Show a progress bar until the job ends; exit code 0 when done, 1 when failed or cancelled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streamer.queue.jobs import JobState

    with _queue(config) as queue:
        record = _record_or_exit(queue, job)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[fps]:.1f} fps, {task.fields[dropped]} dropped"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(
                f"{job} {record.state.value}", total=record.frames_total, fps=0.0, dropped=0
            )
            while True:
                record = queue.get(job)
                progress.update(
                    task,
                    description=f"{job} {record.state.value}",
                    completed=record.frames_done,
                    total=record.frames_total,
                    fps=record.fps,
                    dropped=record.frames_dropped,
                )
                if record.state.final:
                    break
                time.sleep(interval)
    if record.state is JobState.DONE:
        for kind, path in record.outputs.items():
            typer.echo(f"{kind}: {path}")
        return
    typer.echo(f"{record.state.value}: {record.error or ''}", err=True)
    raise typer.Exit(1)


def cancel_command(
    job: Annotated[str, typer.Argument(help="Job id.")],
    config: ConfigPath = None,
) -> None:
    """Cancel a queued job at once, or a running one within a second; its outputs are discarded."""
    from streamer.queue.jobs import JobNotFound

    with _queue(config) as queue:
        try:
            state = queue.cancel(job)
        except JobNotFound:
            typer.echo(f"no job {job!r}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"{job}: {'cancel requested' if state.value == 'running' else state.value}")


def stop_command(
    job: Annotated[str, typer.Argument(help="Job id.")],
    config: ConfigPath = None,
) -> None:
    """End a running job now and keep its outputs (done, stopped_early); a queued job is cancelled."""
    from streamer.queue.jobs import JobNotFound, JobState

    with _queue(config) as queue:
        try:
            before = queue.get(job).state
            state = queue.stop(job)
        except JobNotFound:
            typer.echo(f"no job {job!r}", err=True)
            raise typer.Exit(1) from None
    if state is JobState.RUNNING:
        typer.echo(f"{job}: stop requested; it ends with the frames so far written and kept")
    elif before is JobState.QUEUED:
        typer.echo(f"{job}: cancelled: it was still queued, so nothing was produced")
    else:
        typer.echo(f"{job}: already {state.value}")
