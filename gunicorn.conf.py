"""gunicorn settings for production: ``gunicorn 'app:create_app()'`` picks this file up from the
working directory. Tune with GUNICORN_* environment variables."""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))  # pay pages poll; notify must answer in < 5 s
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
max_requests = 5000  # recycle workers slowly to bound memory growth
max_requests_jitter = 500
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = None  # request lines go through our JSON logs (with masked query strings)
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


def post_fork(server, worker):  # gunicorn hook signature; both unused
    from observability import configure_logging

    configure_logging(os.environ.get("RENOPAY_LOG_LEVEL", "INFO"))
