#!/usr/bin/env python3
"""A minimal Alertmanager webhook receiver: appends every POSTed notification to a file.

For a first try of deploy/alertmanager/alertmanager.yml (its default webhook URL is
http://127.0.0.1:5001/alerts) and for deploy/test.sh, which checks that a firing alert arrives.
Not a production receiver: no authentication, loopback only by default.

    python3 deploy/webhook-receiver.py [--host 127.0.0.1] [--port 5001] [--out alerts.jsonl]
                                       [--port-file FILE]

Each POST body is written as one line of JSON (re-serialised compactly if it parses, else the raw
body with newlines escaped). --port 0 takes a free port; --port-file receives the port actually
bound once the server listens, so a caller can wait for that file. Stops on SIGTERM or Ctrl-C.
"""
import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--out", default="alerts.jsonl", help="file the notifications are appended to")
    ap.add_argument("--port-file", help="write the bound port here once listening")
    args = ap.parse_args()
    lock = Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            try:
                line = json.dumps(json.loads(body), separators=(",", ":"))
            except ValueError:
                line = body.decode("utf-8", "replace").replace("\n", "\\n")
            with lock, open(args.out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # a liveness probe
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"webhook receiver\n")

        def log_message(self, fmt: str, *a) -> None:
            sys.stderr.write("webhook-receiver: %s %s\n" % (self.address_string(), fmt % a))

    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    port = srv.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)  # atomic: a reader never sees a partial file
    sys.stderr.write("webhook-receiver: listening on http://%s:%d/, appending to %s\n"
                     % (args.host, port, args.out))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
