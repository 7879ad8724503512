'use strict'
/**
 * The Node-RED container's healthcheck (Dockerfile HEALTHCHECK, docker-compose.yml): exit 0 when
 * the dashboard answers `GET /dashboard/` with 200, 1 otherwise.
 *
 * With the login on (always in the container: Node-RED listens on 0.0.0.0) the dashboard needs a
 * session; the healthcheck shows instead the token login/index.js wrote at start to
 * TRACKERDCS_UI_HEALTH_TOKEN_FILE (0600, new at every start), in the `x-trackerdcs-health` header.
 * The token opens `GET|HEAD /dashboard/` only: the page's shell, no data, no Socket.IO.
 */
const fs = require('fs')
const http = require('http')

let token = ''
try {
    token = fs.readFileSync(process.env.TRACKERDCS_UI_HEALTH_TOKEN_FILE || '', 'utf8').trim()
} catch (err) {
    token = '' // no login, or Node-RED not started yet: the plain request says which
}
const headers = token ? { 'x-trackerdcs-health': token } : {}
http.get({ host: '127.0.0.1', port: Number(process.env.TRACKERDCS_UI_HEALTH_PORT) || 1880, path: '/dashboard/', headers },
    r => process.exit(r.statusCode === 200 ? 0 : 1))
    .on('error', () => process.exit(1))
    .setTimeout(8000, () => process.exit(1))
