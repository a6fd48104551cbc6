"""moto_server, with S3's conditional writes atomic, for the tests that race writers.

moto 5's PutObject checks If-Match / If-None-Match and then stores the object as two
steps with no lock between them, on a threaded server: two writers that send the same
If-Match at once can both be told 200, the second overwriting the first. S3 itself
decides a conditional write atomically, and buildstate's compare-and-swap relies on
that, so a test that races workers against moto would report moto's lost update as
ours (it did once in CI). This serves moto's own application exactly as `moto_server`
does (threaded, one connection per thread, keep-alive), but lets one request at a time
into it.

Usage: python moto_atomic.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import argparse
import os
import threading
from typing import Any, Callable, Iterable

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server does
    moto = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with one_at_a_time:
            # The whole answer is produced under the lock (moto's bodies are in memory).
            return list(moto(environ, start_response))

    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
