// One tenant's worker in the workerd baseline: the same function as taskcell's (task.js, loaded as a
// CommonJS module), the same request body ({"code", "data"}, the code ignored) and the same envelope.
import fn from 'task.js';

export default {
  async fetch(req) {
    const body = await req.json();
    const result = await fn(body.data, {tenant: '', task: null, requestId: ''});
    const envelope = {result: result === undefined ? null : result, logs: [], cold: false, duration_us: 0};
    return new Response(JSON.stringify(envelope), {headers: {'Content-Type': 'application/json'}});
  },
};
