// `trackerdcs export`'s output (the `exec` node's first output: stdout, with `rc`) -> the HTTP
// answer: the CSV as a download, or its error text (stderr, from the failed command's message).
const rc = msg.rc || { code: 0 };
if (rc.code === 0) {
    msg.statusCode = 200;
    msg.headers = { 'Content-Type': 'text/csv; charset=utf-8', 'Cache-Control': 'no-store',
        'Content-Disposition': 'attachment; filename="' + msg.filename + '"' };
    return msg;
}
const why = String(rc.message || '').split('\n').slice(1).join('\n').trim() || 'exit code ' + rc.code;
node.warn('export failed: ' + why);
msg.statusCode = 502;
msg.headers = { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' };
msg.payload = 'the export failed: ' + why + '\n';
return msg;
