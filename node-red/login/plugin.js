'use strict'
/**
 * A Dashboard 2 plugin (type `node-red-dashboard-2`, loaded through settings.js `nodesDir`):
 * the logged-in user into every message a page sends (`msg._client.user = {username, role}`;
 * what the browser put there is replaced), no data to a connection whose session has ended,
 * and the page told who is logged in (the dashboard's `_setup`: `trackerdcs`). The hooks are
 * those of @flowfuse/node-red-dashboard's ui_base.js and utils (onAddConnectionCredentials,
 * onIsValidConnection, onSetup); see index.js.
 */
const login = require('./index.js')

module.exports = function (RED) {
    login.pluginLoaded()
    RED.plugins.registerPlugin('trackerdcs-dashboard-login', {
        type: 'node-red-dashboard-2',
        hooks: {
            // onSetup(config, req, res) in 1.31; (RED, config, req, res) in the plugin docs
            onSetup: (...args) => ({ trackerdcs: login.setupInfo(args.find(a => a && a.headers)) }),
            onAddConnectionCredentials: (conn, msg) => login.withUser(conn, msg),
            onIsValidConnection: (conn) => login.connectionAllowed(conn)
        }
    })
}
