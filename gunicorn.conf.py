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
# Each worker listens on its own SO_REUSEPORT socket, and the kernel spreads new connections over them.
# On one shared socket, an idle worker's accept loop (requests run on its threads) takes whatever
# arrives: a client opening its keep-alive connections at once often lands them all on one worker,
# which then serves them on one core while the other idles. (A worker that stops — a restart, a
# recycle — drops connections still waiting in its own queue; their clients retry: WeChat resends,
# a browser reloads.) Caution: a second gunicorn started by the same user on the same port binds too,
# and the two split the traffic — stop the old one first.
reuse_port = os.environ.get("GUNICORN_REUSE_PORT", "1") == "1"
# Python hands the GIL between a worker's threads every 5 ms by default: a short request that
# queues behind a busy thread waits whole slices, which set the tail latency (p99) under load.
switch_interval_ms = float(os.environ.get("GUNICORN_SWITCH_INTERVAL_MS", "0.5"))
max_requests = 5000  # recycle workers slowly to bound memory growth
max_requests_jitter = 500
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = None  # request lines go through our JSON logs (with masked query strings)
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


# On a SQLite file, one process writes every worker's payment notifications (payments/writer.py): it
# starts with the master, the workers find it by its socket, and apply in-process when it is gone.
# RENOPAY_PAYMENT_WRITER=0 turns it off.
def when_ready(server):
    from config import load_settings
    from observability import configure_logging
    from payments.writer import start_writer

    configure_logging(os.environ.get("RENOPAY_LOG_LEVEL", "INFO"))  # the master's own lines, as JSON
    server.renopay_payment_writer = start_writer(load_settings().database_url)


def on_exit(server):
    writer = getattr(server, "renopay_payment_writer", None)
    if writer is not None:
        writer.stop()


def post_fork(server, worker):  # gunicorn hook signature; both unused
    import sys

    from observability import configure_logging

    sys.setswitchinterval(switch_interval_ms / 1000)
    configure_logging(os.environ.get("RENOPAY_LOG_LEVEL", "INFO"))


def post_worker_init(worker):  # gunicorn hook signature; unused
    import gc

    # Everything loaded so far (modules, the app, SQLAlchemy's mappers) lives as long as the worker:
    # moved out of the collector's reach, a full collection scans only what requests left behind
    # (otherwise each one stalls every thread of the worker for 60–100 ms).
    gc.collect()
    gc.freeze()
