// The History page's query: a range (`ui/trend` {range: 1h|8h|24h|custom, from, to (ms), seq})
// in, one InfluxQL request out (output 1, to the `http request` node: InfluxDB's v1 /query, as
// the read-only user of TRACKERDCS_UI_INFLUX_URL/_USERNAME/_PASSWORD), or, when it cannot be
// asked, the answer straight to the asking page (output 2). The answer goes to that browser only
// (`msg._client`); history_reply.js turns InfluxDB's into charts.
//
// One statement per chart, grouped into at most MAX_POINTS intervals of the range: the mean per
// interval, but the highest HV current (a spike at a trip stays visible). The measurements are
// those telegraf.conf writes (TRACKERDCS_UI_LAB `history`, from the lab YAML); a range that
// starts before the raw points' retention reads the downsampled copy (its `mean_<field>`).
const CHARTS = __CHARTS__; // put here by build_flows.py: id, title, unit, source, fields, by
const SPANS = { '1h': 3600, '8h': 8 * 3600, '24h': 24 * 3600 };
const MAX_POINTS = 720;
const MAX_SPAN_S = 366 * 86400;
const TIMEOUT_MS = 20000;

function settings() {
    let lab = {};
    try {
        lab = JSON.parse(env.get('TRACKERDCS_UI_LAB') || '{}');
    } catch (err) {
        lab = {};
    }
    return lab.history || null;
}

function ident(name) {
    return '"' + String(name).replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

function answer(text, q) {
    return [null, { topic: 'trend', _client: msg._client, payload: Object.assign({ error: text, charts: [] }, q || {}) }];
}

const q = msg.payload || {};
const now = Date.now();
const seq = Number(q.seq) || 0;
let from;
let to;
if (SPANS[q.range]) {
    to = now;
    from = now - SPANS[q.range] * 1000;
} else if (q.range === 'custom') {
    from = Number(q.from);
    to = Number(q.to);
    if (!Number.isFinite(from) || !Number.isFinite(to) || from >= to) {
        return answer('the range must end after it starts', { seq: seq, range: 'custom' });
    }
    if (to - from > MAX_SPAN_S * 1000) return answer('a range of at most 366 days', { seq: seq, range: 'custom' });
    to = Math.min(to, now + 60000);
} else {
    return answer('unknown range ' + JSON.stringify(q.range) + ': 1h, 8h, 24h or custom', { seq: seq });
}
from = Math.floor(from);
to = Math.ceil(to);
const shown = { seq: seq, range: q.range, from: from, to: to };
const H = settings();
const url = env.get('TRACKERDCS_UI_INFLUX_URL');
if (!H || !url) return answer('no history here: Node-RED has no InfluxDB (TRACKERDCS_UI_INFLUX_URL)', shown);

const downsampled = typeof H.raw_retention === 'number' && from < now - H.raw_retention * 1000;
const rp = downsampled ? H.downsampled : H.raw;
const interval = Math.max(1, Math.ceil((to - from) / 1000 / MAX_POINTS), downsampled ? H.downsample_interval : 1);
const statements = CHARTS.map(function (c) {
    const sources = (H.measurements[c.source] || []).map(m => ident(H.database) + '.' + ident(rp) + '.' + ident(m));
    if (!sources.length) return null;
    const fields = c.fields.map(f => f.agg + '(' + ident((downsampled ? 'mean_' : '') + f.field) + ') AS ' + ident(f.field));
    return 'SELECT ' + fields.join(', ') + ' FROM ' + sources.join(', ') + ' WHERE time >= ' + from + 'ms AND time <= ' +
        to + 'ms GROUP BY time(' + interval + 's), ' + c.by.map(ident).join(', ') + ' fill(none)';
});
const asked = statements.filter(Boolean);
if (!asked.length) return answer('this lab has nothing to chart', shown);
const user = env.get('TRACKERDCS_UI_INFLUX_USERNAME') || '';
const headers = {};
if (user) {
    const password = env.get('TRACKERDCS_UI_INFLUX_PASSWORD') || '';
    headers.Authorization = 'Basic ' + Buffer.from(user + ':' + password).toString('base64');
}
return [{
    _client: msg._client,
    method: 'GET',
    url: url.replace(/\/+$/, '') + '/query?db=' + encodeURIComponent(H.database) + '&epoch=ms&q=' +
        encodeURIComponent(asked.join('; ')),
    headers: headers,
    requestTimeout: TIMEOUT_MS,
    trend: Object.assign(shown, { interval: interval, rp: rp, downsampled: downsampled,
        charts: statements.map((s, i) => (s ? CHARTS[i].id : null)).filter(Boolean) })
}, null];
