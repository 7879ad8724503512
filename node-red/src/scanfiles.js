// An IV scan's files for the Module tests page: `GET <FILES_PATH>/<module>/<scan id>.csv|.png`
// (an `http in` node) -> this node -> output 1: a `file in` node reads
// `<ivscan results folder>/<module>/<file>` (TRACKERDCS_UI_LAB `ivscan_results`); output 2: the
// refusal (404), straight to the `http response`. Only a lab module's folder and a plain file
// name ending in .csv or .png are served: nothing else of the disk.
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.(csv|png)$/;

let lab = {};
try {
    lab = JSON.parse(env.get('TRACKERDCS_UI_LAB') || '{}');
} catch (err) {
    node.warn('TRACKERDCS_UI_LAB is not valid JSON: ' + err.message);
}
const module_ = String((msg.req.params || {}).module || '');
const file = String((msg.req.params || {}).file || '');
const modules = Array.isArray(lab.modules) ? lab.modules : [];
if (!lab.ivscan_results || modules.indexOf(module_) < 0 || !NAME.test(file) || file.indexOf('..') >= 0) {
    msg.statusCode = 404;
    msg.headers = { 'Content-Type': 'text/plain; charset=utf-8' };
    msg.payload = 'no such IV scan file: ' + module_ + '/' + file;
    return [null, msg];
}
msg.filename = lab.ivscan_results.replace(/\/+$/, '') + '/' + module_ + '/' + file;
msg.headers = {
    'Content-Type': file.endsWith('.png') ? 'image/png' : 'text/csv; charset=utf-8',
    'Content-Disposition': (file.endsWith('.png') ? 'inline' : 'attachment') + '; filename="' + file + '"',
    'Cache-Control': 'no-cache'
};
msg.statusCode = 200;
return [msg, null];
