// InfluxDB's answer to the History page's query (history.js) -> the charts, to the asking browser
// only (`msg._client`): {topic: 'trend', payload: {seq, range, from, to, interval, rp, charts:
// [{id, title, unit, series: [{name, points: [[ms, value], ...]}], error}], links, error}}.
// `links`: the Grafana dashboards for the same range, when TRACKERDCS_UI_GRAFANA_URL is set.
const CHARTS = __CHARTS__; // put here by build_flows.py
const GRAFANA = __GRAFANA__; // the provisioned dashboards (grafana/dashboards/): uid, title

function label(chart, tags, field) {
    const t = tags || {};
    let name = chart.by.map(k => t[k]).filter(Boolean);
    name = name.length > 1 ? name[0] + ' (' + name.slice(1).join(', ') + ')' : name[0] || chart.source;
    const f = chart.fields.find(x => x.field === field);
    return f && f.label ? name + ' ' + f.label : name;
}

function chartOf(chart, result) {
    const out = { id: chart.id, title: chart.title, unit: chart.unit, series: [], error: null };
    if (!result) return out;
    if (result.error) out.error = String(result.error);
    (result.series || []).forEach(function (s) {
        const columns = s.columns || [];
        columns.slice(1).forEach(function (field, i) {
            const points = [];
            (s.values || []).forEach(function (row) {
                const v = row[i + 1];
                if (typeof v === 'number' && Number.isFinite(v)) points.push([row[0], v]);
            });
            if (points.length) out.series.push({ name: label(chart, s.tags, field), points: points });
        });
    });
    out.series.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return out;
}

const t = msg.trend || {};
const reply = { seq: t.seq, range: t.range, from: t.from, to: t.to, interval: t.interval, rp: t.rp,
    downsampled: !!t.downsampled, charts: [], links: [], error: null, time: Date.now() };
const body = msg.payload;
if (msg.statusCode !== 200 || !body || typeof body !== 'object' || !Array.isArray(body.results)) {
    const why = body && typeof body === 'object' && body.error ? body.error : String(body || msg.statusCode);
    reply.error = 'InfluxDB did not answer (' + msg.statusCode + '): ' + String(why).slice(0, 300);
} else {
    const results = {};
    body.results.forEach(r => { results[r.statement_id] = r; });
    reply.charts = (t.charts || []).map(function (id, i) {
        return chartOf(CHARTS.find(c => c.id === id), results[i]);
    });
}
const grafana = (env.get('TRACKERDCS_UI_GRAFANA_URL') || '').replace(/\/+$/, '');
if (grafana) {
    reply.links = GRAFANA.map(d => ({ title: d.title, href: grafana + '/d/' + encodeURIComponent(d.uid) +
        '?from=' + t.from + '&to=' + t.to }));
}
return { topic: 'trend', _client: msg._client, payload: reply };
