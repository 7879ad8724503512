// Methods shared by every page (build_flows.py puts them into each page's `methods`).
// -- the snapshot, and the server's clock it carries --------------------------------------------
onModel() {
    const m = this.msg;
    if (m && m.topic === 'model') {
        const first = !this.model;
        this.model = m.payload;
        this.received = Date.now();
        this.offset = this.model.time - this.received; // server clock - this browser's clock
        this.now = this.received;
        if (first && this.onFirstModel) this.onFirstModel();
        return;
    }
    if (m && m.topic === 'history' && this.onHistory) this.onHistory(m.payload);
    if (!this.model) this.send({ topic: 'ui/refresh' });
},
tick() {
    this.now = Date.now();
},
// Now, on the server's clock (browser clocks drift; every age is counted against this).
serverNow() {
    return this.now + this.offset;
},
// The flows send a snapshot every second: none for 3.5 s means the link to Node-RED is down.
linkLost() {
    return !this.received || this.now - this.received > 3500;
},
brokerDown() {
    return !this.model || !this.model.broker || this.model.broker.connected !== true;
},
// Nothing on the page can be trusted as live: no snapshot, or Node-RED without the broker.
frozen() {
    return this.linkLost() || this.brokerDown();
},
// -- the age of each source's data --------------------------------------------------------------
source(prefix) {
    return (this.model && this.model.sources[prefix]) || null;
},
age(prefix) {
    const src = this.source(prefix);
    if (!src || src.time === null) return null;
    return Math.max(0, (this.serverNow() - src.time * 1000) / 1000);
},
// Older than its heartbeat timeout (liveness factor x heartbeat), its daemon gone, or the page
// cut off from live data: its values are greyed out.
old(prefix) {
    const src = this.source(prefix);
    if (this.frozen() || !src || src.available === 'offline' || src.available === 'stale') return true;
    const age = this.age(prefix);
    return age === null || (src.timeout !== null && age > src.timeout);
},
oldClass(prefix) {
    return this.old(prefix) ? 'tdcs-old' : '';
},
ageText(prefix) {
    return this.duration(this.age(prefix));
},
ageTitle(prefix) {
    const src = this.source(prefix);
    if (!src) return 'no data from ' + prefix;
    const age = this.age(prefix);
    return prefix + ': last status ' + (age === null ? 'never' : this.duration(age) + ' ago') +
        (src.timeout !== null ? ', stale after ' + this.duration(src.timeout) : '') + ' (daemon ' + (src.available || 'unknown') + ')';
},
duration(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    if (seconds < 10) return seconds.toFixed(1) + ' s';
    if (seconds < 120) return Math.round(seconds) + ' s';
    if (seconds < 7200) return Math.round(seconds / 60) + ' min';
    return (seconds / 3600).toFixed(1) + ' h';
},
// -- formatting -----------------------------------------------------------------------------------
fmt(value, digits) {
    return value === null || value === undefined ? '—' : Number(value).toFixed(digits);
},
pad(n) {
    return String(n).padStart(2, '0');
},
// `2024-05-01 08:00:24` (this browser's time zone) of a time in ms
dateTime(ms) {
    if (!ms) return '—';
    const d = new Date(ms);
    return d.getFullYear() + '-' + this.pad(d.getMonth() + 1) + '-' + this.pad(d.getDate()) + ' ' + this.clock(ms);
},
clock(ms) {
    if (!ms) return '';
    const d = new Date(ms);
    return this.pad(d.getHours()) + ':' + this.pad(d.getMinutes()) + ':' + this.pad(d.getSeconds());
},
unixDateTime(s) {
    return s === null || s === undefined ? '—' : this.dateTime(s * 1000);
},
stateClass(state) {
    return 'tdcs-chip tdcs-st-' + String(state || 'unknown').toLowerCase();
},
availClass(available) {
    return 'tdcs-chip tdcs-av-' + (available || 'unknown');
},
down(available) {
    return available === 'offline' || available === 'stale';
},
resultText(a) {
    if (a.state === 'ok') return a.warning ? 'ok, ' + a.warning : 'ok';
    if (a.state === 'pending') return 'waiting for the daemon…';
    return a.error;
},
// An answer is superseded when a newer one for the same command topic is listed.
superseded(a) {
    const newest = this.model.answers.find(x => x.topic === a.topic);
    return newest && newest !== a;
},
flagText(flags) {
    return (flags || []).filter(f => f !== 'ON').map(f => f + ': ' + (this.model.rules.flags[f] || '?')).join('; ');
},
// -- alarms and navigation ------------------------------------------------------------------------
alarmsKnown() {
    const a = this.model && this.model.alarms;
    return !!a && a.known && !this.down(a.available);
},
go(path) {
    if (this.$router) this.$router.push(path);
    else window.location.assign(path);
},
// -- who is sending: one name per browser (a dashboard login replaces it in the flows) ----------
storedOperator() {
    try {
        return window.localStorage.getItem('trackerdcs.operator') || '';
    } catch (err) {
        return '';
    }
},
saveOperator() {
    const name = String(this.nameInput).trim().replace(/[^\p{L}\p{N}._-]+/gu, '_').slice(0, 40);
    if (!name) return;
    try {
        window.localStorage.setItem('trackerdcs.operator', name);
    } catch (err) {
        // private mode: kept for this page only
    }
    this.operator = name;
    this.askingName = false;
    const run = this.pending;
    this.pending = null;
    if (run) run();
},
changeOperator() {
    this.nameInput = this.operator;
    this.askingName = true;
},
// -- commands, confirmations and their consequences -----------------------------------------------
command(prefix, action, target, value, label) {
    if (!this.operator) { // asked once per browser; the command goes out once it is given
        this.pending = () => this.command(prefix, action, target, value, label);
        this.askingName = true;
        return false;
    }
    this.send({ topic: 'ui/command', payload: { prefix: prefix, action: action, target: target,
        value: value, label: label, operator: this.operator } });
    return true;
},
// A confirmation: the question, what will happen (`details`, one line each) and, when the
// page knows a reason not to, a `warning`.
ask(question, yes, run, details, warning) {
    this.confirming = { question: question, yes: yes, run: run, details: details || [], warning: warning || null };
},
confirmYes() {
    const c = this.confirming;
    this.confirming = null;
    if (c) c.run();
},
// A typed number (plain decimal, as the daemons take it), or null.
number(text) {
    return /^[-+]?(\d+\.?\d*|\.\d+)$/.test(String(text).trim()) ? Number(text) : null;
},
// Refused by the page before asking (a limit it knows): shown like an answer, nothing sent.
refuse(key, text) {
    this.local[key] = { text: text, time: this.serverNow() };
},
modules() {
    return this.model.modules.map(m => m.name);
},
// `M1-M4` for a run of the lab's modules in order, else `M1, M3`
modulesText(list) {
    const all = this.modules();
    const idx = list.map(m => all.indexOf(m));
    const run = list.length > 2 && idx.every((v, i) => v >= 0 && (i === 0 || v === idx[i - 1] + 1));
    return run ? list[0] + '-' + list[list.length - 1] : list.join(', ');
},
hvOnModules(list) {
    return this.model.modules.filter(m => list.indexOf(m.name) >= 0 &&
        m.hv.some(ch => ch.on === 1 || ch.state === 'ON' || ch.state === 'RAMPING_UP')).map(m => m.name);
},
// What a rule does when it fires, from the lab's configuration of it.
effectText(rule) {
    const list = this.modulesText(rule.modules);
    let text = rule.action === 'kill' ? 'kills the HV of ' + list + ' (fastest ramp-down)'
        : rule.action === 'none' ? 'refuses switching on the HV of ' + list : 'ramps down the HV of ' + list;
    if (rule.chiller_setpoint !== null && rule.chiller_setpoint !== undefined) {
        text += this.model.chillers.length > 1 && rule.chiller
            ? ' and raises the set point of chiller ' + rule.chiller + ' to ' + rule.chiller_setpoint + ' °C'
            : ' and raises the chiller set point to ' + rule.chiller_setpoint + ' °C';
    }
    return text;
},
// The chiller a rule watches, as the pages name it: `the chiller`, or `chiller <name>` in a lab
// of several.
ruleChillerText(rule) {
    return this.model.chillers.length > 1 && rule.chiller ? 'chiller ' + rule.chiller : 'the chiller';
},
onNowText(list) {
    const on = this.hvOnModules(list);
    return on.length ? 'HV on now: ' + on.join(', ') : 'no HV is on now';
},
rulesOf(kind) {
    return this.model.interlock ? this.model.interlock.rules.filter(r => r.kind === kind) : [];
},
// "All off", on every page: every module through the sequencer (HV first, then LV); without a
// running sequencer, the HV of every HV prefix at once.
allOff() {
    const seq = this.model.sequencer;
    const all = this.modules();
    if (seq && !this.down(seq.available) && all.length) {
        this.ask('Switch every module off?', 'All off', () => this.command(seq.prefix, 'module', 'all', 'off', 'all modules: off'), [
            'Through the sequencer: the HV of ' + this.modulesText(all) + ' ramps down to 0 V, then their LV switches off.',
            this.onNowText(all) + '.'
        ]);
        return;
    }
    const hv = this.model.power.filter(p => p.kind === 'hv');
    this.ask('Switch the HV of every channel off?', 'All HV off', () => hv.forEach(p =>
        this.command(p.prefix, 'switch', 'all', 'off', 'all ' + p.prefix + ' channels: off')), [
        'The sequencer is ' + (seq ? 'not running' : 'not part of this lab') + ': the HV of every channel of ' +
            hv.map(p => p.prefix).join(', ') + ' is switched off at once; the LV stays on.',
        this.onNowText(all) + '.'
    ]);
},
brokerText() {
    const b = this.model.broker;
    if (b.connected === true) return 'broker connected';
    if (b.connected === false) return 'broker lost since ' + this.clock(b.since) + ': values frozen';
    return 'connecting to the broker…';
},
