"""Run the WeChat Pay stand-in alone: ``python -m sandbox.wechatpay --port 8801 [--dir instance/sandbox]``."""

from __future__ import annotations

import argparse

from werkzeug.serving import run_simple

from sandbox.keys import ensure

from . import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.wechatpay", description=__doc__)
    parser.add_argument("--port", type=int, default=8801)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--dir", default="instance/sandbox", help="credentials directory (generated on first use)"
    )
    parser.add_argument("--mode", choices=("public_key", "certificate"), default="public_key")
    parser.add_argument(
        "--retry-scale", type=float, default=1.0, help="multiplier of the notification retry schedule"
    )
    args = parser.parse_args(argv)
    credentials = ensure(args.dir)
    app = create_app(credentials, retry_scale=args.retry_scale, mode=args.mode)
    print(
        f"WeChat Pay stand-in on http://{args.host}:{args.port} "
        f"(mode {args.mode}, mchid {credentials.mch_id}, credentials in {credentials.directory})"
    )
    run_simple(args.host, args.port, app, threaded=True)


if __name__ == "__main__":
    main()
