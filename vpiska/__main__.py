"""`python -m vpiska`: read the configuration, then serve until SIGINT or SIGTERM.

Exit codes: 0 after a clean shutdown; 2 when the server cannot start as configured (an invalid
variable, an address it cannot listen on); 3 when a shutdown ran past SHUTDOWN_GRACE_SECONDS;
1 for a crash. Whatever ends the process is one JSON log line, a traceback included.

`python -m vpiska media import DIR` copies an older deployment's media folder into the media
store of the same configuration (vpiska/media_import.py), then exits: 0, or 2 as above.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from types import TracebackType

import trio

from vpiska import logs, media_import
from vpiska.config import Config, ConfigError
from vpiska.server import EXIT_SHUTDOWN_TIMED_OUT, ListenError, ShutdownTimedOut, serve
from vpiska.workers import run_workers

log = logging.getLogger("vpiska")


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        config = Config.from_env()
    except ConfigError as error:
        print(f"vpiska: invalid configuration: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    sys.excepthook = _log_crash
    threading.excepthook = _log_thread_crash
    if arguments.command == "media":
        return trio.run(media_import.run, config, arguments.folder)
    if config.redis_url and config.store.kind == "mongodb" and config.media_store == "files":
        log.warning("MEDIA_STORE=files in a cluster: media bytes stay on this machine, so nodes "
                    "on other machines answer 404 for them (MEDIA_STORE=gridfs shares them)")
    if config.media_store == "gridfs" and _holds_files(config.media_path):
        log.warning("media files lie under MEDIA_PATH, but media bytes are read from GridFS: "
                    "downloads of them answer 404 until `python -m vpiska media import %s` "
                    "has copied them (or set MEDIA_STORE=files)", config.media_path)
    if config.uses_default_jwt_key:
        log.warning("JWT_KEY is the public default: anyone can forge tokens; set JWT_KEY in "
                    "production (until then vpiska listens on %s only unless SERVER_HOST is set)",
                    config.host)
    if config.workers > 1:
        return run_workers(config)
    try:
        trio.run(serve, config)
    except ListenError as error:
        log.error("cannot start: %s", error)
        return 2
    except ShutdownTimedOut as error:
        log.error("shutdown timed out", extra={"events": error.events})
        return EXIT_SHUTDOWN_TIMED_OUT
    return 0


def _holds_files(folder: Path) -> bool:
    """Whether `folder` has a file of its own: what a deployment that kept its media as files
    before GridFS became MongoDB's default left there."""
    try:
        return any(entry.is_file() for entry in folder.iterdir())
    except OSError:  # no such folder, or none readable: nothing left behind to speak of
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vpiska", description="Serve vpiska (no command), or run a command.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    media = commands.add_parser("media", help="manage stored media")
    actions = media.add_subparsers(dest="action", required=True, metavar="ACTION")
    imported = actions.add_parser(
        "import", help="copy an older deployment's media folder into the media store")
    imported.add_argument("folder", type=Path, metavar="DIR",
                          help="the folder of media files, one per media id")
    return parser


def _log_crash(kind: type[BaseException], error: BaseException,
               traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        return
    log.critical("server crashed", exc_info=(kind, error, traceback))


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        log.critical("thread crashed", exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
                     extra={"thread": getattr(args.thread, "name", None)})


if __name__ == "__main__":
    sys.exit(main())
