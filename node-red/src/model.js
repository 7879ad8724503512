// The lab model: every daemon message in; one snapshot of the lab out (output 1, to the pages)
// and the pages' commands out (output 2, to MQTT). The pages are views of the snapshot; the
// daemons stay the authority: a command goes out whatever the page thought of it, and its answer
// (ok, or the daemon's error text) comes back in the snapshot's `answers`.
//
// Inputs: MQTT `<prefix>/status|state|availability|response|action` and `/alarms`
// (docs/topics.md); the broker node's connection (a `status` node: `msg.status`); from the pages:
// `ui/refresh`, `ui/command` {prefix, action, target, value, label, operator} and `ui/history`
// {since, module, source, kind, limit, operator} (an audit-log query, answered to that browser
// only); `ui/tick` every second (liveness, and a fresh snapshot: the pages tell a frozen link by
// its `time`, the server's clock, which they count ages against).
//
// Liveness: a source is `stale` when no live status (not the broker's retained copy: `msg.retain`)
// arrived for `liveness_factor` x its heartbeat (TRACKERDCS_UI_LAB, from the lab YAML, as the
// alarm service judges it), counted from the last live one or from the start of the flows: a
// broker restored from persistence serves the retained `online` of a daemon that died with it.
const RULES = __RULES__; // the daemons' own command tables, put here by build_flows.py
const ANSWERS_KEPT = 40;
const ANSWER_TIMEOUT_MS = 10000;
const PUBLISH_DELAY_MS = 150;
const RECENT_ACTIONS_SPAN = '12h'; // interlock actions asked of the audit log at start
const RECENT_ACTIONS_RETRY_MS = 30000;

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
        liveness_factor: given.liveness_factor || 3.0,
        interlock: given.interlock || null, // {prefix, rules: [{name, kind, modules, action, ...}]}
        sequencer: given.sequencer || null,
        alarms: given.alarms === undefined ? '/alarms' : given.alarms,
        audit: given.audit === undefined ? '/audit' : given.audit
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
        s = { power: {}, chillers: {}, sensors: {}, answers: [], seq: 0,
            started: Date.now(), interlock: { available: null, status: null },
            sequencer: { available: null, status: null }, alarms: { available: null, status: null },
            broker: { connected: null, since: Date.now() }, actions: {}, ruleActions: {}, ruleModules: {},
            queries: {}, recent: { asked: null, done: false } };
        // every sensor of the lab, heard from or not (one never heard from is shown so, greyed)
        (lab().sensors || []).forEach(name => { s.sensors['/' + name] = { available: null, status: null }; });
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
    if (L.interlock && prefix === L.interlock.prefix) return 'interlock';
    if (L.sequencer && prefix === L.sequencer) return 'sequencer';
    if (prefix === L.alarms) return 'alarms';
    if (L.sensors) return L.sensors.indexOf(prefix.slice(1)) >= 0 ? 'sensor' : null;
    const looksLikeSensor = payload && typeof payload === 'object' && 'temperature' in payload;
    return looksLikeSensor || state().sensors[prefix] ? 'sensor' : null;
}

function entryOf(s, kind, prefix) {
    if (kind === 'power') return powerEntry(s, prefix);
    if (kind === 'julabo') return chillerEntry(s, prefix);
    if (kind === 'sensor') return (s.sensors[prefix] = s.sensors[prefix] || { available: null, status: null });
    return s[kind];
}

function fromDaemon(s, topic, payload, retained) {
    const L = lab();
    if (topic === L.alarms) { // the retained list is `/alarms` itself
        if (!payload || typeof payload !== 'object') return false;
        s.alarms.status = payload;
        return true;
    }
    const parts = topic.split('/'); // ['', name, what]
    if (parts.length !== 3) return false;
    const prefix = '/' + parts[1];
    const what = parts[2];
    if (what === 'response') {
        if (prefix === L.audit) return auditAnswer(s, payload);
        return answer(s, prefix, payload);
    }
    const kind = kindOf(prefix, what === 'status' ? payload : null);
    if (!kind) return false;
    if (what === 'action') return kind === 'interlock' && interlockAction(s, payload);
    const entry = entryOf(s, kind, prefix);
    if (what === 'availability') entry.available = String(payload);
    else if (what === 'state' && kind === 'power') entry.state = payload;
    else if (what === 'status' && kind === 'power' && Array.isArray(payload)) entry.channels = payload;
    else if (what === 'status' && payload && typeof payload === 'object') entry.status = payload;
    else return false;
    if (what === 'status' && !retained) entry.live = Date.now();
    if (what === 'status' && kind === 'interlock') rememberRuleModules(s, payload);
    if (what === 'status' && kind === 'power') Object.keys(s.actions).forEach(m => followAction(s, m));
    return true;
}

// An interlock's action stays with its module until the module's HV, seen off since, is on
// again: a later trip or switch-off is not the rule's doing.
function followAction(s, m) {
    const act = s.actions[m];
    const L = lab();
    const hv = [];
    Object.keys(L.power).filter(p => (L.power[p].kind || 'hv') === 'hv').forEach(function (p) {
        powerEntry(s, p).channels.forEach(ch => { if (ch.module === m) hv.push(ch); });
    });
    if (!hv.length) return;
    if (hv.some(ch => ch.on === 1 || ['ON', 'RAMPING_UP'].indexOf(ch.state) >= 0)) {
        if (act.off) delete s.actions[m];
    } else {
        act.off = true;
    }
}

// The modules a rule held unsafe when it last held any (its alarm stays after it cleared).
function rememberRuleModules(s, status) {
    (Array.isArray(status.rules) ? status.rules : []).forEach(function (r) {
        if (r && r.active && Array.isArray(r.modules) && r.modules.length) s.ruleModules[r.name] = r.modules;
    });
}

// What an interlock did: its rule keeps the last action; a module whose HV it switched off says
// so (until its HV is on again).
function interlockAction(s, a) {
    if (!a || typeof a !== 'object' || typeof a.rule !== 'string' || typeof a.time !== 'number') return false;
    const commands = Array.isArray(a.commands) ? a.commands.map(String) : [];
    const last = s.ruleActions[a.rule];
    if (!last || last.time <= a.time) {
        s.ruleActions[a.rule] = { event: a.event, time: a.time, text: a.text, commands: commands };
    }
    if (['fired', 'extended', 'reasserted'].indexOf(a.event) < 0) return true;
    (Array.isArray(a.modules) ? a.modules : []).forEach(function (m) {
        const mine = commands.filter(t => t.split('/').pop() === m);
        if (!mine.length) return;
        const old = s.actions[m];
        if (old && old.time > a.time) return;
        s.actions[m] = { rule: a.rule, event: a.event, text: a.text, time: a.time, commands: mine,
            verb: mine[0].split('/')[3], off: false };
    });
    return true;
}

function auditAnswer(s, reply) {
    if (!reply || typeof reply !== 'object' || !reply.id) return false;
    const q = s.queries[reply.id];
    if (!q) return false; // another client's query
    delete s.queries[reply.id];
    if (q.recent) {
        s.recent.done = !!reply.ok;
        (reply.records || []).forEach(function (r) {
            try {
                interlockAction(s, JSON.parse(r.payload));
            } catch (err) {
                // not an action payload: nothing to learn
            }
        });
        return true;
    }
    node.send([{ topic: 'history', _client: q.client, payload: { query: q.query, ok: !!reply.ok,
        error: reply.ok ? null : String(reply.error), records: reply.records || [], count: reply.count || 0,
        truncated: !!reply.truncated, time: Date.now() } }, null]);
    return false;
}

// The broker node's connection, from the `status` node watching an `mqtt in` node: green is
// connected; red (disconnected) and yellow (connecting) are not.
function brokerStatus(s, st) {
    const connected = st.fill === 'green';
    if (connected !== s.broker.connected) s.broker = { connected: connected, since: Date.now() };
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

function answer(s, prefix, reply) {
    if (!reply || typeof reply !== 'object' || !reply.topic) return false;
    const mine = reply.id ? s.answers.find(a => a.id === reply.id) : null;
    const a = mine || { id: reply.id || null, source: 'other', prefix: prefix, topic: reply.topic,
        payload: reply.payload, label: describe(reply.topic, reply.payload), sent: Date.now(),
        by: senderOf(reply.id) };
    a.state = reply.ok ? 'ok' : 'error';
    a.error = reply.ok ? null : String(reply.error);
    a.warning = reply.warning ? String(reply.warning) : null;
    a.answered = Date.now();
    if (!mine) remember(s, a);
    return true;
}

// The sender of a command, from its id `<sender>:...` (the audit log's convention).
function senderOf(id) {
    return id && String(id).indexOf(':') > 0 ? String(id).split(':')[0] : null;
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

// -- commands -------------------------------------------------------------------------------------

// Who sends a command: the one place the flows decide it. A dashboard login puts its user into
// `msg._client.user`; until the lab has one, the name the page asks for once per browser. The
// audit log and the alarm acknowledgements take the part of the command id before `:`.
function operatorOf(msg) {
    const user = msg._client && msg._client.user;
    const given = (user && (user.username || user.name)) || (msg.payload && msg.payload.operator) || '';
    const name = String(given).trim().replace(/[^\p{L}\p{N}._-]+/gu, '_').slice(0, 40);
    return name || 'ui';
}

// Which prefixes take which commands (the services' own tables, RULES), and what a target may be.
function commandTopic(c) {
    const L = lab();
    let service = null;
    if (L.power[c.prefix]) service = 'power';
    else if (chillerOf(c.prefix)) service = 'chiller';
    else if (L.sequencer && c.prefix === L.sequencer) service = 'sequencer';
    else if (L.interlock && c.prefix === L.interlock.prefix) service = 'interlock';
    else if (c.prefix === L.alarms) service = 'alarms';
    else if (c.prefix === L.audit) service = 'audit';
    if (!service || RULES[service].topics.indexOf(c.action) < 0) return null;
    const target = c.target === undefined || c.target === null ? '' : String(c.target);
    if (target.indexOf('/') >= 0 || target.indexOf('+') >= 0 || target.indexOf('#') >= 0) return null;
    return c.prefix + '/cmd/' + c.action + (target ? '/' + target : '');
}

function newId(s, operator) {
    s.seq += 1;
    return operator + ':ui-' + Date.now().toString(36) + '-' + s.seq;
}

// `time` (unix s): the daemon refuses a command that arrives too late (docs/topics.md)
function mqttCommand(topic, value, id) {
    return { topic: topic, payload: JSON.stringify({ value: value, id: id, time: Date.now() / 1000 }),
        qos: 1, retain: false };
}

function command(s, msg) {
    const c = msg.payload;
    const topic = c && commandTopic(c);
    if (!topic) {
        node.warn('refused a malformed command from a page: ' + JSON.stringify(c));
        return null;
    }
    const by = operatorOf(msg);
    const id = newId(s, by);
    const value = c.value === undefined ? '' : c.value;
    const a = { id: id, source: 'ui', by: by, prefix: c.prefix, topic: topic, payload: String(value),
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
    return mqttCommand(topic, value, id);
}

function history(s, msg) {
    const L = lab();
    const q = msg.payload || {};
    const query = {};
    ['since', 'until', 'module', 'source', 'kind'].forEach(function (k) {
        if (typeof q[k] === 'string' && q[k]) query[k] = q[k];
    });
    query.limit = Math.max(1, Math.min(Number(q.limit) || 200, 1000));
    const id = newId(s, operatorOf(msg));
    s.queries[id] = { query: query, client: msg._client };
    return mqttCommand(L.audit + '/cmd/query', query, id);
}

// Once, at start (again every 30 s until answered): the interlock actions of the last hours,
// so that a module ramped down before Node-RED (re)started still says why.
function recentActions(s) {
    if (s.recent.done || !s.broker.connected) return null;
    if (s.recent.asked !== null && Date.now() - s.recent.asked < RECENT_ACTIONS_RETRY_MS) return null;
    s.recent.asked = Date.now();
    const L = lab();
    if (!L.interlock || !L.audit) return null;
    const id = newId(s, 'ui');
    s.queries[id] = { recent: true };
    return mqttCommand(L.audit + '/cmd/query', { since: RECENT_ACTIONS_SPAN, source: 'interlock',
        kind: 'action', limit: 500 }, id);
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

// What the UI sees wrong now, from the daemons' statuses (the alarm service's latched alarms
// are `alarms`): shown on the modules and the overview as the present state.
function channelConditions(prefix, entry, kind) {
    const out = [];
    const label = kind.toUpperCase() + ' ';
    if (down(entry.available)) {
        out.push({ prefix: prefix, module: null, text: prefix + ': ' + downText(prefix, entry.available) });
    }
    entry.channels.forEach(function (ch) {
        const bad = ['TRIPPED', 'ERROR', 'DISCONNECTED'].indexOf(ch.state) >= 0;
        if (bad) {
            const flags = (ch.flags || []).filter(f => f !== 'ON');
            out.push({ prefix: prefix, module: ch.module || null,
                text: label + ch.name + ' ' + ch.state + (flags.length ? ' (' + flags.join(', ') + ')' : ''),
                why: flags.map(f => RULES.flags[f] || f).join('; ') });
        }
    });
    return out;
}

// The latched alarms of the alarm service, each with the modules it concerns (from its key:
// `channel:/hv:hv_m2`, `interlock:<rule>`, `<what>:<prefix>`), newest first.
function latched(s, L, power, env_) {
    const st = s.alarms.status;
    const list = st && Array.isArray(st.alarms) ? st.alarms.slice() : [];
    const rules = interlockRules(s, L);
    list.forEach(function (a) {
        const key = String(a.key || '');
        const cut = key.indexOf(':');
        const what = key.slice(0, cut);
        const rest = key.slice(cut + 1);
        let modules = [];
        if (what === 'channel') {
            const at = rest.lastIndexOf(':');
            const p = power.find(x => x.prefix === rest.slice(0, at));
            const ch = p && p.channels.find(c => c.name === rest.slice(at + 1));
            modules = ch && ch.module ? [ch.module] : [];
        } else if (what === 'interlock') {
            const r = rules.find(x => x.name === rest);
            modules = r ? (r.active && r.holding.length ? r.holding : s.ruleModules[r.name] || r.protects) : [];
        } else if (L.power[rest]) {
            const p = power.find(x => x.prefix === rest);
            modules = p ? p.channels.map(c => c.module).filter((m, i, all) => m && all.indexOf(m) === i) : [];
        } else {
            const sensor = Object.keys(env_.modules).find(m => env_.modules[m].prefix === rest);
            modules = sensor ? [sensor] : [];
        }
        a.modules = modules.indexOf('*') >= 0 ? L.modules.slice() : modules;
    });
    list.sort((a, b) => b.id - a.id);
    const counts = {};
    ['critical', 'major', 'minor'].forEach(function (sev) {
        const mine = list.filter(a => a.severity === sev);
        counts[sev] = { listed: mine.length, active: mine.filter(a => a.active).length,
            unacknowledged: mine.filter(a => !a.acknowledged).length };
    });
    return { prefix: L.alarms, available: s.alarms.available, time: st ? st.time : null,
        known: !!st, list: list, counts: counts,
        unacknowledged: list.filter(a => !a.acknowledged).length,
        newest: list.find(a => !a.acknowledged) || null };
}

// Every rule of the lab (its configuration) with its state from `/interlock/status`.
function interlockRules(s, L) {
    if (!L.interlock) return [];
    const st = s.interlock.status;
    const live = st && Array.isArray(st.rules) ? st.rules : [];
    return L.interlock.rules.map(function (r) {
        const now = live.find(x => x.name === r.name) || {};
        return Object.assign({}, r, { known: !!now.name, active: !!now.active, armed: now.armed,
            reason: now.reason || null, holding: now.modules || [], protects: now.protects || r.modules,
            since: now.since || null, fired_at: now.fired_at || null, cleared_at: now.cleared_at || null,
            last_action: s.ruleActions[r.name] || null });
    });
}

// Each source: its availability, the `time` of its last status (unix s, the daemon's clock:
// the pages count its age against this snapshot's `time`) and after how long it is stale.
function sources(s, L) {
    const out = {};
    function add(prefix, what, entry, t) {
        const hb = L.heartbeats[prefix];
        out[prefix] = { what: what, available: availability(s, prefix, entry),
            time: typeof t === 'number' ? t : null, timeout: hb ? hb * L.liveness_factor : null };
    }
    Object.keys(L.power).forEach(function (p) {
        const e = powerEntry(s, p);
        const times = e.channels.map(c => c.time).filter(t => typeof t === 'number');
        add(p, 'power', e, times.length ? Math.max.apply(null, times) : null);
    });
    L.chillers.forEach(function (c) {
        const e = chillerEntry(s, c.prefix);
        add(c.prefix, 'chiller', e, e.status && e.status.time);
    });
    Object.keys(s.sensors).sort().forEach(p => add(p, 'sensor', s.sensors[p], s.sensors[p].status && s.sensors[p].status.time));
    if (L.interlock) add(L.interlock.prefix, 'interlock', s.interlock, s.interlock.status && s.interlock.status.time);
    if (L.sequencer) add(L.sequencer, 'sequencer', s.sequencer, s.sequencer.status && s.sequencer.status.time);
    return out;
}

function hvOn(row) {
    return row.hv.some(ch => ch.on === 1 || ['ON', 'RAMPING_UP'].indexOf(ch.state) >= 0);
}

function snapshot(s) {
    const L = lab();
    const power = Object.keys(L.power).map(function (prefix) {
        const e = powerEntry(s, prefix);
        return { prefix: prefix, kind: L.power[prefix].kind || 'hv', crate: L.power[prefix].crate || '',
            available: availability(s, prefix, e), state: e.state, channels: e.channels };
    });
    const env_ = environment(s, L);
    let conditions = [];
    power.forEach(p => { conditions = conditions.concat(channelConditions(p.prefix, p, p.kind)); });
    const rules = interlockRules(s, L);
    const alarms = latched(s, L, power, env_);
    const seq = s.sequencer.status && s.sequencer.status.modules;

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
            conditions.push({ prefix: t.prefix, module: m, text: 'temperature sensor ' + t.name + ': ' + why });
        } else if (t && t.status.max_temperature !== null && t.status.temperature > t.status.max_temperature) {
            conditions.push({ prefix: t.prefix, module: m, text: 'temperature ' + t.status.temperature.toFixed(1) +
                ' °C above its limit ' + t.status.max_temperature + ' °C' });
        }
        if (row.margin !== null && row.margin < env_.margin_warning) {
            conditions.push({ prefix: t ? t.prefix : null, module: m, text: 'only ' + row.margin.toFixed(1) +
                ' K above the dew point' });
        }
        row.interlocks = rules.filter(r => r.active && (r.holding.indexOf(m) >= 0 || r.holding.indexOf('*') >= 0))
            .map(r => ({ name: r.name, reason: r.reason, since: r.since, action: r.action }));
        const act = s.actions[m];
        row.interlock_action = act && !hvOn(row) ? { rule: act.rule, event: act.event, text: act.text,
            time: act.time, commands: act.commands, verb: act.verb } : null;
        row.sequence = (seq && seq[m]) || null;
        row.alarms = alarms.list.filter(a => a.modules.indexOf(m) >= 0);
        return row;
    });
    const chillers = L.chillers.map(function (c) {
        const e = chillerEntry(s, c.prefix);
        const j = { status: e.status, available: availability(s, c.prefix, e) };
        const label = chillerLabel(c);
        if (j.status && down(j.available)) {
            conditions.push({ prefix: c.prefix, module: null, text: label + ': ' + downText(c.prefix, j.available) });
        } else if (j.status && ['ERROR', 'DISCONNECTED'].indexOf(j.status.state) >= 0) {
            conditions.push({ prefix: c.prefix, module: null,
                text: label + ' ' + j.status.state + (j.status.error ? ': ' + j.status.error : '') });
        }
        return { name: c.name, prefix: c.prefix, label: label, setpoint: c.setpoint || null,
            modules: c.modules || [], available: j.available, status: j.status };
    });
    env_.room.filter(r => !r.ok).forEach(function (r) {
        const why = down(r.available) ? downText(r.prefix, r.available) : (r.status && r.status.error) || 'no reading';
        conditions.push({ prefix: r.prefix, module: null, text: 'sensor ' + r.name + ': ' + why });
    });
    modules.forEach(row => { row.conditions = conditions.filter(a => a.module === row.name); });
    return {
        lab: L.name, rules: RULES, limits: L.limits, time: Date.now(),
        broker: s.broker, sources: sources(s, L),
        power: power,
        chillers: chillers,
        environment: env_, modules: modules, conditions: conditions,
        alarms: alarms,
        interlock: L.interlock ? { prefix: L.interlock.prefix, available: availability(s, L.interlock.prefix, s.interlock),
            rules: rules } : null,
        sequencer: L.sequencer ? { prefix: L.sequencer, available: availability(s, L.sequencer, s.sequencer) } : null,
        audit: L.audit,
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
if (msg.status && msg.status.source) {
    brokerStatus(s, msg.status);
    schedule();
    return null;
}
if (msg.topic === 'ui/command') {
    const out = command(s, msg);
    schedule();
    return out ? [null, out] : null;
}
if (msg.topic === 'ui/history') return [null, history(s, msg)];
if (msg.topic === 'ui/tick') {
    schedule();
    const ask = recentActions(s);
    return ask ? [null, ask] : null;
}
if (msg.topic === 'ui/refresh' || fromDaemon(s, String(msg.topic), msg.payload, !!msg.retain)) {
    schedule();
}
return null;
