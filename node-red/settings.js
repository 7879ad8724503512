/**
 * Node-RED settings for the trackerdcs control UI.
 *
 * Nothing secret lives here: the password hashes and the credential secret come from the
 * environment, set by the process that starts Node-RED (trackerdcs/stack/nodered.py, or the
 * container's trackerdcs/deploy.py):
 *
 *   TRACKERDCS_NODE_RED_HOST           address to listen on (default 127.0.0.1)
 *   TRACKERDCS_NODE_RED_USER           editor user name (default admin), an admin of the dashboard too
 *   TRACKERDCS_NODE_RED_PASSWORD_HASH  bcrypt hash of its password (required)
 *   TRACKERDCS_NODE_RED_SECRET         key that encrypts saved node credentials and signs the
 *                                      dashboard's sessions (required)
 *   TRACKERDCS_UI_USERS                the dashboard's users: `name:role:bcrypt-hash ...`, roles
 *                                      viewer, operator, admin (admins reach the editor too)
 *   TRACKERDCS_UI_LOGIN                on / off; unset: on unless listening on loopback only
 *   TRACKERDCS_UI_HEALTH_TOKEN_FILE    where to write the healthcheck's token (the container's)
 *   TRACKERDCS_MQTT_HOST, TRACKERDCS_MQTT_PORT   the broker the flows talk to
 *   TRACKERDCS_UI_LAB                  JSON: the lab's prefixes, sensors and modules
 *   TRACKERDCS_UI_INFLUX_URL, _USERNAME, _PASSWORD   InfluxDB for the history (a read-only user)
 *   TRACKERDCS_UI_EXPORT               the command line of `trackerdcs export` (the CSV button)
 *   TRACKERDCS_UI_GRAFANA_URL          Grafana, for the history page's links (optional)
 *
 * Without a password hash or a secret Node-RED refuses to start: the editor is never open; a
 * malformed user entry stops it too (login/index.js names it).
 */
const path = require('path')
const login = require('./login/index.js')

const env = process.env

function required(name) {
    const value = env[name]
    if (!value) {
        throw new Error(`${name} is not set: refusing to start Node-RED with an open editor`)
    }
    return value
}

// Defaults for the flows' `${...}` properties.
env.TRACKERDCS_MQTT_HOST = env.TRACKERDCS_MQTT_HOST || '127.0.0.1'
env.TRACKERDCS_MQTT_PORT = env.TRACKERDCS_MQTT_PORT || '1883'

const uiHost = env.TRACKERDCS_NODE_RED_HOST || '127.0.0.1'
required('TRACKERDCS_NODE_RED_PASSWORD_HASH')
required('TRACKERDCS_NODE_RED_SECRET')
const ui = login.configure(env, uiHost) // the dashboard's users and roles (login/index.js)

module.exports = {
    uiHost,
    uiPort: Number(env.PORT) || 1880,
    flowFile: 'flows.json',
    flowFilePretty: true,
    credentialSecret: required('TRACKERDCS_NODE_RED_SECRET'),

    adminAuth: {
        type: 'credentials',
        sessionExpiryTime: 8 * 3600,
        // the editor's user and every admin of TRACKERDCS_UI_USERS; viewers and operators never
        users: ui.admins.map(u => ({ username: u.name, password: u.hash, permissions: '*' }))
    },

    // The dashboard and the flows' HTTP endpoints (httpNodeRoot): the login in front of every
    // route (a function here is Express middleware: node-red/red.js), the same login for the
    // dashboard's Socket.IO connections, and the plugin that tells the flows who sends.
    httpNodeRoot: '/',
    httpAdminRoot: '/',
    httpNodeAuth: login.httpGuard,
    dashboard: { ioMiddleware: login.socketGuard },
    nodesDir: [path.join(__dirname, 'login')],
    execMaxBufferSize: 256 * 1024 * 1024, // the CSV export's output (exec node)

    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    functionExternalModules: false,
    functionTimeout: 5,

    editorTheme: {
        page: { title: 'trackerdcs Node-RED' },
        header: { title: 'trackerdcs' },
        projects: { enabled: false },
        tours: false
    },

    logging: {
        console: { level: env.TRACKERDCS_NODE_RED_LOG_LEVEL || 'info', metrics: false, audit: false }
    }
}
