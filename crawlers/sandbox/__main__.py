"""Command line entry point, so the sandbox can run in its own process (and event loop)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn

from crawlers.sandbox.price_api import create_app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m crawlers.sandbox", description="Run the sandbox price API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--refuse-rate", type=float, default=0.0, help="share of 429 answers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 429 sequence")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--fail-ids", default="", help="comma-separated ids that always get 503")
    parser.add_argument(
        "--block-region",
        action="append",
        default=[],
        metavar="NAME=K",
        help="answer 403 to the region's proxy after K requests (repeatable)",
    )
    parser.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", help="...and this private key (PEM)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    fail_ids = frozenset(part.strip() for part in args.fail_ids.split(",") if part.strip())
    app = create_app(
        refuse_rate=args.refuse_rate,
        seed=args.seed,
        delay_seconds=args.delay,
        fail_ids=fail_ids,
        block_regions={
            name: int(count) for name, _, count in (x.partition("=") for x in args.block_region)
        },
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )


if __name__ == "__main__":
    main()
