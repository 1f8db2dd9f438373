#!/usr/bin/env python3
"""Prints the Node-RED flows.json that bench/http.sh runs: http in (GET and
POST /hello) -> function node -> http response.

The function node answers as functions/examples/hello-http does:

- `GET /hello?name=Ada`, or `POST /hello` with `{"name":"Ada"}` or the plain
  text `Ada`: 200 `{"greeting":"Hello, Ada!","hits":3}`; without a name it
  greets `world`.
- Every greeting adds one to `hits`, kept in flow context (Node-RED's
  default in-memory store; hello-http's is a KV counter committed to SQLite).
- A name over 64 bytes (UTF-8) gets 400. (Node-RED's http in takes one
  method per node, so only GET and POST are routed; other methods get
  Express's 404, where hello-http answers 405.)

    python3 bench/node_red_http_flow.py > flows.json
"""
import argparse
import json

HELLO = r"""
const method = msg.req.method;
msg.headers = { 'content-type': 'application/json' };
if (method !== 'GET' && method !== 'POST') {
    msg.statusCode = 405;
    msg.payload = '{"error":"method not allowed, use GET or POST"}';
    return msg;
}
let name;
const query = msg.req.query || {};
if (typeof query.name === 'string') {
    name = query.name;
} else if (method === 'POST' && typeof msg.payload === 'string') {
    const body = msg.payload.trim();
    if (body === '') {
        name = 'world';
    } else {
        try {
            const parsed = JSON.parse(body);
            name = parsed !== null && typeof parsed === 'object' && typeof parsed.name === 'string' ? parsed.name : body;
        } catch (e) {
            name = body;
        }
    }
} else if (method === 'POST' && msg.payload !== null && typeof msg.payload === 'object' && typeof msg.payload.name === 'string') {
    name = msg.payload.name;
} else {
    name = 'world';
}
if (Buffer.byteLength(name, 'utf8') > 64) {
    msg.statusCode = 400;
    msg.payload = '{"error":"name must be UTF-8, at most 64 bytes"}';
    return msg;
}
const hits = (flow.get('hits') || 0) + 1;
flow.set('hits', hits);
msg.statusCode = 200;
msg.payload = JSON.stringify({ greeting: 'Hello, ' + name + '!', hits });
return msg;
"""


def http_in(node_id: str, method: str, url: str, y: int) -> dict:
    return {
        "id": node_id,
        "type": "http in",
        "z": "wgtab",
        "name": f"{method.upper()} {url}",
        "url": url,
        "method": method,
        "upload": False,
        "swaggerDoc": "",
        "x": 100,
        "y": y,
        "wires": [["wgfn"]],
    }


def flows(url: str = "/hello") -> list:
    return [
        {"id": "wgtab", "type": "tab", "label": "wasmgate http bench", "disabled": False},
        http_in("wgget", "get", url, 100),
        http_in("wgpost", "post", url, 160),
        {
            "id": "wgfn",
            "type": "function",
            "z": "wgtab",
            "name": "hello-http",
            "func": HELLO.strip(),
            "outputs": 1,
            "timeout": 0,
            "noerr": 0,
            "initialize": "",
            "finalize": "",
            "libs": [],
            "x": 300,
            "y": 130,
            "wires": [["wgres"]],
        },
        {
            "id": "wgres",
            "type": "http response",
            "z": "wgtab",
            "name": "answer",
            "statusCode": "",
            "headers": {},
            "x": 500,
            "y": 130,
            "wires": [],
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="/hello", help="the path served (default /hello)")
    args = parser.parse_args()
    print(json.dumps(flows(args.url), indent=2))


if __name__ == "__main__":
    main()
