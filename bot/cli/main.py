"""The `stepgrid` command: run the bot, or generate images offline through the same worker."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from bot.cli.arguments import TINY_MODELS
from bot.cli.generate import generate_command
from bot.cli.models import models_command
from bot.cli.safety import ALL_WITHHELD_EXIT
from bot.config import Settings, unknown_settings
from bot.job_requests import AUTO
from inference.clipping import echo
from inference.logs import report_fatal
from inference.requests import (
    DEFAULT_COMPARE_STRENGTHS,
    DEFAULT_GRID_SCHEDULERS,
    MAX_PIXELS,
    MAX_SIZE,
    MIN_SIZE,
    SCHEDULER_NAMES,
    SIZE_MULTIPLE,
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{echo(text)} is not a whole number") from None


def _steps_or_auto(text: str) -> int | str:
    """--steps of `imagine`: a whole number, or "auto"."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{echo(text)} is not a whole number or auto") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{echo(text)} is not a number") from None


def _add_generation_options(
    parser: argparse.ArgumentParser,
    settings: Settings,
    *,
    scheduler: bool = True,
    prompt: bool = True,
    guidance: bool = True,
) -> None:
    if prompt:
        parser.add_argument("prompt", help="what to draw")
    else:
        parser.add_argument(
            "--prompt", default=None, help="what the image shows (default: the prompt in its parameters)"
        )
    if scheduler:
        parser.add_argument(
            "--scheduler",
            default=None,
            help=f"one of {', '.join(SCHEDULER_NAMES)} that the model can run (default: the model's own)",
        )
    parser.add_argument("--seed", type=_whole_number, default=-1, help="0 to 4294967295; -1 or left out: random")
    parser.add_argument("--negative", default="", help="negative prompt: what to keep out of the image")
    if guidance:
        parser.add_argument(
            "--guidance",
            type=_number,
            default=None,
            help="classifier-free guidance, 0-30 (default: the model's own)",
        )
    parser.add_argument(
        "--size",
        default=None,
        help=f"512 or WIDTHxHEIGHT, multiples of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}, at most "
        f"{MAX_PIXELS:,} pixels (default: the model's native size)",
    )
    names = ", ".join(spec.name for spec in settings.model_specs())
    parser.add_argument(
        "--model",
        default=None,
        help=f"a configured model ({names}), a hub id, local diffusers folder, registry file (.toml), or a "
        f"random-weight test model: {', '.join(TINY_MODELS)} (default: the first configured model)",
    )
    parser.add_argument(
        "--lora", default=None, help="a LoRA of the model by its registry name (or write <lora:name:0.8> in the prompt)"
    )
    parser.add_argument(
        "--lora-weight", type=_number, default=None, help="how strongly the LoRA applies (default: its own, usually 1)"
    )
    parser.add_argument("--device", default=settings.device, help="auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    parser.add_argument(
        "--dtype", default=settings.dtype, help="auto, float32, float16, bfloat16 (default: %(default)s)"
    )
    parser.add_argument(
        "--safety",
        action="store_true",
        help="run the image checker on every picture, as the bot does (the one STEPGRID_SAFETY_CHECKER names; auto: "
        "the default classifier): a flagged image and its film are not written, a flagged grid cell is a neutral "
        f"tile; exit status {ALL_WITHHELD_EXIT} when nothing was written",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the worker's log")


def _add_image_options(
    parser: argparse.ArgumentParser, image_help: str = "every cell starts from this image (img2img)"
) -> None:
    parser.add_argument("--image", type=Path, default=None, metavar="PATH", help=image_help)
    parser.add_argument(
        "--strength",
        type=_number,
        default=None,
        help="with --image: how much to change it, 0-1; of 30 steps at 0.6 the last 18 run (default: the model's)",
    )


def _grid_command(
    commands: argparse._SubParsersAction[_Parser],
    settings: Settings,
    name: str,
    about: str,
    *,
    short: str | None = None,
    **generation: bool,
) -> _Parser:
    """A grid command's parser with the generation options and its output file; the caller adds its axes
    (comma-separated lists, see `_add_list`)."""
    parser = commands.add_parser(name, help=short or about, description=about)
    if generation.get("prompt") is False:  # the grid starts from an image instead
        parser.add_argument("image", type=Path, help="the image every cell starts from: PNG, JPEG or WebP")
    _add_generation_options(parser, settings, **generation)
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write the grid to")
    return parser


def _add_list(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A comma-separated list option; empty means the model's own default."""
    parser.add_argument(flag, default=None, help=help)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = _Parser(prog="stepgrid", description="A Discord bot for Stable Diffusion that shows what steps do.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = "start the Discord bot and its GPU worker (settings from STEPGRID_* variables or .env)"
    commands.add_parser("run", help=run, description=run)

    imagine = commands.add_parser("imagine", help="generate images offline", description="Generate images offline.")
    _add_generation_options(imagine, settings)
    imagine.add_argument(
        "--steps",
        type=_steps_or_auto,
        default=None,
        help="1-150 (default: the model's own), or auto: stop once the image settles, at most the model's longest "
        "ladder count",
    )
    imagine.add_argument(
        "--count", type=_whole_number, default=1, help="1-4 images, seeded seed, seed+1, ... (default: 1)"
    )
    imagine.add_argument(
        "-o", "--output", type=Path, required=True, help="PNG file to write; with --count N: NAME-1.png ... NAME-N.png"
    )
    imagine.add_argument(
        "--film",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the Steps film, the predicted finished image at every step, to PATH: an animated WebP "
        "or GIF, as its name ends (.webp or .gif); one image only",
    )
    _add_image_options(imagine, "start from this image (img2img): PNG, JPEG or WebP")

    about = (
        "Upscale an image x2: a Lanczos resize, then an img2img pass at the larger size that adds detail "
        "(A1111's hires fix)."
    )
    upscale = commands.add_parser("upscale", help="upscale an image x2 with an img2img pass", description=about)
    upscale.add_argument("image", type=Path, help="the image to upscale: PNG, JPEG or WebP")
    _add_generation_options(upscale, settings, prompt=False)
    upscale.add_argument("--steps", type=_whole_number, default=None, help="1-150 (default: the model's own)")
    upscale.add_argument(
        "--strength", type=_number, default=None, help="how much the pass may change, 0-1 (default: the model's)"
    )
    upscale.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")

    about = "One labelled grid of the same prompt and seed at several step counts."
    compare = _grid_command(commands, settings, "compare-steps", about)
    _add_list(
        compare,
        "--steps",
        "2 to 12 step counts, comma-separated, any order (default: the model's own ladder, e.g. 1,2,3,4,6,8 for a "
        "few-step model, 5,10,20,30,40,50 for SD 1.5)",
    )
    _add_image_options(compare)
    compare.add_argument(
        "--stop-early",
        action="store_true",
        help="add a row: the longest run stopped at each step count (its predicted clean image there, and the noise "
        "left), under the honest runs",
    )
    compare.add_argument(
        "--seeds",
        type=_whole_number,
        default=None,
        help="2 to 6: the ladder once per seed, a row each (--seed, then the next seeds), and where they settle: "
        "the median settle point and its spread",
    )
    compare.add_argument(
        "--lora-compare",
        action="store_true",
        help="two rows: without the LoRA, then with it, over both their ladders, each with its own scheduler and "
        "guidance where a few-step LoRA changes them (needs --lora or a <lora:name> in the prompt)",
    )

    about = "One labelled grid of the same prompt and seed: rows = schedulers, columns = step counts."
    schedulers = _grid_command(commands, settings, "compare-schedulers", about, scheduler=False)
    _add_list(
        schedulers,
        "--schedulers",
        "2 to 6 schedulers, comma-separated (default: a varied set the model can run, e.g. "
        f"{', '.join(DEFAULT_GRID_SCHEDULERS)})",
    )
    _add_list(
        schedulers,
        "--steps",
        "step counts, comma-separated; at most 12 cells in all (default: the model's ladder, spread to fit)",
    )
    _add_image_options(schedulers)

    about = (
        "One labelled grid of an image at several img2img strengths (columns) and step counts (rows); each cell "
        "says the steps that ran: of 30 steps at strength 0.6, the last 18."
    )
    short = "one image at several strengths, as a grid"
    strength = _grid_command(commands, settings, "compare-strength", about, short=short, prompt=False)
    _add_list(
        strength,
        "--strengths",
        "2 to 6 strengths from 0 to 1, comma-separated (default: "
        f"{','.join(map(str, DEFAULT_COMPARE_STRENGTHS))}, from a light touch to only the layout kept)",
    )
    _add_list(strength, "--steps", "the rows: step counts, comma-separated (default: the model's own, one row)")

    about = (
        "One labelled grid of the same prompt and seed: columns = guidance values (FLUX-dev: its distilled "
        "guidance), rows = step counts."
    )
    guidance = _grid_command(commands, settings, "compare-guidance", about, guidance=False)
    _add_list(
        guidance,
        "--guidance",
        "2 or more guidance values, comma-separated, 0-30; at most 12 cells in all (default: a ladder around "
        "the model's own, e.g. 1,3,5,7.5,10,15)",
    )
    _add_list(guidance, "--steps", "rows: step counts, comma-separated, 1 to 6 (default: the model's own steps)")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="upgrade|backup", required=True, parser_class=_Parser)
    db_commands.add_parser("upgrade", help="apply migrations to the configured database")
    about = (
        "Copy the database to PATH, consistent even while the bot runs (SQLite's online backup; on PostgreSQL, "
        "pg_dump's custom format, which pg_restore reads)."
    )
    backup = db_commands.add_parser("backup", help="copy the database safely while the bot runs", description=about)
    backup.add_argument("path", type=Path, help="the file to write the copy to")
    backup.add_argument("--force", action="store_true", help="replace PATH if it exists")

    about = "Sync the slash commands to Discord now; the bot syncs at start only when they changed."
    commands.add_parser("sync", help="sync the slash commands now (needs the token)", description=about)

    about = (
        "List the configured models (and the built-in tiny ones to try offline); then load the configured ones in a "
        "worker and show their defaults, or why one failed."
    )
    models = commands.add_parser("models", help="list the configured models and what loaded", description=about)
    models.add_argument("--no-load", action="store_true", help="only list the configuration; load nothing")
    models.add_argument("--device", default=settings.device, help="auto, cpu, cuda, ... (default: %(default)s)")
    models.add_argument("--dtype", default=settings.dtype, help="auto, float32, float16, bfloat16")
    models.add_argument("-v", "--verbose", action="store_true", help="show the worker's log")

    from bot.cli.fleet import add_fleet_commands

    add_fleet_commands(commands, settings)

    usage = commands.add_parser("usage", help="export the usage ledger or the limits history as CSV")
    export = usage.add_mutually_exclusive_group(required=True)
    export.add_argument("--csv", action="store_true", help="the ledger: one CSV row per job on stdout")
    export.add_argument(
        "--limits-csv", action="store_true", help="the limits history: one CSV row per changed server limit on stdout"
    )
    return parser


def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    from bot.storage.backup import BackupRefused, backup_database, backup_server_database
    from bot.storage.migrate import DatabaseUnusable
    from bot.storage.postgres import shown

    where = settings.database_path if settings.database_url is None else shown(settings.database_url)
    try:
        if settings.database_url is None:
            backup = backup_database(settings.database_path, args.path, force=args.force)
        else:
            backup = backup_server_database(settings.database_url, args.path, force=args.force)
    except FileNotFoundError as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    except (BackupRefused, DatabaseUnusable) as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    print(f"backed up {where} to {backup.path}: {backup.jobs} jobs, {backup.size / 1e6:.1f} MB")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    try:
        settings = Settings()
    except ValidationError as error:
        problem = error.errors()[0]
        name = "STEPGRID_" + "_".join(str(part) for part in problem["loc"]).upper()
        message = str(problem["msg"]).removeprefix("Value error, ").rstrip(".")
        if problem["type"] != "value_error":  # pydantic's own checks don't name the value; ours do
            message += f"; got {echo(problem['input'])}"
        print(f"stepgrid: the setting {name} is invalid: {message}.", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    if args.command not in ("run", "worker"):  # those two log it, in the log's own format
        for line in unknown_settings(os.environ):
            print(f"stepgrid: warning: {line}", file=sys.stderr)
    if args.command in ("worker", "workers"):
        from bot.cli.fleet import worker_command, workers_command

        return worker_command(args, settings) if args.command == "worker" else workers_command(args)
    if args.command == "run":
        from bot.chat.client import run
        from bot.cli.fleet import check_bot_redis

        if (unreachable := check_bot_redis(settings)) is not None:
            report_fatal("bot", "stepgrid", unreachable, log_format=settings.log_format)
            return 2

        return run(settings)
    if args.command == "sync":
        from bot.chat.client import STARTUP_ERRORS, sync_now

        try:
            asyncio.run(sync_now(settings))
        except STARTUP_ERRORS as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        return 0
    if args.command == "db" and args.db_command == "backup":
        return backup_command(args, settings)
    if args.command == "db":
        from bot.storage.lock import DatabaseInUse, bot_lock
        from bot.storage.migrate import DatabaseTooNew, DatabaseUnusable, upgrade_database
        from bot.storage.postgres import shown, upgrade_server_database

        try:
            with bot_lock(settings):  # not under a running bot, which expects its own schema
                if settings.database_url is None:
                    upgrade_database(settings.database_path)
                else:
                    upgrade_server_database(settings.database_url)
        except (DatabaseTooNew, DatabaseUnusable, DatabaseInUse) as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        where = settings.database_path if settings.database_url is None else shown(settings.database_url)
        print(f"database {where} is at the latest schema")
        return 0
    if args.command == "models":
        return models_command(args, settings)
    if args.command == "usage":
        from bot.ops.usage_report import export_csv, export_limits_csv
        from bot.storage.migrate import DatabaseUnusable

        try:
            export = export_limits_csv if args.limits_csv else export_csv
            export(settings.database_path, sys.stdout, url=settings.database_url)
        except FileNotFoundError as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        except DatabaseUnusable as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        return 0
    return generate_command(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())
