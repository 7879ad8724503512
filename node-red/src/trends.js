// Every few seconds (the inject node): one point per module for each chart, from the lab model.
// Charts keep 15 minutes; a module whose data is not live (daemon offline or silent, channel
// DISCONNECTED, sensor stale) gets no point, so the gap shows.
const model = flow.get('model');
if (!model) return null;

function live(ch) {
    return ch.available !== 'offline' && ch.available !== 'stale' && ch.state !== 'DISCONNECTED';
}

function total(channels, key) {
    const ok = channels.filter(live);
    return ok.length ? ok.reduce((sum, ch) => sum + ch[key], 0) : null;
}

const current = [];
const voltage = [];
const temperature = [];
model.modules.forEach(function (m) {
    const i = total(m.hv, 'imon');
    const v = m.hv.filter(live).map(ch => ch.vmon);
    if (i !== null) current.push({ topic: m.name, payload: Math.round(i * 1000) / 1000 });
    if (v.length) voltage.push({ topic: m.name, payload: Math.max.apply(null, v) });
    if (m.sensor && m.sensor.ok && m.sensor.status.temperature !== null) {
        temperature.push({ topic: m.name, payload: m.sensor.status.temperature });
    }
});
return [current, voltage, temperature];
