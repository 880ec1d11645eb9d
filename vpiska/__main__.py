"""`python -m vpiska`: read the configuration, then serve until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import sys

import trio

from vpiska import logs
from vpiska.config import Config, ConfigError
from vpiska.server import serve


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as error:
        print(f"vpiska: invalid configuration: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    if config.uses_default_jwt_key:
        logging.getLogger("vpiska").warning(
            "JWT_KEY is the public default: anyone can forge tokens; set JWT_KEY in production"
        )
    trio.run(serve, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
