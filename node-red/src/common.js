// Methods shared by every page (build_flows.py puts them into each page's `methods`).
onModel() {
    if (this.msg && this.msg.topic === 'model') this.model = this.msg.payload;
    else if (!this.model) this.send({ topic: 'ui/refresh' });
},
fmt(value, digits) {
    return value === null || value === undefined ? '—' : Number(value).toFixed(digits);
},
stateClass(state) {
    return 'tdcs-chip tdcs-st-' + String(state || 'unknown').toLowerCase();
},
availClass(available) {
    return 'tdcs-chip tdcs-av-' + (available || 'unknown');
},
clock(t) {
    return t ? new Date(t).toLocaleTimeString([], { hour12: false }) : '';
},
resultText(a) {
    if (a.state === 'ok') return 'ok';
    if (a.state === 'pending') return 'waiting for the daemon…';
    return a.error;
},
command(prefix, action, target, value, label) {
    this.send({ topic: 'ui/command', payload: { prefix: prefix, action: action, target: target,
        value: value, label: label } });
},
ask(question, yes, run) {
    this.confirming = { question: question, yes: yes, run: run };
},
confirmYes() {
    const c = this.confirming;
    this.confirming = null;
    if (c) c.run();
},
