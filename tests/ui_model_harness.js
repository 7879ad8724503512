// Runs node-red/flows.json's "lab model" function outside Node-RED, on a mocked clock, for
// tests/test_ui_model.py: reads {"lab": {...TRACKERDCS_UI_LAB}, "steps": [{"t": s, "msg": {...}}]}
// on stdin, prints one JSON line per step: {"out": what the function returned, "snapshot": the
// latest snapshot sent to the pages, "sent": any other message sent to the pages meanwhile}. Node-RED gives a function `msg`, `node`, `context`, `flow`,
// `env`; the mock gives the same, with `Date.now()` and `setTimeout` under the test's control.
'use strict';
const fs = require('fs');
const vm = require('vm');

const flows = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const source = flows.find(n => n.type === 'function' && n.name === 'lab model').func;
const input = JSON.parse(fs.readFileSync(0, 'utf8'));

let now = 0;
let timers = [];
const store = {};
let snapshot = null;
let sent = [];
const sandbox = {
    JSON, Math, Object, Array, String, Number,
    Date: { now: () => now },
    setTimeout: (fn, ms) => { timers.push({ at: now + ms, fn: fn }); return timers.length; },
    context: { get: k => store[k], set: (k, v) => { store[k] = v; } },
    flow: { get: () => undefined, set: () => undefined },
    env: { get: k => (k === 'TRACKERDCS_UI_LAB' ? JSON.stringify(input.lab) : undefined) },
    node: { warn: () => undefined, send: out => {
        if (out[0] && out[0].topic === 'model') snapshot = out[0].payload;
        else if (out[0]) sent.push(out[0]);
    } },
};
const run = vm.runInNewContext('(function (msg) {\n' + source + '\n})', sandbox);

for (const step of input.steps) {
    now = step.t * 1000;
    const out = run(step.msg);
    const due = timers.filter(x => x.at <= now + 1000); // the 150 ms publish delay, not the 10 s
    timers = timers.filter(x => x.at > now + 1000);
    due.forEach(x => x.fn());
    process.stdout.write(JSON.stringify({ out: out === undefined ? null : out, snapshot, sent }) + '\n');
    sent = [];
}
