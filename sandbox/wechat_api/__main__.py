"""Run the Official Account stand-in alone: ``python -m sandbox.wechat_api --port 8081``."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

from werkzeug.serving import WSGIRequestHandler, make_server

from sandbox import keys
from sandbox.wechat_api import create_app, mask_query


class _MaskingHandler(WSGIRequestHandler):
    """Access log without appsecret / access_token values."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        parts = urlsplit(self.path)
        path = parts.path + ("?" + mask_query(parts.query) if parts.query else "")
        self.log("info", '"%s %s %s" %s %s', self.command, path, self.request_version, code, size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.wechat_api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--dir", default="instance/sandbox", help="credentials directory")
    parser.add_argument("--push-target", default=None,
                        help="our /wechat URL, e.g. http://127.0.0.1:5000/wechat")
    parser.add_argument("--push-mode", default="safe", choices=["plaintext", "compatible", "safe"])
    args = parser.parse_args(argv)
    creds = keys.ensure(args.dir)
    app = create_app(creds, push_target=args.push_target, push_mode=args.push_mode)
    server = make_server(args.host, args.port, app, threaded=True, request_handler=_MaskingHandler)
    print(f"Official Account stand-in on http://{args.host}:{server.server_port} (appid {creds.app_id})")
    server.serve_forever()


if __name__ == "__main__":
    main()
