#!/usr/bin/env python3
"""Prints the Node-RED flows.json that bench/compare.sh runs: mqtt in ->
function node -> mqtt out, on one broker, at one QoS.

The function node does what functions/examples/vending-telemetry does per
message: take the machine from the topic, parse the telemetry JSON, keep
running totals per machine (sales_cents, vends, last_temp_c; in flow context,
which is Node-RED's default in-memory store), emit an alert to
vending/<machine>/alert when too warm or a slot is low, and a summary to
telemetry/vending/<machine>.

    python3 bench/node_red_flow.py --port 1883 --qos 1 > flows.json
"""
import argparse
import json

FUNCTION = r"""
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


def flows(port: int, qos: int) -> list:
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
            "name": "vending-telemetry",
            "func": FUNCTION.strip(),
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
    args = parser.parse_args()
    print(json.dumps(flows(args.port, args.qos), indent=2))


if __name__ == "__main__":
    main()
