// The lab model: every daemon message in; one snapshot of the lab out (output 1, to the pages)
// and the pages' commands out (output 2, to MQTT). The pages are views of the snapshot; the
// daemons stay the authority: a command goes out whatever the page thought of it, and its answer
// (ok, or the daemon's error text) comes back in the snapshot's `answers`.
//
// Inputs: MQTT `<prefix>/status|state|availability|response` (docs/topics.md);
// from the pages: `ui/refresh` and `ui/command` {prefix, action, target, value, label};
// `ui/tick` every second (liveness).
//
// Liveness: a source is `stale` when no live status (not the broker's retained copy: `msg.retain`)
// arrived for `liveness_factor` x its heartbeat (TRACKERDCS_UI_LAB, from the lab YAML, as the
// alarm service judges it), counted from the last live one or from the start of the flows: a
// broker restored from persistence serves the retained `online` of a daemon that died with it.
const RULES = __RULES__; // the daemons' own command tables, put here by build_flows.py
const ANSWERS_KEPT = 40;
const ANSWER_TIMEOUT_MS = 10000;
const PUBLISH_DELAY_MS = 150;

function lab() {
    let cached = context.get('lab');
    if (cached) return cached;
    let given = {};
    try {
        given = JSON.parse(env.get('TRACKERDCS_UI_LAB') || '{}');
    } catch (err) {
        node.warn('TRACKERDCS_UI_LAB is not valid JSON: ' + err.message);
    }
    cached = {
        name: given.lab || '',
        power: given.power || { '/hv': { kind: 'hv' }, '/lv': { kind: 'lv' } },
        chillers: chillerList(given),
        sensors: given.sensors || null, // null: any other prefix publishing a temperature
        modules: given.modules || [],
        limits: given.limits || {},
        margin_warning: given.margin_warning || 3.0,
        heartbeats: given.heartbeats || {}, // prefix -> s
        liveness_factor: given.liveness_factor || 3.0
    };
    context.set('lab', cached);
    return cached;
}

// The lab's chillers, [{name, prefix, setpoint: [min, max] or null, modules}]: TRACKERDCS_UI_LAB
// `chillers` (one entry per daemon), else the one chiller of the `julabo:` shorthand's defaults.
function chillerList(given) {
    if (Array.isArray(given.chillers)) return given.chillers;
    return [{ name: 'julabo', prefix: '/julabo', setpoint: null, modules: [] }];
}

function chillerOf(prefix) {
    return lab().chillers.find(c => c.prefix === prefix) || null;
}

// How the UI names a chiller: `chiller`, or `chiller <name>` in a lab of several.
function chillerLabel(c) {
    return lab().chillers.length > 1 ? 'chiller ' + c.name : 'chiller';
}

function state() {
    let s = context.get('state');
    if (!s) {
        s = { power: {}, chillers: {}, sensors: {}, answers: [], seq: 0, started: Date.now(),
            liveness: '' };
        context.set('state', s);
    }
    return s;
}

function powerEntry(s, prefix) {
    if (!s.power[prefix]) {
        s.power[prefix] = { available: null, state: null, channels: [] };
    }
    return s.power[prefix];
}

function chillerEntry(s, prefix) {
    if (!s.chillers[prefix]) s.chillers[prefix] = { available: null, status: null };
    return s.chillers[prefix];
}

function kindOf(prefix, payload) {
    const L = lab();
    if (L.power[prefix]) return 'power';
    if (chillerOf(prefix)) return 'julabo';
    if (L.sensors) return L.sensors.indexOf(prefix.slice(1)) >= 0 ? 'sensor' : null;
    const looksLikeSensor = payload && typeof payload === 'object' && 'temperature' in payload;
    return looksLikeSensor || state().sensors[prefix] ? 'sensor' : null;
}

function fromDaemon(s, topic, payload, retained) {
    const parts = topic.split('/'); // ['', name, what]
    if (parts.length !== 3) return false;
    const prefix = '/' + parts[1];
    const what = parts[2];
    if (what === 'response') return answer(s, prefix, payload);
    const kind = kindOf(prefix, what === 'status' ? payload : null);
    if (!kind) return false;
    let entry;
    if (kind === 'power') entry = powerEntry(s, prefix);
    else if (kind === 'julabo') entry = chillerEntry(s, prefix);
    else entry = s.sensors[prefix] = s.sensors[prefix] || { available: null, status: null };
    if (what === 'availability') entry.available = String(payload);
    else if (what === 'state' && kind === 'power') entry.state = payload;
    else if (what === 'status' && kind === 'power' && Array.isArray(payload)) entry.channels = payload;
    else if (what === 'status' && payload && typeof payload === 'object') entry.status = payload;
    else return false;
    if (what === 'status' && !retained) entry.live = Date.now();
    return true;
}

// `online`, `offline` (its last will, or stopped), `stale` (no live status within its deadline,
// whatever its availability says) or null (nothing heard yet).
function availability(s, prefix, entry) {
    if (entry.available === 'offline') return 'offline';
    const L = lab();
    const heartbeat = L.heartbeats[prefix];
    const since = entry.live || s.started;
    if (heartbeat && Date.now() - since > heartbeat * L.liveness_factor * 1000) return 'stale';
    return entry.available;
}

function down(available) {
    return available === 'offline' || available === 'stale';
}

function downText(prefix, available) {
    if (available === 'offline') return 'daemon offline';
    const L = lab();
    return 'no live data for ' + L.heartbeats[prefix] * L.liveness_factor + ' s';
}

// A change of any source's availability (checked every `ui/tick`) republishes the snapshot.
function livenessChanged(s) {
    const L = lab();
    const now = Object.keys(L.power).map(p => availability(s, p, powerEntry(s, p)))
        .concat(L.chillers.map(c => availability(s, c.prefix, chillerEntry(s, c.prefix))))
        .concat(Object.keys(s.sensors).sort().map(p => availability(s, p, s.sensors[p])))
        .join(',');
    const changed = now !== s.liveness;
    s.liveness = now;
    return changed;
}

function answer(s, prefix, reply) {
    if (!reply || typeof reply !== 'object' || !reply.topic) return false;
    const mine = reply.id ? s.answers.find(a => a.id === reply.id) : null;
    const a = mine || { id: reply.id || null, source: 'other', prefix: prefix, topic: reply.topic,
        payload: reply.payload, label: describe(reply.topic, reply.payload), sent: Date.now() };
    a.state = reply.ok ? 'ok' : 'error';
    a.error = reply.ok ? null : String(reply.error);
    a.answered = Date.now();
    if (!mine) remember(s, a);
    return true;
}

// `/hv/cmd/switch/M2 on` for a command another client sent (plain text or {"value": ...}).
function describe(topic, payload) {
    let value = payload;
    try {
        const parsed = JSON.parse(payload);
        if (parsed && typeof parsed === 'object' && 'value' in parsed) {
            value = typeof parsed.value === 'string' ? parsed.value : JSON.stringify(parsed.value);
        }
    } catch (err) {
        // plain text: shown as it is
    }
    return topic + ' ' + value;
}

function remember(s, a) {
    s.answers.unshift(a);
    s.answers.length = Math.min(s.answers.length, ANSWERS_KEPT);
}

function commandTopic(c) {
    const L = lab();
    const isPower = !!L.power[c.prefix];
    const isJulabo = !!chillerOf(c.prefix);
    const actions = isPower ? RULES.power.topics : isJulabo ? RULES.chiller.topics : null;
    if (!actions || actions.indexOf(c.action) < 0) return null;
    const target = c.target === undefined || c.target === null ? '' : String(c.target);
    if (target.indexOf('/') >= 0 || target.indexOf('+') >= 0 || target.indexOf('#') >= 0) return null;
    return c.prefix + '/cmd/' + c.action + (target ? '/' + target : '');
}

function command(s, c) {
    const topic = c && commandTopic(c);
    if (!topic) {
        node.warn('refused a malformed command from a page: ' + JSON.stringify(c));
        return null;
    }
    s.seq += 1;
    const id = 'ui-' + Date.now().toString(36) + '-' + s.seq;
    const value = c.value === undefined ? '' : c.value;
    const a = { id: id, source: 'ui', prefix: c.prefix, topic: topic, payload: String(value),
        target: c.target || null, action: c.action, label: c.label || topic + ' ' + value,
        state: 'pending', error: null, sent: Date.now() };
    remember(s, a);
    setTimeout(function () {
        if (a.state !== 'pending') return;
        a.state = 'error';
        a.error = 'no answer from ' + c.prefix + ' within ' + ANSWER_TIMEOUT_MS / 1000 +
            ' s: is its daemon running?';
        schedule();
    }, ANSWER_TIMEOUT_MS);
    // `time` (unix s): the daemon refuses a command that arrives too late (docs/topics.md)
    const payload = JSON.stringify({ value: value, id: id, time: Date.now() / 1000 });
    return { topic: topic, payload: payload, qos: 1, retain: false };
}

// -- the snapshot ---------------------------------------------------------------------------------
function fresh(sensor) {
    const st = sensor && sensor.status;
    return st && !st.stale && !down(sensor.available) ? st : null;
}

function environment(s, L) {
    const room = [];
    const modules = {};
    Object.keys(s.sensors).sort().forEach(function (prefix) {
        const sensor = { status: s.sensors[prefix].status,
            available: availability(s, prefix, s.sensors[prefix]) };
        const st = sensor.status || {};
        const row = { prefix: prefix, name: st.name || prefix.slice(1), kind: st.kind || 'room',
            module: st.module || '', available: sensor.available, status: sensor.status,
            ok: !!fresh(sensor) };
        if (row.kind === 'module') modules[row.module] = row;
        else room.push(row);
    });
    const dewpoints = room.filter(r => r.ok && r.status.dewpoint !== null).map(r => r.status.dewpoint);
    const dewpoint = dewpoints.length ? Math.max.apply(null, dewpoints) : null;
    const surfaces = [];
    Object.keys(modules).sort().forEach(function (m) {
        const r = modules[m];
        if (r.ok && r.status.temperature !== null) {
            surfaces.push({ what: 'module ' + m, module: m, temperature: r.status.temperature });
        }
    });
    L.chillers.forEach(function (c) {
        const e = chillerEntry(s, c.prefix);
        const j = e.status;
        if (j && j.bath_temp !== null && j.bath_temp !== undefined &&
            !down(availability(s, c.prefix, e))) {
            surfaces.push({ what: chillerLabel(c) + ' bath', chiller: c.name, prefix: c.prefix,
                module: '', temperature: j.bath_temp });
        }
    });
    surfaces.forEach(function (x) {
        x.margin = dewpoint === null ? null : Math.round((x.temperature - dewpoint) * 100) / 100;
    });
    const margins = surfaces.filter(x => x.margin !== null);
    const coldest = margins.length ? margins.reduce((a, b) => (b.margin < a.margin ? b : a)) : null;
    return { room: room, modules: modules, dewpoint: dewpoint, surfaces: surfaces,
        coldest: coldest, margin_warning: L.margin_warning };
}

function channelAlarms(prefix, entry, kind) {
    const out = [];
    const label = kind.toUpperCase() + ' ';
    if (down(entry.available)) {
        out.push({ prefix: prefix, module: null, text: prefix + ': ' + downText(prefix, entry.available) });
    }
    entry.channels.forEach(function (ch) {
        const bad = ['TRIPPED', 'ERROR', 'DISCONNECTED'].indexOf(ch.state) >= 0;
        if (bad) {
            const flags = (ch.flags || []).filter(f => f !== 'ON').join(', ');
            out.push({ prefix: prefix, module: ch.module || null,
                text: label + ch.name + ' ' + ch.state + (flags ? ' (' + flags + ')' : '') });
        }
        (ch.interlocks || []).forEach(function (name) {
            out.push({ prefix: prefix, module: ch.module || null,
                text: label + ch.name + ' inhibited by interlock ' + name });
        });
    });
    return out;
}

function snapshot(s) {
    const L = lab();
    const power = Object.keys(L.power).map(function (prefix) {
        const e = powerEntry(s, prefix);
        return { prefix: prefix, kind: L.power[prefix].kind || 'hv', crate: L.power[prefix].crate || '',
            available: availability(s, prefix, e), state: e.state, channels: e.channels };
    });
    const env_ = environment(s, L);
    let alarms = [];
    power.forEach(p => { alarms = alarms.concat(channelAlarms(p.prefix, p, p.kind)); });

    const names = L.modules.slice();
    power.forEach(p => p.channels.forEach(ch => {
        if (ch.module && names.indexOf(ch.module) < 0) names.push(ch.module);
    }));
    Object.keys(env_.modules).forEach(m => { if (m && names.indexOf(m) < 0) names.push(m); });
    const modules = names.map(function (m) {
        const row = { name: m, hv: [], lv: [], sensor: env_.modules[m] || null, margin: null };
        power.forEach(p => p.channels.forEach(ch => {
            if (ch.module === m) row[p.kind === 'lv' ? 'lv' : 'hv'].push(
                Object.assign({ prefix: p.prefix, available: p.available }, ch));
        }));
        const surface = env_.surfaces.find(x => x.module === m);
        row.margin = surface ? surface.margin : null;
        const t = row.sensor;
        if (t && !t.ok) {
            const why = down(t.available) ? downText(t.prefix, t.available) : (t.status && t.status.error) || 'no reading';
            alarms.push({ prefix: t.prefix, module: m, text: 'temperature sensor ' + t.name + ': ' + why });
        } else if (t && t.status.max_temperature !== null && t.status.temperature > t.status.max_temperature) {
            alarms.push({ prefix: t.prefix, module: m, text: 'temperature ' + t.status.temperature.toFixed(1) +
                ' °C above its limit ' + t.status.max_temperature + ' °C' });
        }
        if (row.margin !== null && row.margin < env_.margin_warning) {
            alarms.push({ prefix: t ? t.prefix : null, module: m, text: 'only ' + row.margin.toFixed(1) +
                ' K above the dew point' });
        }
        return row;
    });
    const chillers = L.chillers.map(function (c) {
        const e = chillerEntry(s, c.prefix);
        const j = { status: e.status, available: availability(s, c.prefix, e) };
        const label = chillerLabel(c);
        if (j.status && down(j.available)) {
            alarms.push({ prefix: c.prefix, module: null, text: label + ': ' + downText(c.prefix, j.available) });
        } else if (j.status && ['ERROR', 'DISCONNECTED'].indexOf(j.status.state) >= 0) {
            alarms.push({ prefix: c.prefix, module: null,
                text: label + ' ' + j.status.state + (j.status.error ? ': ' + j.status.error : '') });
        }
        return { name: c.name, prefix: c.prefix, label: label, setpoint: c.setpoint || null,
            modules: c.modules || [], available: j.available, status: j.status };
    });
    env_.room.filter(r => !r.ok).forEach(function (r) {
        const why = down(r.available) ? downText(r.prefix, r.available) : (r.status && r.status.error) || 'no reading';
        alarms.push({ prefix: r.prefix, module: null, text: 'sensor ' + r.name + ': ' + why });
    });
    modules.forEach(row => { row.alarms = alarms.filter(a => a.module === row.name).map(a => a.text); });
    return {
        lab: L.name, rules: RULES, limits: L.limits, time: Date.now(),
        power: power,
        chillers: chillers,
        environment: env_, modules: modules, alarms: alarms,
        answers: s.answers
    };
}

function schedule() {
    if (context.get('timer')) return;
    context.set('timer', setTimeout(function () {
        context.set('timer', null);
        const snap = snapshot(state());
        flow.set('model', snap);
        node.send([{ topic: 'model', payload: snap }, null]);
    }, PUBLISH_DELAY_MS));
}

const s = state();
if (msg.topic === 'ui/command') {
    const out = command(s, msg.payload);
    schedule();
    return out ? [null, out] : null;
}
if (msg.topic === 'ui/tick') {
    if (livenessChanged(s)) schedule();
    return null;
}
if (msg.topic === 'ui/refresh' || fromDaemon(s, String(msg.topic), msg.payload, !!msg.retain)) {
    schedule();
}
return null;
