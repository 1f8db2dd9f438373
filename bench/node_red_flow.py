#!/usr/bin/env python3
"""Prints the Node-RED flows.json that bench/compare.sh runs: mqtt in ->
function node -> mqtt out, on one broker, at one QoS.

The function node does per message what one of the example functions does:

- `enrich` (functions/examples/telemetry-enrich): take kind and device from
  `<kind>/<device>/telemetry`, parse the JSON object, add `site`,
  `received_ms` and `temp_f` (to one decimal, rounded half away from zero),
  publish it to telemetry/<kind>/<device>.
- `vending` (functions/examples/vending-telemetry): take the machine from the
  topic, parse the telemetry JSON, keep running totals per machine
  (sales_cents, vends, last_temp_c; in flow context, which is Node-RED's
  default in-memory store), emit an alert to vending/<machine>/alert when too
  warm or a slot is low, and a summary to telemetry/vending/<machine>.

    python3 bench/node_red_flow.py --port 1883 --qos 1 --function enrich > flows.json
"""
import argparse
import json

ENRICH = r"""
const parts = msg.topic.split('/');
if (parts.length !== 3 || parts[2] !== 'telemetry' || !parts[0] || !parts[1]) {
    node.error('not a <kind>/<device>/telemetry topic: ' + msg.topic);
    return null;
}
let t;
try {
    t = JSON.parse(msg.payload);
} catch (e) {
    node.error('telemetry is not a JSON object on ' + msg.topic);
    return null;
}
if (t === null || typeof t !== 'object' || Array.isArray(t)) {
    node.error('telemetry is not a JSON object on ' + msg.topic);
    return null;
}
t.site = SITE;
t.received_ms = Date.now();
if (typeof t.temp_c === 'number' && Math.abs(t.temp_c) <= 1e6) {
    const tenths = t.temp_c * 18 + 320;
    t.temp_f = Math.sign(tenths) * Math.round(Math.abs(tenths)) / 10;
}
return { topic: 'telemetry/' + parts[0] + '/' + parts[1], payload: JSON.stringify(t) };
"""

VENDING = r"""
const parts = msg.topic.split('/');
if (parts.length !== 3 || parts[0] !== 'vending' || parts[2] !== 'telemetry' || !parts[1]) {
    node.error('not a vending/<machine>/telemetry topic: ' + msg.topic);
    return null;
}
const machine = parts[1];
let t;
try {
    t = JSON.parse(msg.payload);
} catch (e) {
    node.error('invalid telemetry JSON on ' + msg.topic);
    return null;
}
const maxTempC = 8.0;
const lowStock = 2;
let sales = flow.get(machine + '/sales_cents') || 0;
let vends = flow.get(machine + '/vends') || 0;
if (t.sale) {
    sales += t.sale.price_cents;
    vends += 1;
    flow.set(machine + '/sales_cents', sales);
    flow.set(machine + '/vends', vends);
}
flow.set(machine + '/last_temp_c', t.temp_c);
const low = (t.stock || []).filter(s => s.count <= lowStock).map(s => s.slot);
const tooWarm = t.temp_c > maxTempC;
const doorOpen = !!t.door_open;
const out = [];
if (tooWarm || low.length > 0) {
    out.push({
        topic: 'vending/' + machine + '/alert',
        payload: JSON.stringify({ machine, ts: t.ts, temp_c: t.temp_c, max_temp_c: maxTempC,
            too_warm: tooWarm, door_open: doorOpen, low_stock: low }),
    });
}
out.push({
    topic: 'telemetry/vending/' + machine,
    payload: JSON.stringify({ machine, ts: t.ts, temp_c: t.temp_c, door_open: doorOpen,
        sales_cents: sales, vends, low_slots: low.length }),
});
return [out];
"""


FUNCTIONS = {"enrich": ("telemetry-enrich", ENRICH), "vending": ("vending-telemetry", VENDING)}


def flows(port: int, qos: int, function: str = "vending", site: str = "bench") -> list:
    name, body = FUNCTIONS[function]
    body = body.strip()
    if function == "enrich":
        body = body.replace("SITE", json.dumps(site))
    return [
        {"id": "wgtab", "type": "tab", "label": "wasmgate bench", "disabled": False},
        {
            "id": "wgbroker",
            "type": "mqtt-broker",
            "name": "local",
            "broker": "127.0.0.1",
            "port": str(port),
            "clientid": "wasmgate-bench-node-red",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
            "birthTopic": "",
            "closeTopic": "",
            "willTopic": "",
        },
        {
            "id": "wgin",
            "type": "mqtt in",
            "z": "wgtab",
            "name": "telemetry",
            "topic": "vending/+/telemetry",
            "qos": str(qos),
            "datatype": "utf8",
            "broker": "wgbroker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "x": 100,
            "y": 100,
            "wires": [["wgfn"]],
        },
        {
            "id": "wgfn",
            "type": "function",
            "z": "wgtab",
            "name": name,
            "func": body,
            "outputs": 1,
            "timeout": 0,
            "noerr": 0,
            "initialize": "",
            "finalize": "",
            "libs": [],
            "x": 300,
            "y": 100,
            "wires": [["wgout"]],
        },
        {
            "id": "wgout",
            "type": "mqtt out",
            "z": "wgtab",
            "name": "results",
            "topic": "",
            "qos": str(qos),
            "retain": "false",
            "broker": "wgbroker",
            "x": 500,
            "y": 100,
            "wires": [],
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--qos", type=int, choices=(0, 1), required=True)
    parser.add_argument("--function", choices=sorted(FUNCTIONS), default="vending")
    parser.add_argument("--site", default="bench", help="enrich: the site added to each message")
    args = parser.parse_args()
    print(json.dumps(flows(args.port, args.qos, args.function, args.site), indent=2))


if __name__ == "__main__":
    main()
