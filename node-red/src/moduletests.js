// The Module tests model: the IV scans and the recipe, for the Module tests page.
//
// Inputs: MQTT `/dcs/ivscan/status`, `/dcs/ivscan/points`, `/dcs/ivscan/results`,
// `/dcs/recipe/status` (docs/topics.md); `moduletests/refresh` from the page (it has just opened)
// and `moduletests/tick` every few seconds. Output: `{topic: 'moduletests', payload}` to the
// page, at once after a change (at most every 200 ms), on a refresh and on a tick:
//   ivscan:  the latest `/dcs/ivscan/status` (null before one)
//   points:  module -> {scan, points: [{step, vset, vmon, imon, imon_std}]}: the points of each
//            module's latest scan as they come (the live curve), at most MAX_POINTS
//   results: the past scans (`/dcs/ivscan/results`), each with `csv_url` and `png_url`, the
//            files as this Node-RED serves them (FILES_PATH, scanfiles.js)
//   recipe:  the latest `/dcs/recipe/status` (null before one)
// Commands do not pass here: the page sends them through the lab model, as every page does.
const FILES_PATH = __FILES_PATH__; // put here by build_flows.py
const MAX_POINTS = 2000;
const PUBLISH_DELAY_MS = 200;

function state() {
    let s = context.get('state');
    if (!s) {
        s = { ivscan: null, points: {}, results: [], recipe: null };
        context.set('state', s);
    }
    return s;
}

function fileUrl(path) {
    return path ? FILES_PATH + '/' + path.split('/').map(encodeURIComponent).join('/') : null;
}

function object(payload) {
    if (payload && typeof payload === 'object') return payload;
    try {
        const parsed = JSON.parse(String(payload));
        return parsed && typeof parsed === 'object' ? parsed : null;
    } catch (err) {
        return null;
    }
}

function point(s, p) {
    if (!p || typeof p.module !== 'string' || typeof p.scan !== 'string') return false;
    let curve = s.points[p.module];
    if (!curve || curve.scan !== p.scan) {
        curve = { scan: p.scan, points: [] };
        s.points[p.module] = curve;
    }
    if (curve.points.length >= MAX_POINTS) return false;
    curve.points.push({ step: p.step, vset: p.vset, vmon: p.vmon, imon: p.imon, imon_std: p.imon_std });
    return true;
}

function fromMqtt(s, topic, payload) {
    const data = object(payload);
    if (!data) return false;
    if (topic === '/dcs/ivscan/status') {
        s.ivscan = data;
        // a module's new scan starts its curve afresh, even before its first point
        Object.keys(data.scans || {}).forEach(function (m) {
            const scan = data.scans[m];
            if (scan && scan.scan && (!s.points[m] || s.points[m].scan !== scan.scan)) {
                s.points[m] = { scan: scan.scan, points: [] };
            }
        });
        return true;
    }
    if (topic === '/dcs/ivscan/points') return point(s, data);
    if (topic === '/dcs/ivscan/results') {
        s.results = (Array.isArray(data.scans) ? data.scans : []).map(r => Object.assign({}, r,
            { csv_url: fileUrl(r.csv), png_url: fileUrl(r.png) }));
        return true;
    }
    if (topic === '/dcs/recipe/status') {
        s.recipe = data;
        return true;
    }
    return false;
}

function snapshot(s) {
    return { topic: 'moduletests', payload: { ivscan: s.ivscan, points: s.points, results: s.results,
        recipe: s.recipe, time: Date.now() } };
}

function schedule(s) {
    if (context.get('timer')) return;
    context.set('timer', setTimeout(function () {
        context.set('timer', null);
        node.send(snapshot(s));
    }, PUBLISH_DELAY_MS));
}

const s = state();
if (msg.topic === 'moduletests/refresh' || msg.topic === 'moduletests/tick') return snapshot(s);
if (fromMqtt(s, String(msg.topic), msg.payload)) schedule(s);
return null;
