'use strict'
/**
 * The dashboard's login and roles (docs/ui.md, "Logins and roles").
 *
 * FlowFuse Dashboard 2 on plain Node-RED has no login of its own, so this module gives it one,
 * through Node-RED's and the dashboard's own hooks (settings.js wires them):
 *
 * - users and roles from the environment, like the editor's: `TRACKERDCS_UI_USERS`, entries
 *   `name:role:bcrypt-hash` separated by spaces, commas or new lines; roles `viewer` (sees),
 *   `operator` (also commands), `admin` (also reaches the editor). The editor's user
 *   (`TRACKERDCS_NODE_RED_USER`, hash `TRACKERDCS_NODE_RED_PASSWORD_HASH`) is an admin too.
 *   Passwords are checked with bcryptjs; a malformed entry stops Node-RED at start, naming it.
 * - `httpGuard` (settings.js `httpNodeAuth`, Express middleware in front of every HTTP node
 *   route: the dashboard's pages and files, its `_setup`, the flows' `http in` endpoints): the
 *   login form (`GET|POST /login`), `/logout`, and a 302 to the login form (pages) or a 401
 *   (anything else) without a valid session.
 * - `socketGuard` (settings.js `dashboard.ioMiddleware`): no Socket.IO connection without a
 *   valid session; also the dashboard's own default checks, which a custom ioMiddleware replaces.
 * - plugin.js (a Dashboard 2 plugin): the logged-in user into every message from a page,
 *   `msg._client.user = {username, role}` (whatever the browser put there is replaced), and no
 *   data to a connection whose session has ended (expired, logged out, user removed).
 *
 * Sessions are stateless cookies (`trackerdcs_session`, HttpOnly, SameSite=Lax): the user, the
 * times, a session id and a fingerprint of the user's password hash, signed with HMAC-SHA256
 * under a key derived from the credential secret. A session ends after 12 h, at logout (its id
 * is kept until it would have expired), or when the user's password or entry changes. The role
 * is read from the user list at every use, never from the cookie.
 *
 * The login is on unless Node-RED listens on a loopback address only (`TRACKERDCS_UI_LOGIN`
 * `on` / `off` decides otherwise; `off` beyond loopback is refused). Without it there are no
 * users in the messages: the flows treat every page as an operator who typed a name.
 */
const crypto = require('crypto')
const fs = require('fs')
const bcrypt = require('bcryptjs')
const cookie = require('cookie')

const ROLES = ['viewer', 'operator', 'admin'] // each may do what the ones before it may
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$/ // as it goes into a command id: no `:`
const BCRYPT = /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/
const COOKIE = 'trackerdcs_session'
const SESSION_S = 12 * 3600 // a night shift
const REFUSED_DELAY_MS = 1000 // a wrong password is answered after this long
const HEALTH_HEADER = 'x-trackerdcs-health'
const PAGES = ['/dashboard', '/dashboard/'] // what the container's healthcheck may ask for

let config = null // set by configure()
const revoked = new Map() // session id -> its expiry (s): logged out
let plugin = false // plugin.js loaded (the flows then see who sends)

class LoginConfigError extends Error {}

function loopback (host) {
    return host === 'localhost' || host === '::1' || /^127\./.test(String(host))
}

/**
 * The users of `TRACKERDCS_UI_USERS` (and the editor's admin): a Map name -> {name, role, hash}.
 * Throws LoginConfigError naming the entry (never its hash) and the variable.
 */
function parseUsers (text, editor) {
    const users = new Map()
    const add = (user, where) => {
        if (users.has(user.name)) {
            throw new LoginConfigError(`${where}: user ${user.name} is given twice`)
        }
        users.set(user.name, user)
    }
    if (editor) {
        if (!NAME.test(editor.name)) throw new LoginConfigError(`TRACKERDCS_NODE_RED_USER: bad user name ${JSON.stringify(editor.name)}`)
        if (!BCRYPT.test(editor.hash)) throw new LoginConfigError('TRACKERDCS_NODE_RED_PASSWORD_HASH is not a bcrypt hash ($2b$10$...)')
        add({ name: editor.name, role: 'admin', hash: editor.hash }, 'TRACKERDCS_NODE_RED_USER')
    }
    String(text || '').split(/[\s,]+/).filter(Boolean).forEach(function (entry, i) {
        const where = `TRACKERDCS_UI_USERS entry ${i + 1}`
        const parts = entry.split(':')
        if (parts.length !== 3) {
            throw new LoginConfigError(`${where}: expected name:role:bcrypt-hash, got ${parts.length} field(s)`)
        }
        const [name, role, hash] = parts
        if (!NAME.test(name)) {
            throw new LoginConfigError(`${where}: bad user name ${JSON.stringify(name.slice(0, 40))} ` +
                '(letters, digits, . _ -, at most 40, no `:`)')
        }
        if (ROLES.indexOf(role) < 0) {
            throw new LoginConfigError(`${where} (${name}): unknown role ${JSON.stringify(role)}: ${ROLES.join(', ')}`)
        }
        if (!BCRYPT.test(hash)) {
            throw new LoginConfigError(`${where} (${name}): not a bcrypt hash ($2b$10$...): make one with ` +
                '`python -m trackerdcs.deploy hash-password`')
        }
        add({ name, role, hash }, where)
    })
    return users
}

/**
 * Read the environment (settings.js calls this once): whether the login is on, the users, the
 * session key. Returns {login, users, admins}; throws LoginConfigError for a setting Node-RED must
 * not start with.
 */
function configure (env, host) {
    const mode = String(env.TRACKERDCS_UI_LOGIN || '').toLowerCase()
    if (['', 'on', 'off'].indexOf(mode) < 0) {
        throw new LoginConfigError(`TRACKERDCS_UI_LOGIN=${mode}: on, off, or unset (on beyond loopback)`)
    }
    if (mode === 'off' && !loopback(host)) {
        throw new LoginConfigError(`TRACKERDCS_UI_LOGIN=off while listening on ${host}: the dashboard ` +
            'commands the lab and needs a login beyond loopback')
    }
    const login = mode === 'on' || (mode === '' && !loopback(host))
    const editor = env.TRACKERDCS_NODE_RED_PASSWORD_HASH
        ? { name: env.TRACKERDCS_NODE_RED_USER || 'admin', hash: env.TRACKERDCS_NODE_RED_PASSWORD_HASH }
        : null
    const users = parseUsers(env.TRACKERDCS_UI_USERS, editor)
    const secret = env.TRACKERDCS_NODE_RED_SECRET
    if (!secret) throw new LoginConfigError('TRACKERDCS_NODE_RED_SECRET is not set: no key for the sessions')
    config = {
        login,
        users,
        key: crypto.createHmac('sha256', secret).update('trackerdcs dashboard sessions v1').digest(),
        health: healthToken(env.TRACKERDCS_UI_HEALTH_TOKEN_FILE),
        lab: labName(env.TRACKERDCS_UI_LAB)
    }
    process.env.TRACKERDCS_UI_LOGIN_ACTIVE = login ? 'on' : 'off' // for the flows (env.get)
    return { login, users, admins: [...users.values()].filter(u => u.role === 'admin') }
}

// A new random token for the container's healthcheck, written (0600) where it reads it.
function healthToken (file) {
    if (!file) return null
    const token = crypto.randomBytes(24).toString('hex')
    fs.writeFileSync(file, token + '\n', { mode: 0o600 })
    fs.chmodSync(file, 0o600)
    return token
}

function labName (json) {
    try {
        return String(JSON.parse(json || '{}').lab || '')
    } catch (err) {
        return ''
    }
}

function active () {
    if (!config) throw new Error('login: configure() was not called (settings.js)')
    return config.login
}

// -- sessions -------------------------------------------------------------------------------------
function b64 (buf) {
    return Buffer.from(buf).toString('base64url')
}

function fingerprint (user) {
    return crypto.createHash('sha256').update(user.role + ':' + user.hash).digest('hex').slice(0, 16)
}

function sign (body) {
    return crypto.createHmac('sha256', config.key).update(body).digest()
}

function newSession (user, now) {
    const claims = { u: user.name, iat: now, exp: now + SESSION_S, sid: crypto.randomBytes(12).toString('hex'), k: fingerprint(user) }
    const body = b64(JSON.stringify(claims))
    return body + '.' + b64(sign(body))
}

/** The session's claims if `token` is ours, unexpired, not logged out, and its user unchanged. */
function verify (token, now) {
    if (typeof token !== 'string' || token.length > 1024) return null
    const [body, mac, extra] = token.split('.')
    if (!body || !mac || extra !== undefined) return null
    const want = sign(body)
    const got = Buffer.from(mac, 'base64url')
    if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return null
    let claims
    try {
        claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'))
    } catch (err) {
        return null
    }
    const user = claims && config.users.get(claims.u)
    if (!user || typeof claims.exp !== 'number' || claims.exp <= now || revoked.has(claims.sid)) return null
    return claims.k === fingerprint(user) ? { claims, user } : null
}

function nowS () {
    return Math.floor(Date.now() / 1000)
}

function sessionOf (request) {
    if (!request || !request.headers || !request.headers.cookie) return null
    let jar
    try {
        jar = cookie.parse(request.headers.cookie)
    } catch (err) {
        return null
    }
    return verify(jar[COOKIE], nowS())
}

/** {username, role} of the request's session (an HTTP request or a socket's handshake), or null. */
function userOf (request) {
    const s = sessionOf(request)
    return s ? { username: s.user.name, role: s.user.role } : null
}

function revoke (claims) {
    const now = nowS()
    revoked.forEach((exp, sid) => { if (exp <= now) revoked.delete(sid) })
    revoked.set(claims.sid, claims.exp)
}

function sessionCookie (value, req, maxAge) {
    const secure = !!req.secure || req.headers['x-forwarded-proto'] === 'https'
    return cookie.serialize(COOKIE, value, { httpOnly: true, sameSite: 'lax', path: '/', maxAge, secure })
}

// -- HTTP -----------------------------------------------------------------------------------------
// Where to go after logging in: a path of this server only.
function nextPath (value) {
    const v = typeof value === 'string' ? value : ''
    return /^\/(?![/\\])[^\s\\]{0,500}$/.test(v) ? v : '/dashboard/'
}

function escape (text) {
    return String(text).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]))
}

function page (res, status, next, message, kind) {
    const lab = config.lab ? ' — ' + escape(config.lab) : ''
    res.statusCode = status
    res.setHeader('Content-Type', 'text/html; charset=utf-8')
    res.setHeader('Cache-Control', 'no-store')
    res.setHeader('X-Frame-Options', 'DENY')
    res.end(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>trackerdcs — log in</title>
<style>
body{margin:0;font-family:system-ui,sans-serif;background:#f2f3f6;color:#1c2024}
header{background:#1d3557;color:#fff;padding:12px 16px;font-size:18px}
form{max-width:340px;margin:48px auto;background:#fff;border:1px solid #d9d9e0;border-radius:6px;padding:20px}
label{display:block;margin:12px 0 4px;font-size:14px}
input{width:100%;box-sizing:border-box;padding:8px;font-size:16px;border:1px solid #b9bbc6;border-radius:4px}
button{margin-top:18px;width:100%;padding:10px;font-size:16px;background:#0d74ce;color:#fff;border:0;border-radius:4px}
.msg{padding:8px;border-radius:4px;font-size:14px}.error{background:#ffebe7;color:#ae2c1b}.info{background:#e6f4fe;color:#0d5fa6}
small{display:block;margin-top:14px;color:#60646c}
</style></head><body>
<header>trackerdcs${lab}</header>
<form method="post" action="/login" data-testid="login-form">
<p>Log in to the control UI. Viewers see the lab; operators also command it.</p>
${message ? `<p class="msg ${kind || 'error'}" data-testid="login-message" role="alert">${escape(message)}</p>` : ''}
<label for="username">User</label><input id="username" name="username" autocomplete="username" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<input type="hidden" name="next" value="${escape(next)}">
<button type="submit" data-testid="login-submit">Log in</button>
<small>Admins reach the Node-RED editor at <a href="/">/</a> with the same login.</small>
</form></body></html>`)
}

function redirect (res, status, location, setCookie) {
    res.statusCode = status
    res.setHeader('Location', location)
    res.setHeader('Cache-Control', 'no-store')
    if (setCookie) res.setHeader('Set-Cookie', setCookie)
    res.end()
}

// The login form's fields: parsed by the editor's body parser (the admin app is mounted first,
// on the same root), else read here (a few kB at most).
function formOf (req, done) {
    if (req._body || (req.body && typeof req.body === 'object' && Object.keys(req.body).length)) {
        return done(req.body || {})
    }
    let text = ''
    req.setEncoding('utf8')
    req.on('data', chunk => {
        text += chunk
        if (text.length > 8192) req.destroy()
    })
    req.on('end', () => done(Object.fromEntries(new URLSearchParams(text))))
}

function tryLogin (req, res) {
    formOf(req, function (form) {
        const next = nextPath(form.next)
        const user = config.users.get(String(form.username || ''))
        const password = String(form.password || '')
        // a hash to compare against even for an unknown user: the answer takes as long
        const hash = user ? user.hash : '$2b$10$' + 'x'.repeat(53)
        bcrypt.compare(password, hash).then(function (ok) {
            if (ok && user && password) {
                return redirect(res, 303, next, sessionCookie(newSession(user, nowS()), req, SESSION_S))
            }
            setTimeout(() => page(res, 401, next, 'Wrong user name or password.'), REFUSED_DELAY_MS)
        }, function () {
            page(res, 500, next, 'The login failed: see the Node-RED log.')
        })
    })
}

function wantsPage (req) {
    return req.method === 'GET' && String(req.headers.accept || '').indexOf('text/html') >= 0
}

/**
 * Express middleware in front of every HTTP node route (settings.js `httpNodeAuth`): the login
 * form, logout, the healthcheck's token, and nothing else without a session.
 */
function httpGuard (req, res, next) {
    const path = req.path
    const on = active()
    if (path === '/login' || path === '/login/') {
        if (!on) return redirect(res, 303, '/dashboard/')
        if (req.method === 'POST') return tryLogin(req, res)
        const done = req.query && req.query.out ? 'You are logged out.' : ''
        return page(res, 200, nextPath(req.query && req.query.next), done, 'info')
    }
    if (path === '/logout' || path === '/logout/') {
        const s = sessionOf(req)
        if (s) revoke(s.claims)
        return redirect(res, 303, on ? '/login?out=1' : '/dashboard/', sessionCookie('', req, 0))
    }
    if (!on) return next()
    const token = req.headers[HEALTH_HEADER]
    if (config.health && token && PAGES.indexOf(path) >= 0 && ['GET', 'HEAD'].indexOf(req.method) >= 0) {
        const want = Buffer.from(config.health)
        const got = Buffer.from(String(token))
        if (got.length === want.length && crypto.timingSafeEqual(got, want)) return next()
    }
    const user = userOf(req)
    if (user) {
        req.trackerdcsUser = user
        return next()
    }
    if (wantsPage(req)) return redirect(res, 302, '/login?next=' + encodeURIComponent(req.originalUrl || path))
    res.statusCode = 401
    res.setHeader('Content-Type', 'text/plain; charset=utf-8')
    res.setHeader('Cache-Control', 'no-store')
    res.end('log in first: /login\n')
}

// -- Socket.IO and the dashboard's plugin hooks ---------------------------------------------------
/**
 * Socket.IO middleware of the dashboard (settings.js `dashboard.ioMiddleware`). A custom one
 * replaces the dashboard's default, whose checks come first here (ui_base.js: no direct
 * websocket transport, no cross-origin handshake); then a session, when the login is on.
 */
function socketGuard (socket, next) {
    if (String(socket.client.conn.request.url).indexOf('transport=websocket') !== -1) {
        socket.client.conn.close()
        return
    }
    if (socket.handshake.xdomain !== false) {
        socket.disconnect(true)
        return
    }
    if (!active()) return next()
    if (!plugin) return next(new Error('the dashboard login plugin is not loaded: nobody can connect'))
    if (!userOf(socket.request)) return next(new Error('log in first: /login'))
    next()
}

/** Whether data may still go to this connection (its session is still valid). */
function connectionAllowed (conn) {
    if (!active()) return true
    if (userOf(conn.request)) return true
    if (!conn.trackerdcsEnded) { // the page reconnects, is refused, and reloads into the login form
        conn.trackerdcsEnded = true
        setImmediate(() => conn.disconnect(true))
    }
    return false
}

/** A message from a page with who sent it: `_client.user`, from the session only. */
function withUser (conn, msg) {
    if (!msg || typeof msg !== 'object') return msg
    const client = msg._client && typeof msg._client === 'object' ? msg._client : {}
    delete client.user // whatever the browser sent
    const user = active() ? userOf(conn.request) : null
    if (user) client.user = user
    msg._client = client
    return msg
}

/** What the pages learn at start (the dashboard's `_setup`): login on, and who is logged in. */
function setupInfo (req) {
    return { login: active(), user: active() && req ? userOf(req) : null, logout: '/logout' }
}

function pluginLoaded () {
    plugin = true
}

module.exports = {
    ROLES,
    COOKIE,
    LoginConfigError,
    configure,
    parseUsers,
    httpGuard,
    socketGuard,
    connectionAllowed,
    withUser,
    setupInfo,
    userOf,
    pluginLoaded,
    loopback
}
