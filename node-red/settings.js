/**
 * Node-RED settings for the trackerdcs control UI.
 *
 * Nothing secret lives here: the editor's password hash and the credential secret come from the
 * environment, set by the process that starts Node-RED (trackerdcs/stack/nodered.py does):
 *
 *   TRACKERDCS_NODE_RED_HOST           address to listen on (default 127.0.0.1)
 *   TRACKERDCS_NODE_RED_USER           editor user name (default admin)
 *   TRACKERDCS_NODE_RED_PASSWORD_HASH  bcrypt hash of its password (required)
 *   TRACKERDCS_NODE_RED_SECRET         key that encrypts saved node credentials (required)
 *   TRACKERDCS_MQTT_HOST, TRACKERDCS_MQTT_PORT   the broker the flows talk to
 *   TRACKERDCS_UI_LAB                  JSON: the lab's prefixes, sensors and modules
 *
 * Without a password hash or a secret Node-RED refuses to start: the editor is never open.
 */
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

module.exports = {
    uiHost: env.TRACKERDCS_NODE_RED_HOST || '127.0.0.1',
    uiPort: Number(env.PORT) || 1880,
    flowFile: 'flows.json',
    flowFilePretty: true,
    credentialSecret: required('TRACKERDCS_NODE_RED_SECRET'),

    adminAuth: {
        type: 'credentials',
        sessionExpiryTime: 8 * 3600,
        users: [{
            username: env.TRACKERDCS_NODE_RED_USER || 'admin',
            password: required('TRACKERDCS_NODE_RED_PASSWORD_HASH'),
            permissions: '*'
        }]
    },

    // The dashboard (httpNodeRoot) stays open to whoever reaches the loopback address.
    httpNodeRoot: '/',
    httpAdminRoot: '/',

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
