// Telemetry enrichment, as functions/examples/telemetry-enrich does in Rust:
// devices publish a JSON object to <kind>/<device>/telemetry; this forwards
// it upstream to telemetry/<kind>/<device> with "site" (config `site`,
// default "edge"), "received_ms" and, when temp_c is a number, "temp_f" (to
// one decimal, rounded half away from zero, omitted beyond +-1,000,000)
// added at the end.
//
// The same code runs in a Node-RED function node: there, paste the body of
// handle() (`msg` is in scope and `return` sends).
function handle(msg) {
    const parts = msg.topic.split("/");
    if (parts.length !== 3 || parts[2] !== "telemetry" || !parts[0] || !parts[1]) {
        throw new Error("not a <kind>/<device>/telemetry topic: " + msg.topic);
    }
    const t = msg.payload;
    if (t === null || typeof t !== "object" || Array.isArray(t)) {
        throw new Error("telemetry is not a JSON object on " + msg.topic);
    }
    t.site = env.get("site") || "edge";
    t.received_ms = Date.now();
    if (typeof t.temp_c === "number" && Math.abs(t.temp_c) <= 1e6) {
        const tenths = t.temp_c * 18 + 320;
        t.temp_f = Math.sign(tenths) * Math.round(Math.abs(tenths)) / 10;
    }
    return { topic: "telemetry/" + parts[0] + "/" + parts[1], payload: t, upstream: true };
}
