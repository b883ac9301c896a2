"""A server that breaks the API contract on purpose: ready, but its profiles lack
`version`. The end-to-end test (scripts/test.sh) runs it as an external row and checks
that the run reports that row as failed, naming the contract probe, and goes on.
Python's standard library only; serves 127.0.0.1:PORT.
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/readyz":
            self.reply(200, {"status": "ready"})
        elif self.path.startswith("/users/"):
            user = self.path.rsplit("/", 1)[1]
            self.reply(200, {"id": int(user), "name": f"User {user}",
                             "email": f"user{user}@example.com",
                             "updated_at": "2024-01-01T00:00:00.000000Z"})
        else:
            self.reply(404, {"error": "not found"})

    def log_message(self, *_args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
