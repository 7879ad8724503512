// Who may do what: the one place in the flows that decides (docs/ui.md, "Logins and roles").
//
// Every message a page sends comes here first; only what passes goes on (output 1) to the lab
// model and to any other flow node that acts on the pages' messages (wire a new one there, never
// to a page directly). A refused message goes to the lab model as `ui/refused` (output 2), which
// lists it among the answers: nothing is sent to MQTT.
//
// - The login (node-red/login/) puts the logged-in user into `msg._client.user` {username,
//   role}, from the session only (what a browser sends there is replaced). Without a login
//   (Node-RED on loopback only, TRACKERDCS_UI_LOGIN_ACTIVE off) every page is an operator who
//   typed a name.
// - Read-only requests (READ_ONLY) pass for every role; every other topic is a command and needs
//   an operator (or an admin): a topic nobody listed here is a command, refused to viewers.
const READ_ONLY = ['ui/refresh', 'ui/history', 'ui/trend'];
const RANK = { viewer: 1, operator: 2, admin: 3 };
const NEEDED = 'operator';

// {name, role} of the sender; role null: not logged in although the login is on.
function sender(msg) {
    if (env.get('TRACKERDCS_UI_LOGIN_ACTIVE') !== 'on') return { name: null, role: NEEDED };
    const user = msg._client && msg._client.user;
    if (!user || !RANK[user.role]) return { name: null, role: null };
    return { name: String(user.username), role: user.role };
}

const who = sender(msg);
if (READ_ONLY.indexOf(msg.topic) >= 0 && who.role) return [msg, null];
if (who.role && RANK[who.role] >= RANK[NEEDED]) return [msg, null];
const reason = who.role
    ? who.name + ' is a ' + who.role + ': viewers see the lab, operators command it (nothing sent)'
    : 'not logged in: log in again (nothing sent)';
node.warn('refused ' + msg.topic + ' ' + JSON.stringify(msg.payload) + ' from ' + (who.name || 'nobody') + ': ' + reason);
return [null, { topic: 'ui/refused', _client: msg._client,
    payload: { topic: msg.topic, request: msg.payload, by: who.name, role: who.role, reason: reason } }];
