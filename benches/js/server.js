'use strict';
// The floor for warm invocation: a bare Node HTTP server on a Unix socket running the same task
// function as taskcell, with no isolation. It takes the same request body as taskcell's ad-hoc run
// ({"code", "data"}), ignores the code (the function is loaded once from task.js) and answers an
// envelope of the same shape.
const http = require('http');
const fs = require('fs');
const [sock, taskFile] = process.argv.slice(2);
const fn = require(taskFile);

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const t0 = process.hrtime.bigint();
    const reply = (status, obj) => {
      const body = JSON.stringify(obj);
      res.writeHead(status, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body)});
      res.end(body);
    };
    let data;
    try {
      const text = Buffer.concat(chunks).toString('utf8');
      const body = text ? JSON.parse(text) : null;
      data = body && typeof body === 'object' && 'data' in body ? body.data : body;
    } catch (e) {
      return reply(400, {error: {kind: 'bad_request', message: String(e)}});
    }
    Promise.resolve()
      .then(() => fn(data, {tenant: 'bare', task: null, requestId: ''}))
      .then(
        (result) => reply(200, {result: result === undefined ? null : result, logs: [], cold: false,
          duration_us: Number((process.hrtime.bigint() - t0) / 1000n)}),
        (e) => reply(500, {error: {kind: 'task_error', message: String(e)}}));
  });
});
// The bench's connections stay open across rows; do not let Node close them while they wait.
server.keepAliveTimeout = 0;
server.headersTimeout = 0;
server.requestTimeout = 0;
try { fs.unlinkSync(sock); } catch (_) {}
server.listen(sock);
process.on('SIGTERM', () => {
  try { fs.unlinkSync(sock); } catch (_) {}
  process.exit(0);
});
