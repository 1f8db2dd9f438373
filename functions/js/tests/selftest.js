// A battery of language features whose results are emitted, so that the
// module as built and the module after fuel-regions can be compared (and
// against node: `node tests/selftest.js` prints the same payload).
function handle(msg) {
    const out = [];
    const t = (name, f) => { try { out.push(name + "=" + JSON.stringify(f())); } catch (e) { out.push(name + "!" + e.name + ":" + e.message); } };
    t("arith", () => [1 + 2 * 3, 7 / 2, 7 % 3, -7 % 3, 2 ** 10, 0.1 + 0.2, Math.round(-2.5), (255).toString(16), parseInt("0x1f"), Number("1e3")]);
    t("str", () => ["abc".toUpperCase(), " x ".trim(), "a,b,,c".split(","), "abc".padStart(6, "-"), "é".normalize("NFD").length, "x".repeat(3), `t${1 + 1}`]);
    t("regex", () => ["2026-12-04".match(/(\d+)-(\d+)-(\d+)/).slice(1), "aXbXc".replace(/x/gi, "_"), /^[a-z]+$/u.test("abc"), "a1b22c333".split(/\d+/)]);
    t("json", () => JSON.parse(JSON.stringify({ a: [1, { b: null }], c: "\u00e9\n", d: 1.5e-7 })));
    t("sort", () => [5, 1, 4, 2, 3, 10].sort(), );
    t("sortn", () => [5, 1, 4, 2, 3, 10].sort((a, b) => a - b).map(x => x * x).filter(x => x % 2).reduce((a, b) => a + b, 0));
    t("mapset", () => { const m = new Map([["a", 1]]); m.set("b", 2); const s = new Set([1, 2, 2, 3]); return [[...m.entries()], [...s], m.size + s.size]; });
    t("class", () => { class A { #x = 1; get x() { return this.#x; } static of() { return new A(); } } class B extends A { y() { return super.x + 1; } } return [A.of().x, new B().y(), B.name]; });
    t("gen", () => { function* g(n) { for (let i = 0; i < n; i++) yield i * i; } return [...g(5)]; });
    t("destr", () => { const { a, b: [c, ...d] = [] , ...rest } = { a: 1, b: [2, 3, 4], e: 5, f: 6 }; return [a, c, d, rest]; });
    t("switch", () => { const r = []; for (const v of [1, 2, 3, "x", null]) { switch (v) { case 1: r.push("one"); case 2: r.push("two"); break; case "x": r.push("ex"); break; default: r.push("def"); } } return r; });
    t("labels", () => { let n = 0; outer: for (let i = 0; i < 10; i++) { for (let j = 0; j < 10; j++) { if (j === 5) continue outer; if (i === 7) break outer; n += j; } } return n; });
    t("closure", () => { const fs = []; for (let i = 0; i < 3; i++) fs.push(() => i); return fs.map(f => f()); });
    t("throw", () => { try { null.x; } catch (e) { return [e instanceof TypeError, e.name]; } });
    t("finally", () => { const r = []; function f() { try { r.push(1); return 2; } finally { r.push(3); } } r.push(f()); return r; });
    t("typed", () => { const a = new Uint8Array([1, 2, 255]); const f = new Float64Array(2); f[0] = 1.5; return [Array.from(a.map(x => x + 1)), f[0], new DataView(a.buffer).getUint16(0, true)]; });
    t("date", () => { const d = new Date(Date.UTC(2026, 11, 4, 20, 0, 0)); return [d.toISOString(), d.getUTCDay(), Date.parse("2026-12-04T20:00:00Z")]; });
    t("bigint", () => (2n ** 64n + 1n).toString());
    t("recursion", () => { const fib = n => n < 2 ? n : fib(n - 1) + fib(n - 2); return fib(20); });
    t("loop", () => { let s = 0; for (let i = 0; i < 10000; i++) s = (s + i * i) % 1000003; return s; });
    t("objects", () => { const o = {}; for (let i = 0; i < 200; i++) o["k" + (i % 37)] = (o["k" + (i % 37)] || 0) + i; return Object.keys(o).length + ":" + Object.values(o).reduce((a, b) => a + b); });
    t("spread", () => Math.max(...[3, 9, 2], ...new Set([11])));
    t("optional", () => [msg?.payload?.nope?.deeper ?? "dflt", msg.topic?.length]);
    t("error", () => { throw new RangeError("deliberate"); });
    t("symbol", () => { const s = Symbol("k"); const o = { [s]: 1, [Symbol.iterator]: function* () { yield 7; } }; return [o[s], [...o], typeof s]; });
    t("getset", () => { const o = { _v: 1, get v() { return this._v * 10; }, set v(x) { this._v = x; } }; o.v = 4; return o.v; });
    t("unicode", () => ["😀".length, [..."😀a"].length, "ǅ".toLowerCase(), String.fromCodePoint(0x1F600).codePointAt(0)]);
    t("numfmt", () => [(1234.5678).toFixed(2), (0.000001234).toPrecision(2), (1e21).toString(), (123.456).toExponential(1)]);
    return { topic: "selftest", payload: out.join("\n") };
}
if (typeof module !== "undefined") {
    console.log(handle({ topic: "a/b", payload: { x: 1 } }).payload);
}
