// The History page's "Export CSV": GET /export/history.csv?from=<ms>&to=<ms> (an `http in` node,
// behind the dashboard's login like every HTTP node route) -> the arguments of `trackerdcs export
// lab` for that range (output 1, to the `exec` node running TRACKERDCS_UI_EXPORT: the one CSV
// format of the project, trackerdcs/ingest/export.py), or a refusal straight to the browser
// (output 2, to the `http response` node). Only digits reach the command line: the range is
// checked here, the rest of it is set by whoever started Node-RED.
const MAX_RAW_S = 3 * 86400; // longer ranges: the downsampled copy (1-min means)
const MAX_SPAN_S = 366 * 86400;

function refuse(status, text) {
    msg.statusCode = status;
    msg.headers = { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' };
    msg.payload = text + '\n';
    return [null, msg];
}

function iso(ms) {
    return new Date(ms).toISOString();
}

function stamp(ms) {
    return iso(ms).replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

if (!env.get('TRACKERDCS_UI_EXPORT')) return refuse(503, 'no export here: TRACKERDCS_UI_EXPORT is not set');
const query = (msg.req && msg.req.query) || {};
const text = [query.from, query.to].map(v => String(v === undefined ? '' : v));
if (!text.every(v => /^\d{1,15}$/.test(v))) return refuse(400, 'from and to: unix ms (the range shown)');
const from = Number(text[0]);
const to = Number(text[1]);
if (from >= to) return refuse(400, 'the range must end after it starts');
if (to - from > MAX_SPAN_S * 1000) return refuse(400, 'a range of at most 366 days');
const downsampled = to - from > MAX_RAW_S * 1000;
msg.payload = 'lab --from ' + iso(from) + ' --to ' + iso(to) + (downsampled ? ' --rp downsampled' : '');
msg.filename = 'trackerdcs-' + stamp(from) + '-' + stamp(to) + (downsampled ? '-1min-means' : '') + '.csv';
return [msg, null];
